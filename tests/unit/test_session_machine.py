"""The session core without sockets: plain bytes in, reply bytes out, requests answered by hand.

Nothing here opens a socket or starts an event loop. A command goes through ``Session.handle``; when a
stage needs the outside world it yields a request object (Authenticate, Sleep, StartTls, ReadData,
Deliver, ...) and the test answers it the way the transport would.
"""
from __future__ import annotations

import base64
import secrets

import pytest

from smtpgate.config.load import load_text
from smtpgate.delivery.base import RcptResult
from smtpgate.lookup import registry
from smtpgate.lookup.base import AuthResult, Credentials, Origin, Outcome, SecretRecord
from smtpgate.protocol.reader import TOO_LONG, DataResult, LineReader
from smtpgate.session import ListenerContext, Session, TlsInfo
from smtpgate.session.requests import (UNAVAILABLE, Authenticate, Compute, Contains, Deliver, GetSecret, ReadData,
                                       ReadLine, Sleep, StartTls)

CONFIG = """
[server]
hostname = "mx.test"
[server.listener.smtp]
bind = "127.0.0.1:0"
[server.listener.submission]
bind = "127.0.0.1:0"
[server.listener.lmtp]
bind = "127.0.0.1:0"
protocol = "lmtp"
[session.auth]
mechanisms = [ { if = "listener", ne = "smtp", then = ["plain", "login"] }, { else = [] } ]
lookup = [ { if = "listener", ne = "smtp", then = "list/users" }, { else = false } ]
require = [ { if = "listener", eq = "submission", then = true }, { else = false } ]
[session.auth.errors]
total = 2
wait = "250ms"
wait-spread = 0
[session.rcpt.lookup]
domains = "list/domains"
[session.data.limits]
size = 1000
[list]
users = ["john@example.org:secret"]
domains = ["example.org"]
# The guard's requests (cross-session counting) have their own tests: tests/unit/test_session_abuse.py
[server.auto-ban]
auth.rate = false
abuse.rate = false
"""

TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384")


@pytest.fixture(scope="module")
def settings():
    return load_text(CONFIG)


@pytest.fixture(scope="module")
def lookups(settings):
    return registry.build(settings)


def session(settings, lookups, listener="submission", tls=None, starttls=True) -> Session:
    ctx = ListenerContext(settings, settings.listeners[listener], lookups, starttls_available=starttls)
    return Session(ctx, "192.0.2.10", 40000, "127.0.0.1", 587, tls)


def out(s: Session) -> bytes:
    data = b"".join(s.out)
    s.out.clear()
    return data


def cmd(s: Session, line: bytes) -> bytes:
    """A command that needs nothing from outside: it must complete at once."""
    assert s.handle(line) is None, f"{line!r} asked for outside work"
    return out(s)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --- no sockets anywhere: greeting, EHLO ---------------------------------------------------------
def test_greeting(settings, lookups):
    assert session(settings, lookups).greeting == b"220 mx.test smtpgate at your service\r\n"


def test_ehlo_cleartext_offers_starttls_not_plain(settings, lookups):
    s = session(settings, lookups)
    assert cmd(s, b"EHLO client.test") == (b"250-mx.test says hello\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                           b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-SIZE 1000\r\n250-STARTTLS\r\n"
                                           b"250 HELP\r\n")


def test_ehlo_over_tls_offers_auth_not_starttls(settings, lookups):
    s = session(settings, lookups, tls=TLS)
    reply = cmd(s, b"ehlo client.test")
    assert b"250-AUTH PLAIN LOGIN\r\n" in reply and b"STARTTLS" not in reply


def test_ehlo_without_tls_configured(settings, lookups):
    assert b"STARTTLS" not in cmd(session(settings, lookups, starttls=False), b"EHLO x")


def test_helo_and_syntax(settings, lookups):
    s = session(settings, lookups, listener="smtp")
    assert cmd(s, b"EHLO") == b"501 5.5.4 Syntax: EHLO domain\r\n"
    assert cmd(s, b"HELO a b") == b"501 5.5.4 Syntax: HELO domain\r\n"
    assert cmd(s, b"HELO client.test") == b"250 mx.test says hello\r\n"


