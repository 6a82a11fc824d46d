"""The AUTH stage over real sockets: every row of SPEC §4.2, which outcomes count toward
``errors.total``, ``require``, the EHLO advertisement of SPEC §4.1, line limits and pipelining.

Credentials go through the real ``list/<id>`` lookup (plaintext, doveadm ``{SHA512-CRYPT}`` and our own
argon2id hashes) -- never a fake authenticator. The helpers are in ``tests/fixtures/auth_session.py``,
shared with the other ``test_auth_*.py`` modules.
"""
from __future__ import annotations

import ssl
from typing import Iterator

import pytest

from smtpgate.lookup.secrets import hash_password
from tests.fixtures.auth_session import (  # noqa: F401  (some only for the names used below)
    ALREADY, BAD_BASE64, CANCELLED, DISABLED, ENCRYPT, IN_TRANSACTION, INVALID, MALFORMED, NO_INITIAL, NO_MECH, OK,
    PASSWORD_PROMPT, REQUIRED, TEMPFAIL, TOO_LONG, TOO_MANY, UNSUPPORTED, USERNAME_PROMPT, auth_line, b64, doveadm_pw,
    expect_disconnect, make_user_store, open_session, plain_ir,
)
from tests.fixtures.oauth_server import AUDIENCE, ISSUER
from tests.fixtures.oauth_server import _oauth_server_module, oauth_server  # noqa: F401  (fixtures)
from tests.fixtures.server import SERVER_HEAD, RunningServer, listeners, run_server
from tests.smtpclient import Raw, client_tls

# --- the server these tests share ---------------------------------------------------------------------

JOHN, JOHN_PW = "john@example.org", "john's secret"
CRYPT, CRYPT_PW = "crypt@example.org", "crypt-pw"     # {SHA512-CRYPT} made by doveadm
ARGON, ARGON_PW = "argon@example.org", "argon-pw"     # argon2id made by smtpgate's hash_password
ALL_MECHS = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-1"]

