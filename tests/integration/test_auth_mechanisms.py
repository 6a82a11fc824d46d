"""Every SASL mechanism's success and failure flows over the wire, against real lookups: ``list/<id>``
(plaintext, doveadm hashes, ``{SCRAM-SHA-256}`` keys), ``db/<id>/<q>`` on SQLite (PLAIN authzid grants),
the internal user store (SCRAM keys, no plaintext) and an OAuth directory backed by a real JWKS server."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import ssl

import pytest
import scramp

from tests.fixtures.oauth_server import AUDIENCE, ISSUER, OAuthServer
from tests.fixtures.oauth_server import _oauth_server_module, oauth_server  # noqa: F401  (fixtures)
from tests.fixtures.server import SERVER_HEAD, RunningServer, listeners, run_server
from tests.fixtures.auth_session import (
    CANCELLED, INVALID, MALFORMED, OK, PASSWORD_PROMPT, TEMPFAIL, USERNAME_PROMPT, auth_line, b64, doveadm_pw,
    make_user_store, open_session, plain_ir,
)
from tests.smtpclient import Raw, client_tls

JOHN, JOHN_PW = "john@example.org", "john's secret"
HASHED, HASHED_PW = "hashed@example.org", "hashed pw"       # {SSHA512}: passwords only
KEYS, KEYS_PW = "keys@example.org", "keys pw"               # doveadm {SCRAM-SHA-256} stored keys
BOSS, BOSS_PW = "boss@example.org", "boss pw"               # may act for shared@example.org (SQL)
ANN, ANN_PW = "ann@example.org", "ann pw"                   # internal user store


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    tmp = tmp_path_factory.mktemp("auth-mechs")
    db = tmp / "grants.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (name TEXT PRIMARY KEY, secret TEXT, may_act_for TEXT)")
        conn.execute("INSERT INTO users VALUES (?, ?, ?)",
                     (BOSS, doveadm_pw("SHA512-CRYPT", BOSS_PW), "shared@example.org"))
        conn.execute("INSERT INTO users VALUES (?, ?, NULL)", (JOHN, JOHN_PW))
    store = make_user_store(tmp / "users.db", {ANN: ANN_PW})
    keys = doveadm_pw("SCRAM-SHA-256", KEYS_PW)
    assert keys.startswith("{SCRAM-SHA-256}")
    config = SERVER_HEAD + listeners("submissions", "sql", "internal", "plus",
                                     implicit=("submissions", "sql", "internal", "plus")) + f"""
[session.auth]
mechanisms = [ {{ if = "listener", eq = "plus", then = ["scram-sha-256-plus", "scram-sha-1-plus", "scram-sha-256"] }},
               {{ else = ["plain", "login", "cram-md5", "scram-sha-256", "scram-sha-1"] }} ]
lookup = [ {{ if = "listener", eq = "sql", then = "db/sql/auth" }},
           {{ if = "listener", eq = "internal", then = "users/u" }},
           {{ else = "list/users" }} ]
[session.auth.errors]
total = 10
wait = "1ms"

[list]
users = ["{JOHN}:{JOHN_PW}", "{HASHED}:{doveadm_pw('SSHA512', HASHED_PW)}", "{KEYS}:{keys}"]

[database.sql]
address = "sqlite://{db}"
[database.sql.lookup]
auth = "SELECT secret, may_act_for FROM users WHERE name = ?"

