"""Helpers shared by the mechanism modules (private; the public interface is ``base.py``)."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable

from ..lookup.base import AuthResult, Outcome, SecretRecord
from .base import Action, Challenge, Failure, Malformed, Mechanism, Success

#: Per-process random key for everything that must look deterministic to a client without being
#: guessable (SCRAM fake salts and keys). It never leaves the process.
PROCESS_KEY = secrets.token_bytes(32)


def keyed(label: str, *parts: str | bytes, size: int = 32) -> bytes:
    """HMAC-SHA-256 of ``parts`` under :data:`PROCESS_KEY`, domain-separated by ``label``.
    NUL separators keep ("ab", "c") and ("a", "bc") apart; ``size`` up to 64 bytes."""
    msg = label.encode() + b"".join(b"\0" + (p if isinstance(p, bytes) else p.encode("utf-8")) for p in parts)
    out = hmac.new(PROCESS_KEY, msg, hashlib.sha256).digest()
    if size > len(out):
        out += hmac.new(PROCESS_KEY, b"more\0" + msg, hashlib.sha256).digest()
    return out[:size]


def utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(f"{what} is not valid UTF-8") from None


def for_log(data: bytes) -> str:
    """A best-effort username for Failure.username when the input is broken (log with %r)."""
    return data.decode("utf-8", "replace").replace("\0", "\ufffd")[:255]


def authorize(requested: str, selves: Iterable[str], may_act_for: Iterable[str]) -> str | None:
    """Decide a requested authorization identity.

    Returns "" when ``requested`` is empty or names the authenticated user itself (any of ``selves``,
    compared case-insensitively as mail systems treat local parts and domains), ``requested`` when the
    lookup granted the right to act for it, and None when it is not permitted.
    """
    if not requested:
        return ""
    wanted = requested.casefold()
    if any(s and s.casefold() == wanted for s in selves):
        return ""
    if any(m.casefold() == wanted for m in may_act_for):
        return requested
    return None


def not_valid(result: AuthResult, username: str) -> Failure:
    """Map a non-VALID AuthResult: UNAVAILABLE → 454, anything else → 535."""
    if result.outcome is Outcome.UNAVAILABLE:
        return Failure("unavailable", result.reason or "lookup unavailable", username)
    return Failure("invalid", result.reason or "credentials rejected", username)


def grant(result: AuthResult, user: str, requested: str, selves: Iterable[str], refusal: str) -> Success | Failure:
    """The end of an exchange the lookup verified for ``user``: a non-VALID result fails (see
    :func:`not_valid`), and ``requested`` must be one of ``selves`` or granted by the lookup (see
    :func:`authorize`), else ``refusal`` is the 535 detail. A lookup that names no account vouches for
    ``user``."""
    if not result.valid:
        return not_valid(result, user)
    authzid = authorize(requested, selves, result.may_act_for)
    if authzid is None:
        return Failure("invalid", refusal, user)
    return Success(account=result.account or user, authzid=authzid, addresses=result.addresses)


class StatefulMechanism(Mechanism):
    """Tracks the expected next call so that a confused caller gets a clear error instead of a silently
    wrong exchange. Calling out of order is a bug in the AUTH stage, hence an exception, not a Failure."""

    def __init__(self) -> None:
        self._state = "start"

    def _expect(self, state: str, call: str) -> None:
        if self._state != state:
            raise RuntimeError(f"{self.name}: {call}() called in state {self._state!r}")

    def _end(self, action: Action) -> Action:
        self._state = "done"
        return action

    def start(self, initial: bytes | None) -> Action:
        self._expect("__never__", "start")
        raise AssertionError

    def respond(self, data: bytes) -> Action:
        self._expect("__never__", "respond")
        raise AssertionError

    def verified(self, result: AuthResult) -> Action:
        self._expect("__never__", "verified")
        raise AssertionError

    def secret(self, record: SecretRecord | None) -> Action:
        self._expect("__never__", "secret")
        raise AssertionError


class OneMessageMechanism(StatefulMechanism):
    """A client-first mechanism whose whole input is one message: the initial response, or the answer
    to an empty challenge. Subclasses implement ``_message``."""

    def start(self, initial: bytes | None) -> Action:
        self._expect("start", "start")
        if initial is None:
            self._state = "message"
            return Challenge(b"")
        return self._message(initial)

    def respond(self, data: bytes) -> Action:
        self._expect("message", "respond")
        return self._message(data)

    def _message(self, data: bytes) -> Action:
        raise NotImplementedError


class TokenMechanism(OneMessageMechanism):
    """What OAUTHBEARER and XOAUTH2 share once their message is parsed into the claimed user
    (``self._user``) and a token. An INVALID token is reported in a JSON error challenge that the client
    acknowledges with an empty response or a lone ^A; then the exchange fails as 535 (anything else is
    501). A VALID token must belong to the claimed user: the account itself (its name or one of its
    addresses) or one it may act for."""

    #: Fields of the JSON error challenge.
    error_fields: dict[str, str] = {}
    #: Failure detail when the error challenge is answered with anything but an acknowledgement.
    bad_ack: str = ""

    def __init__(self) -> None:
        super().__init__()
        self._user = ""

    def respond(self, data: bytes) -> Action:
        if self._state == "error-ack":
            if data in (b"", b"\x01"):
                return self._end(Failure("invalid", "token rejected", self._user))
            return self._end(Failure("malformed", self.bad_ack, self._user))
        return super().respond(data)

    def verified(self, result: AuthResult) -> Action:
        self._expect("verify", "verified")
        if result.outcome is Outcome.INVALID:
            self._state = "error-ack"
            return Challenge(json.dumps(self.error_fields, separators=(",", ":")).encode("ascii"))
        selves = (result.account or self._user, *result.addresses)
        return self._end(grant(result, self._user, self._user, selves, "token does not belong to the claimed user"))


__all__ = [
    "PROCESS_KEY", "keyed", "Malformed", "utf8", "for_log", "authorize", "not_valid", "grant",
    "StatefulMechanism", "OneMessageMechanism", "TokenMechanism",
]
