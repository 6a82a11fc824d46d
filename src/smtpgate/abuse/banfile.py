"""The in-memory store's persisted bans: one small JSON file next to ``queue.path`` (``bans.json``).

It is also how ``smtpgate ban add|del`` reaches a running server that keeps its state in memory: the
CLI and the server both change the file the same way -- take an exclusive ``flock`` on ``bans.json.lock``,
read, apply *one* change, write a temporary file, fsync, rename -- so neither overwrites the other's
change; the server notices the new file (its size/mtime/inode) within a second and reloads it.

Format (documented in the README)::

    {"version": 1, "bans": {"192.0.2.7": {"until": 1767225600.0, "reason": "auth",
                                          "at": 1767139200.0, "counts": {"auth": 100}}}}
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from typing import Callable, Iterator

from .store import Ban


class BanFile:
    def __init__(self, path: str):
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)        # closing releases the lock

    def signature(self) -> tuple[int, int, int] | None:
        """What changes when the file is replaced (checked every second by the server)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self, now: float | None = None) -> dict[str, Ban]:
        """Bans in force; a missing or unreadable file is no bans (logged by the caller)."""
        now = time.time() if now is None else now
        try:
            with open(self.path, encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            return {}
        out = {}
        for key, item in dict(raw.get("bans", {})).items():
            ban = Ban.from_json(key, item)
            if ban.until > now:
                out[key] = ban
        return out

    def update(self, change: Callable[[dict[str, Ban]], object]) -> object:
        """Apply ``change`` to the file's bans under the lock; returns what ``change`` returned."""
        with self._locked():
            try:
                bans = self.load()
            except (OSError, ValueError):
                bans = {}       # a corrupt file is replaced by a valid one rather than blocking every ban
            result = change(bans)
            self._write(bans)
            return result

    def _write(self, bans: dict[str, Ban]) -> None:
        directory = os.path.dirname(self.path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".bans.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": 1, "bans": {k: b.to_json() for k, b in sorted(bans.items())}}, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
