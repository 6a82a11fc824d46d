"""The one interface behind which cross-session state lives: counters, marks, bans, concurrency slots.

Two implementations: :mod:`.memory` (this process; bans persisted in a file) and :mod:`.redis` (shared by
every node; falls back to a memory store while Redis is down). The guard composes a few batched calls per
event -- e.g. one :meth:`Store.peek` before an AUTH lookup and one :meth:`Store.hit` after a failure -- so a
Redis store needs at most two round trips per AUTH.

Every counter is a *fixed window*: the first hit starts it, it expires ``ttl`` seconds later, and the
count restarts from zero (Stalwart's rate semantics, and what Redis INCR + PEXPIRE give atomically).

Concurrency slots are deliberately per process in every store: a node that crashes could never give its
slots back to a shared counter, and a connection is only ever held by one node anyway.

A store whose ``immediate`` is true never suspends inside its coroutines, so the event loop's hot path can
run them synchronously with :func:`drive` instead of scheduling a task; it also offers ``hit_now`` and
``ban_now``, the synchronous forms of :meth:`Store.hit` and :meth:`Store.ban` the guard's AUTH path calls
directly (one AUTH asks the store twice: a coroutine per call is a measurable share of a session).
"""
from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from typing import Any, Coroutine, Sequence


@dataclass(slots=True, unsafe_hash=True)
class Hit:
    """Increment counter ``key`` (window ``ttl`` seconds). With ``once``: only if the mark ``once`` was not
    set yet (it is set now, for ``ttl``) -- so the same wrong password retried counts once.
    ``amount = -1`` undoes a hit that counted: the counter goes down by one and ``once`` is cleared."""
    key: str
    ttl: float
    once: str | None = None
    amount: int = 1


@dataclass(slots=True)
class Ban:
    key: str                    # an IPv4 address or an IPv6 network ("2001:db8:1:2::/64")
    until: float                # Unix time the ban ends
    reason: str                 # "auth", "abuse", "loiter", "scan", or an operator's text
    at: float = 0.0             # Unix time it started
    counts: dict[str, int] = field(default_factory=dict)   # what earned it, e.g. {"auth": 100}

    def to_json(self) -> dict[str, Any]:
        return {"until": self.until, "reason": self.reason, "at": self.at, "counts": self.counts}

    @classmethod
    def from_json(cls, key: str, raw: dict[str, Any]) -> "Ban":
        return cls(key, float(raw["until"]), str(raw.get("reason", "")), float(raw.get("at", 0.0)),
                   {str(k): int(v) for k, v in dict(raw.get("counts", {})).items()})


@dataclass(slots=True)
class Changes:
    """Bans that appeared or disappeared since the last :meth:`Store.refresh` (another node, the CLI)."""
    added: list[Ban] = field(default_factory=list)
    removed: list[Ban] = field(default_factory=list)


class Store(abc.ABC):
    immediate: bool = False     # coroutines never suspend: drive() may run them synchronously

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}

    # -- counters and marks ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def hit(self, hits: Sequence[Hit], *, set_marks: Sequence[tuple[str, float]] = (),
                  check_marks: Sequence[str] = ()) -> tuple[list[tuple[int, bool]], list[bool]]:
        """One atomic batch: whether each of ``check_marks`` is set (looked at first), every hit applied,
        every ``(mark, ttl)`` of ``set_marks`` set. Returns ``(count after, counted)`` per hit and the
        checked marks' states."""

    def hit_soon(self, hits: Sequence[Hit], *, set_marks: Sequence[tuple[str, float]] = ()) -> None:
        """:meth:`hit` when nobody needs the answer (an undo, a trust mark): nothing waits for it."""
        coro = self.hit(hits, set_marks=set_marks)
        if self.immediate:
            drive(coro)
        else:
            asyncio.get_running_loop().create_task(coro)

    @abc.abstractmethod
    async def peek(self, counters: Sequence[str], marks: Sequence[str] = ()) -> tuple[list[int], list[bool]]:
        """Current values of ``counters`` (0 when absent or expired) and whether each mark is set."""

    @abc.abstractmethod
    async def mark(self, key: str, ttl: float) -> None:
        """Set (or renew) a mark for ``ttl`` seconds."""

    # -- bans -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def ban(self, ban: Ban) -> None:
        """Record a ban (replacing an older one of the same key)."""

    @abc.abstractmethod
    async def unban(self, key: str) -> Ban | None:
        """Lift a ban; the ban that was lifted, or None."""

    @abc.abstractmethod
    async def bans(self) -> list[Ban]:
        """Every ban in force."""

    @abc.abstractmethod
    def banned(self, key: str, now: float) -> Ban | None:
        """Synchronous, local answer for the accept path: the ban in force for ``key``, if any."""

    # -- concurrency (always per process) -----------------------------------------------------------------
    def acquire(self, key: str, limit: int) -> bool:
        count = self._slots.get(key, 0)
        if count >= limit:
            return False
        self._slots[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._slots.get(key, 0) - 1
        if count > 0:
            self._slots[key] = count
        else:
            self._slots.pop(key, None)

    # -- life cycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        pass

    async def refresh(self) -> Changes:
        """Called about twice a second by the guard: pick up bans made elsewhere, drop expired state."""
        return Changes()

    async def close(self) -> None:
        pass


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (an ``immediate`` store's) to its result, synchronously."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a store operation suspended; only an immediate store may be driven")
