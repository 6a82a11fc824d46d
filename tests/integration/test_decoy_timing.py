"""User enumeration by timing (issue 9 item 8): an unknown user costs what a wrong password costs.

Each lookup fixes its decoy when it starts -- the costliest secret it holds (``list/``, the internal user
store) or the scheme ``database.<id>.decoy-scheme`` names (``db/``, whose table cannot be surveyed) --
and no login changes it. Measured on ``authenticate()`` itself against real stores (SQLite, PostgreSQL):
200 unknown-user and 200 wrong-password attempts, interleaved, medians within 10 %. SHA512-CRYPT with
5,000 rounds (about 1 ms) keeps it quick while the hash still dominates the cost.
"""
from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from pathlib import Path

import asyncpg
import pytest

from smtpgate.config.load import load_text
from smtpgate.config.errors import ConfigError
from smtpgate.config.directory import UserStoreSettings
from smtpgate.config.model import DatabaseSettings, DirectorySettings, ListSettings
from smtpgate.lookup import secrets
from smtpgate.lookup.base import Credentials, Lookup
from smtpgate.lookup.list import ListLookup
from smtpgate.lookup.sql import SqlDatabase
from smtpgate.lookup.users import UserStore, UserStoreLookup
from tests.fixtures.postgres import pg_url  # noqa: F401  (fixture)

SCHEME = "SHA512-CRYPT rounds=5000"
TRIES = 200


def pw(user: str, password: str) -> Credentials:
    return Credentials(mechanism="PLAIN", username=user, secret=password)


async def medians(lookup: Lookup, known: str, unknown: str = "nobody@example.org",
                  before_unknown: Credentials | None = None) -> tuple[float, float]:
    """(unknown-user median, wrong-password median) of the CPU time this process spends per attempt,
    interleaved. CPU time rather than wall time: the work done is what differs between the two paths, and
    it does not swing with whatever else the (shared, busy) test machine runs -- wall time there varies
    by more than the 10 % asked for even when both paths do exactly the same work. ``before_unknown`` is a
    login made (untimed) right before each unknown-user attempt, as an attacker choosing the decoy would."""
    wrong, missing = [], []
    for i in range(TRIES):
        for user, out in ((known, wrong), (unknown, missing)) if i % 2 else ((unknown, missing), (known, wrong)):
            if out is missing and before_unknown is not None:
                assert (await lookup.authenticate(before_unknown)).valid
            t = time.process_time()
            result = await lookup.authenticate(pw(user, f"guess-{i}"))
            out.append(time.process_time() - t)
            assert not result.valid
    return statistics.median(missing), statistics.median(wrong)


def assert_close(unknown: float, wrong: float) -> None:
    assert abs(unknown - wrong) <= 0.10 * wrong, \
        f"unknown user {unknown * 1e3:.2f} ms, wrong password {wrong * 1e3:.2f} ms of CPU"


def crypt_hash(_password: str) -> str:
    """A SHA512-CRYPT hash as ``doveadm pw -s SHA512-CRYPT -r 5000`` writes it (every attempt here is a
    wrong password, so whose password it hashes does not matter)."""
    return secrets.make_decoy(SCHEME)


# --- list/ ---------------------------------------------------------------------------------------------

async def test_list_of_one_scheme() -> None:
    lookup = ListLookup(ListSettings(id="u", entries=[f"u{i}@example.org:{crypt_hash(f'pw{i}')}" for i in range(5)]))
    await lookup.start()
    assert_close(*await medians(lookup, "u3@example.org"))


async def test_list_with_mixed_schemes_uses_its_slowest() -> None:
    """The first entry is plaintext: unknown users used to cost microseconds next to a slow hash's ms."""
    lookup = ListLookup(ListSettings(id="u", entries=["first@example.org:plain", "digest@example.org:{SSHA}"
                                                      + secrets.make_decoy("SSHA").split("}", 1)[1],
                                                      f"slow@example.org:{crypt_hash('pw')}"]))
    await lookup.start()
    assert_close(*await medians(lookup, "slow@example.org"))


# --- db/ -----------------------------------------------------------------------------------------------

AUTH = "SELECT secret FROM users WHERE name = ?"
ROWS = [("plain@example.org", "{PLAIN}plainpw"), *((f"u{i}@example.org", crypt_hash(f"pw{i}")) for i in range(5))]


