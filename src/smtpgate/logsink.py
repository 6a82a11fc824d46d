"""Where ``smtpgate serve`` sends its log lines: stderr, written in batches by a background thread.

One log line per AUTH attempt is part of the product (fail2ban reads it), so under load the logging
path matters. Writing each record to stderr from the event loop costs a syscall per line and can block
the loop outright when stderr is a slow pipe. Here the loop only appends the record to a list; a writer
thread wakes every ``interval`` seconds, formats what accumulated and writes it with one call. If the
writer falls ``max_pending`` records behind (stderr stuck), further records are counted and dropped, and
the count is reported once the writer catches up -- the server keeps serving either way. Every 0.1 s
rather than more often: each wake-up takes the GIL from the loop and touches objects the loop made on
the other core; at 20 ms the wake-ups cost ~10 % of a short session's CPU (bench, scenario (a)). Errors
wake the writer at once.

While the server starts, ``pause()`` keeps records back; ``resume()`` writes them once it is up, or,
after a failed start, ``resume(drop_below=logging.WARNING)`` throws away the progress lines so that the
reason it failed is the one line the operator reads. The writer is a daemon thread: it never keeps a
process alive that has nothing else to do.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO


class _Formatter(logging.Formatter):
    """The usual ``asctime`` format, with the seconds part rendered once per second, not per record."""

    def __init__(self, fmt: str):
        super().__init__(fmt)
        self._second = -1
        self._prefix = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return self._stamp(record.created)

    def _stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created))
        return f"{self._prefix},{int((created - second) * 1000):03d}"

    def format_line(self, created: float, levelno: int, name: str, msg: object) -> str:
        """What :meth:`format` makes of a record, for a line submitted without one."""
        return f"{self._stamp(created)} {logging.getLevelName(levelno)} {name}: {msg}"


class BatchingHandler(logging.Handler):
    def __init__(self, stream: TextIO | None = None, interval: float = 0.1, max_pending: int = 100_000):
        super().__init__()
        self.stream = stream or sys.stderr
        self.interval = interval
        self.max_pending = max_pending
        self.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._pending: list[logging.LogRecord] = []
        self._dropped = 0
        self._wake = threading.Event()
        self._stop = False
        self._held = False
        self._thread = threading.Thread(target=self._run, name="smtpgate-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        # list.append is atomic under the GIL: no lock, no wake-up per record on the hot path.
        if len(self._pending) >= self.max_pending:
            self._dropped += 1
            return
        self._pending.append(record)
        if record.levelno >= logging.ERROR:
            self._wake.set()

    def submit(self, name: str, levelno: int, msg: object) -> None:
        """A line without a ``LogRecord`` (observe.events' session lines, the hot path): the tuple is
        formatted by the writer thread like a record would be (``format_line`` of the formatter)."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            self._dropped += 1
            return
        pending.append((time.time(), levelno, name, msg))

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain()
        self._drain()

    def pause(self) -> None:
        """Keep records back (still bounded by ``max_pending``) until :meth:`resume`."""
        self._held = True

    def resume(self, drop_below: int | None = None) -> None:
        """Write what was held, without the records below level ``drop_below`` if it is given."""
        if drop_below is not None:
            self._pending = [r for r in self._pending if _level(r) >= drop_below]
        self._held = False
        self._wake.set()

    def _drain(self) -> None:
        if self._held and not self._stop:
            return
        if not self._pending and not self._dropped:
            return
        batch, self._pending = self._pending, []
        lines = []
        direct = getattr(self.formatter, "format_line", None)
        for record in batch:
            try:
                if type(record) is tuple:
                    lines.append(direct(*record) if direct is not None else f"{record[2]}: {record[3]}")
                else:
                    lines.append(self.format(record))
            except Exception:  # noqa: BLE001 - a broken record must not kill the writer
                lines.append(f"(unformattable log record from {_name(record)})")
        if self._dropped:
            lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING smtpgate.log: "
                         f"{self._dropped} log records dropped (stderr too slow)")
            self._dropped = 0
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        super().close()


def _level(item: logging.LogRecord | tuple) -> int:
    return item[1] if type(item) is tuple else item.levelno


def _name(item: logging.LogRecord | tuple) -> str:
    return item[2] if type(item) is tuple else item.name
