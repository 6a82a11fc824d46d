"""sd_notify without libsystemd: the datagram systemd expects, on a path or an abstract socket."""
from __future__ import annotations

import os
import socket

from smtpgate import sdnotify


def test_ready_on_abstract_socket(monkeypatch) -> None:
    name = f"smtpgate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready("serving 2 listener(s)") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving 2 listener(s)"
        assert sdnotify.reloading() is True
        fields = sock.recv(4096).decode().split("\n")
        assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=") and int(fields[1][15:]) > 0


def test_without_systemd_nothing_happens(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))   # systemd went away: never raises
    assert sdnotify.stopping() is False
