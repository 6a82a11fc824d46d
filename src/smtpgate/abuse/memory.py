"""The default store: counters and marks in this process's memory; bans also persisted in ``bans.json``.

Counters are grouped by window length: within one group every entry lives exactly ``ttl`` seconds from
its creation, so insertion order is expiry order and purging stops at the first live entry (no scan, no
heap). Memory is bounded: past ``max_entries`` the oldest entry of the group is dropped (an attacker who
rotates keys that fast loses at most the oldest counts, never our memory).

Ban writes go to the file from one writer thread (a ban is rare; its fsync must not stall the loop).
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from .banfile import BanFile
from .store import Ban, Changes, Hit, Store

log = logging.getLogger("smtpgate.abuse")

#: A mark set again while it has more than its lifetime minus this many seconds left is left alone (a
#: trust mark renewed by every successful login would otherwise be rewritten per AUTH).
MARK_RENEW_SLACK = 60.0


class MemoryStore(Store):
    immediate = True

    def __init__(self, ban_file: str | None = None, *, clock: Callable[[], float] = time.time,
                 max_entries: int = 500_000):
        super().__init__()
        self.clock = clock
        self.max_entries = max_entries
        # key -> [count, expiry, ttl]: one lookup answers a get. Each window length also has its own
        # insertion-ordered dict of the same entries, which is therefore expiry-ordered (the purge order).
        self._entries: dict[str, list] = {}
        self._groups: dict[float, dict[str, list]] = {}
        self._bans: dict[str, Ban] = {}
        self._file = BanFile(ban_file) if ban_file else None
        self._file_sig: tuple | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: dict[str, Ban | None] = {}   # changes queued for the file, not yet written
        self.fingerprint_key = os.urandom(32)        # per process: fingerprints never leave it

    # -- counters and marks ---------------------------------------------------------------------------
    def _put(self, key: str, ttl: float, now: float) -> list:
        """A fresh entry for ``key`` (count 0) in the window group ``ttl``, replacing any older one."""
        old = self._entries.get(key)
        if old is not None:
            del self._groups[old[2]][key]
        group = self._groups.get(ttl)
        if group is None:
            group = self._groups[ttl] = {}
        if len(self._entries) >= self.max_entries and old is None:
            self._purge(now)
            if len(self._entries) >= self.max_entries and group:
                oldest = next(iter(group))
                del group[oldest]
                del self._entries[oldest]
        entry = [0, now + ttl, ttl]
        group[key] = entry
        self._entries[key] = entry
        return entry

    async def hit(self, hits: Sequence[Hit], *, set_marks: Sequence[tuple[str, float]] = (),
                  check_marks: Sequence[str] = ()) -> tuple[list[tuple[int, bool]], list[bool]]:
        return self.hit_now(hits, set_marks, check_marks)

    def hit_now(self, hits: Sequence[Hit], set_marks: Sequence[tuple[str, float]] = (),
                check_marks: Sequence[str] = ()) -> tuple[list[tuple[int, bool]], list[bool]]:
        now = self.clock()
        entries = self._entries
        checked = []
        for key in check_marks:
            e = entries.get(key)
            checked.append(e is not None and e[1] > now)
        out = []
        for h in hits:
            entry = entries.get(h.key)
            if entry is not None and entry[1] <= now:
                entry = None
            once = h.once
            if h.amount < 0:
                if once is not None:
                    self._drop(once)
                if entry is not None and entry[0] > 0:
                    entry[0] -= 1
                out.append((entry[0] if entry is not None else 0, True))
                continue
            if once is not None:
                mark = entries.get(once)
                if mark is not None and mark[1] > now:
                    out.append((entry[0] if entry is not None else 0, False))
                    continue
                self._put(once, h.ttl, now)[0] = 1
            if entry is None:
                entry = self._put(h.key, h.ttl, now)
            entry[0] += h.amount
            out.append((entry[0], True))
        for key, ttl in set_marks:
            mark = entries.get(key)
            # Renewing a mark that still has (almost) its whole life left changes nothing but the cost.
            if mark is None or mark[2] != ttl or mark[1] < now + ttl - MARK_RENEW_SLACK:
                self._put(key, ttl, now)[0] = 1
        return out, checked

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            del self._groups[entry[2]][key]

    async def peek(self, counters: Sequence[str], marks: Sequence[str] = ()) -> tuple[list[int], list[bool]]:
        now = self.clock()
        entries = self._entries
        values = []
        for key in counters:
            e = entries.get(key)
            values.append(e[0] if e is not None and e[1] > now else 0)
        live = []
        for key in marks:
            e = entries.get(key)
            live.append(e is not None and e[1] > now)
        return values, live

    async def mark(self, key: str, ttl: float) -> None:
        self._put(key, ttl, self.clock())[0] = 1

    def _purge(self, now: float) -> None:
        entries = self._entries
        for group in self._groups.values():
            while group:
                key = next(iter(group))
                if group[key][1] > now:
                    break
                del group[key]
                del entries[key]

    # -- bans -------------------------------------------------------------------------------------------
    async def ban(self, ban: Ban) -> None:
        self.ban_now(ban)

    def ban_now(self, ban: Ban) -> None:
        self._bans[ban.key] = ban
        self._persist(ban.key, ban)

    async def unban(self, key: str) -> Ban | None:
        ban = self._bans.pop(key, None)
        if ban is not None or self._file is not None:
            self._persist(key, None)
        return ban if ban is not None and ban.until > self.clock() else None

    async def bans(self) -> list[Ban]:
        now = self.clock()
        return [b for b in self._bans.values() if b.until > now]

    def banned(self, key: str, now: float) -> Ban | None:
        ban = self._bans.get(key)
        if ban is None:
            return None
        if ban.until <= now:
            del self._bans[key]
            return None
        return ban

    def _persist(self, key: str, ban: Ban | None) -> None:
        if self._file is None:
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="smtpgate-bans")
        self._pending[key] = ban
        self._writer.submit(self._write, key, ban)

    def _write(self, key: str, ban: Ban | None) -> None:
        def change(bans: dict[str, Ban]) -> None:
            if ban is None:
                bans.pop(key, None)
            else:
                bans[key] = ban
        try:
            self._file.update(change)
        except OSError as exc:
            log.error("cannot write %s: %s (the ban holds in memory until restart)", self._file.path,
                      exc.strerror or exc)
        finally:
            if self._pending.get(key, False) is ban:
                self._pending.pop(key, None)

    # -- life cycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._file is not None:
            self._load_file()

    def _load_file(self) -> Changes:
        assert self._file is not None
        self._file_sig = self._file.signature()
        try:
            loaded = self._file.load(self.clock())
        except (OSError, ValueError) as exc:
            log.error("cannot read %s: %s (bans kept as they were)", self._file.path, exc)
            return Changes()
        for key, ban in list(self._pending.items()):      # our own changes still on their way to the file
            if ban is None:
                loaded.pop(key, None)
            else:
                loaded[key] = ban
        now = self.clock()
        changes = Changes(added=[b for k, b in loaded.items() if k not in self._bans],
                          removed=[b for k, b in self._bans.items() if k not in loaded and b.until > now])
        self._bans = loaded
        return changes

    async def refresh(self) -> Changes:
        self._purge(self.clock())
        if self._file is not None and self._file.signature() != self._file_sig:
            return self._load_file()
        return Changes()

    def flush(self) -> None:
        """Wait for queued ban writes (stop, tests)."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result(10)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
