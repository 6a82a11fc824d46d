"""CRAM-MD5 (RFC 2195): the server sends a unique msg-id style challenge, the client answers
``username SP hex(HMAC-MD5(password, challenge))``.

State machine (server first; an initial response on the AUTH line is the stage's 501 5.7.0)::

    start(None) ─► Challenge(b"<random.timestamp@hostname>") ─► respond(user SP digest)
        ─► NeedSecret(user) ─► secret(record) ─► Success | Failure("invalid")

Only a plaintext secret can verify the HMAC. An unknown user, or a record without plaintext, is checked
against a fresh random key so that the work done and the reply are the same as for a wrong password.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from ..lookup.base import SecretRecord
from ._common import Malformed, StatefulMechanism, for_log, utf8
from .base import Action, Challenge, Failure, NeedSecret, Success

_DIGEST = re.compile(r"[0-9a-f]{32}")


def parse(response: bytes) -> tuple[str, str]:
    """Return (username, lower-case hex digest) or raise Malformed."""
    text = utf8(response, "response")
    user, sep, digest = text.rpartition(" ")  # the digest has no spaces; a username might
    digest = digest.lower()
    if not sep or not user or not _DIGEST.fullmatch(digest):
        raise Malformed("expected 'username SP hex-digest'")
    if any(ord(c) < 0x20 or c == "\x7f" for c in user):
        raise Malformed("control character in username")
    return user, digest


class CramMD5(StatefulMechanism):
    name = "CRAM-MD5"
    server_first = True

    def __init__(self, *, hostname: str, challenge: bytes | None = None) -> None:
        """``challenge`` fixes the challenge (for test vectors); normally it is generated."""
        super().__init__()
        self._hostname = hostname
        self._challenge = challenge or b""
        self._user = ""
        self._digest = ""

    def start(self, initial: bytes | None) -> Action:
        self._expect("start", "start")
        if initial is not None:
            return self._end(Failure("malformed", "CRAM-MD5 does not take an initial response"))
        # RFC 2195 §2: "presumptively arbitrary string of random digits, a timestamp, and the
        # fully-qualified primary host name of the server", syntax of a msg-id.
        if not self._challenge:
            self._challenge = f"<{secrets.randbelow(10**12)}.{time.time_ns() // 1000}@{self._hostname}>".encode()
        self._state = "response"
        return Challenge(self._challenge)

    def respond(self, data: bytes) -> Action:
        self._expect("response", "respond")
        try:
            self._user, self._digest = parse(data)
        except Malformed as exc:
            return self._end(Failure("malformed", str(exc), for_log(data.rpartition(b" ")[0])))
        self._state = "secret"
        return NeedSecret(self._user)

    def secret(self, record: SecretRecord | None) -> Action:
        self._expect("secret", "secret")
        usable = record is not None and record.plaintext is not None
        key = record.plaintext.encode("utf-8") if usable else secrets.token_bytes(16)  # type: ignore[union-attr]
        expected = hmac.new(key, self._challenge, hashlib.md5).hexdigest()
        if hmac.compare_digest(expected, self._digest) and usable:
            assert record is not None
            return self._end(Success(account=record.account or self._user, addresses=record.addresses))
        detail = "digest mismatch" if usable else "unknown user or no plaintext secret"
        return self._end(Failure("invalid", detail, self._user))
