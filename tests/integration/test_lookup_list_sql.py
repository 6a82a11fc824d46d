"""list/<id> and db/<id>/<query> lookups against real SQLite files and the real PostgreSQL."""
from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from smtpgate.config.model import DatabaseSettings, ListSettings
from smtpgate.lookup.base import Capability, Credentials, LookupUnavailable, Outcome
from smtpgate.lookup.list import ListLookup
from smtpgate.lookup.sql import SqlDatabase, count_placeholders, to_numbered
from tests.fixtures.postgres import pg_url  # noqa: F401  (fixture)
from tests.support import free_port, need_binary


def pw(user: str, secret: str, mech: str = "PLAIN") -> Credentials:
    return Credentials(mechanism=mech, username=user, secret=secret)


def doveadm(scheme: str, password: str) -> str:
    return subprocess.run([need_binary("doveadm"), "pw", "-s", scheme, "-p", password], check=True,
                          capture_output=True, text=True).stdout.strip()


# ------------------------------------------------------------------------------------------------- list

async def test_list_lookup() -> None:
    lookup = ListLookup(ListSettings(id="users", entries=[
        "john@example.org:plain:with:colons",
        "Jane@Example.org:" + doveadm("SSHA256", "janepw"),
        "bob:" + doveadm("SHA512-CRYPT", "bobpw"),
        "example.org",
        "JOHN@example.org:shadowed-duplicate",
    ]))
    assert lookup.name == "list/users"
    assert lookup.capabilities == Capability.PASSWORD | Capability.SCRAM | Capability.CRAM | Capability.MEMBERSHIP

    ok = await lookup.authenticate(pw("john@example.org", "plain:with:colons"))
    assert ok.valid and ok.account == "john@example.org" and ok.addresses == {"john@example.org"}
    jane = await lookup.authenticate(pw("jane@EXAMPLE.org", "janepw"))
    assert jane.valid and jane.account == "Jane@Example.org" and jane.addresses == {"jane@example.org"}
    assert (await lookup.authenticate(pw("bob", "bobpw"))).valid
    assert (await lookup.authenticate(pw("bob", "bobpw"))).addresses == frozenset()

    for creds in (pw("john@example.org", "plain"), pw("john@example.org", "shadowed-duplicate"),
                  pw("nobody", "x"), pw("example.org", ""), pw("bob", "BOBPW"),
                  Credentials("XOAUTH2", "john@example.org", "plain:with:colons", kind="token")):
        assert (await lookup.authenticate(creds)).outcome is Outcome.INVALID

    rec = await lookup.get_secret("JOHN@example.org")
    assert rec is not None and rec.plaintext == "plain:with:colons" and rec.account == "john@example.org"
    rec = await lookup.get_secret("jane@example.org")
    assert rec is not None and rec.plaintext is None
    assert await lookup.get_secret("nobody") is None

    assert await lookup.contains("Example.ORG")
    assert await lookup.contains("john@example.org")
    assert not await lookup.contains("example.com")


async def test_list_capabilities_follow_contents() -> None:
    hashed = ListLookup(ListSettings(id="h", entries=["a:" + doveadm("SSHA", "x")]))
    assert hashed.capabilities == Capability.PASSWORD | Capability.MEMBERSHIP
    scram = ListLookup(ListSettings(id="s", entries=["a:" + doveadm("SCRAM-SHA-256", "x")]))
    assert scram.capabilities & Capability.SCRAM and not scram.capabilities & Capability.CRAM
    assert (await scram.get_secret("a")).scram["SHA-256"].iterations == 4096
    assert (await scram.authenticate(pw("a", "x"))).valid


async def test_list_unknown_user_costs_the_list_scheme_not_argon2() -> None:
    lookup = ListLookup(ListSettings(id="p", entries=["a:plain"]))
    await lookup.authenticate(pw("nobody", "x"))
    t = time.perf_counter()
    for _ in range(5):
        assert not (await lookup.authenticate(pw("nobody", "x"))).valid
    assert time.perf_counter() - t < 0.1   # five argon2id checks would take >= 0.3 s


# ------------------------------------------------------------------------------------------------- SQL

AUTH = "SELECT secret, addresses, disabled, may_act_for FROM users WHERE name = ?"
DOMAINS = "SELECT name FROM domains WHERE name = lower(?)"


