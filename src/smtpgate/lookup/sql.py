"""``db/<id>/<query>``: SQL stores -- SQLite (aiosqlite) and PostgreSQL (asyncpg).

``[database."<id>"]`` gives an ``address``:

* ``sqlite://<path>[?mode=ro|rw|rwc]`` -- ``sqlite:///abs/path`` or ``sqlite://relative/path`` (relative to
  the working directory). Default mode ``rw``: a mistyped path must fail loudly rather than silently create
  an empty database that rejects everyone. ``rwc`` creates it.
* ``postgres://user[:password]@host:port/db`` (or ``postgresql://``), passed to asyncpg as a DSN.

Each named query (``lookup.<name>``) takes exactly one ``?`` parameter (rewritten to ``$1`` for
PostgreSQL). Result: the first column is the stored secret (any §5.1 format); optional named columns
``addresses`` (comma/space separated text, or a PostgreSQL array; summed over all returned rows),
``disabled`` (truthy -> the account is refused) and ``may_act_for`` (same format as ``addresses``). Used as a
membership lookup (``contains``), a query answers "a row exists". Usernames are passed as typed; write
``lower(?)`` or ``COLLATE NOCASE`` in the query if the table should match case-insensitively.

Every call -- waiting for a connection included -- is bounded by ``timeout`` and by ``concurrency``
parallel connections. Any database error or timeout means "unavailable" (454), never "invalid".
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

import aiosqlite
import asyncpg

from ..config.model import DatabaseSettings
from . import secrets
from .base import (INVALID, AuthResult, Capability, Credentials, Lookup, LookupUnavailable, Outcome,
                   SecretRecord, unavailable)

log = logging.getLogger("smtpgate.lookup.sql")


class SqlError(Exception):
    """The database could not answer. The message is safe to log (no parameters, no DSN)."""


@dataclass(slots=True)
class Rows:
    columns: tuple[str, ...] = ()
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def column(self, *names: str) -> int | None:
        lowered = [c.lower() for c in self.columns]
        for n in names:
            if n in lowered:
                return lowered.index(n)
        return None


# --------------------------------------------------------------------------------------------------------
# placeholders

_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?", re.S)


def count_placeholders(sql: str) -> int:
    """``?`` parameters outside string literals, quoted identifiers and comments."""
    return sum(1 for m in _TOKENS.finditer(sql) if m.group() == "?")


def to_numbered(sql: str) -> str:
    """``?`` -> ``$1``, ``$2`` ... for asyncpg."""
    n = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal n
        if m.group() != "?":
            return m.group()
        n += 1
        return f"${n}"
    return _TOKENS.sub(sub, sql)


# --------------------------------------------------------------------------------------------------------
# value helpers

_TRUE = {"1", "true", "t", "yes", "y", "on"}


def truthy(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def split_list(value: Any) -> set[str]:
    """Addresses from text (comma/space separated) or an array, lower-cased."""
    if value is None:
        return set()
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        items: Iterable[Any] = re.split(r"[\s,;]+", value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = value
    else:
        items = [value]
    return {str(i).strip().lower() for i in items if i is not None and str(i).strip()}


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value)


_DRIVER_ERRORS = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError,
                  asyncpg.exceptions.InternalClientError, OSError, TimeoutError, EOFError)


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------------
# connections

class Conn:
    """One connection, dialect-neutral: ``?`` placeholders everywhere."""

    def __init__(self, raw: Any, dialect: str):
        self.raw = raw
        self.dialect = dialect

    async def fetch(self, sql: str, *params: Any) -> Rows:
        if self.dialect == "postgres":
            records = await self.raw.fetch(to_numbered(sql), *params)
            cols = tuple(records[0].keys()) if records else ()
            return Rows(cols, [tuple(r.values()) for r in records])
        async with self.raw.execute(sql, params) as cur:
            data = await cur.fetchall()
            cols = tuple(d[0] for d in cur.description or ())
        return Rows(cols, [tuple(r) for r in data])

    async def execute(self, sql: str, *params: Any) -> int:
        """Run a statement; returns the number of rows it changed."""
        if self.dialect == "postgres":
            status = await self.raw.execute(to_numbered(sql), *params)
            tail = status.rsplit(" ", 1)[-1]
            return int(tail) if tail.isascii() and tail.isdigit() else 0
        async with self.raw.execute(sql, params) as cur:
            return cur.rowcount


def parse_sqlite_url(url: str) -> tuple[str, str]:
    """``sqlite://path?mode=..`` -> (path, mode)."""
    rest = url[len("sqlite://"):]
    path, _, query = rest.partition("?")
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    unknown = set(params) - {"mode"}
    if unknown:
        raise ValueError(f"unsupported sqlite parameter {sorted(unknown)[0]!r}")
    mode = params.get("mode", ["rw"])[-1]
    if mode not in ("ro", "rw", "rwc"):
        raise ValueError(f"sqlite mode must be ro, rw or rwc, not {mode!r}")
    if not path:
        raise ValueError("sqlite address needs a path")
    return urllib.parse.unquote(path), mode