STAGE_CONFIG = SERVER_HEAD + listeners("smtp", "submission", "submissions", "noauth", "nolookup", "tlsdep",
                                       implicit=("submissions",)) + """
[session.auth]
# Names in any case: mechanism names are case-insensitive, in config as on the wire.
mechanisms = [ { if = "listener", eq = "noauth", then = [] },
               { all-of = [ { if = "listener", eq = "tlsdep" }, { if = "tls", eq = false } ], then = ["cram-md5"] },
               { if = "listener", eq = "tlsdep", then = ["plain", "login"] },
               { else = ["plain", "Login", "CRAM-md5", "scram-sha-256", "SCRAM-SHA-1", "scram-sha-256-plus"] } ]
lookup = [ { if = "listener", eq = "nolookup", then = false }, { else = "list/users" } ]
require = [ { if = "listener", eq = "smtp", then = false }, { else = true } ]
allow-plain-text = [ { if = "listener", eq = "smtp", then = true }, { else = false } ]

[session.auth.errors]
total = 3
wait = "1ms"

[list]
users = ["%(john)s:%(john_pw)s", "%(crypt)s:%(crypt_hash)s", "%(argon)s:%(argon_hash)s"]
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    config = STAGE_CONFIG % {"john": JOHN, "john_pw": JOHN_PW, "crypt": CRYPT,
                             "crypt_hash": doveadm_pw("SHA512-CRYPT", CRYPT_PW),
                             "argon": ARGON, "argon_hash": hash_password(ARGON_PW)}
    with run_server(config, tmp_path_factory.mktemp("auth-stage")) as running:
        yield running


# Where AUTH PLAIN is usable: cleartext with allow-plain-text, after STARTTLS, implicit TLS.
TRANSPORTS = {
    "cleartext": dict(listener="smtp"),
    "starttls": dict(listener="submission", starttls=True),
    "implicit": dict(listener="submissions", implicit=True),
}


def session(srv: RunningServer, transport: str, **kw) -> Raw:
    return open_session(srv, **TRANSPORTS[transport], **kw)


# --- §4.2: success, and each user's secret format ------------------------------------------------------

@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("user,password", [(JOHN, JOHN_PW), (CRYPT, CRYPT_PW), (ARGON, ARGON_PW)],
                         ids=["plaintext", "sha512-crypt", "argon2id"])
def test_plain_success_every_transport(srv, transport, user, password):
    c = session(srv, transport)
    assert c.cmd(f"AUTH PLAIN {plain_ir(user, password)}") == OK
    c.close()


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_wrong_credentials_are_535(srv, transport):
    c = session(srv, transport)
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, 'wrong')}") == INVALID
    assert c.cmd(f"AUTH PLAIN {plain_ir('nobody@example.org', JOHN_PW)}") == INVALID
    assert c.cmd(f"AUTH PLAIN {plain_ir(CRYPT, JOHN_PW)}") == INVALID
    c.close()


def test_empty_challenge_is_exactly_334_space(srv):
    c = session(srv, "starttls")
    c.send("AUTH PLAIN\r\n")
    assert c.line() == b"334 "          # trailing space, nothing else (RFC 4954 §4)
    assert c.cmd(plain_ir(JOHN, JOHN_PW)) == OK
    c.close()


def test_login_prompts_and_initial_response(srv):
    c = session(srv, "implicit")
    assert c.cmd("AUTH LOGIN") == USERNAME_PROMPT
    assert c.cmd(b64(JOHN)) == PASSWORD_PROMPT
    assert c.cmd(b64(JOHN_PW)) == OK
    c.close()
    c = session(srv, "implicit")
    assert c.cmd(f"AUTH LOGIN {b64(ARGON)}") == PASSWORD_PROMPT
    assert c.cmd(b64(ARGON_PW)) == OK
    c.close()


def test_equals_sign_is_an_empty_initial_response(srv):
    c = session(srv, "starttls")
    # LOGIN: an empty initial response is no username yet -- the username prompt follows.
    assert c.cmd("AUTH LOGIN =") == USERNAME_PROMPT
    assert c.cmd("*") == CANCELLED
    # PLAIN: an empty message is not a PLAIN message (RFC 4616), so it is malformed -- not base64 garbage.
    assert c.cmd("AUTH PLAIN =") == MALFORMED
    c.close()


def test_mechanism_names_are_case_insensitive(srv):
    c = session(srv, "starttls")
    assert c.cmd("auth login") == USERNAME_PROMPT
    assert c.cmd("*") == CANCELLED
    assert c.cmd(f"aUtH pLaIn {plain_ir(JOHN, JOHN_PW)}") == OK
    c.close()


def test_cancel_bad_base64_and_malformed(srv):
    c = session(srv, "implicit")
    assert c.cmd("AUTH PLAIN") == "334 "
    assert c.cmd("*") == CANCELLED
    c.close()
    c = session(srv, "implicit")
    assert c.cmd("AUTH PLAIN !!notbase64!!") == BAD_BASE64
    assert c.cmd("AUTH PLAIN") == "334 "
    assert c.cmd("Zm9v=YmFy") == BAD_BASE64          # padding in the middle is not base64
    c.close()
    c = session(srv, "implicit")
    assert c.cmd(f"AUTH PLAIN {b64('only-one-field')}") == MALFORMED
    c.close()


def test_auth_without_mechanism(srv):
    c = session(srv, "starttls")
    assert c.cmd("AUTH") == NO_MECH
    assert c.cmd("AUTH ") == NO_MECH
    c.close()


def test_unknown_or_unusable_mechanism_is_504(srv):
    c = session(srv, "starttls")
    assert c.cmd("AUTH GSSAPI") == UNSUPPORTED
    assert c.cmd("AUTH XOAUTH2 " + b64("user=x\x01auth=Bearer y\x01\x01")) == UNSUPPORTED  # not configured
    assert c.cmd("AUTH OAUTHBEARER") == UNSUPPORTED    # implemented, but the list lookup has no tokens
    c.close()
    c = open_session(srv, "tlsdep")                    # only CRAM-MD5 is configured before TLS here
    assert c.cmd("AUTH SCRAM-SHA-256") == UNSUPPORTED
    c.close()


def test_plain_and_login_on_cleartext_are_538(srv):
    c = open_session(srv, "submission")                # allow-plain-text is false on this listener
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == ENCRYPT
    assert c.cmd("AUTH LOGIN") == ENCRYPT
    assert c.cmd("auth plain") == ENCRYPT
    c.close()


def test_auth_disabled_is_503(srv):
    for listener in ("noauth", "nolookup"):
        c = open_session(srv, listener)
        assert auth_line(c.ehlo) is None
        for _ in range(4):                             # never counted: the session stays open
            assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == DISABLED
        assert c.cmd("AUTH") == DISABLED
        assert c.cmd("NOOP") == "250 2.0.0 OK"
        c.close()


def test_already_authenticated_is_503(srv):
    c = session(srv, "starttls")
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == OK
    for _ in range(4):
        assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, 'wrong')}") == ALREADY
    assert c.cmd("AUTH LOGIN") == ALREADY
    assert c.cmd("NOOP") == "250 2.0.0 OK"
    c.close()


def test_auth_during_mail_transaction_is_503(srv):
    c = session(srv, "cleartext")                     # require is false on this listener
    assert c.cmd("MAIL FROM:<someone@remote.example>").startswith("250")
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == IN_TRANSACTION
    assert c.cmd("RSET") == "250 2.0.0 Reset state"
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == OK
    c.close()


def test_cram_md5_with_initial_response_is_501_not_counted(srv):
    c = session(srv, "starttls")
    for _ in range(4):
        assert c.cmd("AUTH CRAM-MD5 " + b64("john 0123456789abcdef0123456789abcdef")) == NO_INITIAL
    assert c.cmd("AUTH CRAM-MD5 =") == NO_INITIAL
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == OK
    c.close()


# --- errors.total: what counts ----------------------------------------------------------------------------

def _two_counted_failures(c: Raw) -> None:
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, 'wrong')}") == INVALID
    assert c.cmd("AUTH LOGIN") == USERNAME_PROMPT
    assert c.cmd("*") == CANCELLED


def test_limit_reached_421_then_close(srv):
    # 2 counted failures + 1 uncounted 504 + 1 counted = the limit (total = 3).
    c = session(srv, "starttls")
    _two_counted_failures(c)
    assert c.cmd("AUTH NOSUCHMECH") == UNSUPPORTED
    c.send(f"AUTH PLAIN {plain_ir('nobody@example.org', 'x')}\r\n")
    expect_disconnect(c, INVALID)


# Every counted outcome, as the failure that reaches the limit.
COUNTED = {
    "535": (lambda c: c.send(f"AUTH PLAIN {plain_ir(JOHN, 'nope')}\r\n"), INVALID),
    "cancel": (lambda c: (c.cmd("AUTH PLAIN"), c.send("*\r\n")), CANCELLED),
    "bad-base64-initial": (lambda c: c.send("AUTH PLAIN ***\r\n"), BAD_BASE64),
    "bad-base64-response": (lambda c: (c.cmd("AUTH LOGIN"), c.send("@@@@\r\n")), BAD_BASE64),
    "malformed": (lambda c: c.send(f"AUTH PLAIN {b64('a@b')}\r\n"), MALFORMED),
    "line-too-long": (lambda c: (c.cmd("AUTH LOGIN"), c.send("A" * 12292 + "\r\n")), TOO_LONG),
    "cram-wrong": (lambda c: (c.cmd("AUTH CRAM-MD5"), c.send(b64("john@example.org " + "0" * 32) + "\r\n")),
                   INVALID),
}


@pytest.mark.parametrize("kind", list(COUNTED))
def test_counted_failures(srv, kind):
    action, reply = COUNTED[kind]
    c = session(srv, "implicit")
    _two_counted_failures(c)
    action(c)
    expect_disconnect(c, reply)


# Outcomes that never count: after 2 counted failures, any number of these, then a third failure closes.
UNCOUNTED = {
    "no-mechanism": ("AUTH", NO_MECH),
    "unknown": ("AUTH KERBEROS_V4", UNSUPPORTED),
    "cram-ir": ("AUTH CRAM-MD5 " + b64("x " + "0" * 32), NO_INITIAL),
    "530-mail": ("MAIL FROM:<john@example.org>", REQUIRED),
    "530-rcpt": ("RCPT TO:<john@example.org>", REQUIRED),
}


@pytest.mark.parametrize("kind", list(UNCOUNTED))
def test_uncounted_outcomes(srv, kind):
    command, reply = UNCOUNTED[kind]
    c = session(srv, "starttls")
    _two_counted_failures(c)
    for _ in range(3):
        assert c.cmd(command) == reply
    assert c.cmd("NOOP") == "250 2.0.0 OK"
    c.send("AUTH PLAIN ?\r\n")
    expect_disconnect(c, BAD_BASE64)


def test_538_is_not_counted(srv):
    c = open_session(srv, "submission")
    assert c.cmd("AUTH CRAM-MD5").startswith("334 ")
    assert c.cmd("*") == CANCELLED
    assert c.cmd("AUTH CRAM-MD5").startswith("334 ")
    assert c.cmd("*") == CANCELLED
    for _ in range(3):
        assert c.cmd("AUTH PLAIN") == ENCRYPT
    c.send("AUTH SCRAM-SHA-1 =\r\n")
    expect_disconnect(c, MALFORMED)                    # an empty SCRAM client-first is malformed


def test_503_in_transaction_is_not_counted(srv):
    c = session(srv, "cleartext")
    _two_counted_failures(c)
    assert c.cmd("MAIL FROM:<a@remote.example>").startswith("250")
    for _ in range(3):
        assert c.cmd("AUTH LOGIN") == IN_TRANSACTION
    assert c.cmd("RSET") == "250 2.0.0 Reset state"
    c.send(f"AUTH PLAIN {plain_ir(JOHN, 'x')}\r\n")
    expect_disconnect(c, INVALID)


def test_failures_survive_starttls(srv):
    """RFC 3207 resets the session, but not the attacker's budget."""
    c = open_session(srv, "submission")
    assert c.cmd("AUTH CRAM-MD5").startswith("334 ")
    assert c.cmd("*") == CANCELLED
    assert c.cmd("AUTH CRAM-MD5").startswith("334 ")
    assert c.cmd("*") == CANCELLED
    assert c.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
    c.starttls(client_tls(srv.ca_file))
    assert c.cmd("EHLO again.test").startswith("250-")
    c.send(f"AUTH PLAIN {plain_ir(JOHN, 'x')}\r\n")
    expect_disconnect(c, INVALID)


