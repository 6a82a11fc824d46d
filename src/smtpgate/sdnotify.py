"""sd_notify(3) without libsystemd: one datagram to the socket systemd names in ``$NOTIFY_SOCKET``.

With ``Type=notify`` systemd waits for ``READY=1`` before it calls the service started (so units ordered
after smtpgate see listening sockets), shows ``STATUS=`` in ``systemctl status``, and with
``RELOADING=1`` ... ``READY=1`` knows when a reload has finished (``systemctl reload`` returns then).
The protocol is a single ``AF_UNIX`` datagram of ``KEY=VALUE`` lines; a name starting with ``@`` is an
abstract socket. Twenty lines of ours are clearer than a dependency. Without ``$NOTIFY_SOCKET`` (not
started by systemd) every call does nothing.
"""
from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send ``fields`` ("READY=1", "STATUS=...") to systemd. True if sent; never raises."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        return True
    except OSError:
        return False


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    # MONOTONIC_USEC is required with RELOADING=1 for Type=notify-reload (systemd 253+); harmless before.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping(status: str = "") -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
