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

from ..lookup.base import AuthResult, Credentials, Outcome
from ._common import Malformed, StatefulMechanism, for_log, not_valid, utf8
from .base import Action, Challenge, Failure, Verify
from .oauthbearer import KVSEP, _KEY, bearer_token, error_json, token_success


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


class XOAuth2(StatefulMechanism):
    name = "XOAUTH2"

    def __init__(self, *, scope: str | None = None) -> None:
        super().__init__()
        self._scope = scope
        self._user = ""

    def start(self, initial: bytes | None) -> Action:
        self._expect("start", "start")
        if initial is None:
            self._state = "message"
            return Challenge(b"")
        return self._message(initial)

    def respond(self, data: bytes) -> Action:
        if self._state == "error-ack":
            if data in (b"", KVSEP.encode()):
                return self._end(Failure("invalid", "token rejected", self._user))
            return self._end(Failure("malformed", "expected an empty response after the error challenge",
                                     self._user))
        self._expect("message", "respond")
        return self._message(data)

    def _message(self, data: bytes) -> Action:
        try:
            self._user, token = parse(data)
        except Malformed as exc:
            user = data.split(b"\x01", 1)[0]
            return self._end(Failure("malformed", str(exc),
                                     for_log(user[5:]) if user.startswith(b"user=") else ""))
        self._state = "verify"
        return Verify(Credentials(mechanism=self.name, username=self._user, secret=token, kind="token"))

    def verified(self, result: AuthResult) -> Action:
        self._expect("verify", "verified")
        if result.outcome is Outcome.INVALID:
            fields = {"status": "401", "schemes": "Bearer"}
            if self._scope:
                fields["scope"] = self._scope
            self._state = "error-ack"
            return Challenge(error_json(fields))
        if not result.valid:
            return self._end(not_valid(result, self._user))
        return self._end(token_success(self._user, result, self._user))
