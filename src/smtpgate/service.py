"""What ``smtpgate serve`` does around the server as a system service: the pid file (for ``smtpgate
reload``), the privilege drop after binding (``server.run-as``), SIGHUP for reload, readiness / reload /
stop notifications to systemd, and a last log line on stop. Kept out of ``cli.py`` and ``server/`` so
that an embedding application gets none of it unless it asks.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from . import privdrop, reload, sdnotify

log = logging.getLogger("smtpgate")


class Service:
    def __init__(self, server: Any, settings: Any, pid_file: str | None = None, data_dir: str | None = None):
        self.server = server
        self.settings = settings
        if pid_file is None and data_dir and os.path.isdir(data_dir):
            pid_file = os.path.join(data_dir, reload.PID_FILE)
        self.pid_file_path = pid_file
        self.pid_file: reload.PidFile | None = None
        self.started_at = time.monotonic()

    def started(self) -> None:
        """After every listener is bound. Raises privdrop.PrivDropError (the caller exits 1)."""
        self.pid_file = reload.PidFile(self.pid_file_path)
        privdrop.drop(self.settings.run_as, own=[self.settings.queue_path])
        if self.settings.source and os.path.isfile(self.settings.source):
            status = self.pid_file.path + reload.STATUS_SUFFIX if self.pid_file.path else None
            reload.install(self.server, os.path.abspath(self.settings.source), status)
        sdnotify.ready(f"serving {len(self.settings.listeners)} listener(s)")

    def stopping(self) -> None:
        sdnotify.stopping("finishing sessions")

    def stopped(self) -> None:
        if self.pid_file is not None:
            if self.pid_file.path:
                try:
                    os.unlink(self.pid_file.path + reload.STATUS_SUFFIX)
                except OSError:
                    pass
            self.pid_file.remove()
        log.info("smtpgate stopped (pid %d, up %s)", os.getpid(), _uptime(time.monotonic() - self.started_at))


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"
