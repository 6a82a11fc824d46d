"""Every lookup kind end to end through the real SMTP server (issue 4), over real sockets.

For each of ``list/<id>`` (plain and hashed), ``db/<id>/<query>`` (SQLite and PostgreSQL),
``directory/<id>`` of type ldap (real slapd), oauth (real JWKS/introspection HTTP server) and internal
(smtpgate's own store, SQLite and PostgreSQL): a real smtpgate (``tests.fixtures.server.run_server``) is
configured with Stalwart-style TOML naming the lookup, and real clients log in -- raw sockets for exact
replies, swaks or msmtp for a whole AUTH + message. What is checked, kind by kind:

* valid credentials -> ``235``; wrong password / unknown user -> ``535`` (and those count toward
  ``errors.total``);
* the store unavailable (stopped server, closed port, locked database) -> ``454 4.7.0``, *not* counted:
  three 454s in one session with ``errors.total = 3`` and the same session then logs in;
* a black hole (accepts, never answers) -> ``454`` no later than the lookup's configured ``timeout``;
* addresses the store knows are what ``must-match-sender`` allows in ``MAIL FROM``.

A list lives in memory and has no "unavailable". Regression tests for three bugs found here: LDAP
usable again right after slapd restarts, PostgreSQL going silent on a pooled connection answered within
the timeout, and the internal store being down at startup not being fatal.

``remote/<id>`` (IMAP and SMTP against a real Dovecot), caching, the seed's example and the 1,000-session
burst are in ``test_e2e_remote.py``; the helpers both use are in ``tests/fixtures/e2e.py``.
"""
from __future__ import annotations

import asyncio
import base64
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import asyncpg
import pytest

from smtpgate.lookup.users import UserStore
from tests.fixtures.certs import make_pki
from tests.fixtures.dovecot import black_hole  # noqa: F401  (fixture)
from tests.fixtures.e2e import (
    INVALID, NOT_OWNED, OK, SMTPGATE, assert_black_hole, assert_failures_counted, assert_spooled,
    assert_unavailable_not_counted, auth, b64, by_listener, connect, gate_config, login, msmtp,
    parallel, run_client, send, swaks,
)
from tests.fixtures.oauth_server import AUDIENCE, CLIENT_ID, CLIENT_SECRET, ISSUER, OAuthServer
from tests.fixtures.oauth_server import _oauth_server_module, oauth_server  # noqa: F401  (fixtures)
from tests.fixtures.postgres import pg_url  # noqa: F401  (fixture)
from tests.fixtures.server import RunningServer, run_server
from tests.fixtures.slapd import PEOPLE, SUFFIX, USERS as LDAP_USERS, Slapd
from tests.fixtures.slapd import ldap_pki, slapd_private  # noqa: F401  (fixtures)
from tests.support import free_port, need_binary


