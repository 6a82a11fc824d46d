"""The session's questions to the abuse guard, without sockets or a store: the test answers the requests
(AuthGate, AuthDone, RateCheck, Offence) the way the guard would and checks what the client sees."""
from __future__ import annotations

import base64

import pytest

from smtpgate.abuse import replies as AR
from smtpgate.abuse.requests import AuthDone, AuthGate, GateAnswer, Offence, RateCheck
from smtpgate.config.load import load_text
from smtpgate.lookup import registry
from smtpgate.lookup.base import AuthResult, Outcome
from smtpgate.session import ListenerContext, Session

from smtpgate.session.requests import Authenticate, Contains, Sleep

CONFIG = """
[server.listener.smtp]
bind = "127.0.0.1:0"
[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
total = 5
wait = "2s"
wait-spread = 0
[session.rcpt.lookup]
domains = "list/domains"
[list]
users = ["john@example.org:secret"]
domains = ["example.org"]
[[session.throttle]]
key = ["sender"]
rate = "1/1m"
[[session.throttle]]
key = ["rcpt-domain"]
rate = "1/1m"
"""


@pytest.fixture(scope="module")
def settings():
    return load_text(CONFIG)


def session(settings) -> Session:
    ctx = ListenerContext(settings, settings.listeners["smtp"], registry.build(settings), starttls_available=False)
    s = Session(ctx, "192.0.2.10", 40000, "127.0.0.1", 25, None)
    assert s.handle(b"EHLO c.test") is None
    s.out.clear()
    return s


def run(gen, answers: dict) -> list:
    """Drive a handler, answering each request with ``answers[type](req)``; returns the requests seen."""
    seen = []
    value = None
    while gen is not None:
        try:
            req = gen.send(value)
        except StopIteration:
            break
        seen.append(req)
        value = answers[type(req)](req)
    return seen


