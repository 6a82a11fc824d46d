"""smtpgate's own user store (``[directory."<id>"] type = "internal"``, option ``store``).

``store`` is ``sqlite:///abs/path`` / ``sqlite://relative/path`` (created on first use, file mode 0600) or
``postgres://...``. Tables (prefixed, so the store can share a PostgreSQL database):

* ``smtpgate_users``: ``name_key`` (lower-cased login, primary key), ``name`` (as first written),
  ``password`` (argon2id), ``scram_sha256`` / ``scram_sha1`` (Dovecot ``{SCRAM-SHA-*}`` notation: SCRAM
  works without any plaintext on disk), ``disabled``;
* ``smtpgate_aliases``: ``address`` (lower-cased, primary key) -> ``user_key``;
* ``smtpgate_meta``: ``schema_version``.

Logins are case-insensitive. A user owns its own name when that is an address, plus its aliases; an
address belongs to at most one user (an alias may not be another user's name). One logs in with the
user name, never with an alias. No plaintext is stored, so CRAM-MD5 is not offered for this store.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterable

import asyncpg

from ..config.model import DatabaseSettings, DirectorySettings
from . import secrets
from .base import (INVALID, AuthResult, Capability, Credentials, Lookup, LookupUnavailable, Outcome,
                   SecretRecord, common_scram_shape, unavailable)
from .sql import Conn, SqlDatabase, SqlError, parse_sqlite_url

log = logging.getLogger("smtpgate.lookup.users")

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS smtpgate_meta (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS smtpgate_users (
         name_key TEXT PRIMARY KEY,
         name TEXT NOT NULL,
         password TEXT NOT NULL,
         scram_sha256 TEXT NOT NULL,
         scram_sha1 TEXT NOT NULL,
         disabled INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS smtpgate_aliases (
         address TEXT PRIMARY KEY,
         user_key TEXT NOT NULL REFERENCES smtpgate_users(name_key) ON DELETE CASCADE)""",
    "CREATE INDEX IF NOT EXISTS smtpgate_aliases_user ON smtpgate_aliases(user_key)",
)
_LOGIN_QUERY = """
    SELECT u.name, u.password, u.scram_sha256, u.scram_sha1, u.disabled, a.address
      FROM smtpgate_users u LEFT JOIN smtpgate_aliases a ON a.user_key = u.name_key
     WHERE u.name_key = ?"""