class Gate:
    """A TCP forwarder in front of a real server that can be shut like a stopped server: its port then
    refuses connections and every connection already forwarded is cut. ``open()`` listens again on the
    same port. ``freeze()`` turns it into a firewall-like black hole for established and new connections
    alike (accepted, bytes swallowed, never an answer); ``thaw()`` ends that. Threads, not asyncio: the
    test's own client calls block."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.host, self.upstream_port = host, upstream_port
        self.port = free_port(host)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._held: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.frozen = False
        self.open()

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False
        with self._lock:
            held, self._held = self._held, []
        for s in held:
            s.close()

    def open(self) -> None:
        if self._listener is not None:
            return
        self._listener = socket.create_server((self.host, self.port), backlog=128)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True, name="gate").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.frozen:
                with self._lock:
                    self._held.append(client)     # never read, never answered
                continue
            try:
                upstream = socket.create_connection((self.host, self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.frozen:
                    dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def shut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns | set(self._held), set()
            self._held = []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    close = shut


def doveadm_pw(scheme: str, password: str) -> str:
    return subprocess.run([need_binary("doveadm"), "pw", "-s", scheme, "-p", password], check=True,
                          capture_output=True, text=True, timeout=30).stdout.strip()


def with_port(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{port}"))


# ====================================================================================================
# list/<id>

LIST_PLAIN = ("john@example.org", "Plain pw: with spaces")


@pytest.fixture(scope="module")
def list_users() -> dict[str, tuple[str, str]]:
    """user -> (password, stored form): plaintext and hashes written by real tools."""
    bcrypt_line = run_client([need_binary("htpasswd"), "-nbB", "bcrypt@example.org", "bcrypt-pw"]).stdout.strip()
    return {
        LIST_PLAIN[0]: (LIST_PLAIN[1], LIST_PLAIN[1]),
        "crypt@example.org": ("crypt-pw", doveadm_pw("SHA512-CRYPT", "crypt-pw")),
        "argon@example.org": ("argon-pw", doveadm_pw("ARGON2ID", "argon-pw")),
        "ssha@example.org": ("ssha-pw", doveadm_pw("SSHA256", "ssha-pw")),
        "bcrypt@example.org": ("bcrypt-pw", bcrypt_line.split(":", 1)[1]),
    }


def test_list_plain_and_hashed(tmp_path: Path, list_users: dict[str, tuple[str, str]]) -> None:
    entries = ", ".join(f'"{u}:{stored}"' for u, (_, stored) in list_users.items())
    with run_server(gate_config('"list/users"', f"\n[list]\nusers = [{entries}]\n", extra_listeners=()),
                    tmp_path) as srv:
        good = [(srv, "submission", u, pw, mech) for (u, (pw, _)), mech in
                zip(list_users.items(), ["PLAIN", "LOGIN"] * 3)]
        good += [(srv, "submissions", u, pw, "PLAIN") for u, (pw, _) in list_users.items()]
        assert parallel(login, good) == [OK] * len(good)
        bad = [(srv, "smtp", u, pw + "x") for u, (pw, _) in list_users.items()]
        bad += [(srv, "smtp", "nobody@example.org", LIST_PLAIN[1]),
                (srv, "submissions", "argon@example.org", "ARGON-PW")]
        assert parallel(login, bad) == [INVALID] * len(bad)
        assert_failures_counted(srv, "smtp", "argon@example.org", "wrong")

        # A whole message each: the plaintext user with swaks over STARTTLS, a hashed one over 465.
        r = swaks(srv, "submission", *LIST_PLAIN, "list-plain")
        assert r.returncode == 0, r.stdout + r.stderr
        r = swaks(srv, "submissions", "crypt@example.org", "crypt-pw", "list-hashed", mech="LOGIN")
        assert r.returncode == 0, r.stdout + r.stderr
        assert_spooled(srv, LIST_PLAIN[0], "list-plain")
        assert_spooled(srv, "crypt@example.org", "list-hashed")
        r = swaks(srv, "submission", "crypt@example.org", "wrong", "list-refused")
        assert r.returncode == 28, r.stdout + r.stderr     # swaks: authentication failed
    # A list is held in memory: it cannot be "unavailable", so it has no 454 / black-hole case.


# ====================================================================================================
# db/<id>/<query>

DB_QUERY = "SELECT secret, addresses FROM users WHERE name = ?"
DB_JOHN = ("john@example.org", "john db pw")
DB_PLAIN = ("plain@example.org", "plain-db-pw")


def db_sections(address: str, *, hole_url: str | None = None, timeout: str = "1s") -> str:
    out = f"""
[database.sql]
address = "{address}"
timeout = "{timeout}"
concurrency = 4
lookup.auth = "{DB_QUERY}"
"""
    if hole_url:
        out += f"""
