"""Client input never produces a traceback (issue 9 item 4), over real sockets.

``MAIL FROM:<a@example.org> SIZE=²`` used to pass ``str.isdigit()`` and fail in ``int()``: 451 and a
traceback. Numbers on the wire are ASCII digits only. Then hypothesis throws (a bounded number of) odd
command lines and AUTH exchanges at a running server: every reply must be an ordinary one, the session
must go on, and the log must hold no internal error."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.server import listeners, run_server
from tests.smtpclient import Raw

CONFIG = """
[server]
hostname = "mx.test"
""" + listeners("smtp", "submission") + """
[session.auth]
mechanisms = [ { if = "listener", eq = "submission", then = ["plain", "login", "cram-md5", "scram-sha-256",
                                                            "scram-sha-1"] },
               { else = [] } ]
lookup = [ { if = "listener", eq = "submission", then = "list/users" }, { else = false } ]
allow-plain-text = true
[session.auth.errors]
total = 1000000
wait = "1ms"

[session.rcpt.lookup]
domains = "list/domains"

[session.data.limits]
size = 100000

[list]
users = ["john@example.org:secret"]
domains = ["example.org"]

[queue]
path = "{tmp}/spool"
"""

BOUNDED = settings(max_examples=150, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _internal_errors(srv) -> list[str]:
    return [line for line in srv.logs if "internal error" in line.lower() or "Traceback" in line]


@pytest.mark.parametrize("size", ["\u00b2", "\u2460", "\u0664\u0662", "\uff11", "1_000", "+1", "-1", " 1", "0x10",
                                  "9" * 21, ""])
def test_size_takes_ascii_digits_only(tmp_path: Path, size: str) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = Raw(srv.port("smtp"))
        assert c.cmd("EHLO client.test").startswith("250")
        assert c.cmd(f"MAIL FROM:<a@example.org> SIZE={size}") == "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
        # the session goes on
        assert c.cmd("MAIL FROM:<a@example.org> SIZE=99999") == "250 2.1.0 Sender OK"
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("MAIL FROM:<a@example.org> SIZE=100001").startswith("552 ")
        c.close()
        assert _internal_errors(srv) == []


class _Client:
    """A session that is re-opened when the server ends it on purpose (error limits)."""

    def __init__(self, port: int, login: bool) -> None:
        self.port, self.login = port, login
        self.c: Raw | None = None

    def _open(self) -> Raw:
        c = Raw(self.port)
        assert c.cmd("EHLO client.test").startswith("250")
        if self.login:
            assert c.cmd("AUTH PLAIN " + base64.b64encode(b"\0john@example.org\0secret").decode()).startswith("235")
        return c

    def cmd(self, line: bytes) -> str:
        if self.c is None:
            self.c = self._open()
        try:
            reply = self.c.cmd(line)
        except (EOFError, ConnectionError):
            reply = "(closed)"
        if reply.startswith("421") or reply == "(closed)":
            self.c.close()
            self.c = None
        return reply


WORDS = st.sampled_from(["MAIL FROM:", "RCPT TO:", "MAIL FROM: ", "HELO", "EHLO", "VRFY", "EXPN", "HELP", "NOOP",
                         "BDAT", "AUTH", "mail from:", "RCPT TO: ", "XCLIENT", "ETRN"])
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=60)
PARAM = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["SIZE", "BODY", "AUTH", "SMTPUTF8", "RET", "NOTIFY", "X"]),
                  st.one_of(TEXT, st.sampled_from(["\u00b2", "\u2460", "12", "<>", "john+40example.org", "8BITMIME"])))
ARG = st.one_of(
    TEXT,
    st.builds(lambda a, p: f"<{a}> {p}", st.sampled_from(["a@example.org", "", "b@remote.test", "j\u00f6@example.org",
                                                          "@x:a@example.org", '"a b"@example.org']),
              st.lists(PARAM, max_size=3).map(" ".join)),
)


def test_fuzzed_commands_never_fail_internally(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        clients = [_Client(srv.port("smtp"), False), _Client(srv.port("submission"), True)]

        @BOUNDED
        @given(who=st.sampled_from([0, 1]), verb=WORDS, arg=ARG, raw=st.binary(max_size=30))
        def one(who: int, verb: str, arg: str, raw: bytes) -> None:
            line = (verb + arg).encode("utf-8")[:400] + raw.replace(b"\r", b"").replace(b"\n", b"")
            reply = clients[who].cmd(line + b"\r\n")
            assert not reply.startswith("451 4.3.0"), (line, reply)
            assert reply == "(closed)" or reply[:3].isdigit(), (line, reply)
            clients[who].cmd(b"RSET\r\n")

        one()
        assert _internal_errors(srv) == []


MECHS = st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-1", "plain", "XOAUTH2", "NOPE"])
SASL_BYTES = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda a, b, c: b"\0".join((a, b, c)), st.binary(max_size=10), st.binary(max_size=10),
              st.binary(max_size=10)),
    st.sampled_from([b"n,,n=john@example.org,r=abc", b"n,,n=\xc2\xb2,r=\xe2\x91\xa0", b"john 0123",
                     b"c=biws,r=x,p=AAAA", b"\x00\x00"]),
)


def test_fuzzed_auth_exchanges_never_fail_internally(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        client = _Client(srv.port("submission"), False)

        @BOUNDED
        @given(mech=MECHS, initial=st.one_of(st.none(), st.just(b"="), SASL_BYTES),
               answers=st.lists(st.one_of(SASL_BYTES, st.just(b"*"), st.text(max_size=20).map(str.encode)),
                                max_size=3))
        def one(mech: str, initial: bytes | None, answers: list[bytes]) -> None:
            ir = b"" if initial is None else b" " + (initial if initial == b"=" else base64.b64encode(initial))
            reply = client.cmd(b"AUTH " + mech.encode() + ir + b"\r\n")
            while reply.startswith("334") and answers:
                answer = answers.pop(0)
                line = answer if answer == b"*" else base64.b64encode(answer)
                reply = client.cmd(line + b"\r\n")
            if reply.startswith("334"):
                reply = client.cmd(b"*\r\n")
            assert not reply.startswith("451 4.3.0"), reply
            assert reply == "(closed)" or reply[:3] in ("235", "501", "535", "504", "538", "500", "503", "421", "454"), \
                reply
            if reply.startswith("235"):  # a lucky guess of john's exchange: start over
                client.c.close()
                client.c = None

        one()
        assert _internal_errors(srv) == []