[directory.u]
type = "internal"
store = "{store}"
"""
    with run_server(config, tmp / "srv") as running:
        yield running


def tls_session(srv: RunningServer, listener: str = "submissions", tls12: bool = False) -> Raw:
    ctx = client_tls(srv.ca_file)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c = open_session(srv, listener, implicit=True, tls_ctx=ctx)
    c.ctx = ctx  # type: ignore[attr-defined]
    return c


def challenge(reply: str) -> bytes:
    assert reply.startswith("334 "), reply
    return base64.b64decode(reply[4:], validate=True)


# --- PLAIN ------------------------------------------------------------------------------------------------

def test_plain_flows(srv):
    c = tls_session(srv)
    assert c.cmd(f"AUTH PLAIN {plain_ir(HASHED, 'Hashed pw')}") == INVALID
    assert c.cmd("AUTH PLAIN") == "334 "
    assert c.cmd(plain_ir(HASHED, HASHED_PW)) == OK
    c.close()


def test_plain_authzid_rule(srv):
    c = tls_session(srv)
    # an authzid naming oneself (any case) is fine
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW, authzid='John@Example.ORG')}") == OK
    c.close()
    c = tls_session(srv)
    # someone else: refused although the password is right (the list grants nobody anything)
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW, authzid=HASHED)}") == INVALID
    c.close()
    # SQL store with a may_act_for column: the grant is honoured, for that identity only.
    c = tls_session(srv, "sql")
    assert c.cmd(f"AUTH PLAIN {plain_ir(BOSS, BOSS_PW, authzid='other@example.org')}") == INVALID
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW, authzid='shared@example.org')}") == INVALID
    assert c.cmd(f"AUTH PLAIN {plain_ir(BOSS, BOSS_PW, authzid='shared@example.org')}") == OK
    # ... and the session then acts as that identity (must-match-sender is on by default).
    assert c.cmd("MAIL FROM:<boss@example.org>") == "550 5.7.1 Sender address not owned by authenticated user."
    assert c.cmd("MAIL FROM:<Shared@example.org>") == "250 2.1.0 Sender OK"
    c.close()
    c = tls_session(srv, "sql")
    assert c.cmd(f"AUTH PLAIN {plain_ir(BOSS, BOSS_PW)}") == OK
    assert c.cmd("MAIL FROM:<shared@example.org>") == "550 5.7.1 Sender address not owned by authenticated user."
    assert c.cmd("MAIL FROM:<boss@example.org>") == "250 2.1.0 Sender OK"
    c.close()


# --- LOGIN ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("initial", [False, True])
def test_login_flows(srv, initial):
    for password, result in (("wrong", INVALID), (HASHED_PW, OK)):
        c = tls_session(srv)
        if initial:
            assert c.cmd(f"AUTH LOGIN {b64(HASHED)}") == PASSWORD_PROMPT
        else:
            assert c.cmd("AUTH LOGIN") == USERNAME_PROMPT
            assert c.cmd(b64(HASHED)) == PASSWORD_PROMPT
        assert c.cmd(b64(password)) == result
        c.close()


# --- CRAM-MD5 ---------------------------------------------------------------------------------------------

def cram(c: Raw, user: str, password: str) -> str:
    chal = challenge(c.cmd("AUTH CRAM-MD5"))
    assert chal.startswith(b"<") and chal.endswith(b"@mx.test>")     # RFC 2195 msg-id form
    digest = hmac.new(password.encode(), chal, hashlib.md5).hexdigest()
    return c.cmd(b64(f"{user} {digest}"))


def test_cram_md5_flows(srv):
    c = tls_session(srv)
    assert cram(c, JOHN, "wrong") == INVALID
    assert cram(c, "nobody@example.org", JOHN_PW) == INVALID
    assert cram(c, HASHED, HASHED_PW) == INVALID         # no plaintext stored: cannot verify, same reply
    assert cram(c, JOHN, JOHN_PW) == OK
    c.close()
    c = tls_session(srv)
    assert c.cmd("AUTH CRAM-MD5").startswith("334 ")
    assert c.cmd(b64("no digest here")) == MALFORMED
    c.close()


def test_cram_md5_challenges_are_unique(srv):
    c = tls_session(srv)
    first = challenge(c.cmd("AUTH CRAM-MD5"))
    assert c.cmd("*") == CANCELLED
    second = challenge(c.cmd("AUTH CRAM-MD5"))
    assert first != second
    c.close()


# --- SCRAM ------------------------------------------------------------------------------------------------

def scram_exchange(c: Raw, mech: str, user: str, password: str, *, initial: bool = True,
                   channel_binding: tuple[str, bytes] | None = None) -> tuple[str, bytes]:
    """Drive scramp's client. Returns (final reply, salt the server offered)."""
    client = scramp.ScramClient([mech], user, password, channel_binding=channel_binding)
    first = client.get_client_first()
    if initial:
        reply = c.cmd(f"AUTH {mech} {b64(first)}")
    else:
        assert c.cmd(f"AUTH {mech}") == "334 "
        reply = c.cmd(b64(first))
    server_first = challenge(reply).decode()
    salt = base64.b64decode(dict(kv.split("=", 1) for kv in server_first.split(","))["s"])
    client.set_server_first(server_first)
    reply = c.cmd(b64(client.get_client_final()))
    if reply.startswith("334 "):
        client.set_server_final(challenge(reply).decode())   # raises unless the server proved the key
        reply = c.cmd("")
    return reply, salt


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_flows_plaintext_secret(srv, mech):
    c = tls_session(srv)
    assert scram_exchange(c, mech, JOHN, "wrong")[0] == INVALID
    assert scram_exchange(c, mech, JOHN, JOHN_PW, initial=False)[0] == OK
    c.close()