[database.hole]
address = "{hole_url}"
timeout = "500ms"
lookup.auth = "{DB_QUERY}"
"""
    return out


def make_sqlite_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT PRIMARY KEY, secret TEXT, addresses TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?)", [
            (DB_JOHN[0], doveadm_pw("SSHA512", DB_JOHN[1]), "J.Doe@example.org, postmaster@example.org"),
            (DB_PLAIN[0], DB_PLAIN[1], None),
        ])
    db.close()


async def make_pg_db(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute("CREATE TABLE users (name TEXT PRIMARY KEY, secret TEXT, addresses TEXT[])")
        await conn.executemany("INSERT INTO users VALUES ($1, $2, $3)", [
            (DB_JOHN[0], doveadm_pw("SHA512-CRYPT", DB_JOHN[1]), ["J.Doe@example.org", "postmaster@example.org"]),
            (DB_PLAIN[0], DB_PLAIN[1], None),
        ])
    finally:
        await conn.close()


def check_db_logins_and_sender(srv: RunningServer, marker: str) -> None:
    assert parallel(login, [(srv, "submission", *DB_JOHN), (srv, "submissions", *DB_PLAIN, "LOGIN"),
                            (srv, "smtp", DB_JOHN[0], DB_PLAIN[1]), (srv, "smtp", "nobody@example.org", "x"),
                            (srv, "smtp", DB_JOHN[0].upper(), DB_JOHN[1])]) \
        == [OK, OK, INVALID, INVALID, INVALID]      # the query matches names as typed

    # must-match-sender: the login and the `addresses` column, nothing else
    c = connect(srv, "submission")
    try:
        assert auth(c, *DB_JOHN) == OK
        assert c.cmd("MAIL FROM:<someone.else@example.org>") == NOT_OWNED
        assert c.cmd(f"MAIL FROM:<{DB_PLAIN[0]}>") == NOT_OWNED
        assert c.cmd("MAIL FROM:<j.doe@EXAMPLE.org>").startswith("250 ")
        assert c.cmd("RSET").startswith("250 ")
        send(c, "postmaster@example.org", marker + "-raw")
    finally:
        c.close()
    c = connect(srv, "submissions")
    try:
        assert auth(c, *DB_PLAIN) == OK       # no addresses column value: owns only its login
        assert c.cmd("MAIL FROM:<j.doe@example.org>") == NOT_OWNED
    finally:
        c.close()
    r = swaks(srv, "submission", *DB_JOHN, marker, sender="J.Doe@example.org")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_spooled(srv, DB_JOHN[0], marker, sender="J.Doe@example.org")
    assert_spooled(srv, DB_JOHN[0], marker + "-raw", sender="postmaster@example.org")


def test_db_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    make_sqlite_db(path)
    with run_server(gate_config('"db/sql/auth"', db_sections(f"sqlite://{path}", timeout="400ms")),
                    tmp_path) as srv:
        check_db_logins_and_sender(srv, "db-sqlite")

        # Unavailable: another process holds an exclusive lock (rollback journal), so every read waits
        # out the lookup's timeout -- the "slow store" case, answered 454 at the timeout and not counted.
        locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            latencies = assert_unavailable_not_counted(
                srv, "smtp", *DB_JOHN, down=lambda: locker.execute("BEGIN EXCLUSIVE"),
                up=lambda: locker.execute("ROLLBACK"), bound=0.4 + 0.6)
        finally:
            locker.close()
        assert min(latencies) >= 0.3, latencies


@pytest.mark.service("postgres")
def test_db_postgres(tmp_path: Path, pg_url: str, black_hole) -> None:
    asyncio.run(make_pg_db(pg_url))
    gate = Gate(urllib.parse.urlsplit(pg_url).port or 5432)
    try:
        config = gate_config(by_listener("db/sql/auth", hole="db/hole/auth"),
                             db_sections(with_port(pg_url, gate.port), hole_url=with_port(pg_url, black_hole.port)))
        with run_server(config, tmp_path) as srv:
            check_db_logins_and_sender(srv, "db-pg")
            # PostgreSQL "stopped": its port refuses connections and the pooled connections are cut.
            assert_unavailable_not_counted(srv, "smtp", *DB_JOHN, down=gate.shut, up=gate.open, bound=1.5)
            # each 454 logged with the reason: a cut pooled connection, then refused connects
            reasons = [ln.split(" reason=", 1)[-1] for ln in srv.logs if "result=tempfail" in ln]
            assert len(reasons) == 3 and all(r.startswith(('"ConnectionRefusedError', '"ConnectionDoesNotExist'))
                                             for r in reasons), reasons
            assert_black_hole(srv, "hole", *DB_JOHN, timeout=0.5)
    finally:
        gate.close()


# ====================================================================================================
# directory/<id> type = "ldap"

def ldap_sections(slapd: Slapd, ca: Path, hole_port: int) -> str:
    return f"""
[directory.ldap]
type = "ldap"
url = "{slapd.url}"
tls.starttls = true
tls.ca-file = "{ca}"
bind.dn-template = "uid={{local}},{PEOPLE}"
attributes.address = ["mail", "mailLocalAddress"]
timeout = "2s"

[directory.ldaps]
type = "ldap"
url = "{slapd.ldaps_url}"
tls.ca-file = "{ca}"
search.base-dn = "{SUFFIX}"
search.filter = "(&(objectClass=inetOrgPerson)(|(uid={{user}})(mail={{user}})))"
attributes.name = "uid"
timeout = "2s"