class UserStoreError(Exception):
    """An administrative operation failed; the message is one line for the operator, without secrets."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    disabled: bool
    addresses: tuple[str, ...]   # the user's own name when it is an address, then its aliases, sorted


@dataclass(frozen=True, slots=True)
class _Login:
    name: str
    password: str
    scram: dict[str, Any]
    disabled: bool
    addresses: frozenset[str]


def _key(name: str) -> str:
    return name.strip().lower()


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise UserStoreError("user name must not be empty")
    if len(name) > 255:
        raise UserStoreError("user name is longer than 255 characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in name):
        raise UserStoreError("user name must not contain spaces or control characters")
    return name


def _check_address(address: str) -> str:
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c.isspace() or ord(c) < 32 for c in address) or len(address) > 320:
        raise UserStoreError(f"not a mail address: {address!r}")
    return address


def _check_password(password: str) -> str:
    if not password:
        raise UserStoreError("password must not be empty")
    if "\x00" in password:
        raise UserStoreError("password must not contain NUL")
    return password


def _own_addresses(name: str) -> set[str]:
    return {name.lower()} if "@" in name else set()


class UserStore:
    """Administration of the store (used by ``smtpgate user ...``) and the queries the lookup needs."""

    def __init__(self, url: str, *, timeout: float = 5.0, concurrency: int = 4):
        if url.lower().startswith("sqlite://"):
            path, _mode = parse_sqlite_url(url)
            if "mode=" not in url:
                url += ("&" if "?" in url else "?") + "mode=rwc"
            self._sqlite_path: str | None = path
        else:
            self._sqlite_path = None
        self.db = SqlDatabase(DatabaseSettings(id="userstore", address=url, concurrency=concurrency,
                                               timeout=timeout))
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()

    async def __aenter__(self) -> "UserStore":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self.db.start()

    async def close(self) -> None:
        await self.db.close()

    # -- schema ------------------------------------------------------------------------------------
    def _prepare_file(self) -> None:
        path = self._sqlite_path
        if path is None or os.path.exists(path):
            return
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        # create it private before SQLite does with the umask's 0644: it holds password hashes
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return
            try:
                await asyncio.to_thread(self._prepare_file)
            except OSError as exc:
                raise SqlError(f"cannot create {self._sqlite_path}: {exc.strerror}") from None
            if self.db.dialect == "sqlite":
                # WAL: the server keeps reading while `smtpgate user` writes
                await self.db.execute("PRAGMA journal_mode=WAL")
            async with self.db.transaction() as conn:
                for stmt in _SCHEMA:
                    await conn.execute(stmt)
                rows = await conn.fetch("SELECT value FROM smtpgate_meta WHERE key = ?", "schema_version")
                if not rows:
                    await conn.execute("INSERT INTO smtpgate_meta (key, value) VALUES (?, ?)",
                                       "schema_version", str(SCHEMA_VERSION))
                elif int(rows.rows[0][0]) > SCHEMA_VERSION:
                    raise SqlError(f"user store schema version {rows.rows[0][0]} is newer than this smtpgate")
            self._schema_ready = True

    @contextlib.asynccontextmanager
    async def _tx(self):  # type: ignore[no-untyped-def]
        """A write transaction; database failures become one-line UserStoreErrors."""
        try:
            await self.ensure_schema()
            async with self.db.transaction() as conn:
                yield conn
        except SqlError as exc:
            cause = exc.__cause__
            if isinstance(cause, (sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
                raise UserStoreError("conflicting change made at the same time, try again") from None
            raise UserStoreError(f"user store unavailable: {exc}") from None

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    async def _user_row(conn: Conn, name: str) -> tuple[Any, ...] | None:
        rows = await conn.fetch("SELECT name, disabled FROM smtpgate_users WHERE name_key = ?", _key(name))
        return rows.rows[0] if rows else None

    @staticmethod
    async def _claim_addresses(conn: Conn, user_key: str, addresses: Iterable[str]) -> None:
        for address in addresses:
            owner = await conn.fetch("SELECT user_key FROM smtpgate_aliases WHERE address = ?", address)
            if owner:
                if owner.rows[0][0] == user_key:
                    continue
                raise UserStoreError(f"address {address} already belongs to {owner.rows[0][0]}")
            other = await conn.fetch("SELECT name FROM smtpgate_users WHERE name_key = ?", address)
            if other:
                if address == user_key:
                    continue  # a user's own name needs no alias
                raise UserStoreError(f"address {address} is the name of another user")
            await conn.execute("INSERT INTO smtpgate_aliases (address, user_key) VALUES (?, ?)", address, user_key)

    @staticmethod
    async def _hashes(password: str) -> tuple[str, str, str]:
        def compute() -> tuple[str, str, str]:
            return (secrets.hash_password(password),
                    secrets.format_scram(secrets.scram_keys(password, "SHA-256"), "SHA-256"),
                    secrets.format_scram(secrets.scram_keys(password, "SHA-1"), "SHA-1"))
        try:
            return await secrets.run_sync(compute)
        except ValueError as exc:  # SASLprep refused it: SCRAM could never work for this password
            raise UserStoreError(str(exc)) from None

    # -- administration ----------------------------------------------------------------------------
    async def add_user(self, name: str, password: str, addresses: Iterable[str] = ()) -> None:
        name = _check_name(name)
        wanted = [_check_address(a) for a in addresses]
        hashed, s256, s1 = await self._hashes(_check_password(password))
        key = _key(name)
        async with self._tx() as conn:
            if await self._user_row(conn, name) is not None:
                raise UserStoreError(f"user {name} already exists")
            alias = await conn.fetch("SELECT user_key FROM smtpgate_aliases WHERE address = ?", key)
            if alias:
                raise UserStoreError(f"{name} is already an alias of {alias.rows[0][0]}")
            await conn.execute(
                "INSERT INTO smtpgate_users (name_key, name, password, scram_sha256, scram_sha1, disabled)"
                " VALUES (?, ?, ?, ?, ?, 0)", key, name, hashed, s256, s1)
            await self._claim_addresses(conn, key, wanted)
        log.info("user %s added", name)

    async def set_password(self, name: str, password: str) -> None:
        hashed, s256, s1 = await self._hashes(_check_password(password))
        async with self._tx() as conn:
            changed = await conn.execute(
                "UPDATE smtpgate_users SET password = ?, scram_sha256 = ?, scram_sha1 = ? WHERE name_key = ?",
                hashed, s256, s1, _key(name))
            if not changed:
                raise UserStoreError(f"no such user: {name}")
        log.info("password of user %s changed", name)

    async def set_disabled(self, name: str, disabled: bool = True) -> None:
        async with self._tx() as conn:
            changed = await conn.execute("UPDATE smtpgate_users SET disabled = ? WHERE name_key = ?",
                                         1 if disabled else 0, _key(name))
            if not changed:
                raise UserStoreError(f"no such user: {name}")

    async def delete_user(self, name: str) -> None:
        async with self._tx() as conn:
            await conn.execute("DELETE FROM smtpgate_aliases WHERE user_key = ?", _key(name))
            if not await conn.execute("DELETE FROM smtpgate_users WHERE name_key = ?", _key(name)):
                raise UserStoreError(f"no such user: {name}")
        log.info("user %s deleted", name)

    async def add_alias(self, address: str, user: str) -> None:
        address = _check_address(address)
        async with self._tx() as conn:
            row = await self._user_row(conn, user)
            if row is None:
                raise UserStoreError(f"no such user: {user}")
            if address == _key(user):
                raise UserStoreError(f"{address} is the user's own name")
            await self._claim_addresses(conn, _key(user), [address])

    async def remove_alias(self, address: str) -> None:
        address = address.strip().lower()
        async with self._tx() as conn:
            if not await conn.execute("DELETE FROM smtpgate_aliases WHERE address = ?", address):
                raise UserStoreError(f"no such alias: {address}")

    async def list_users(self) -> list[UserInfo]:
        try:
            await self.ensure_schema()
            users = await self.db.fetch("SELECT name_key, name, disabled FROM smtpgate_users ORDER BY name_key")
            aliases = await self.db.fetch("SELECT user_key, address FROM smtpgate_aliases ORDER BY address")
        except SqlError as exc:
            raise UserStoreError(f"user store unavailable: {exc}") from None
        by_user: dict[str, list[str]] = {}
        for user_key, address in aliases.rows:
            by_user.setdefault(user_key, []).append(address)
        return [UserInfo(name=name, disabled=bool(disabled),
                         addresses=tuple(sorted(_own_addresses(name))) + tuple(by_user.get(key, ())))
                for key, name, disabled in users.rows]

    # -- for the lookup ----------------------------------------------------------------------------
    async def login(self, name: str) -> _Login | None:
        """The stored credentials of ``name`` (case-insensitive). Raises SqlError."""
        await self.ensure_schema()
        rows = await self.db.fetch(_LOGIN_QUERY, _key(name))
        if not rows:
            return None
        first = rows.rows[0]
        addresses = _own_addresses(first[0]) | {r[5] for r in rows.rows if r[5] is not None}
        scram = {**secrets.scram_of(first[2]), **secrets.scram_of(first[3])}
        return _Login(name=first[0], password=first[1], scram=scram, disabled=bool(first[4]),
                      addresses=frozenset(addresses))


class UserStoreLookup(Lookup):
    capabilities = Capability.PASSWORD | Capability.SCRAM

    def __init__(self, settings: DirectorySettings):
        url = settings.options.store
        self.name = f"directory/{settings.id}"
        self.store = UserStore(str(url), timeout=settings.timeout, concurrency=settings.concurrency)
        self._decoy: str | None = None   # set by start()

    async def start(self) -> None:
        await self.store.start()
        # Create the schema now, so a fresh deployment has its users.db before the first login. A store
        # that is down at startup is not fatal: logins answer 454 until it is back (login() retries).
        try:
            await self.store.ensure_schema()
            rows = await self.store.db.fetch("SELECT password, scram_sha256, scram_sha1 FROM smtpgate_users")
            stored = [r[0] for r in rows.rows]
            self.scram_decoy = common_scram_shape({**secrets.scram_of(r[1]), **secrets.scram_of(r[2])}
                                                  for r in rows.rows)
        except SqlError as exc:
            log.warning("%s unavailable at startup: %s", self.name, exc)
            stored = []
        # Unknown users are checked against the costliest secret stored now, or a fresh hash with the
        # parameters new users get; fixed for the process, never taken from a login.
        self._decoy = secrets.slowest(stored) or await secrets.run_sync(secrets.default_decoy)

    async def close(self) -> None:
        await self.store.close()

    async def authenticate(self, creds: Credentials) -> AuthResult:
        if creds.kind != "password":
            return INVALID
        try:
            login = await self.store.login(creds.username)
        except SqlError as exc:
            log.warning("%s unavailable: %s", self.name, exc)
            return unavailable(str(exc))
        if login is None:
            await secrets.verify(None, creds.secret, decoy=self._decoy)
            return INVALID
        if not await secrets.verify(login.password, creds.secret) or login.disabled:
            return INVALID
        return AuthResult(Outcome.VALID, account=login.name, addresses=login.addresses)

    async def get_secret(self, username: str) -> SecretRecord | None:
        try:
            login = await self.store.login(username)
        except SqlError as exc:
            raise LookupUnavailable(f"{self.name}: {exc}") from None
        if login is None or login.disabled:
            return None
        return SecretRecord(account=login.name, scram=login.scram, addresses=login.addresses)
