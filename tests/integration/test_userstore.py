"""smtpgate's own user store (SQLite file and PostgreSQL), its lookup, and ``smtpgate user``."""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import scramp

from smtpgate import usercli
from smtpgate.config.directory import UserStoreSettings, user_store_settings
from smtpgate.config.errors import ConfigError
from smtpgate.config.model import DirectorySettings
from smtpgate.lookup.base import Capability, Credentials, LookupUnavailable, Outcome
from smtpgate.lookup.users import UserStore, UserStoreError, UserStoreLookup
from tests.fixtures.postgres import pg_url  # noqa: F401  (fixture)
from tests.support import free_port


def pw(user: str, secret: str) -> Credentials:
    return Credentials(mechanism="PLAIN", username=user, secret=secret)


def lookup_for(url: str, timeout: float = 5.0) -> UserStoreLookup:
    return UserStoreLookup(DirectorySettings(id="internal", type="internal", options=UserStoreSettings(url), timeout=timeout))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/data/users.db"     # parent directory does not exist yet
    return request.getfixturevalue("pg_url")


async def test_store_and_lookup(store_url: str) -> None:
    async with UserStore(store_url) as store:
        await store.add_user("Alice@Example.org", "alice pw", ["a.smith@example.org"])
        await store.add_user("bob", "bob pw")
        await store.add_alias("Postmaster@Example.org", "ALICE@example.org")

        lookup = lookup_for(store_url)
        assert lookup.capabilities == Capability.PASSWORD | Capability.SCRAM
        await lookup.start()
        try:
            ok = await lookup.authenticate(pw("alice@EXAMPLE.ORG", "alice pw"))
            assert ok.valid and ok.account == "Alice@Example.org"
            assert ok.addresses == {"alice@example.org", "a.smith@example.org", "postmaster@example.org"}
            bob = await lookup.authenticate(pw("bob", "bob pw"))
            assert bob.valid and bob.addresses == frozenset()
            for creds in (pw("alice@example.org", "Alice pw"), pw("bob", "alice pw"), pw("carol", "x"),
                          pw("postmaster@example.org", "alice pw"),   # aliases are addresses, not logins
                          Credentials("XOAUTH2", "bob", "bob pw", kind="token")):
                assert (await lookup.authenticate(creds)).outcome is Outcome.INVALID, creds

            await store.set_disabled("bob")
            assert not (await lookup.authenticate(pw("bob", "bob pw"))).valid
            assert await lookup.get_secret("bob") is None
            await store.set_disabled("BOB", False)
            assert (await lookup.authenticate(pw("bob", "bob pw"))).valid

            await store.set_password("bob", "new pw")
            assert not (await lookup.authenticate(pw("bob", "bob pw"))).valid
            assert (await lookup.authenticate(pw("bob", "new pw"))).valid

            await store.remove_alias("postmaster@example.org")
            assert (await lookup.authenticate(pw("alice@example.org", "alice pw"))).addresses == {
                "alice@example.org", "a.smith@example.org"}

            users = await store.list_users()
            assert [(u.name, u.disabled, u.addresses) for u in users] == [
                ("Alice@Example.org", False, ("alice@example.org", "a.smith@example.org")),
                ("bob", False, ())]

            await store.delete_user("alice@example.org")
            assert not (await lookup.authenticate(pw("alice@example.org", "alice pw"))).valid
            await store.add_alias("a.smith@example.org", "bob")   # the deleted user's alias went with it
        finally:
            await lookup.close()


async def test_administrative_errors(store_url: str) -> None:
    async with UserStore(store_url) as store:
        await store.add_user("alice@example.org", "pw", ["alias@example.org"])
        await store.add_user("bob@example.org", "pw")
        cases = [
            (store.add_user("ALICE@example.org", "pw"), "already exists"),
            (store.add_user("alias@example.org", "pw"), "alias"),
            (store.add_user("", "pw"), "empty"),
            (store.add_user("with space", "pw"), "spaces"),
            (store.add_user("carol", ""), "password"),
            (store.add_user("carol", "pw", ["not-an-address"]), "not a mail address"),
            (store.add_alias("alias@example.org", "bob@example.org"), "already belongs to alice@example.org"),
            (store.add_alias("bob@example.org", "alice@example.org"), "name of another user"),
            (store.add_alias("alice@example.org", "alice@example.org"), "own name"),
            (store.add_alias("x@example.org", "nobody"), "no such user"),
            (store.remove_alias("x@example.org"), "no such alias"),
            (store.set_password("nobody", "pw"), "no such user"),
            (store.set_disabled("nobody"), "no such user"),
            (store.delete_user("nobody"), "no such user"),
        ]
        for coro, text in cases:
            with pytest.raises(UserStoreError, match=text):
                await coro
        # nothing half-done: carol was never created, alias ownership unchanged
        assert [u.name for u in await store.list_users()] == ["alice@example.org", "bob@example.org"]
        assert (await store.login("alice@example.org")).addresses == {"alice@example.org", "alias@example.org"}


async def test_scram_without_plaintext(store_url: str) -> None:
    async with UserStore(store_url) as store:
        await store.add_user("sam@example.org", "pässword 1")
    lookup = lookup_for(store_url)
    record = await lookup.get_secret("SAM@example.org")
    assert record is not None and record.plaintext is None and set(record.scram) == {"SHA-256", "SHA-1"}
    assert await lookup.get_secret("nobody") is None

    for mech, hash_name in (("SCRAM-SHA-256", "SHA-256"), ("SCRAM-SHA-1", "SHA-1")):
        for password, expect_ok in (("pässword 1", True), ("password 1", False)):
            keys = record.scram[hash_name]
            server = scramp.ScramMechanism(mech).make_server(
                lambda _u, k=keys: (k.salt, k.stored_key, k.server_key, k.iterations))
            client = scramp.ScramClient([mech], "sam@example.org", password)
            server.set_client_first(client.get_client_first())
            client.set_server_first(server.get_server_first())
            if expect_ok:
                server.set_client_final(client.get_client_final())
                client.set_server_final(server.get_server_final())   # client verifies the server too
            else:
                with pytest.raises(scramp.ScramException):
                    server.set_client_final(client.get_client_final())
    await lookup.close()