[directory.hole]
type = "ldap"
url = "ldap://127.0.0.1:{hole_port}"
bind.dn-template = "uid={{local}},{PEOPLE}"
timeout = "500ms"
"""


@pytest.mark.service("slapd")
def test_directory_ldap(tmp_path: Path, slapd_private: Slapd, ldap_pki, black_hole) -> None:
    alice_pw, bob_pw = LDAP_USERS["alice"][0], LDAP_USERS["bob"][0]
    lookup = by_listener("directory/ldap", submissions="ldap/ldaps", hole="directory/hole")
    with run_server(gate_config(lookup, ldap_sections(slapd_private, ldap_pki.ca_cert, black_hole.port)),
                    tmp_path) as srv:
        assert parallel(login, [
            (srv, "submission", "alice", alice_pw), (srv, "submission", "bob", bob_pw, "LOGIN"),
            (srv, "submissions", "alice@example.org", alice_pw),       # search by mail, then bind
            (srv, "submissions", "bob", bob_pw, "LOGIN"),
            (srv, "smtp", "alice", bob_pw), (srv, "smtp", "nobody", alice_pw), (srv, "smtp", "alice", "x", "LOGIN"),
            (srv, "submissions", "carol@example.org", alice_pw),
        ]) == [OK] * 4 + [INVALID] * 4

        # The addresses LDAP lists for the user (mail + mailLocalAddress, read bound as alice).
        c = connect(srv, "submission")
        try:
            assert auth(c, "alice", alice_pw) == OK
            assert c.cmd("MAIL FROM:<bob@example.org>") == NOT_OWNED
            assert c.cmd("MAIL FROM:<A.Liddell@example.org>").startswith("250 ")
        finally:
            c.close()
        r = swaks(srv, "submission", "alice", alice_pw, "ldap", sender="postmaster@example.org")
        assert r.returncode == 0, r.stdout + r.stderr
        assert_spooled(srv, "alice", "ldap", sender="postmaster@example.org")
        r = msmtp(srv, "submissions", "bob", bob_pw, "ldaps", tmp_path, mech="login", sender="bob@example.org")
        assert r.returncode == 0, r.stderr
        assert_spooled(srv, "bob", "ldaps")

        assert_failures_counted(srv, "smtp", "alice", "wrong")
        assert_black_hole(srv, "hole", "alice", alice_pw, timeout=0.5)
        # slapd stopped: 454, not counted (recovery: the next test)
        assert_unavailable_not_counted(srv, "smtp", "alice", alice_pw, down=slapd_private.stop,
                                       up=slapd_private.start, bound=2.6, recover=False)




@pytest.mark.service("slapd")
def test_directory_ldap_back_after_restart(tmp_path: Path, slapd_private: Slapd, ldap_pki, black_hole) -> None:
    alice_pw = LDAP_USERS["alice"][0]
    with run_server(gate_config('"directory/ldap"', ldap_sections(slapd_private, ldap_pki.ca_cert, black_hole.port)),
                    tmp_path) as srv:
        assert login(srv, "smtp", "alice", alice_pw) == OK
        assert_unavailable_not_counted(srv, "smtp", "alice", alice_pw, down=slapd_private.stop,
                                       up=slapd_private.start, bound=2.6)


# ====================================================================================================
# directory/<id> type = "oauth"

OAUTH_MECHS = '["oauthbearer", "xoauth2"]'
OAUTH_USER = "alice@example.org"     # the fixture's "email" claim


def oauth_sections(server: OAuthServer, hole_port: int) -> str:
    return f"""
[directory.oauth]
type = "oauth"
jwks-url = "{server.jwks_url}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
timeout = "2s"

[directory.intro]
type = "oauth"
introspection.url = "{server.introspection_url}"
introspection.client-id = "{CLIENT_ID}"
introspection.client-secret = "{CLIENT_SECRET}"
timeout = "2s"