def test_success_after_failures_and_limit_is_per_session(srv):
    c = session(srv, "starttls")
    _two_counted_failures(c)
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == OK
    c.close()
    c = session(srv, "starttls")                      # a new session starts with a clean count
    _two_counted_failures(c)
    assert c.cmd(f"AUTH PLAIN {plain_ir(ARGON, ARGON_PW)}") == OK
    c.close()


# --- line length -----------------------------------------------------------------------------------------

def test_12288_octet_response_accepted_longer_is_500(srv):
    # A 9 216-octet password is 12 288 octets of base64: the longest response RFC 4954 asks us to take.
    c = session(srv, "starttls")
    assert c.cmd("AUTH LOGIN") == USERNAME_PROMPT
    assert c.cmd(b64(JOHN)) == PASSWORD_PROMPT
    response = b64("p" * 9216)
    assert len(response) == 12288
    assert c.cmd(response) == INVALID                 # accepted and checked: just the wrong password
    assert c.cmd("AUTH LOGIN") == USERNAME_PROMPT
    assert c.cmd(b64(JOHN)) == PASSWORD_PROMPT
    assert c.cmd(response + "AAAA") == TOO_LONG       # 12 292 octets
    assert c.cmd("NOOP") == "250 2.0.0 OK"             # the rest of the line was discarded, session fine
    c.close()