def make_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE users (name TEXT PRIMARY KEY, secret TEXT, addresses TEXT, disabled INTEGER,
                                may_act_for TEXT);
            CREATE TABLE domains (name TEXT PRIMARY KEY);
            INSERT INTO domains VALUES ('example.org');
        """)
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", [
            ("john@example.org", "{SSHA256}" + doveadm("SSHA256", "johnpw").split("}", 1)[1],
             "J.Doe@example.org, postmaster@example.org", 0, "shared@example.org"),
            ("plain@example.org", "plainpw", None, 0, None),
            ("off@example.org", "offpw", "", 1, None),
            ("nopass@example.org", None, "", 0, None),
        ])
    db.close()


def sqlite_db(tmp_path: Path, **kw: object) -> SqlDatabase:
    path = tmp_path / "auth.db"
    if not path.exists():
        make_sqlite(path)
    settings = DatabaseSettings(id="sql", address=f"sqlite://{path}", lookups={"auth": AUTH, "domains": DOMAINS},
                                concurrency=kw.pop("concurrency", 5), timeout=kw.pop("timeout", 5.0))  # type: ignore[arg-type]
    return SqlDatabase(settings)


async def check_store_semantics(db: SqlDatabase) -> None:
    auth, domains = db.lookup("auth"), db.lookup("domains")
    assert auth.name == "db/sql/auth" and db.lookup("auth") is auth
    await auth.start()
    await domains.start()
    try:
        ok = await auth.authenticate(pw("john@example.org", "johnpw"))
        assert ok.valid and ok.account == "john@example.org"
        assert ok.addresses == {"john@example.org", "j.doe@example.org", "postmaster@example.org"}
        assert ok.may_act_for == {"shared@example.org"}
        assert (await auth.authenticate(pw("plain@example.org", "plainpw"))).valid
        for creds in (pw("john@example.org", "wrong"), pw("off@example.org", "offpw"),
                      pw("nopass@example.org", ""), pw("nobody@example.org", "x"),
                      Credentials("OAUTHBEARER", "john@example.org", "johnpw", kind="token")):
            assert (await auth.authenticate(creds)).outcome is Outcome.INVALID, creds

        rec = await auth.get_secret("plain@example.org")
        assert rec is not None and rec.plaintext == "plainpw"
        rec = await auth.get_secret("john@example.org")
        assert rec is not None and rec.plaintext is None and "postmaster@example.org" in rec.addresses
        assert await auth.get_secret("off@example.org") is None
        assert await auth.get_secret("nobody@example.org") is None

        assert await domains.contains("Example.org")
        assert not await domains.contains("example.com")
    finally:
        await domains.close()
        await auth.close()


async def test_sqlite_lookup(tmp_path: Path) -> None:
    await check_store_semantics(sqlite_db(tmp_path))


async def test_sqlite_missing_file_is_unavailable_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    db = SqlDatabase(DatabaseSettings(id="sql", address=f"sqlite://{missing}", lookups={"auth": AUTH}, timeout=1))
    res = await db.lookup("auth").authenticate(pw("a", "b"))
    assert res.outcome is Outcome.UNAVAILABLE and "unable to open" in res.reason
    assert not missing.exists()
    with pytest.raises(LookupUnavailable):
        await db.lookup("auth").contains("a")
    await db.close()


async def test_sqlite_rwc_creates(tmp_path: Path) -> None:
    created = tmp_path / "new.db"
    db = SqlDatabase(DatabaseSettings(id="x", address=f"sqlite://{created}?mode=rwc",
                                      lookups={"q": "SELECT 1 FROM sqlite_master WHERE name = ?"}))
    assert not await db.lookup("q").contains("users")
    assert created.exists()
    await db.close()


async def test_sqlite_locked_database_times_out(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path, timeout=0.5)
    locker = sqlite3.connect(tmp_path / "auth.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")          # rollback-journal mode: readers now block
    try:
        t = time.perf_counter()
        res = await db.lookup("auth").authenticate(pw("plain@example.org", "plainpw"))
        assert res.outcome is Outcome.UNAVAILABLE
        assert time.perf_counter() - t < 2.0
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert (await db.lookup("auth").authenticate(pw("plain@example.org", "plainpw"))).valid
    await db.close()


async def test_sqlite_concurrency(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path, concurrency=5)
    auth = db.lookup("auth")
    results = await asyncio.gather(*(auth.authenticate(pw("john@example.org", "johnpw" if i % 2 else "bad"))
                                     for i in range(1000)))
    assert sum(r.valid for r in results) == 500
    assert all(r.outcome is not Outcome.UNAVAILABLE for r in results)
    assert db.idle_count <= 5
    await db.close()


def test_query_validation() -> None:
    assert count_placeholders("SELECT a FROM t WHERE x = ? AND y = '?' AND \"?\" = 1 -- ?\n") == 1
    assert to_numbered("SELECT '?', ? , ?") == "SELECT '?', $1 , $2"
    db = SqlDatabase(DatabaseSettings(id="d", address="sqlite:///tmp/x.db", lookups={
        "none": "SELECT 1", "two": "SELECT 1 WHERE ? = ?"}))
    for name in ("none", "two", "absent"):
        with pytest.raises(ValueError):
            db.lookup(name)
    for bad in ("mysql://x/y", "sqlite://", "sqlite:///x?mode=bogus", "sqlite:///x?cache=shared"):
        with pytest.raises(ValueError):
            SqlDatabase(DatabaseSettings(id="d", address=bad))


# ------------------------------------------------------------------------------------------------- PostgreSQL

async def make_pg(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("""
            CREATE TABLE users (name TEXT PRIMARY KEY, secret TEXT, addresses TEXT[], disabled BOOLEAN,
                                may_act_for TEXT);
            CREATE TABLE domains (name TEXT PRIMARY KEY);
            INSERT INTO domains VALUES ('example.org');""")
        await conn.executemany("INSERT INTO users VALUES ($1, $2, $3, $4, $5)", [
            ("john@example.org", doveadm("SSHA256", "johnpw"), ["J.Doe@example.org", "postmaster@example.org"],
             False, "shared@example.org"),
            ("plain@example.org", "plainpw", None, None, None),
            ("off@example.org", "offpw", [], True, None),
            ("nopass@example.org", None, [], False, None),
        ])
    finally:
        await conn.close()


def pg_db(url: str, concurrency: int = 5, timeout: float = 5.0, **extra: str) -> SqlDatabase:
    return SqlDatabase(DatabaseSettings(id="sql", address=url, concurrency=concurrency, timeout=timeout,
                                        lookups={"auth": AUTH, "domains": DOMAINS, **extra}))


async def test_postgres_lookup(pg_url: str) -> None:  # noqa: F811
    await make_pg(pg_url)
    await check_store_semantics(pg_db(pg_url))
    await check_store_semantics(pg_db(pg_url.replace("postgres://", "postgresql://", 1)))


async def test_postgres_query_timeout(pg_url: str) -> None:  # noqa: F811
    await make_pg(pg_url)
    db = pg_db(pg_url, timeout=0.5, slow="SELECT secret FROM users, pg_sleep(3) WHERE name = ?")
    t = time.perf_counter()
    res = await db.lookup("slow").authenticate(pw("plain@example.org", "plainpw"))
    assert res.outcome is Outcome.UNAVAILABLE and "timed out" in res.reason
    assert time.perf_counter() - t < 1.5
    assert (await db.lookup("auth").authenticate(pw("plain@example.org", "plainpw"))).valid  # pool recovered
    await db.close()


async def test_postgres_closed_port_is_unavailable() -> None:
    url = f"postgres://postgres@127.0.0.1:{free_port()}/nothing"
    db = pg_db(url, timeout=2)
    auth = db.lookup("auth")
    t = time.perf_counter()
    res = await auth.authenticate(pw("john@example.org", "johnpw"))
    assert res.outcome is Outcome.UNAVAILABLE and res.reason
    with pytest.raises(LookupUnavailable):
        await auth.get_secret("john@example.org")
    with pytest.raises(LookupUnavailable):
        await db.lookup("domains").contains("example.org")
    assert time.perf_counter() - t < 2
    await db.close()


async def test_postgres_black_hole_is_unavailable_within_timeout() -> None:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)        # the kernel completes handshakes; nobody ever reads or answers
    try:
        db = pg_db(f"postgres://postgres@127.0.0.1:{hole.getsockname()[1]}/x", timeout=0.5)
        t = time.perf_counter()
        results = await asyncio.gather(*(db.lookup("auth").authenticate(pw("a", "b")) for _ in range(10)))
        assert all(r.outcome is Outcome.UNAVAILABLE for r in results)
        assert time.perf_counter() - t < 1.5
        with pytest.raises(LookupUnavailable):
            await db.lookup("domains").contains("example.org")
        t = time.perf_counter()
        await db.close()
        assert time.perf_counter() - t < 1.5
    finally:
        hole.close()


async def test_postgres_concurrency_bounded(pg_url: str) -> None:  # noqa: F811
    await make_pg(pg_url)
    db = pg_db(pg_url, concurrency=5, timeout=10)
    auth = db.lookup("auth")
    await auth.start()
    results = await asyncio.gather(*(auth.authenticate(pw("john@example.org", "johnpw" if i % 2 else "bad"))
                                     for i in range(1000)))
    assert sum(r.valid for r in results) == 500
    assert all(r.outcome is not Outcome.UNAVAILABLE for r in results)
    admin = await asyncpg.connect(pg_url)
    try:
        dbname = pg_url.rsplit("/", 1)[1]
        used = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                                    dbname)
    finally:
        await admin.close()
    assert 1 <= used <= 5
    await auth.close()