async def check_db(address: str) -> None:
    db = SqlDatabase(DatabaseSettings(id="sql", address=address, lookups={"auth": AUTH}, decoy_scheme=SCHEME))
    auth = db.lookup("auth")
    await auth.start()
    try:
        # A login with a cheap scheme right before each probe must not make unknown users cheap (the decoy
        # used to be the last secret seen, so an attacker with any plaintext account chose it).
        assert_close(*await medians(auth, "u2@example.org", before_unknown=pw("plain@example.org", "plainpw")))
    finally:
        await auth.close()


async def test_sqlite_table_of_one_scheme(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT PRIMARY KEY, secret TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?)", ROWS)
    conn.close()
    await check_db(f"sqlite://{path}")


async def test_postgres_table_of_one_scheme(pg_url: str) -> None:  # noqa: F811
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE users (name TEXT PRIMARY KEY, secret TEXT)")
        await conn.executemany("INSERT INTO users VALUES ($1, $2)", ROWS)
    finally:
        await conn.close()
    await check_db(pg_url)


def test_decoy_scheme_is_configured_and_checked() -> None:
    head = '[server.listener.smtp]\nbind = "127.0.0.1:0"\n[database.sql]\naddress = "sqlite:///tmp/x.db"\nlookup.auth = "SELECT secret FROM users WHERE name = ?"\n'
    assert load_text(head).databases["sql"].decoy_scheme == "ARGON2ID"
    assert load_text(head + 'decoy-scheme = "blf-crypt cost=5"\n').databases["sql"].decoy_scheme == "blf-crypt cost=5"
    for bad, reason in (('"MD4"', "expected one of"), ('"SHA512-CRYPT cost=5"', "SHA512-CRYPT takes rounds="),
                        ('"BLF-CRYPT cost=99"', "cost must be a number from 4 to 31"),
                        ('"BLF-CRYPT cost=\u00b9\u00b2"', "cost must be a number")):
        with pytest.raises(ConfigError) as err:
            load_text(head + f"decoy-scheme = {bad}\n")
        assert err.value.line().startswith(f"Configuration error: database.sql.decoy-scheme: {reason}"), \
            err.value.line()


@pytest.mark.parametrize("spec, prefix, cost_order", [
    ("PLAIN", "{PLAIN}", 0), ("SSHA512", "{SSHA512}", 1), ("MD5-CRYPT", "{MD5-CRYPT}$1$", 2),
    ("SHA256-CRYPT rounds=6000", "{SHA256-CRYPT}$5$rounds=6000$", 3), ("SCRAM-SHA-256 i=8192", "{SCRAM-SHA-256}8192,", 3),
    ("BLF-CRYPT cost=6", "{BLF-CRYPT}$2b$06$", 4), ("ARGON2ID m=4096 t=2 p=1", "{ARGON2ID}$argon2id$v=19$m=4096,t=2,p=1$", 4),
])
def test_make_decoy_writes_the_named_scheme(spec: str, prefix: str, cost_order: int) -> None:
    decoy = secrets.make_decoy(spec)
    assert decoy.startswith(prefix), decoy
    assert secrets.scheme_of(decoy) == spec.split()[0]
    # a decoy verifies like any stored secret: never for a guess, and without complaint
    assert asyncio.run(secrets.verify(decoy, "guess")) is False
    assert [0.1, 1, 100, 1000, 3000][cost_order] <= secrets.cost(decoy)


def test_slowest_ranks_schemes() -> None:
    plain, ssha, crypt5k, crypt20k = "x", "{SSHA}" + secrets.make_decoy("SSHA").split("}", 1)[1], \
        secrets.make_decoy("SHA512-CRYPT"), secrets.make_decoy("SHA512-CRYPT rounds=20000")
    bcrypt6 = secrets.make_decoy("BLF-CRYPT cost=8")
    assert secrets.slowest([plain, ssha, crypt5k, crypt20k]) == crypt20k
    assert secrets.slowest([plain, bcrypt6, crypt20k]) == bcrypt6
    assert secrets.slowest([plain, ssha]) == ssha
    assert secrets.slowest([]) is None


# --- the internal user store ------------------------------------------------------------------------------

async def test_user_store_of_one_scheme(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/users.db"
    async with UserStore(url) as store:
        for i in range(3):
            await store.add_user(f"u{i}@example.org", f"pw{i}")
        # Imported secrets (here: cheaper than argon2id, to keep the test short) are what the store holds now.
        await store.db.execute("UPDATE smtpgate_users SET password = ?", crypt_hash("imported"))
    lookup = UserStoreLookup(DirectorySettings(id="u", type="internal", options=UserStoreSettings(store=url)))
    await lookup.start()
    try:
        assert_close(*await medians(lookup, "u1@example.org"))
    finally:
        await lookup.close()
