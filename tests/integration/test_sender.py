"""Sender rules after AUTH (SPEC §6, issue 5): ``session.auth.must-match-sender`` and ``MAIL FROM ... AUTH=``
(RFC 4954 §5), over real sockets, checked down to the envelope written to the spool."""
from __future__ import annotations

import asyncio
import base64
from pathlib import Path


from smtpgate.delivery.spool import read_message
from smtpgate.lookup.users import UserStore
from tests.fixtures.server import listeners, run_server
from tests.smtpclient import Raw

NOT_OWNED = "550 5.7.1 Sender address not owned by authenticated user."
BAD_AUTH_PARAM = "501 5.5.4 Malformed AUTH= parameter"

CONFIG = """
[server]
hostname = "mx.test"
""" + listeners("smtp", "submission") + """
[session.auth]
mechanisms = [ { if = "listener", eq = "submission", then = ["plain"] }, { else = [] } ]
lookup = "{lookup}"
allow-plain-text = true
{extra}
[session.auth.errors]
wait = "1ms"

# test_malformed_auth_parameter keeps one session going through more bad commands than the default
# session.errors.total (20).
[session.errors]
total = 1000

[session.rcpt.lookup]
domains = "list/domains"

[list]
users = ["john@local.test:secret", "j+t=x@Local.Test:secret2", "plainlogin:secret3"]
domains = ["local.test", "other.local.test"]

[queue]
path = "{tmp}/spool"
"""


def config(lookup: str = "list/users", extra: str = "", tail: str = "") -> str:
    return CONFIG.replace("{lookup}", lookup).replace("{extra}", extra) + tail


def login(port: int, user: str, password: str) -> Raw:
    c = Raw(port)
    assert c.cmd("EHLO client.test").startswith("250")
    ir = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    assert c.cmd(f"AUTH PLAIN {ir}") == "235 2.7.0 Authentication succeeded.", user
    return c


def mail_from(c: Raw, arg: str) -> str:
    """MAIL FROM, then RSET so the next attempt starts a fresh transaction."""
    reply = c.cmd(f"MAIL FROM:{arg}")
    assert c.cmd("RSET").startswith("250")
    return reply


def send(c: Raw, mail_arg: str, rcpt: str = "<rcpt@local.test>") -> str:
    assert c.cmd(f"MAIL FROM:{mail_arg}").startswith("250"), mail_arg
    assert c.cmd(f"RCPT TO:{rcpt}").startswith("250")
    assert c.cmd("DATA").startswith("354")
    return c.cmd(b"Subject: t\r\n\r\nbody\r\n.\r\n")


def spooled(srv) -> list[dict]:
    return sorted((read_message(str(f))[0] for f in srv.spool_files()), key=lambda env: env["received_at"])