class SqlDatabase:
    """A connection pool plus the named queries of one ``[database."<id>"]``."""

    def __init__(self, settings: DatabaseSettings):
        self.id = settings.id
        self.settings = settings
        self.timeout = float(settings.timeout)
        self.concurrency = max(1, int(settings.concurrency))
        address = settings.address
        scheme = address.split("://", 1)[0].lower() if "://" in address else ""
        if scheme == "sqlite":
            self.dialect = "sqlite"
            self.path, self.mode = parse_sqlite_url(address)
        elif scheme in ("postgres", "postgresql"):
            self.dialect = "postgres"
            self.path, self.mode = "", ""
        else:
            raise ValueError("address must start with sqlite:// or postgres://")
        self._address = address
        self._sem = asyncio.Semaphore(self.concurrency)
        self._idle: list[aiosqlite.Connection] = []
        self._pg: asyncpg.Pool | None = None
        self._pg_lock = asyncio.Lock()
        self._lookups: dict[str, SqlLookup] = {}
        self.decoy: str | None = None     # made once at start from settings.decoy_scheme (see SqlLookup)
        self._decoy_lock = asyncio.Lock()
        self._refs = 0
        self._closed = False
        self._background: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:  # the address may hold a password
        return f"SqlDatabase(id={self.id!r}, dialect={self.dialect!r})"

    @property
    def idle_count(self) -> int:
        """SQLite connections open and waiting for reuse (at most ``concurrency``); 0 for PostgreSQL,
        whose idle connections asyncpg's pool keeps."""
        return len(self._idle)

    def lookup(self, query_name: str) -> "SqlLookup":
        if query_name not in self._lookups:
            try:
                sql = self.settings.lookups[query_name]
            except KeyError:
                raise ValueError(f"database {self.id!r} has no lookup {query_name!r}") from None
            self._lookups[query_name] = SqlLookup(self, query_name, sql)
        return self._lookups[query_name]

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Nothing to connect yet: connections open on demand, so a database that is down at startup
        makes logins answer 454 instead of stopping the server."""
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()
        if self._pg is not None:
            pool, self._pg = self._pg, None
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except Exception:  # noqa: BLE001 - a stuck server must not stall shutdown: drop the sockets
                pool.terminate()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _ref(self) -> None:
        self._refs += 1
        await self.start()

    async def _unref(self) -> None:
        self._refs -= 1
        if self._refs <= 0:
            self._refs = 0
            await self.close()

    # -- connections -------------------------------------------------------------------------------
    def _discard(self, conn: aiosqlite.Connection) -> None:
        task = asyncio.ensure_future(conn.close())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _open_sqlite(self) -> aiosqlite.Connection:
        uri = f"file:{urllib.parse.quote(self.path, safe='/')}?mode={self.mode}"
        conn = aiosqlite.connect(uri, uri=True, isolation_level=None, timeout=self.timeout)

        async def _open() -> None:
            await conn
        opening = asyncio.ensure_future(_open())
        try:
            await asyncio.shield(opening)
        except asyncio.CancelledError:
            # the worker thread is already running: let the open finish and close it, or it leaks
            opening.add_done_callback(lambda f: f.cancelled() or f.exception() or self._discard(conn))
            raise
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        except BaseException:
            self._discard(conn)
            raise
        return conn

    async def _pg_pool(self) -> asyncpg.Pool:
        if self._pg is None:
            async with self._pg_lock:
                if self._pg is None:
                    # min_size=0: creating the pool performs no I/O; connections open on demand
                    self._pg = await asyncpg.create_pool(
                        self._address, min_size=0, max_size=self.concurrency, timeout=self.timeout,
                        command_timeout=self.timeout, max_inactive_connection_lifetime=60.0)
        return self._pg

    @contextlib.asynccontextmanager
    async def _raw(self) -> AsyncIterator[Conn]:
        if self._closed:
            raise SqlError("database is closed")
        if self.dialect == "postgres":
            pool = await self._pg_pool()
            async with pool.acquire() as raw:
                try:
                    yield Conn(raw, "postgres")
                except (asyncio.CancelledError, TimeoutError, OSError, asyncpg.InterfaceError):
                    # A connection cancelled mid-query would be reset politely on release, costing
                    # another command_timeout against a silent server: drop it instead.
                    raw.terminate()
                    raise
            return
        async with self._sem:
            conn = self._idle.pop() if self._idle else await self._open_sqlite()
            try:
                yield Conn(conn, "sqlite")
            except BaseException:
                # state unknown (cancelled mid-query, open transaction): never reuse it
                self._discard(conn)
                raise
            if self._closed:
                self._discard(conn)
            else:
                self._idle.append(conn)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A connection for several statements, the whole use bounded by ``timeout``."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self._raw() as conn:
                    yield conn
        except _DRIVER_ERRORS as exc:  # the database can't answer; the caller's own exceptions pass
            raise SqlError(_reason(exc, self.timeout)) from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self.connection() as conn:
            if conn.dialect == "postgres":
                async with conn.raw.transaction():
                    yield conn
                return
            await conn.raw.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.raw.execute("ROLLBACK")
                raise
            await conn.raw.execute("COMMIT")

    async def fetch(self, sql: str, *params: Any) -> Rows:
        async with self.connection() as conn:
            return await conn.fetch(sql, *params)

    async def execute(self, sql: str, *params: Any) -> int:
        async with self.connection() as conn:
            return await conn.execute(sql, *params)


# --------------------------------------------------------------------------------------------------------
# the lookup

class SqlLookup(Lookup):
    capabilities = Capability.PASSWORD | Capability.SCRAM | Capability.CRAM | Capability.MEMBERSHIP

    _LOG_EVERY = 10.0  # seconds: an outage must not write one warning per login attempt

    def __init__(self, db: SqlDatabase, query_name: str, sql: str):
        n = count_placeholders(sql)
        if n != 1:
            raise ValueError(f"query {query_name!r} must have exactly one '?' parameter, found {n}")
        self.db = db
        self.query_name = query_name
        self.sql = sql
        self.name = f"db/{db.id}/{query_name}"
        self._decoy: str | None = None
        self._last_log = 0.0
        self._suppressed = 0

    async def start(self) -> None:
        await self.db._ref()
        # Unknown users are checked against a decoy fixed now, of the scheme the table holds (a query
        # takes one user, so the table cannot be surveyed: database.<id>.decoy-scheme names it).
        async with self.db._decoy_lock:
            if self.db.decoy is None:
                spec = self.db.settings.decoy_scheme
                self.db.decoy = await secrets.run_sync(secrets.make_decoy, spec)
                log.info("%s: unknown users are checked against a %s decoy (database.%s.decoy-scheme)",
                         self.name, spec, self.db.id)
        self._decoy = self.db.decoy

    async def close(self) -> None:
        await self.db._unref()

    def _unavailable(self, exc: SqlError) -> str:
        reason = str(exc)
        now = time.monotonic()
        if now - self._last_log >= self._LOG_EVERY:
            more = f" ({self._suppressed} similar suppressed)" if self._suppressed else ""
            log.warning("%s unavailable: %s%s", self.name, reason, more)
            self._last_log, self._suppressed = now, 0
        else:
            self._suppressed += 1
        return reason

    async def _query(self, key: str) -> Rows:
        return await self.db.fetch(self.sql, key)

    def _record(self, username: str, rows: Rows) -> tuple[str | None, bool, frozenset[str], frozenset[str]]:
        stored = _as_text(rows.rows[0][0]) if rows.columns else None
        i_dis = rows.column("disabled")
        i_addr = rows.column("addresses")
        i_act = rows.column("may_act_for", "may-act-for")
        disabled = i_dis is not None and any(truthy(r[i_dis]) for r in rows.rows)
        addresses: set[str] = {username.lower()} if "@" in username else set()
        may_act: set[str] = set()
        for r in rows.rows:
            if i_addr is not None:
                addresses |= split_list(r[i_addr])
            if i_act is not None:
                may_act |= split_list(r[i_act])
        return stored, disabled, frozenset(addresses), frozenset(may_act)

    async def authenticate(self, creds: Credentials) -> AuthResult:
        if creds.kind != "password":
            return INVALID
        try:
            rows = await self._query(creds.username)
        except SqlError as exc:
            return unavailable(self._unavailable(exc))
        stored, disabled, addresses, may_act = self._record(creds.username, rows) if rows else (None, False, frozenset(), frozenset())
        if stored is None:
            await secrets.verify(None, creds.secret, decoy=self._decoy)
            return INVALID
        ok = await secrets.verify(stored, creds.secret)
        if not ok or disabled:
            return INVALID
        return AuthResult(Outcome.VALID, account=creds.username, addresses=addresses, may_act_for=may_act)

    async def get_secret(self, username: str) -> SecretRecord | None:
        try:
            rows = await self._query(username)
        except SqlError as exc:
            raise LookupUnavailable(f"{self.name}: {self._unavailable(exc)}") from None
        if not rows:
            return None
        stored, disabled, addresses, may_act = self._record(username, rows)
        if stored is None or disabled:
            return None
        return SecretRecord(account=username, plaintext=secrets.plaintext_of(stored),
                            scram=secrets.scram_of(stored), addresses=addresses, may_act_for=may_act)

    async def contains(self, key: str) -> bool:
        try:
            return bool(await self._query(key))
        except SqlError as exc:
            raise LookupUnavailable(f"{self.name}: {self._unavailable(exc)}") from None


__all__ = ["SqlDatabase", "SqlLookup", "SqlError", "Rows", "Conn", "count_placeholders", "to_numbered",
           "parse_sqlite_url"]