def test_long_password_that_fills_the_line_authenticates(srv, tmp_path):
    password = "q" * 9216
    config = SERVER_HEAD + listeners("submissions", implicit=("submissions",)) + f"""
[session.auth]
mechanisms = ["login"]
lookup = "list/users"
[list]
users = ["long@example.org:{password}"]
"""
    with run_server(config, tmp_path) as s:
        c = open_session(s, "submissions", implicit=True)
        assert c.cmd("AUTH LOGIN") == USERNAME_PROMPT
        assert c.cmd(b64("long@example.org")) == PASSWORD_PROMPT
        assert c.cmd(b64(password)) == OK
        c.close()


# --- require -------------------------------------------------------------------------------------------

REQUIRE_BLOCKED = ["MAIL FROM:<john@example.org>", "RCPT TO:<john@example.org>", "DATA", "BDAT 10 LAST",
                   "VRFY john", "EXPN staff"]


@pytest.mark.parametrize("transport", ["starttls", "implicit"])
def test_require_530_and_what_stays_allowed(srv, transport):
    c = session(srv, transport)
    for command in REQUIRE_BLOCKED:
        assert c.cmd(command) == REQUIRED, command
    assert c.cmd("NOOP") == "250 2.0.0 OK"
    assert c.cmd("RSET") == "250 2.0.0 Reset state"
    assert c.cmd("HELO client.test") == "250 mx.test says hello"
    assert c.cmd("EHLO client.test").startswith("250-mx.test says hello")
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == OK
    assert c.cmd("MAIL FROM:<john@example.org>") == "250 2.1.0 Sender OK"
    assert c.cmd("RCPT TO:<x@remote.example>") == "250 2.1.5 Recipient OK"
    assert c.cmd("QUIT") == "221 2.0.0 Bye"
    assert c.closed()