async def test_sqlite_file_is_private_and_holds_no_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "users.db"
    async with UserStore(f"sqlite://{path}") as store:
        await store.add_user("u@example.org", "Very-Distinct-Password")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as db:
        (password, s256, disabled), = db.execute("SELECT password, scram_sha256, disabled FROM smtpgate_users")
        (version,), = db.execute("SELECT value FROM smtpgate_meta WHERE key = 'schema_version'")
    assert password.startswith("$argon2id$") and s256.startswith("{SCRAM-SHA-256}4096,") and disabled == 0
    assert version == "1"
    for f in path.parent.iterdir():
        assert b"Very-Distinct-Password" not in f.read_bytes()


async def test_unavailable_store() -> None:
    lookup = lookup_for(f"postgres://postgres@127.0.0.1:{free_port()}/x", timeout=1)
    res = await lookup.authenticate(pw("a", "b"))
    assert res.outcome is Outcome.UNAVAILABLE and res.reason
    with pytest.raises(LookupUnavailable):
        await lookup.get_secret("a")
    await lookup.close()
    with pytest.raises(UserStoreError, match="unavailable"):
        async with UserStore(f"postgres://postgres@127.0.0.1:{free_port()}/x", timeout=1) as store:
            await store.list_users()


def test_lookup_needs_store_option() -> None:
    with pytest.raises(ConfigError, match="store"):
        user_store_settings("directory.x", {})


# ------------------------------------------------------------------------------------------------- CLI

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smtpgate")
    usercli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def cli(url: str, *argv: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return usercli.run(parse("user", *argv), url)


async def check_login(url: str, user: str, password: str) -> bool:
    lookup = lookup_for(url)
    try:
        return (await lookup.authenticate(pw(user, password))).valid
    finally:
        await lookup.close()


def test_usercli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite://{tmp_path}/users.db"
    assert cli(url, "add", "ann@example.org", "-a", "A.B@example.org", "--address", "sales@example.org",
               stdin="ann secret\n", monkeypatch=monkeypatch) == 0
    assert cli(url, "add", "ben", stdin="ben secret\r\n", monkeypatch=monkeypatch) == 0
    assert cli(url, "alias", "add", "info@example.org", "ben", monkeypatch=monkeypatch) == 0
    assert cli(url, "disable", "ben", monkeypatch=monkeypatch) == 0
    capsys.readouterr()
    assert cli(url, "list", monkeypatch=monkeypatch) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ann@example.org: ann@example.org, a.b@example.org, sales@example.org",
        "ben (disabled): info@example.org"]
    assert cli(url, "enable", "ben", monkeypatch=monkeypatch) == 0
    assert asyncio.run(check_login(url, "ben", "ben secret"))          # "\r\n" stripped
    assert cli(url, "passwd", "ANN@example.org", "--password-stdin", stdin="changed\n", monkeypatch=monkeypatch) == 0
    assert asyncio.run(check_login(url, "ann@example.org", "changed"))
    assert not asyncio.run(check_login(url, "ann@example.org", "ann secret"))
    assert cli(url, "alias", "del", "info@example.org", monkeypatch=monkeypatch) == 0
    assert cli(url, "del", "ben", monkeypatch=monkeypatch) == 0
    capsys.readouterr()
    assert cli(url, "list", monkeypatch=monkeypatch) == 0
    assert capsys.readouterr().out == "ann@example.org: ann@example.org, a.b@example.org, sales@example.org\n"

    # errors: one line on stderr, status 1, never a traceback
    for argv, stdin, text in ((("add", "ann@example.org"), "x\n", "already exists"),
                              (("add", "new"), "", "no password"),
                              (("del", "ghost"), "", "no such user"),
                              (("alias", "add", "x@example.org"), "", "needs ADDRESS USER"),
                              (("alias", "del", "x@example.org"), "", "no such alias")):
        assert cli(url, *argv, stdin=stdin, monkeypatch=monkeypatch) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err and "Traceback" not in err, err
    assert cli(f"postgres://postgres@127.0.0.1:{free_port()}/x", "list", monkeypatch=monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith("smtpgate user: user store unavailable") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        parse("user", "frobnicate")


def test_usercli_subprocess_reads_password_from_pipe(tmp_path: Path) -> None:
    """A real process whose stdin is a pipe (not a TTY): the password is one line of input."""
    url = f"sqlite://{tmp_path}/users.db"
    script = ("import argparse, sys\n"
              "from smtpgate import usercli\n"
              "p = argparse.ArgumentParser(); usercli.add_parser(p.add_subparsers(dest='command'))\n"
              "sys.exit(usercli.run(p.parse_args(sys.argv[2:]), sys.argv[1]))\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", script, url, "user", "add", "pipe@example.org"],
                          input="piped password\n", capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "piped password" not in done.stdout + done.stderr
    assert asyncio.run(check_login(url, "pipe@example.org", "piped password"))
    again = subprocess.run([sys.executable, "-c", script, url, "user", "add", "pipe@example.org"],
                           input="x\n", capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 1 and again.stderr == "smtpgate user: user pipe@example.org already exists\n"
