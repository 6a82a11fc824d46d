"""Helpers shared by every test: free ports, and the rule for missing services.

Locally a test whose real service (dovecot, slapd, swaks, PostgreSQL ...) is missing is skipped with a
clear reason; under ``CI=true`` the same situation is a failure, never a silent skip.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"required service missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def need_binary(*names: str) -> str:
    """Return the path of the first binary found, or skip/fail."""
    for name in names:
        for d in ("", "/usr/sbin/", "/usr/lib/dovecot/", "/usr/sbin/"):
            path = shutil.which(d + name) if d else shutil.which(name)
            if path:
                return path
    missing(f"binary not installed: {' or '.join(names)}")
    raise AssertionError("unreachable")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


EMBEDDED_DEFAULT_PORTS = (2525, 5870, 4650)     # the embedded default's fixed listeners


def on_embedded_default_ports(cmd: list[str]) -> list[str]:
    """``cmd`` wrapped to run in a private network namespace when the machine allows one: there the
    embedded default's fixed loopback ports are ours alone (another server started between a "free?"
    check and ours would answer instead). Without one, skipped unless the ports are free now."""
    try:
        netns = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        netns = False
    if netns:
        return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    for port in EMBEDDED_DEFAULT_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                pytest.skip("ports 2525/5870/4650 are busy and no private network namespace is available")
    return cmd