def test_require_allows_starttls_and_quit(srv):
    c = open_session(srv, "submission")
    assert c.cmd("MAIL FROM:<john@example.org>") == REQUIRED
    assert c.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
    c.starttls(client_tls(srv.ca_file))
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd("DATA") == REQUIRED
    assert c.cmd("QUIT") == "221 2.0.0 Bye"
    assert c.closed()


def test_require_false_lets_mail_through(srv):
    c = session(srv, "cleartext")
    assert c.cmd("MAIL FROM:<a@remote.example>") == "250 2.1.0 Sender OK"
    c.close()


# --- §4.1 advertisement ----------------------------------------------------------------------------------

def test_advertisement_depends_on_tls_and_allow_plain_text(srv):
    # allow-plain-text = true (smtp): everything, before TLS too.
    c = open_session(srv, "smtp")
    assert auth_line(c.ehlo) == ALL_MECHS
    assert "250-STARTTLS" in c.ehlo
    c.close()
    # allow-plain-text = false: only the mechanisms that do not expose the password before TLS ...
    c = open_session(srv, "submission")
    assert auth_line(c.ehlo) == ["CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-1"]
    assert c.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
    c.starttls(client_tls(srv.ca_file))                 # TLS 1.3: no tls-unique, so no -PLUS
    ehlo = c.cmd("EHLO client.test")
    assert auth_line(ehlo) == ALL_MECHS and "STARTTLS" not in ehlo
    c.close()
    c = open_session(srv, "submissions", implicit=True)
    assert auth_line(c.ehlo) == ALL_MECHS and "STARTTLS" not in c.ehlo
    c.close()