[directory.hole]
type = "oauth"
jwks-url = "http://127.0.0.1:{hole_port}/jwks"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
timeout = "500ms"
"""


@pytest.mark.service("oauth-http")
def test_directory_oauth(tmp_path: Path, oauth_server: OAuthServer, black_hole) -> None:
    lookup = by_listener("oauth/oauth", intro="directory/intro", hole="directory/hole")
    config = gate_config(lookup, oauth_sections(oauth_server, black_hole.port), mechanisms=OAUTH_MECHS,
                         extra_listeners=("intro", "hole"))
    with run_server(config, tmp_path) as srv:
        # The provider is down before smtpgate ever fetched its keys: 454, not counted; then it is back.
        token = oauth_server.mint()
        assert_unavailable_not_counted(srv, "smtp", OAUTH_USER, token, down=oauth_server.down,
                                       up=oauth_server.up, mech="OAUTHBEARER", bound=2.6)
        assert oauth_server.jwks_hits == 1

        now = int(time.time())
        assert parallel(login, [
            (srv, "submission", OAUTH_USER, oauth_server.mint(), "OAUTHBEARER"),
            (srv, "submissions", OAUTH_USER, oauth_server.mint(key=oauth_server.ec), "XOAUTH2"),
            (srv, "smtp", OAUTH_USER, oauth_server.mint(exp=now - 3600), "OAUTHBEARER"),
            (srv, "smtp", OAUTH_USER, oauth_server.mint(aud="another-app"), "XOAUTH2"),
            (srv, "smtp", "bob@example.org", oauth_server.mint(), "OAUTHBEARER"),   # someone else's token
            (srv, "smtp", OAUTH_USER, oauth_server.mint_alg_none(), "OAUTHBEARER"),
        ]) == [OK, OK] + [INVALID] * 4

        # A rejected token gets RFC 7628's JSON error challenge first.
        c = connect(srv, "smtp")
        try:
            forged = oauth_server.mint_hs256_with_public_key()
            challenge = c.cmd("AUTH OAUTHBEARER " + b64(f"n,,\x01auth=Bearer {forged}\x01\x01"))
            assert challenge.startswith("334 ")
            assert b'"status":"invalid_token"' in base64.b64decode(challenge[4:]).replace(b" ", b"")
            assert c.cmd("AQ==") == INVALID
        finally:
            c.close()

        for mech, listener, marker in (("oauthbearer", "submission", "oauth-ob"), ("xoauth2", "submissions", "oauth-x2")):
            r = msmtp(srv, listener, OAUTH_USER, oauth_server.mint(), marker, tmp_path, mech=mech)
            assert r.returncode == 0, r.stderr
            assert_spooled(srv, OAUTH_USER, marker)
        r = msmtp(srv, "submission", OAUTH_USER, oauth_server.mint(exp=now - 3600), "oauth-no", tmp_path,
                  mech="oauthbearer")
        assert r.returncode == 77, r.stderr       # msmtp: authentication failed

        # RFC 7662 introspection: every token is asked about, so "down" is visible at once.
        oauth_server.register_opaque("opaque-token-1", active=True, username=OAUTH_USER)
        assert login(srv, "intro", OAUTH_USER, "opaque-token-1", "XOAUTH2") == OK
        assert login(srv, "intro", OAUTH_USER, "opaque-token-2", "OAUTHBEARER") == INVALID
        assert_unavailable_not_counted(srv, "intro", OAUTH_USER, "opaque-token-1", down=oauth_server.down,
                                       up=oauth_server.up, mech="XOAUTH2", bound=2.6)
        assert_black_hole(srv, "hole", OAUTH_USER, oauth_server.mint(), timeout=0.5, mech="OAUTHBEARER")


# ====================================================================================================
# directory/<id> type = "internal" (smtpgate's own user store)

STORE_CLI_USER = ("carol@example.org", "Carol's pw 1")        # created with `smtpgate user add`
STORE_API_USER = ("dan@example.org", "dan-pw-2")              # created with UserStore


async def add_user(url: str, user: str, password: str, addresses: list[str] = []) -> None:  # noqa: B006
    async with UserStore(url) as store:
        await store.add_user(user, password, addresses)


@pytest.mark.service("postgres")
def test_directory_internal(tmp_path: Path, pg_url: str) -> None:
    pki = make_pki(tmp_path / "pki")
    gate = Gate(urllib.parse.urlsplit(pg_url).port or 5432)
    sections = f"""
[directory.users]
type = "internal"
store = "sqlite://{tmp_path}/users.db"

