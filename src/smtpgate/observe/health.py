"""Readiness: can every configured lookup be reached, and can the spool be written?

"Reachable" is judged from the configuration, the way an operator would check it by hand: a TCP
connection to a remote, PostgreSQL, LDAP or OAuth server (no login: a probe must not count as a failed
login anywhere, nor hold a pool connection), the file of an SQLite store, and a file written and removed
in the spool's ``tmp/``. A lookup object of an embedder may answer for itself with ``async ready()``
(True, or a string saying what is wrong). Every probe is bounded by a timeout and they run concurrently,
so ``/readyz`` answers within about :data:`PROBE_TIMEOUT` whatever is down.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any
from urllib.parse import urlsplit

PROBE_TIMEOUT = 2.0


async def _tcp(host: str, port: int) -> str | None:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"{host}:{port}: timeout"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or type(exc).__name__}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


def _url_target(url: str, default_ports: dict[str, int]) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or default_ports.get(parts.scheme.lower(), 0)


def _sqlite(url: str) -> str | None:
    path, _, query = url[len("sqlite://"):].partition("?")
    if not path or path == ":memory:":
        return None
    if os.path.exists(path):
        return None if os.access(path, os.R_OK) else f"{path}: not readable"
    if "mode=rwc" in query and os.path.isdir(os.path.dirname(path) or "."):
        return None                   # created on first use
    return f"{path}: no such file"


async def _store_url(url: str) -> str | None:
    if url.lower().startswith("sqlite://"):
        return await asyncio.get_running_loop().run_in_executor(None, _sqlite, url)
    return await _tcp(*_url_target(url, {"postgres": 5432, "postgresql": 5432}))


def _spool_writable(path: str) -> str | None:
    tmp = os.path.join(path, "tmp")
    try:
        fd, name = tempfile.mkstemp(prefix=".readyz-", dir=tmp)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"{tmp}: {exc.strerror or type(exc).__name__}"
    return None


def _probe_for(name: str, lookup: Any, settings: Any) -> Any:
    """A coroutine answering None (ready) or a reason, for lookup ``name``; None when nothing to probe."""
    ready = getattr(lookup, "ready", None) or getattr(getattr(lookup, "inner", None), "ready", None)
    if ready is not None:
        return _custom(ready)
    kind, _, rest = name.partition("/")
    ident = rest.split("/", 1)[0]
    if kind == "db" and ident in settings.databases:
        return _store_url(settings.databases[ident].address)
    if kind == "remote" and ident in settings.remotes:
        r = settings.remotes[ident]
        return _tcp(r.address, r.port)
    d = settings.directories.get(ident)
    if d is None or kind == "list":
        return None
    o = d.options                     # config/directory.py: one typed settings class per type
    if d.type == "internal":
        return _store_url(o.store)
    if d.type == "ldap":
        return _tcp(o.host, o.port)
    if d.type == "oauth":
        return _tcp(*_url_target(o.jwks_url or o.introspection_url or "", {"http": 80, "https": 443}))
    return None


async def _custom(ready: Any) -> str | None:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            answer = await ready()
    except TimeoutError:
        return "timeout"
    except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
        return type(exc).__name__
    return None if answer is True or answer is None else str(answer or "not ready")


async def check(server: Any) -> tuple[bool, dict[str, str]]:
    """``(ready, {check name: "ok" | reason})`` for the server's lookups and spool."""
    settings = server.settings
    names: list[str] = []
    probes: list[Any] = []
    seen: set[int] = set()
    for name, lookup in sorted(server.lookups.items()):
        if id(lookup) in seen:        # aliases (users/x and directory/x) share one object: probe once
            continue
        seen.add(id(lookup))
        coro = _probe_for(name, lookup, settings)
        results_name = f"lookup {name}"
        if coro is None:
            names.append(results_name)
            probes.append(_ok())
        else:
            names.append(results_name)
            probes.append(coro)
    from ..delivery.spool import Spool
    if isinstance(server.delivery, Spool):
        names.append("spool")
        probes.append(asyncio.get_running_loop().run_in_executor(None, _spool_writable, server.delivery.path))
    answers = await asyncio.gather(*probes, return_exceptions=True)
    checks: dict[str, str] = {}
    for name, answer in zip(names, answers):
        if isinstance(answer, BaseException):
            answer = type(answer).__name__
        checks[name] = "ok" if answer is None else str(answer)
    return all(v == "ok" for v in checks.values()), checks


async def _ok() -> None:
    return None