def test_plus_advertised_with_tls_unique(srv):
    ctx = client_tls(srv.ca_file)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c = open_session(srv, "submissions", implicit=True, tls_ctx=ctx)
    assert auth_line(c.ehlo) == ALL_MECHS + ["SCRAM-SHA-256-PLUS"]
    c.close()
    # ... and never without TLS, even where allow-plain-text is true.
    c = open_session(srv, "smtp")
    assert c.cmd("AUTH SCRAM-SHA-256-PLUS") == UNSUPPORTED
    c.close()


def test_advertisement_hidden_once_authenticated(srv):
    c = session(srv, "starttls")
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == OK
    ehlo = c.cmd("EHLO client.test")
    assert ehlo.startswith("250-mx.test says hello") and auth_line(ehlo) is None
    c.close()


def test_mechanisms_if_block_reevaluated_after_starttls(srv):
    c = open_session(srv, "tlsdep")                      # tls = false: ["cram-md5"]
    assert auth_line(c.ehlo) == ["CRAM-MD5"]
    assert c.cmd("AUTH PLAIN") == UNSUPPORTED            # not configured now: 504, not 538
    assert c.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
    c.starttls(client_tls(srv.ca_file))
    ehlo = c.cmd("EHLO client.test")                     # tls = true: ["plain", "login"]
    assert auth_line(ehlo) == ["PLAIN", "LOGIN"]
    assert c.cmd("AUTH CRAM-MD5") == UNSUPPORTED
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == OK
    c.close()


def test_lookup_capabilities_limit_the_advertisement(tmp_path, oauth_server):
    store = make_user_store(tmp_path / "u.db", {"ann@example.org": "ann-pw"})
    config = SERVER_HEAD + listeners("internal", "oauth", "remote", implicit=("internal", "oauth")) + f"""
[session.auth]
mechanisms = ["plain", "login", "cram-md5", "scram-sha-256", "scram-sha-1", "oauthbearer", "xoauth2"]
lookup = [ {{ if = "listener", eq = "internal", then = "directory/u" }},
           {{ if = "listener", eq = "oauth", then = "oauth/o" }},
           {{ else = "list/hashed" }} ]
allow-plain-text = true

[directory.u]
type = "internal"
store = "{store}"

[directory.o]
type = "oauth"
jwks-url = "{oauth_server.jwks_url}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"

[list]
hashed = ["h@example.org:{hash_password('h-pw')}"]
"""
    with run_server(config, tmp_path / "srv") as s:
        # The internal store keeps argon2id + SCRAM keys: no plaintext, so no CRAM-MD5; no tokens either.
        c = open_session(s, "internal", implicit=True)
        assert auth_line(c.ehlo) == ["PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-1"]
        assert c.cmd("AUTH CRAM-MD5") == UNSUPPORTED
        assert c.cmd(f"AUTH PLAIN {plain_ir('ann@example.org', 'ann-pw')}") == OK
        c.close()
        # An OAuth directory verifies tokens only.
        c = open_session(s, "oauth", implicit=True)
        assert auth_line(c.ehlo) == ["OAUTHBEARER", "XOAUTH2"]
        assert c.cmd(f"AUTH PLAIN {plain_ir('ann@example.org', 'ann-pw')}") == UNSUPPORTED
        c.close()
        # A list of argon2id hashes: passwords only (cleartext listener with allow-plain-text).
        c = open_session(s, "remote")
        assert auth_line(c.ehlo) == ["PLAIN", "LOGIN"]
        assert c.cmd("AUTH SCRAM-SHA-1") == UNSUPPORTED
        c.close()


# --- lookup unavailable -------------------------------------------------------------------------------