[directory.pgusers]
type = "internal"
store = "{with_port(pg_url, gate.port)}"
timeout = "700ms"
"""
    lookup = by_listener("users/users", pg="directory/pgusers")
    config = gate_config(lookup, sections, mechanisms='["plain", "login", "scram-sha-256"]',
                         extra_listeners=("pg",))
    cfg_file = tmp_path / "smtpgate.toml"
    cfg_file.write_text(config.replace("{pki_cert}", str(pki.cert)).replace("{pki_key}", str(pki.key))
                        .replace("{tmp}", str(tmp_path)))
    try:
        # The operator's way: `smtpgate user add`, password on stdin (stored as argon2id + SCRAM keys).
        add = subprocess.run([SMTPGATE, "user", "add", STORE_CLI_USER[0], "--address", "c.one@example.org",
                              "--config", str(cfg_file), "--directory", "users", "--password-stdin"],
                             input=STORE_CLI_USER[1] + "\n", capture_output=True, text=True, timeout=60)
        assert add.returncode == 0, add.stderr
        asyncio.run(add_user(f"sqlite://{tmp_path}/users.db", *STORE_API_USER))
        asyncio.run(add_user(with_port(pg_url, gate.port), *STORE_API_USER, ["d.two@example.org"]))

        with run_server(config, tmp_path, pki=pki) as srv:
            assert parallel(login, [
                (srv, "submission", *STORE_CLI_USER), (srv, "submissions", *STORE_API_USER, "LOGIN"),
                (srv, "pg", *STORE_API_USER),
                (srv, "smtp", STORE_CLI_USER[0], STORE_API_USER[1]), (srv, "smtp", "nobody@example.org", "x"),
                (srv, "pg", STORE_CLI_USER[0], STORE_CLI_USER[1]),      # exists in the SQLite store only
            ]) == [OK, OK, OK, INVALID, INVALID, INVALID]

            c = connect(srv, "submission")
            try:
                assert auth(c, *STORE_CLI_USER) == OK
                assert c.cmd(f"MAIL FROM:<{STORE_API_USER[0]}>") == NOT_OWNED
                send(c, "c.one@example.org", "internal-raw")      # the --address given to `user add`
            finally:
                c.close()
            assert_spooled(srv, STORE_CLI_USER[0], "internal-raw", sender="c.one@example.org")
            r = swaks(srv, "submission", *STORE_CLI_USER, "internal-swaks")
            assert r.returncode == 0, r.stdout + r.stderr
            assert_spooled(srv, STORE_CLI_USER[0], "internal-swaks")
            # The stored SCRAM keys let SCRAM work without any plaintext in the store.
            r = msmtp(srv, "submissions", *STORE_API_USER, "internal-scram", tmp_path, mech="scram-sha-256")
            assert r.returncode == 0, r.stderr
            assert_spooled(srv, STORE_API_USER[0], "internal-scram")

            assert_unavailable_not_counted(srv, "pg", *STORE_API_USER, down=gate.shut, up=gate.open, bound=1.2)
    finally:
        gate.close()




@pytest.mark.service("postgres")
def test_postgres_goes_silent_after_connect(tmp_path: Path, pg_url: str) -> None:
    """A firewall starts dropping everything between smtpgate and PostgreSQL, pooled connections included:
    db/<id> and the internal store must still answer 454 at their timeout."""
    asyncio.run(make_pg_db(pg_url))
    asyncio.run(add_user(pg_url, *STORE_API_USER))
    gate = Gate(urllib.parse.urlsplit(pg_url).port or 5432)
    sections = db_sections(with_port(pg_url, gate.port), timeout="1s") + f"""
[directory.pgusers]
type = "internal"
store = "{with_port(pg_url, gate.port)}"
timeout = "1s"
"""
    try:
        with run_server(gate_config(by_listener("db/sql/auth", hole="directory/pgusers"), sections), tmp_path) as srv:
            assert parallel(login, [(srv, "smtp", *DB_JOHN), (srv, "hole", *STORE_API_USER)]) == [OK, OK]
            gate.freeze()
            try:
                assert_black_hole(srv, "smtp", *DB_JOHN, timeout=1.0)
                assert_black_hole(srv, "hole", *STORE_API_USER, timeout=1.0)
            finally:
                gate.thaw()
            assert parallel(login, [(srv, "smtp", *DB_JOHN), (srv, "hole", *STORE_API_USER)]) == [OK, OK]
    finally:
        gate.close()




@pytest.mark.service("postgres")
def test_directory_internal_store_down_at_startup(tmp_path: Path, pg_url: str, black_hole) -> None:
    asyncio.run(add_user(pg_url, *STORE_API_USER))
    gate = Gate(urllib.parse.urlsplit(pg_url).port or 5432)
    sections = f"""
[directory.pgusers]
type = "internal"
store = "{with_port(pg_url, gate.port)}"
timeout = "700ms"

[directory.hole]
type = "internal"
store = "{with_port(pg_url, black_hole.port)}"
timeout = "500ms"
"""
    config = gate_config(by_listener("directory/pgusers", hole="directory/hole"), sections)
    try:
        gate.shut()
        with run_server(config, tmp_path) as srv:
            assert_unavailable_not_counted(srv, "smtp", *STORE_API_USER, down=gate.shut, up=gate.open, bound=1.2)
            assert_black_hole(srv, "hole", *STORE_API_USER, timeout=0.5)
    finally:
        gate.close()