def test_must_match_sender_with_login_address(tmp_path: Path) -> None:
    with run_server(config(), tmp_path) as srv:
        c = login(srv.port("submission"), "john@local.test", "secret")
        for own in ("<john@local.test>", "<John@LOCAL.TEST>", "<john@local.test.>", "<>",
                    "<@relay.test:john@local.test>", "<john@local.test> SIZE=100 BODY=8BITMIME"):
            assert mail_from(c, own) == "250 2.1.0 Sender OK", own
        for other in ("<other@local.test>", "<john@remote.test>", "<john@sub.local.test>", "<john@[127.0.0.1]>",
                      "<@local.test:other@local.test>", "<john+tag@local.test>", "<j+t=x@local.test>"):
            assert mail_from(c, other) == NOT_OWNED, other
        # A refused sender leaves no transaction behind.
        assert c.cmd("MAIL FROM:<other@local.test>") == NOT_OWNED
        assert c.cmd("RCPT TO:<rcpt@local.test>") == "503 5.5.1 Send MAIL first"
        assert send(c, "<JOHN@Local.Test>").startswith("250 2.0.0")
        c.close()

        # A login without a domain owns login@d for each local domain d (issue 9 item 13), nothing else.
        c = login(srv.port("submission"), "PLAINLOGIN", "secret3")
        for own in ("<plainlogin@local.test>", "<PlainLogin@Local.Test>", "<plainlogin@other.local.test>", "<>"):
            assert mail_from(c, own) == "250 2.1.0 Sender OK", own
        for other in ("<plainlogin@remote.test>", "<john@local.test>", "<plainlogin+x@local.test>",
                      "<plainlogin@sub.local.test>", "<plainlogin@[127.0.0.1]>", '<"plainlogin"@local.test>'):
            assert mail_from(c, other) == NOT_OWNED, other
        # and may name itself in AUTH=
        assert send(c, "<plainlogin@local.test> AUTH=plainlogin@other.local.test").startswith("250 2.0.0")
        c.close()

        # Unauthenticated sessions are not subject to it (relay protection guards them instead).
        c = Raw(srv.port("smtp"))
        assert c.cmd("EHLO client.test").startswith("250")
        assert send(c, "<anyone@remote.test>").startswith("250 2.0.0")
        c.close()
        envs = spooled(srv)
        assert [e["mail_from"] for e in envs] == ["JOHN@local.test", "plainlogin@local.test", "anyone@remote.test"]
        assert [e["authenticated_as"] for e in envs] == ["john@local.test", "plainlogin", None]
        assert envs[1]["auth_param"] == "plainlogin@other.local.test"


def _make_store(path: Path) -> None:
    async def go() -> None:
        async with UserStore(f"sqlite://{path}") as store:
            await store.add_user("alice@local.test", "alice pw", ["a.smith@local.test"])
            await store.add_user("bob", "bob pw")
            await store.add_alias("Bob@Local.Test", "bob")
            await store.add_alias("sales@local.test", "bob")
    asyncio.run(go())


def test_must_match_sender_with_user_store_aliases(tmp_path: Path) -> None:
    _make_store(tmp_path / "users.db")
    tail = f'\n[directory.u]\ntype = "internal"\nstore = "sqlite://{tmp_path}/users.db"\n'
    with run_server(config(lookup="users/u", tail=tail), tmp_path) as srv:
        c = login(srv.port("submission"), "Alice@local.test", "alice pw")
        for own in ("<alice@local.test>", "<A.Smith@LOCAL.test>", "<>"):
            assert mail_from(c, own) == "250 2.1.0 Sender OK", own
        for other in ("<bob@local.test>", "<sales@local.test>", "<alice@remote.test>"):
            assert mail_from(c, other) == NOT_OWNED, other
        c.close()

        c = login(srv.port("submission"), "bob", "bob pw")
        assert mail_from(c, "<bob@local.test>") == "250 2.1.0 Sender OK"
        assert mail_from(c, "<SALES@local.test>") == "250 2.1.0 Sender OK"
        assert mail_from(c, "<alice@local.test>") == NOT_OWNED
        assert mail_from(c, "<bob@remote.test>") == NOT_OWNED
        # AUTH= is kept for an alias the user owns, decoded from xtext.
        assert send(c, "<sales@local.test> AUTH=Sales@local.test").startswith("250 2.0.0")
        c.close()
        (env,) = spooled(srv)
        assert env["authenticated_as"] == "bob" and env["auth_param"] == "Sales@local.test"


def test_must_match_sender_disabled(tmp_path: Path) -> None:
    extra = "must-match-sender = false"
    with run_server(config(extra=extra), tmp_path) as srv:
        c = login(srv.port("submission"), "john@local.test", "secret")
        assert mail_from(c, "<ceo@local.test>") == "250 2.1.0 Sender OK"
        # The AUTH= identity still has to be the user's own, or it is not passed on.
        assert send(c, "<ceo@local.test> AUTH=ceo@local.test").startswith("250 2.0.0")
        assert send(c, "<ceo@local.test> AUTH=john@local.test").startswith("250 2.0.0")
        c.close()
        envs = spooled(srv)
        assert [(e["mail_from"], e["auth_param"]) for e in envs] == [
            ("ceo@local.test", "<>"), ("ceo@local.test", "john@local.test")]


