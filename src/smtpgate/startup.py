"""Checks of the machine a configuration is about to run on, before anything starts.

The configuration loader (``config/load.py``) checks what a file says; this module checks what the
machine allows: that the spool directory and the user store can be written (``check-config`` and
``serve``), and that every listener address can be bound (``serve`` only: a running server is allowed to
hold its own ports while its next configuration is checked). Each failure is one line naming the key and
the path or address, so an operator never has to guess which of several listeners or paths is meant.
"""
from __future__ import annotations

import errno
import os
import socket
from typing import Iterator

from .config.errors import ConfigError
from .config.model import Settings


class StartupError(Exception):
    """A failure to start that is not a configuration error; ``str()`` is the one line to print."""


def check_paths(settings: Settings) -> None:
    """Raise :class:`ConfigError` unless every directory and file smtpgate writes is writable or creatable."""
    for key, path in _written_paths(settings):
        if key == "queue.path":
            _writable_dir(key, path)
        else:
            _writable_file(key, path)


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _creatable(key: str, path: str, what: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a directory we may write in."""
    ancestor = _nearest_existing(os.path.dirname(path))
    if not os.path.isdir(ancestor):
        raise ConfigError(key, f"cannot create {what} {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot create {what} {path}: {ancestor} is not writable")


def _writable_dir(key: str, path: str) -> None:
    path = os.path.abspath(path)
    if not os.path.exists(path):
        _creatable(key, path, "directory")
        return
    if not os.path.isdir(path):
        raise ConfigError(key, f"{path} is not a directory")
    for sub in (path, os.path.join(path, "tmp"), os.path.join(path, "new")):
        if os.path.isdir(sub) and not os.access(sub, os.W_OK | os.X_OK):
            raise ConfigError(key, f"directory {sub} is not writable")


def _writable_file(key: str, path: str) -> None:
    path = os.path.abspath(path)
    if not os.path.exists(path):
        _creatable(key, path, "file")
        return
    if os.path.isdir(path):
        raise ConfigError(key, f"{path} is a directory")
    # SQLite in WAL mode also writes <file>-wal and <file>-shm next to it.
    for target, what in ((path, "file"), (os.path.dirname(path), "directory")):
        if not os.access(target, os.W_OK):
            raise ConfigError(key, f"{what} {target} is not writable")


def _binds(settings: Settings) -> Iterator[tuple[str, str, int]]:
    for ident, listener in settings.listeners.items():
        for host, port in listener.binds:
            yield ident, host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_binds(settings: Settings) -> None:
    """Raise :class:`StartupError` for the first listener address that cannot be bound now.

    Bound the way the server binds (SO_REUSEADDR, IPv6 sockets v6-only) and released at once, so a port
    in use or an address not on this machine is reported by listener before any listener starts."""
    for ident, host, port in _binds(settings):
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
        except OSError as exc:
            raise StartupError(bind_error(ident, host, port, exc)) from None


def bind_error(ident: str, host: str, port: int, exc: OSError) -> str:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = ""
    if exc.errno == errno.EACCES and port < 1024:
        hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = " (no interface of this machine has that address)"
    return (f"server.listener.{ident}.bind: cannot listen on {format_address(host, port)}: "
            f"{reason}{hint}")


def describe_os_error(settings: Settings, exc: OSError) -> str:
    """One line for an OSError that escaped the checks above (a race, or something they do not cover)."""
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
    text = str(exc)
    for ident, host, port in _binds(settings):
        if f"('{host}', {port}" in text:  # asyncio's and uvloop's bind errors quote the address tuple
            return bind_error(ident, host, port, exc)
    if exc.filename:
        name = os.path.abspath(os.fsdecode(exc.filename))
        for key, path in _written_paths(settings):
            path = os.path.abspath(path)
            if name == path or name.startswith(path + os.sep) or path.startswith(name + os.sep):
                where = "" if name == path else f" ({name})"
                return f"{key}: cannot create or write {path}: {reason}{where}"
        return f"{name}: {reason}"
    return text if text else reason


def store_url(directory) -> str | None:  # noqa: ANN001
    """The ``store`` address of an internal ``[directory.<id>]`` (None for other types)."""
    if directory.type != "internal":
        return None
    options = directory.options
    store = options.get("store") if isinstance(options, dict) else getattr(options, "store", None)
    return None if store is None else str(store)


def _written_paths(settings: Settings) -> Iterator[tuple[str, str]]:
    yield "queue.path", settings.queue_path
    for ident, directory in settings.directories.items():
        store = store_url(directory) or ""
        if store.startswith("sqlite://"):
            path = store[len("sqlite://"):].split("?", 1)[0]
            if path and path != ":memory:":
                yield f"directory.{ident}.store", path
