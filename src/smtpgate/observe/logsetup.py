"""``server.log.*``: text or JSON lines, to stderr (systemd's journal) or to syslog.

``smtpgate serve`` first logs to stderr as text (so a configuration error is visible), then, once the
configuration is loaded, :func:`apply` switches to what it asks for. Either way the event loop only
appends records to a queue: stderr output keeps ``logsink.BatchingHandler``'s writer thread, syslog
output gets a ``QueueListener`` thread in front of the standard ``SysLogHandler`` (one datagram per
line, the record's level as syslog severity, ``smtpgate[pid]:`` as tag). Formatting happens in those
threads.

JSON lines carry ``time`` (UTC, ISO 8601), ``level``, ``logger`` and either ``event`` plus the event's
fields (connect, auth, reject, message, disconnect, smtp: see ``observe.events``) or ``message``.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import socket
import time
from typing import Any

from .events import Event


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = _head(record.created, record.levelname, record.name)
        msg = record.msg
        if isinstance(msg, Event) and not record.args:
            _event_fields(out, msg)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))

    def format_line(self, created: float, levelno: int, name: str, msg: object) -> str:
        """A line submitted without a record (logsink.BatchingHandler.submit)."""
        out = _head(created, logging.getLevelName(levelno), name)
        if isinstance(msg, Event):
            _event_fields(out, msg)
        else:
            out["message"] = str(msg)
        return json.dumps(out, separators=(",", ":"))


def _head(created: float, level: str, name: str) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return {"time": f"{stamp}.{int((created - int(created)) * 1000):03d}Z", "level": level, "logger": name}


def _event_fields(out: dict[str, Any], msg: Event) -> None:
    out["event"] = msg.name
    for key, value in msg.fields:
        out[key] = round(value, 6) if isinstance(value, float) else value if value is None or \
            isinstance(value, (int, bool)) else str(value)


class _Enqueue(logging.handlers.QueueHandler):
    """The loop's side of syslog output; ``pause``/``resume`` as ``logsink.BatchingHandler`` has them
    (``smtpgate serve`` holds startup progress back until the server is up)."""

    def __init__(self, q: queue.SimpleQueue) -> None:
        super().__init__(q)
        self._held: list[logging.LogRecord] | None = None

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record            # same process: the writer thread formats it, not the event loop

    def enqueue(self, record: logging.LogRecord) -> None:
        held = self._held
        if held is None:
            self.queue.put_nowait(record)
        elif len(held) < 100_000:
            held.append(record)

    def pause(self) -> None:
        self._held = []

    def resume(self, drop_below: int | None = None) -> None:
        held, self._held = self._held or [], None
        for record in held:
            if drop_below is None or record.levelno >= drop_below:
                self.queue.put_nowait(record)


_listener: logging.handlers.QueueListener | None = None


class _SysLog(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
        # The syslog daemon restarting must not print tracebacks (to where? stderr is not read); the
        # handler reconnects on the next record.
        pass


def syslog_handler(socket_path: str, facility: str, fmt: logging.Formatter) -> logging.Handler:
    """Raises OSError when the syslog socket cannot be reached (checked now: SysLogHandler itself
    would only complain, record by record, later)."""
    global _listener
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(socket_path)
    except OSError:
        probe.close()
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)   # rsyslog may offer a stream socket
        try:
            probe.connect(socket_path)
        finally:
            probe.close()
    else:
        probe.close()
    target = _SysLog(address=socket_path, facility=logging.handlers.SysLogHandler.facility_names[facility])
    target.ident = f"smtpgate[{os.getpid()}]: "
    target.setFormatter(fmt)
    q: queue.SimpleQueue = queue.SimpleQueue()
    if _listener is not None:
        _listener.stop()
    _listener = logging.handlers.QueueListener(q, target, respect_handler_level=False)
    _listener.start()
    return _Enqueue(q)


def apply(log: Any, cli_level: str | None, handler: Any) -> Any:
    """Configure the root logger from ``settings.observe.log``; ``cli_level`` (--log-level) wins.
    ``handler`` is the stderr handler in place; returns the one in use afterwards (pause/resume/close)."""
    root = logging.getLogger()
    root.setLevel((cli_level or log.level or "info").upper())
    if log.output == "syslog":
        fmt = JsonFormatter() if log.format == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s")
        syslog = syslog_handler(log.syslog_socket, log.syslog_facility, fmt)
        root.handlers[:] = [syslog]
        handler.close()
        return syslog
    if log.format == "json":
        handler.setFormatter(JsonFormatter())
    return handler


def stop() -> None:
    """Flush the syslog writer thread (at exit)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