# --- sequencing ---------------------------------------------------------------------------------
def test_mail_needs_ehlo(settings, lookups):
    s = session(settings, lookups, listener="smtp")
    assert cmd(s, b"MAIL FROM:<a@b.test>") == b"503 5.5.1 Send EHLO first\r\n"
    assert cmd(s, b"RCPT TO:<a@example.org>") == b"503 5.5.1 Send MAIL first\r\n"
    assert cmd(s, b"DATA") == b"503 5.5.1 Send MAIL first\r\n"


def test_auth_required_commands(settings, lookups):
    s = session(settings, lookups, tls=TLS)
    cmd(s, b"EHLO c")
    for line in (b"MAIL FROM:<a@b.test>", b"RCPT TO:<a@example.org>", b"DATA", b"VRFY john", b"EXPN list",
                 b"BDAT 10 LAST"):
        assert cmd(s, line) == b"530 5.7.0 Authentication required.\r\n", line
    for line, reply in ((b"NOOP", b"250 2.0.0 OK\r\n"), (b"RSET", b"250 2.0.0 Reset state\r\n")):
        assert cmd(s, line) == reply


def test_simple_commands(settings, lookups):
    s = session(settings, lookups, listener="smtp")
    assert cmd(s, b"NOOP") == b"250 2.0.0 OK\r\n"
    assert cmd(s, b"noop ignored argument") == b"250 2.0.0 OK\r\n"
    assert cmd(s, b"HELP").startswith(b"214 2.0.0 ")
    assert cmd(s, b"VRFY john") == b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
    assert cmd(s, b"EXPN staff").startswith(b"252 ")
    assert cmd(s, b"FOO") == b"500 5.5.2 Syntax error, command unrecognized\r\n"
    assert not s.closing
    assert cmd(s, b"QUIT") == b"221 2.0.0 Bye\r\n"
    assert s.closing


# --- garbage --------------------------------------------------------------------------------------
def test_garbage_lines(settings, lookups):
    s = session(settings, lookups, listener="smtp")
    assert cmd(s, TOO_LONG) == b"500 5.5.6 Line too long\r\n"
    assert cmd(s, b"NOOP " + b"x" * 600) == b"500 5.5.6 Line too long\r\n"
    assert cmd(s, b"NO\x00OP") == b"500 5.5.2 Syntax error, command unrecognized\r\n"
    assert cmd(s, b"NOOP \x00") == b"500 5.5.2 Invalid character (NUL) in command\r\n"
    assert cmd(s, b"\xff\xfe\xfd") == b"500 5.5.2 Syntax error, command unrecognized\r\n"
    assert cmd(s, b"HELO \xff\xfe") == b"500 5.5.2 Invalid characters in command\r\n"
    assert cmd(s, b"") == b"500 5.5.2 Syntax error, command unrecognized\r\n"
    assert cmd(s, b"EHLO ok.test").startswith(b"250-")       # still usable
    assert not s.closing


def test_mail_line_has_room_for_auth_param(settings, lookups):
    s = session(settings, lookups, listener="smtp")
    cmd(s, b"EHLO c")
    long_mail = b"MAIL FROM:<" + b"a" * 60 + b"@example.org> AUTH=" + b"x" * 500
    assert len(long_mail) > 510
    assert not cmd(s, long_mail).startswith(b"500 5.5.6")