def test_scram_with_stored_keys(srv):
    c = tls_session(srv)
    assert scram_exchange(c, "SCRAM-SHA-256", KEYS, "wrong")[0] == INVALID
    assert scram_exchange(c, "SCRAM-SHA-256", KEYS, KEYS_PW)[0] == OK
    c.close()
    # The internal user store keeps only argon2id + SCRAM keys: SCRAM works, no plaintext needed.
    c = tls_session(srv, "internal")
    assert scram_exchange(c, "SCRAM-SHA-1", ANN, ANN_PW)[0] == OK
    c.close()


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_unknown_user_gets_a_salt_and_fails_like_a_wrong_password(srv, mech):
    c = tls_session(srv)
    unknown1 = scram_exchange(c, mech, "ghost@example.org", "whatever")
    unknown2 = scram_exchange(c, mech, "ghost@example.org", "other")
    wrong = scram_exchange(c, mech, JOHN, "wrong")
    c.close()
    assert unknown1[0] == unknown2[0] == wrong[0] == INVALID
    assert unknown1[1] == unknown2[1]                    # deterministic: repeating does not reveal a fake
    assert len(unknown1[1]) == len(wrong[1])
    # Right password for a user whose store can't do SCRAM ({SSHA512}): same failure as everybody else.
    c = tls_session(srv)
    assert scram_exchange(c, mech, HASHED, HASHED_PW)[0] == INVALID
    c.close()


def test_scram_plus_with_tls_unique(srv):
    c = tls_session(srv, "plus", tls12=True)
    assert auth_line(c.ehlo) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256"]
    cb = c.sock.get_channel_binding("tls-unique")
    assert scram_exchange(c, "SCRAM-SHA-256-PLUS", JOHN, JOHN_PW, channel_binding=("tls-unique", cb))[0] == OK
    c.close()
    c = tls_session(srv, "plus", tls12=True)
    # Binding to some other channel (as a man in the middle would) fails.
    assert scram_exchange(c, "SCRAM-SHA-1-PLUS", JOHN, JOHN_PW,
                          channel_binding=("tls-unique", b"\0" * len(cb)))[0] == INVALID
    # A client that supports -PLUS but claims the server offered none ("y") is a downgrade.
    client = scramp.ScramClient(["SCRAM-SHA-256"], JOHN, JOHN_PW)
    first = "y" + client.get_client_first()[1:]
    assert c.cmd(f"AUTH SCRAM-SHA-256 {b64(first)}") == INVALID
    c.close()


def test_scram_cancel_at_server_final(srv):
    c = tls_session(srv)
    client = scramp.ScramClient(["SCRAM-SHA-256"], JOHN, JOHN_PW)
    client.set_server_first(challenge(c.cmd(f"AUTH SCRAM-SHA-256 {b64(client.get_client_first())}")).decode())
    reply = c.cmd(b64(client.get_client_final()))
    client.set_server_final(challenge(reply).decode())
    assert c.cmd("*") == CANCELLED                       # nothing is granted until the client's last word
    assert auth_line(c.cmd("EHLO client.test")) is not None
    c.close()


# --- OAUTHBEARER / XOAUTH2 (a real JWKS server) ----------------------------------------------------------

def oauth_config(server: OAuthServer) -> str:
    return SERVER_HEAD + listeners("submissions", "smtp", implicit=("submissions",)) + f"""
[session.auth]
mechanisms = ["oauthbearer", "xoauth2", "plain"]
lookup = "oauth/o"
[session.auth.errors]
total = 3
wait = "1ms"

[directory.o]
type = "oauth"
jwks-url = "{server.jwks_url}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
timeout = "2s"
"""


