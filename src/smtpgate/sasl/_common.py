"""Helpers shared by the mechanism modules (private; the public interface is ``base.py``)."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from ..lookup.base import AuthResult, Outcome, SecretRecord
from .base import Action, Failure, Mechanism

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


class Malformed(Exception):
    """Raised by parsers; the message becomes the 501 detail, so it must never contain secrets."""


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


__all__ = [
    "PROCESS_KEY", "keyed", "Malformed", "utf8", "for_log", "authorize", "not_valid",
    "StatefulMechanism",
]