# --- AUTH: requests out, answers in --------------------------------------------------------------
def test_auth_plain_yields_authenticate_and_235(settings, lookups):
    s = session(settings, lookups, tls=TLS)
    cmd(s, b"EHLO c")
    gen = s.handle(b"AUTH PLAIN " + b64(b"\0john@example.org\0secret"))
    req = gen.send(None)
    assert isinstance(req, Authenticate)
    assert req.lookup is lookups["list/users"]
    # the lookup is told where the attempt comes from (issue 9 item 14: forwarded to Dovecot with IMAP ID)
    assert req.creds == Credentials("PLAIN", "john@example.org", "secret",
                                    origin=Origin("192.0.2.10", 40000, "127.0.0.1", 587))
    assert out(s) == b""                                       # nothing said before the answer
    with pytest.raises(StopIteration):
        gen.send(AuthResult(Outcome.VALID, account="john@example.org", addresses=frozenset({"john@example.org"})))
    assert out(s) == b"235 2.7.0 Authentication succeeded.\r\n"
    assert s.auth_account == "john@example.org" and s.vars.authenticated_as == "john@example.org"
    assert b"AUTH" not in cmd(s, b"EHLO c")
    assert cmd(s, b"AUTH PLAIN") == b"503 5.5.1 Already authenticated.\r\n"
    assert cmd(s, b"MAIL FROM:<john@example.org>") == b"250 2.1.0 Sender OK\r\n"


def test_auth_plain_empty_challenge_then_failure_waits_and_disconnects(settings, lookups):
    s = session(settings, lookups, tls=TLS)
    cmd(s, b"EHLO c")
    for attempt in (1, 2):
        gen = s.handle(b"AUTH PLAIN")
        assert isinstance(gen.send(None), ReadLine)
        assert out(s) == b"334 \r\n"
        req = gen.send(b64(b"\0john@example.org\0wrong"))
        assert isinstance(req, Authenticate) and req.creds.secret == "wrong"
        sleep = gen.send(AuthResult(Outcome.INVALID))
        assert sleep == Sleep(0.25)                                # errors.wait, before the reply
        assert out(s) == b""
        with pytest.raises(StopIteration):
            gen.send(None)
        reply = out(s)
        if attempt == 1:
            assert reply == b"535 5.7.8 Authentication credentials invalid.\r\n" and not s.closing
        else:
            assert reply == (b"535 5.7.8 Authentication credentials invalid.\r\n"
                             b"421 4.3.0 Too many authentication errors, disconnecting.\r\n")
            assert s.closing


def test_auth_unavailable_is_454_without_delay(settings, lookups):
    s = session(settings, lookups, tls=TLS)
    cmd(s, b"EHLO c")
    gen = s.handle(b"AUTH PLAIN " + b64(b"\0john@example.org\0secret"))
    gen.send(None)
    with pytest.raises(StopIteration):
        gen.send(AuthResult(Outcome.UNAVAILABLE, reason="down"))
    assert out(s) == b"454 4.7.0 Temporary authentication failure.\r\n"
    assert s.auth_failures == 0


def test_auth_login_prompts(settings, lookups):
    s = session(settings, lookups, tls=TLS)
    cmd(s, b"EHLO c")
    gen = s.handle(b"AUTH LOGIN")
    assert isinstance(gen.send(None), ReadLine)
    assert out(s) == b"334 VXNlcm5hbWU6\r\n"
    assert isinstance(gen.send(b64(b"john@example.org")), ReadLine)
    assert out(s) == b"334 UGFzc3dvcmQ6\r\n"
    req = gen.send(b64(b"secret"))
    assert isinstance(req, Authenticate) and req.creds.username == "john@example.org"
    with pytest.raises(StopIteration):
        gen.send(AuthResult(Outcome.VALID, account="john@example.org"))
    assert out(s) == b"235 2.7.0 Authentication succeeded.\r\n"


def test_auth_cancel_and_eof(settings, lookups):
    s = session(settings, lookups, tls=TLS)
    cmd(s, b"EHLO c")
    gen = s.handle(b"AUTH LOGIN")
    gen.send(None)
    assert isinstance(gen.send(b"*"), Sleep)
    with pytest.raises(StopIteration):
        gen.send(None)
    assert out(s).endswith(b"501 5.7.0 Authentication cancelled.\r\n")
    gen = s.handle(b"AUTH LOGIN")
    gen.send(None)
    with pytest.raises(StopIteration):
        gen.send(None)                                             # client went away mid-exchange
    assert s.closing