def oauthbearer(token: str, user: str = "alice@example.org") -> str:
    gs2 = f"n,a={user}," if user else "n,,"
    return b64(f"{gs2}\x01host=mx.test\x01port=465\x01auth=Bearer {token}\x01\x01")


def xoauth2(token: str, user: str = "alice@example.org") -> str:
    return b64(f"user={user}\x01auth=Bearer {token}\x01\x01")


def test_oauthbearer_and_xoauth2_flows(tmp_path, oauth_server):
    with run_server(oauth_config(oauth_server), tmp_path) as s:
        good, forged = oauth_server.mint(), oauth_server.mint(iss="https://evil.example")
        c = open_session(s, "submissions", implicit=True)
        assert auth_line(c.ehlo) == ["OAUTHBEARER", "XOAUTH2"]         # PLAIN: this lookup has no passwords
        assert c.cmd(f"AUTH OAUTHBEARER {oauthbearer(good)}") == OK
        c.close()
        c = open_session(s, "submissions", implicit=True)
        assert c.cmd("AUTH OAUTHBEARER") == "334 "
        assert c.cmd(oauthbearer(good, user="")) == OK                 # no authzid: the token names the user
        c.close()
        c = open_session(s, "submissions", implicit=True)
        assert c.cmd(f"AUTH XOAUTH2 {xoauth2(good)}") == OK
        c.close()
        c = open_session(s, "submissions", implicit=True)
        assert c.cmd("AUTH XOAUTH2") == "334 "
        assert c.cmd(xoauth2(good)) == OK
        c.close()

        # RFC 7628 §3.2.2 error flow: JSON in a 334, the client's ^A, then 535.
        c = open_session(s, "submissions", implicit=True)
        error = json.loads(challenge(c.cmd(f"AUTH OAUTHBEARER {oauthbearer(forged)}")))
        assert error["status"] == "invalid_token"
        assert c.cmd("AQ==") == INVALID
        # msmtp answers with an empty line instead: accepted too.
        assert json.loads(challenge(c.cmd(f"AUTH OAUTHBEARER {oauthbearer(good, user='bob@example.org')}")))
        assert c.cmd("") == INVALID
        # anything else after the error challenge breaks the protocol (counted: the third closes)
        challenge(c.cmd(f"AUTH OAUTHBEARER {oauthbearer(forged)}"))
        c.send(oauthbearer(good) + "\r\n")
        assert c.reply() == MALFORMED
        assert c.reply() == "421 4.3.0 Too many authentication errors, disconnecting."
        assert c.closed()

        # XOAUTH2: {"status":"401",...}, the client's empty line, 535.
        c = open_session(s, "submissions", implicit=True)
        error = json.loads(challenge(c.cmd(f"AUTH XOAUTH2 {xoauth2(forged)}")))
        assert error["status"] == "401"
        assert c.cmd("") == INVALID
        assert c.cmd("AUTH XOAUTH2") == "334 "
        challenge(c.cmd(xoauth2(oauth_server.mint(exp=1))))            # long expired
        assert c.cmd("*") == CANCELLED
        assert c.cmd(f"AUTH XOAUTH2 {b64('user=alice@example.org')}") == MALFORMED
        c.close()

        # Cleartext listener without allow-plain-text: bearer tokens are not sent in the clear.
        c = open_session(s, "smtp")
        assert auth_line(c.ehlo) is None
        assert c.cmd(f"AUTH XOAUTH2 {xoauth2(good)}").startswith("538 5.7.11 ")
        assert c.cmd(f"AUTH PLAIN {plain_ir('a', 'b')}").startswith("504 ")   # not usable: 504, not 538
        c.close()


def test_oauth_provider_down_is_454_not_counted(tmp_path, oauth_server):
    token = oauth_server.mint()
    oauth_server.down()                                                # connection refused
    with run_server(oauth_config(oauth_server), tmp_path) as s:
        c = open_session(s, "submissions", implicit=True)
        for _ in range(4):                                             # total = 3: never reached
            assert c.cmd(f"AUTH OAUTHBEARER {oauthbearer(token)}") == TEMPFAIL
            assert c.cmd(f"AUTH XOAUTH2 {xoauth2(token)}") == TEMPFAIL
        oauth_server.up()
        assert c.cmd(f"AUTH XOAUTH2 {xoauth2(token)}") == OK
        c.close()
