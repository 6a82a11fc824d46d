"""XOAUTH2 (Google/Microsoft, no RFC; the precursor of RFC 7628 OAUTHBEARER)::

    "user=" user ^A "auth=Bearer " token ^A ^A

State machine::

    start(None) ─► Challenge(b"") ─► respond(msg) ─┐
    start(msg) ────────────────────────────────────┴► Verify ─► verified()
        VALID       ─► Success | Failure("invalid") (token not for this user)
        UNAVAILABLE ─► Failure("unavailable")
        INVALID     ─► Challenge(JSON {"status":"401",...}) ─► respond(empty or ^A) ─► Failure("invalid")
                                                           respond(anything else) ─► Failure("malformed")

Clients answer the JSON error challenge with an empty line (Google's documented flow); a lone ^A is
accepted too since some clients reuse their OAUTHBEARER code. Key order is not enforced; unknown keys
are ignored, duplicates are malformed.
"""
from __future__ import annotations

from ..lookup.base import Credentials
from ._common import Malformed, TokenMechanism, for_log, utf8
from .base import Action, Failure, Verify
from .oauthbearer import KVSEP, _KEY, bearer_token


def parse(message: bytes) -> tuple[str, str]:
    """Return (user, token) or raise Malformed."""
    text = utf8(message, "message")
    if not text.endswith(KVSEP * 2):
        raise Malformed("message does not end with ^A^A")
    kv: dict[str, str] = {}
    for pair in text[:-2].split(KVSEP):
        key, eq, value = pair.partition("=")
        if not eq or not _KEY.fullmatch(key):
            raise Malformed("bad key=value pair")
        if key in kv:
            raise Malformed(f"duplicate key {key!r}")
        kv[key] = value
    user = kv.get("user", "")
    if not user or any(ord(c) < 0x20 or c == "\x7f" for c in user):
        raise Malformed("missing or bad user=")
    return user, bearer_token(kv)


class XOAuth2(TokenMechanism):
    name = "XOAUTH2"
    error_fields = {"status": "401", "schemes": "Bearer"}
    bad_ack = "expected an empty response after the error challenge"

    def _message(self, data: bytes) -> Action:
        try:
            self._user, token = parse(data)
        except Malformed as exc:
            user = data.split(b"\x01", 1)[0]
            return self._end(Failure("malformed", str(exc),
                                     for_log(user[5:]) if user.startswith(b"user=") else ""))
        self._state = "verify"
        return Verify(Credentials(mechanism=self.name, username=self._user, secret=token, kind="token"))