def test_auth_refusals_need_no_outside_work(settings, lookups):
    smtp = session(settings, lookups, listener="smtp", tls=TLS)
    cmd(smtp, b"EHLO c")
    assert cmd(smtp, b"AUTH PLAIN") == b"503 5.5.1 AUTH not allowed.\r\n"
    s = session(settings, lookups)
    assert cmd(s, b"AUTH PLAIN") == b"503 5.5.1 Send EHLO first\r\n"
    cmd(s, b"EHLO c")
    assert cmd(s, b"AUTH PLAIN") == b"538 5.7.11 Encryption required for requested authentication mechanism.\r\n"
    assert cmd(s, b"AUTH") == b"501 5.5.2 Syntax error, expected: AUTH mechanism [initial-response]\r\n"
    assert cmd(s, b"AUTH CRAM-MD5") == b"504 5.5.4 Authentication mechanism not supported.\r\n"


# --- STARTTLS -------------------------------------------------------------------------------------
def test_starttls_resets_the_session(settings, lookups):
    s = session(settings, lookups, listener="smtp")
    cmd(s, b"EHLO before.test")
    assert cmd(s, b"MAIL FROM:<a@b.test>") == b"250 2.1.0 Sender OK\r\n"
    gen = s.handle(b"STARTTLS")
    assert gen.send(None) == StartTls()
    assert out(s) == b"220 2.0.0 Ready to start TLS\r\n"
    with pytest.raises(StopIteration):
        gen.send(TLS)
    assert out(s) == b""                                           # no reply after the handshake
    assert s.tls is TLS and s.vars.tls is True
    assert s.helo is None and s.mail_from is None and s.vars.helo_domain is None
    assert cmd(s, b"MAIL FROM:<a@b.test>") == b"503 5.5.1 Send EHLO first\r\n"
    assert cmd(s, b"STARTTLS") == b"503 5.5.1 TLS already active\r\n"
    assert b"STARTTLS" not in cmd(s, b"EHLO after.test")


def test_starttls_reevaluates_connect_settings(settings, lookups):
    s = session(settings, lookups)
    cmd(s, b"EHLO c")
    gen = s.handle(b"STARTTLS")
    gen.send(None)
    with pytest.raises(StopIteration):
        gen.send(TLS)
    out(s)
    assert b"AUTH PLAIN LOGIN" in cmd(s, b"EHLO c")


def test_starttls_failure_closes(settings, lookups):
    s = session(settings, lookups)
    gen = s.handle(b"STARTTLS")
    gen.send(None)
    with pytest.raises(StopIteration):
        gen.send(None)
    assert s.closing


def test_starttls_refusals(settings, lookups):
    s = session(settings, lookups, starttls=False)
    assert cmd(s, b"STARTTLS") == b"502 5.5.1 STARTTLS not available\r\n"
    assert cmd(session(settings, lookups), b"STARTTLS now") == b"501 5.5.4 Syntax: STARTTLS\r\n"


# --- a whole transaction --------------------------------------------------------------------------
def test_transaction_requests(settings, lookups):
    s = session(settings, lookups, listener="smtp")
    cmd(s, b"EHLO client.test")
    assert cmd(s, b"MAIL FROM:<sender@remote.test> SIZE=100") == b"250 2.1.0 Sender OK\r\n"
    gen = s.handle(b"RCPT TO:<john@Example.ORG>")
    req = gen.send(None)
    assert req == Contains(lookups["list/domains"], "example.org")
    with pytest.raises(StopIteration):
        gen.send(True)
    assert out(s) == b"250 2.1.5 Recipient OK\r\n"
    gen = s.handle(b"RCPT TO:<x@elsewhere.test>")
    gen.send(None)
    with pytest.raises(StopIteration):
        gen.send(False)
    assert out(s) == b"550 5.7.1 Relay access denied.\r\n"
    gen = s.handle(b"RCPT TO:<y@example.org>")
    gen.send(None)
    with pytest.raises(StopIteration):
        gen.send(UNAVAILABLE)
    assert out(s).startswith(b"451 4.3.0")

    gen = s.handle(b"DATA")
    assert gen.send(None) == ReadData(1000)
    assert out(s) == b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
    reader = LineReader()
    reader.start_data(1000)
    reader.feed(b"Subject: t\r\n\r\n..dot\r\n.\r\n")
    deliver = gen.send(reader.read_data())
    assert isinstance(deliver, Deliver) and deliver.next_hop is None
    env = deliver.envelope
    assert env.mail_from == "sender@remote.test" and env.rcpt_to == ["john@example.org"]
    assert env.data.startswith(b"Received: from client.test ([192.0.2.10])")
    assert b"with ESMTP id " in env.data and env.data.endswith(b"Subject: t\r\n\r\n.dot\r\n")
    with pytest.raises(StopIteration):
        gen.send([RcptResult(250, "2.0.0 Ok: queued")])
    assert out(s) == b"250 2.0.0 Ok: queued\r\n"
    assert s.mail_from is None and s.rcpts == [] and s.messages == 1