def test_must_match_sender_per_user_if_block(tmp_path: Path) -> None:
    extra = ('must-match-sender = [ { if = "authenticated-as", eq = "J+T=X@local.test", then = false },\n'
             '                      { else = true } ]')
    with run_server(config(extra=extra), tmp_path) as srv:
        c = login(srv.port("submission"), "j+t=x@local.test", "secret2")
        assert mail_from(c, "<newsletter@local.test>") == "250 2.1.0 Sender OK"
        c.close()
        c = login(srv.port("submission"), "john@local.test", "secret")
        assert mail_from(c, "<newsletter@local.test>") == NOT_OWNED
        c.close()


def test_auth_parameter_kept_only_when_owned(tmp_path: Path) -> None:
    with run_server(config(), tmp_path) as srv:
        c = login(srv.port("submission"), "j+t=x@local.test", "secret2")
        # xtext: '+' and '=' arrive encoded as +2B and +3D.
        assert send(c, "<j+t=x@local.test> AUTH=j+2Bt+3Dx@local.test").startswith("250 2.0.0")
        assert send(c, "<j+t=x@local.test> AUTH=J+2Bt+3Dx@LOCAL.TEST").startswith("250 2.0.0")
        assert send(c, "<j+t=x@local.test> AUTH=<>").startswith("250 2.0.0")
        assert send(c, "<j+t=x@local.test> AUTH=john@local.test").startswith("250 2.0.0")  # not hers
        assert send(c, "<j+t=x@local.test> auth=j+2Bt+3Dx@local.test").startswith("250 2.0.0")
        assert send(c, "<j+t=x@local.test>").startswith("250 2.0.0")
        c.close()

        # Unauthenticated: whatever the client claims is treated as AUTH=<>.
        c = Raw(srv.port("smtp"))
        assert c.cmd("EHLO client.test").startswith("250")
        assert send(c, "<john@local.test> AUTH=john@local.test").startswith("250 2.0.0")
        c.close()

        envs = spooled(srv)
        assert [e["auth_param"] for e in envs] == [
            "j+t=x@local.test", "J+t=x@LOCAL.TEST", "<>", "<>", "j+t=x@local.test", None, "<>"]
        # the envelope keeps only the effective value, never the client's untrusted claim (issue 9 item 9)
        assert [e["params"].get("AUTH") for e in envs] == [
            "j+2Bt+3Dx@local.test", "J+2Bt+3Dx@LOCAL.TEST", "<>", "<>", "j+2Bt+3Dx@local.test", None, "<>"]


MALFORMED_AUTH = [
    "AUTH=",                            # empty
    "AUTH=john+@local.test",            # truncated escape
    "AUTH=john+4@local.test",
    "AUTH=john+G1@local.test",          # not hex
    "AUTH=jo=hn@local.test",            # '=' must be encoded
    "AUTH=j\u00f6hn@local.test",         # raw 8-bit is not xtext
    "AUTH=john+00@local.test",          # decodes to a control character
    "AUTH=+0D+0ARCPT",                  # decodes to CRLF
    "AUTH=+FF+FE@local.test",           # not UTF-8
    "AUTH=notanaddress",
    "AUTH=<john@local.test>",
    "AUTH=john@local.test@evil.test",
]


def test_malformed_auth_parameter(tmp_path: Path) -> None:
    with run_server(config(), tmp_path) as srv:
        anonymous = Raw(srv.port("smtp"))
        assert anonymous.cmd("EHLO client.test").startswith("250")
        for c in (login(srv.port("submission"), "john@local.test", "secret"), anonymous):
            for value in MALFORMED_AUTH:
                assert c.cmd(f"MAIL FROM:<john@local.test> {value}") == BAD_AUTH_PARAM, value
                # No transaction was started, and the session carries on.
                assert c.cmd("RCPT TO:<rcpt@local.test>") == "503 5.5.1 Send MAIL first"
            assert c.cmd("MAIL FROM:<john@local.test> AUTH=<>").startswith("250")
            c.close()
