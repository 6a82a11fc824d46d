"""LOGIN (draft-murchison-sasl-login, never an RFC): username and password in two server-prompted steps.

State machine::

    start(None | b"") ─► Challenge(b"Username:") ─► respond(user) ─┐
    start(user) ───────────────────────────────────────────────────┴► Challenge(b"Password:")
        ─► respond(password) ─► Verify ─► verified() ─► Success | Failure

The prompts are the ``Username:``/``Password:`` strings Outlook and friends expect (SPEC §7). An empty
initial response (``AUTH LOGIN =``) is treated like no initial response, as Dovecot does: an empty
username is never meant. Empty username or password after the prompts fail as wrong credentials without
asking the lookup; NUL or invalid UTF-8 is malformed.
"""
from __future__ import annotations

from ..lookup.base import AuthResult, Credentials
from ._common import Malformed, StatefulMechanism, for_log, not_valid, utf8
from .base import Action, Challenge, Failure, Success, Verify

USERNAME_PROMPT = b"Username:"
PASSWORD_PROMPT = b"Password:"


def _field(data: bytes, what: str) -> str:
    if b"\0" in data:
        raise Malformed(f"NUL in {what}")
    return utf8(data, what)


class Login(StatefulMechanism):
    name = "LOGIN"

    def __init__(self) -> None:
        super().__init__()
        self._username = ""

    @property
    def claimed_user(self) -> str:
        """The username once sent, for the AUTH log line when the client cancels at the password prompt."""
        return self._username

    def start(self, initial: bytes | None) -> Action:
        self._expect("start", "start")
        if not initial:
            self._state = "username"
            return Challenge(USERNAME_PROMPT)
        return self._got_username(initial)

    def respond(self, data: bytes) -> Action:
        if self._state == "username":
            return self._got_username(data)
        self._expect("password", "respond")
        try:
            password = _field(data, "password")
        except Malformed as exc:
            return self._end(Failure("malformed", str(exc), self._username))
        if not self._username or not password:
            return self._end(Failure("invalid", "empty username or password", self._username))
        self._state = "verify"
        return Verify(Credentials(mechanism=self.name, username=self._username, secret=password))

    def _got_username(self, data: bytes) -> Action:
        try:
            self._username = _field(data, "username")
        except Malformed as exc:
            return self._end(Failure("malformed", str(exc), for_log(data)))
        self._state = "password"
        return Challenge(PASSWORD_PROMPT)

    def verified(self, result: AuthResult) -> Action:
        self._expect("verify", "verified")
        if not result.valid:
            return self._end(not_valid(result, self._username))
        return self._end(Success(account=result.account or self._username, addresses=result.addresses))