def test_data_too_big(settings, lookups):
    s = session(settings, lookups, listener="smtp")
    cmd(s, b"EHLO c")
    assert cmd(s, b"MAIL FROM:<a@b.test> SIZE=1001").startswith(b"552 5.3.4")
    cmd(s, b"MAIL FROM:<a@b.test>")
    gen = s.handle(b"RCPT TO:<john@example.org>")
    gen.send(None)
    with pytest.raises(StopIteration):
        gen.send(True)
    out(s)
    gen = s.handle(b"DATA")
    gen.send(None)
    with pytest.raises(StopIteration):
        gen.send(DataResult(b"", 5000, True))
    assert out(s).endswith(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
    assert s.mail_from is None


def test_lmtp_requires_lhlo(settings, lookups):
    s = session(settings, lookups, listener="lmtp")
    assert cmd(s, b"EHLO c") == b"500 5.5.1 LMTP requires LHLO\r\n"
    assert cmd(s, b"HELO c") == b"500 5.5.1 LMTP requires LHLO\r\n"
    assert cmd(s, b"LHLO c").startswith(b"250-mx.test says hello")
    assert cmd(session(settings, lookups, listener="smtp"), b"LHLO c").startswith(b"500 5.5.2")


def test_feeding_raw_bytes_through_the_reader(settings, lookups):
    """Pipelined bytes, framed by the sans-IO reader and answered in order -- still no socket."""
    s = session(settings, lookups, listener="smtp")
    r = LineReader()
    r.feed(b"EHLO a.test\r\nNOOP\nRSET\r\nBOGUS\r\nQUIT\r\nNOOP\r\n")
    while not s.closing and (line := r.next_line()) is not None:
        assert s.handle(line) is None
    replies = out(s).split(b"\r\n")
    codes = [x[:3] for x in replies if x and x[3:4] == b" "]
    assert codes == [b"250", b"250", b"250", b"500", b"221"]
    assert r.next_line() == b"NOOP"                               # left unread after QUIT


def test_scram_key_derivation_runs_off_the_loop_once(settings):
    """A plaintext secret means PBKDF2 for SCRAM: the stage hands that to the executor (Compute), and only
    until the derived keys are cached."""
    cfg = load_text(CONFIG.replace('then = ["plain", "login"]', 'then = ["plain", "scram-sha-256"]'))
    lks = registry.build(cfg)
    password = secrets.token_hex(8)             # never derived before in this process
    record = SecretRecord(account="john@example.org", plaintext=password)
    first = b64(b"n,,n=john@example.org,r=" + secrets.token_hex(8).encode())

    def start() -> object:
        s = session(cfg, lks, tls=TLS)
        cmd(s, b"EHLO c")
        gen = s.handle(b"AUTH SCRAM-SHA-256 " + first)
        assert isinstance(gen.send(None), GetSecret)
        return s, gen, gen.send(record)

    s, gen, req = start()
    assert isinstance(req, Compute) and out(s) == b""          # no challenge computed on the loop
    assert isinstance(gen.send(req.fn(*req.args)), ReadLine)
    assert out(s).startswith(b"334 ")
    s, gen, req = start()                                        # same user and password: cached keys
    assert isinstance(req, ReadLine) and out(s).startswith(b"334 ")