def test_lookup_unavailable_is_454_and_not_counted(tmp_path):
    # sqlite in mode rw on a path whose directory does not exist: every query fails -> UNAVAILABLE.
    config = SERVER_HEAD + listeners("submissions", implicit=("submissions",)) + f"""
[session.auth]
mechanisms = ["plain", "login", "cram-md5", "scram-sha-256"]
lookup = "db/sql/auth"
[session.auth.errors]
total = 1
wait = "1ms"
[database.sql]
address = "sqlite://{tmp_path}/no/such/dir/users.db"
[database.sql.lookup]
auth = "SELECT secret FROM users WHERE name = ?"
"""
    import scramp
    with run_server(config, tmp_path / "srv") as s:
        c = open_session(s, "submissions", implicit=True)
        for _ in range(3):                                   # total = 1, yet the session survives
            assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == TEMPFAIL
        assert c.cmd("AUTH LOGIN") == USERNAME_PROMPT
        assert c.cmd(b64(JOHN)) == PASSWORD_PROMPT
        assert c.cmd(b64(JOHN_PW)) == TEMPFAIL
        assert c.cmd("AUTH CRAM-MD5").startswith("334 ")     # needs the secret: asked after the response
        assert c.cmd(b64("john " + "0" * 32)) == TEMPFAIL
        client = scramp.ScramClient(["SCRAM-SHA-256"], JOHN, JOHN_PW)
        assert c.cmd("AUTH SCRAM-SHA-256 " + b64(client.get_client_first())) == TEMPFAIL
        c.send("AUTH PLAIN %%%\r\n")                        # the first counted failure ends it
        expect_disconnect(c, BAD_BASE64)
        assert any("result=tempfail" in line for line in s.logs)


# --- pipelining ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["cleartext", "implicit"])
def test_pipelined_auth_mail_rcpt_in_one_packet(srv, transport):
    c = session(srv, transport, ehlo=False)
    c.send("EHLO client.test\r\n")
    assert "250 HELP" in c.reply()
    c.send(f"AUTH PLAIN {plain_ir(CRYPT, CRYPT_PW)}\r\nMAIL FROM:<{CRYPT}>\r\nRCPT TO:<x@remote.example>\r\n")
    assert c.reply() == OK
    assert c.reply() == "250 2.1.0 Sender OK"
    assert c.reply() == "250 2.1.5 Recipient OK"
    c.close()


def test_pipelined_failure_then_commands_keep_order(srv):
    c = session(srv, "implicit", ehlo=False)
    c.send(f"EHLO client.test\r\nAUTH PLAIN {plain_ir(ARGON, 'bad')}\r\nMAIL FROM:<{ARGON}>\r\n"
           f"AUTH PLAIN {plain_ir(ARGON, ARGON_PW)}\r\nMAIL FROM:<{ARGON}>\r\nNOOP\r\n")
    assert c.reply().startswith("250-mx.test says hello")
    assert c.reply() == INVALID
    assert c.reply() == REQUIRED
    assert c.reply() == OK
    assert c.reply() == "250 2.1.0 Sender OK"
    assert c.reply() == "250 2.0.0 OK"
    c.close()



# --- sequencing -------------------------------------------------------------------------------------------

def test_auth_needs_ehlo_first(srv):
    c = session(srv, "starttls", ehlo=False)
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == "503 5.5.1 Send EHLO first"
    assert c.cmd("HELO client.test") == "250 mx.test says hello"
    # AUTH is an ESMTP extension (RFC 4954): a HELO session never saw it offered.
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == "503 5.5.1 Send EHLO first"
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd(f"AUTH PLAIN {plain_ir(JOHN, JOHN_PW)}") == OK
    c.close()


def test_pipelined_response_after_empty_challenge(srv):
    c = session(srv, "implicit")
    c.send(f"AUTH PLAIN\r\n{plain_ir(JOHN, JOHN_PW)}\r\nMAIL FROM:<{JOHN}>\r\n")
    assert c.line() == b"334 "
    assert c.reply() == OK
    assert c.reply() == "250 2.1.0 Sender OK"
    c.close()


def test_overlong_initial_response_is_a_counted_auth_failure(srv):
    c = session(srv, "starttls")
    _two_counted_failures(c)
    c.send("AUTH PLAIN " + "A" * 12300 + "\r\n")
    expect_disconnect(c, TOO_LONG)