def plain(user: str, pw: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{pw}".encode())


def lookup(req):
    return AuthResult(Outcome.VALID, account="john@example.org") if req.creds.secret == "secret" \
        else AuthResult(Outcome.INVALID)


def test_the_gate_comes_before_the_lookup_and_learns_the_verdict(settings):
    s = session(settings)
    seen = run(s.handle(plain("john@example.org", "wrong")), {
        AuthGate: lambda r: GateAnswer("ok", 7.5, ticket="T"), Authenticate: lookup,
        AuthDone: lambda r: False, Sleep: lambda r: None})
    kinds = [type(r) for r in seen]
    assert kinds == [AuthGate, Authenticate, AuthDone, Sleep]
    gate, done, sleep = seen[0], seen[2], seen[3]
    assert gate.login == "john@example.org" and gate.secret == "wrong" and gate.wait == 2.0
    assert "wrong" not in repr(gate)                         # the secret never shows in logs/tracebacks
    assert done == AuthDone("T", "invalid")
    assert sleep.seconds == 7.5                              # the guard's (grown) wait
    assert b"".join(s.out) == b"535 5.7.8 Authentication credentials invalid.\r\n"
    s.out.clear()
    seen = run(s.handle(plain("john@example.org", "secret")), {
        AuthGate: lambda r: GateAnswer("ok", 2.0, ticket="U"), Authenticate: lookup})
    # A success cannot earn a ban: the guard learns it as a notice, and the 235 does not wait for it.
    assert type(seen[-1]) is Authenticate and s.notices == [AuthDone("U", "success")]
    assert b"".join(s.out).startswith(b"235 ")


@pytest.mark.parametrize("often,spread,drawn,expected", [
    (True, 0.25, 0.0, 2.0), (True, 0.25, 0.999, 2.4995), (True, 0.5, 0.5, 2.5), (False, 0.5, 0.999, 2.0)])
def test_the_failure_wait_of_an_address_that_failed_often_is_spread_upwards(often, spread, drawn, expected):
    """errors.wait-spread: once the guard says the address failed often lately, each failure's wait is
    drawn from [wait, wait x (1 + spread)], never shorter; otherwise it is exactly errors.wait."""
    settings = load_text(CONFIG.replace("wait-spread = 0", f"wait-spread = {spread}"))
    s = session(settings)
    s.ctx.random = lambda: drawn
    seen = run(s.handle(plain("john@example.org", "wrong")), {
        AuthGate: lambda r: GateAnswer("ok", r.wait, ticket="T", spread=often), Authenticate: lookup,
        AuthDone: lambda r: False, Sleep: lambda r: None})
    assert seen[-1] == Sleep(pytest.approx(expected))


def test_a_locked_login_fails_without_asking_the_lookup(settings):
    s = session(settings)
    seen = run(s.handle(plain("john@example.org", "secret")), {
        AuthGate: lambda r: GateAnswer("locked", 2.0, ticket="T"), AuthDone: lambda r: False,
        Sleep: lambda r: None})
    assert Authenticate not in [type(r) for r in seen]
    assert b"".join(s.out) == b"535 5.7.8 Authentication credentials invalid.\r\n" and not s.closing


def test_a_banned_address_fails_at_once_and_is_closed(settings):
    s = session(settings)
    seen = run(s.handle(plain("john@example.org", "x")), {
        AuthGate: lambda r: GateAnswer("banned", 2.0, ticket="T"), AuthDone: lambda r: True, Sleep: lambda r: None})
    assert Authenticate not in [type(r) for r in seen]
    assert [r.seconds for r in seen if type(r) is Sleep] == [0.0]
    assert b"".join(s.out) == b"535 5.7.8 Authentication credentials invalid.\r\n" + AR.BANNED and s.closing


def test_the_failure_that_earns_a_ban_closes_the_session(settings):
    s = session(settings)
    run(s.handle(plain("john@example.org", "x")), {
        AuthGate: lambda r: GateAnswer("ok", 1.0, ticket="T"), Authenticate: lookup, AuthDone: lambda r: True,
        Sleep: lambda r: None})
    assert b"".join(s.out).endswith(AR.BANNED) and s.closing


def test_a_tempfail_is_reported_as_such(settings):
    s = session(settings)
    seen = run(s.handle(plain("john@example.org", "x")), {
        AuthGate: lambda r: GateAnswer("ok", 1.0, ticket="T"),
        Authenticate: lambda r: AuthResult(Outcome.UNAVAILABLE, reason="down")})
    assert AuthDone not in [type(r) for r in seen] and s.notices == [AuthDone("T", "tempfail")]
    assert b"".join(s.out).startswith(b"454 ")


def test_rate_checks_at_mail_and_rcpt_and_offences(settings):
    s = session(settings)
    senders = []
    seen = run(s.handle(b"MAIL FROM:<a@remote.test>"), {RateCheck: lambda r: senders.append(r.vars.sender) or False})
    assert [r.stage for r in seen] == ["mail"] and senders == ["a@remote.test"]
    assert b"".join(s.out) == AR.RATE_LIMITED and s.mail_from is None
    s.out.clear()
    run(s.handle(b"MAIL FROM:<a@remote.test>"), {RateCheck: lambda r: True})
    assert s.mail_from is not None
    s.out.clear()
    seen = run(s.handle(b"RCPT TO:<x@example.org>"), {Contains: lambda r: True, RateCheck: lambda r: False})
    assert b"".join(s.out) == AR.RATE_LIMITED and not s.rcpts
    s.out.clear()
    seen = run(s.handle(b"RCPT TO:<x@gmail.test>"), {Contains: lambda r: False, Offence: lambda r: True})
    assert seen[-1] == Offence("abuse", s.vars.remote_ip)
    assert b"".join(s.out) == b"550 5.7.1 Relay access denied.\r\n" + AR.BANNED and s.closing


def test_without_abuse_settings_nothing_is_asked():
    settings = load_text(CONFIG + '[server.auto-ban]\nauth.rate = false\nabuse.rate = false\n'
                         .replace("[[session.throttle]]", ""))
    settings.abuse.has_mail_rates = settings.abuse.has_rcpt_rates = False
    s = session(settings)
    seen = run(s.handle(plain("john@example.org", "secret")), {Authenticate: lookup})
    assert [type(r) for r in seen] == [Authenticate]


def test_lmtp_clients_are_not_counted_for_unknown_recipients():
    settings = load_text(CONFIG.replace('[server.listener.smtp]\nbind = "127.0.0.1:0"',
                                        '[server.listener.smtp]\nbind = "127.0.0.1:0"\nprotocol = "lmtp"'))
    ctx = ListenerContext(settings, settings.listeners["smtp"], registry.build(settings), starttls_available=False)
    s = Session(ctx, "127.0.0.1", 40000, "127.0.0.1", 24, None)
    assert s.handle(b"LHLO mta.test") is None
    run(s.handle(b"MAIL FROM:<a@remote.test>"), {RateCheck: lambda r: True})
    s.out.clear()
    seen = run(s.handle(b"RCPT TO:<x@gmail.test>"), {Contains: lambda r: False})
    assert Offence not in [type(r) for r in seen] and not s.closing
