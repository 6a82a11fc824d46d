"""Throttles, auto-ban, login locks and the progressive wait through a real server over real sockets.

Attackers and good clients are distinct loopback source addresses (127.0.0.x: Linux lets a client bind
any of them), so one test shows an attacker banned while everybody else carries on.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import ssl
import time

import pytest

from smtpgate.lookup.base import AuthResult, Capability, Credentials, Lookup, Outcome
from tests.fixtures.abuse_client import BANNED, BASE, INVALID, RATE, Client, greeting, login
from tests.fixtures.server import listeners, run_server


def test_failed_logins_ban_the_address_and_nobody_else(tmp_path):
    config = BASE + '[server.auto-ban]\nauth.rate = "3/1h"\nauth.period = "1h"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        c = Client(port, "127.0.0.2")
        c.cmd("EHLO attacker.test")
        assert c.auth("john@local.test", "guess1") == INVALID
        assert c.auth("john@local.test", "guess2") == INVALID
        # the third failure reaches the rate: its reply, then the ban closes the session
        assert c.auth("john@local.test", "guess3") == INVALID
        assert c.reply() == BANNED
        assert c.closed()
        c.close()
        assert greeting(port, "127.0.0.2") == BANNED              # refused before any parsing
        assert login(port, "127.0.0.3", "mary@local.test", "hunter2").startswith("235 ")
        assert any(line.startswith("WARNING smtpgate.abuse: ban 127.0.0.2 reason=auth counts=auth:3 period=3600s")
                   for line in srv.logs), srv.logs


class SlowLookup(Lookup):
    """Counts the guesses that reach it; each takes a while, so parallel sessions overlap."""
    capabilities = Capability.PASSWORD

    def __init__(self) -> None:
        self.calls = 0
        self.timeout = 5.0

    async def authenticate(self, creds: Credentials) -> AuthResult:
        self.calls += 1
        await asyncio.sleep(0.3)
        if (creds.username, creds.secret) == ("john@local.test", "secret"):
            return AuthResult(Outcome.VALID, account="john@local.test")
        return AuthResult(Outcome.INVALID)


def test_parallel_sessions_get_no_more_guesses_than_the_rate(tmp_path):
    config = BASE.replace('lookup = "list/users"', 'lookup = "list/slow"') \
                 .replace('domains = ["local.test"]', 'domains = ["local.test"]\nslow = []') \
        + '[server.auto-ban]\nauth.rate = "5/1h"\n'
    lookup = SlowLookup()
    with run_server(config, tmp_path, lookups={"list/slow": lookup}) as srv:
        port = srv.port("smtp")

        def one(i: int) -> str:
            return login(port, "127.0.0.4", "john@local.test", f"guess{i}")

        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            replies = list(pool.map(one, range(40)))
        assert lookup.calls == 5, (lookup.calls, replies)
        assert all(r.startswith(("535 ", "421 ")) for r in replies)
        assert greeting(port, "127.0.0.4") == BANNED


def test_the_same_wrong_password_retried_counts_once_and_tempfails_never(tmp_path):
    config = BASE + '[server.auto-ban]\nauth.rate = "3/1h"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        for _ in range(10):                                         # a phone with an old saved password
            assert login(port, "127.0.0.5", "john@local.test", "old-password") == INVALID
        assert login(port, "127.0.0.5", "john@local.test", "secret").startswith("235 ")


class DownLookup(Lookup):
    capabilities = Capability.PASSWORD
    timeout = 5.0

    async def authenticate(self, creds: Credentials) -> AuthResult:
        return AuthResult(Outcome.UNAVAILABLE, reason="down")


def test_tempfails_never_count(tmp_path):
    config = BASE.replace('lookup = "list/users"', 'lookup = "list/down"') \
                 .replace('domains = ["local.test"]', 'domains = ["local.test"]\ndown = []') \
        + '[server.auto-ban]\nauth.rate = "2/1h"\n'
    with run_server(config, tmp_path, lookups={"list/down": DownLookup()}) as srv:
        port = srv.port("smtp")
        for i in range(6):
            assert login(port, "127.0.0.6", "john@local.test", f"p{i}").startswith("454 4.7.0")
        assert greeting(port, "127.0.0.6").startswith("220 ")


def test_a_distributed_attack_locks_the_login_but_not_its_owner(tmp_path):
    config = BASE + '[server.auto-ban]\nauth.rate = "3/1h"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        assert login(port, "127.0.0.10", "john@local.test", "secret").startswith("235 ")   # the owner, earlier
        for i in range(3):                                          # three attackers, one guess each
            assert login(port, f"127.0.0.{20 + i}", "john@local.test", f"guess{i}") == INVALID
        # a fourth address now gets the wrong-password answer even with the right password ...
        assert login(port, "127.0.0.30", "john@local.test", "secret") == INVALID
        # ... while the owner's address still logs in, and other logins are untouched
        assert login(port, "127.0.0.10", "john@local.test", "secret").startswith("235 ")
        assert login(port, "127.0.0.30", "mary@local.test", "hunter2").startswith("235 ")
        assert any('user="john@local.test" result=invalid' in line and 'reason="locked"' in line
                   for line in srv.logs)


def test_progressive_wait_grows_across_sessions(tmp_path):
    config = BASE.replace('wait = "1ms"', 'wait = "50ms"\nwait-growth = "300ms"\nwait-max = "700ms"\nwait-spread = 0') \
        + '[server.auto-ban]\nauth.rate = "100/1h"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        took = []
        for i in range(4):
            c = Client(port, "127.0.0.7")
            c.cmd("EHLO c.test")
            t0 = time.monotonic()
            assert c.auth("john@local.test", f"bad{i}") == INVALID
            took.append(time.monotonic() - t0)
            c.close()
        # 50ms, 350ms, 650ms, then capped at 700ms
        assert took[0] < 0.25 and 0.3 <= took[1] < 0.6 and 0.6 <= took[2] < 0.9 and 0.65 <= took[3] < 1.0, took
        t0 = time.monotonic()
        assert login(port, "127.0.0.8", "john@local.test", "bad") == INVALID   # another address: base wait
        assert time.monotonic() - t0 < 0.3


def test_the_wait_is_spread_once_the_address_failed_often(tmp_path):
    """errors.wait-spread: a user's first typos wait exactly errors.wait; past SPREAD_AFTER failures of
    the address (distinct guesses, across sessions) each wait is drawn from [wait, wait x (1 + spread)]."""
    from smtpgate.abuse.guard import SPREAD_AFTER
    config = BASE.replace('wait = "1ms"', 'wait = "200ms"\nwait-spread = 1.0') + '[server.auto-ban]\nauth.rate = "100/1h"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        c = Client(port, "127.0.0.9")
        c.cmd("EHLO c.test")
        took = []
        for i in range(SPREAD_AFTER + 20):
            t0 = time.monotonic()
            assert c.auth("john@local.test", f"guess{i}") == INVALID
            took.append(time.monotonic() - t0)
        c.close()
    first, later = took[:SPREAD_AFTER], took[SPREAD_AFTER:]
    assert all(0.2 <= t < 0.3 for t in first), first                # exactly errors.wait (+ latency)
    assert all(0.2 <= t < 0.55 for t in later), later               # never shorter, at most 2x (+ latency)
    assert max(later) > 0.3, later                                  # 20 draws from [0.2, 0.4]: some above 0.3


def test_concurrency_throttle_refuses_the_extra_connection(tmp_path):
    config = BASE + '[[session.throttle]]\nkey = ["remote-ip"]\nconcurrency = 2\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        a, b = Client(port, "127.0.0.11"), Client(port, "127.0.0.11")
        assert a.greeting.startswith("220 ") and b.greeting.startswith("220 ")
        third = Client(port, "127.0.0.11")
        assert third.greeting == "421 4.7.0 Too many concurrent connections, try again later"
        third.close()
        assert greeting(port, "127.0.0.12").startswith("220 ")
        a.cmd("QUIT")
        a.close()
        time.sleep(0.2)
        assert greeting(port, "127.0.0.11").startswith("220 ")
        b.close()


def test_rate_throttles_at_connect_mail_and_rcpt(tmp_path):
    config = BASE + """
[[session.throttle]]
key = ["remote-ip"]
rate = "4/1m"
match = { if = "remote-ip", eq = "127.0.0.13" }

[[session.throttle]]
key = ["sender"]
rate = "2/1m"

[[session.throttle]]
key = ["remote-ip", "rcpt-domain"]
rate = "3/1m"
"""
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        greetings = [greeting(port, "127.0.0.13") for _ in range(5)]
        assert greetings[:4] == [greetings[0]] * 4 and greetings[0].startswith("220 ")
        assert greetings[4] == "421 4.4.5 Rate limit exceeded, try again later."
        c = Client(port, "127.0.0.14")
        c.cmd("EHLO c.test")
        for _ in range(2):
            assert c.cmd("MAIL FROM:<s@remote.test>").startswith("250 ")
            assert c.cmd("RSET").startswith("250 ")
        assert c.cmd("MAIL FROM:<s@remote.test>") == RATE
        assert c.cmd("MAIL FROM:<other@remote.test>").startswith("250 ")     # another sender's count
        assert [c.cmd(f"RCPT TO:<u{i}@local.test>")[:3] for i in range(4)] == ["250", "250", "250", "451"]
        assert c.cmd("DATA").startswith("354")                              # the accepted ones go on
        c.close()


def test_relay_attempts_and_unknown_recipients_earn_a_ban(tmp_path):
    config = BASE.replace('domains = "list/domains"', 'domains = "list/domains"\naddresses = "list/addresses"') \
                 .replace('domains = ["local.test"]', 'domains = ["local.test"]\naddresses = ["john@local.test"]') \
        + '[server.auto-ban]\nabuse.rate = "3/1d"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        c = Client(port, "127.0.0.15")
        c.cmd("EHLO c.test")
        c.cmd("MAIL FROM:<a@remote.test>")
        assert c.cmd("RCPT TO:<x@gmail.test>").startswith("550 5.7.1")
        assert c.cmd("RCPT TO:<nobody@local.test>").startswith("550 5.1.1")
        assert c.cmd("RCPT TO:<john@local.test>").startswith("250 ")
        assert c.cmd("RCPT TO:<y@gmail.test>") == "550 5.7.1 Relay access denied."
        assert c.reply() == BANNED
        assert c.closed()
        c.close()
        assert greeting(port, "127.0.0.15") == BANNED
        assert greeting(port, "127.0.0.16").startswith("220 ")


def test_http_and_tls_hello_on_the_smtp_port_are_scans(tmp_path):
    config = BASE + '[server.auto-ban]\nscan.rate = "2/1d"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        c = Client(port, "127.0.0.17")
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.reply() == "421 4.7.0 This is an SMTP server, closing connection"
        assert c.closed()
        c.close()
        # a TLS ClientHello where plaintext SMTP is spoken: closed without a word
        raw = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.17", 0), timeout=5)
        raw.recv(1024)                                              # greeting
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            ctx.wrap_socket(raw, server_hostname="x")
        raw.close()
        time.sleep(0.1)
        assert greeting(port, "127.0.0.17") == BANNED
        assert greeting(port, "127.0.0.18").startswith("220 ")     # EHLO-speaking clients are not scans
        c = Client(port, "127.0.0.18")
        assert c.cmd("EHLO get.test").startswith("250-")
        c.close()


def test_idle_sessions_without_a_transaction_are_loiterers(tmp_path):
    config = BASE.replace("[session.auth]", '[session]\ntimeout = "1s"\n[session.auth]') \
        + '[server.auto-ban]\nloiter.rate = "1/1d"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        c = Client(port, "127.0.0.19")
        c.cmd("EHLO c.test")
        assert c.reply().startswith("421 4.4.2")                    # the idle timeout (swept each second)
        c.close()
        assert greeting(port, "127.0.0.19") == BANNED


def test_blocked_and_allowed_addresses(tmp_path):
    config = BASE + '[server.auto-ban]\nauth.rate = "1/1h"\n' \
        '[server.blocked-ip]\n"127.0.0.40/30" = ""\n[server.allowed-ip]\n"127.0.0.50" = ""\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        assert greeting(port, "127.0.0.41") == BANNED
        for i in range(5):                                          # never counted, never banned
            assert login(port, "127.0.0.50", "john@local.test", f"bad{i}") == INVALID
        assert login(port, "127.0.0.50", "john@local.test", "secret").startswith("235 ")


def test_bans_survive_a_restart(tmp_path):
    config = BASE + '[server.auto-ban]\nauth.rate = "1/1h"\n'
    with run_server(config, tmp_path) as srv:
        assert login(srv.port("smtp"), "127.0.0.60", "john@local.test", "bad") == INVALID
        assert greeting(srv.port("smtp"), "127.0.0.60") == BANNED
    with run_server(config, tmp_path) as srv:
        assert greeting(srv.port("smtp"), "127.0.0.60") == BANNED
        assert greeting(srv.port("smtp"), "127.0.0.61").startswith("220 ")


def test_a_banned_address_gets_no_tls_handshake_on_an_implicit_tls_port(tmp_path):
    config = BASE.replace(listeners("smtp"), listeners("smtp", "submissions", implicit=("submissions",))) \
        + '[server.blocked-ip]\n"127.0.0.90" = ""\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("submissions")
        ctx = ssl.create_default_context(cafile=srv.ca_file)
        raw = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.90", 0), timeout=5)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            ctx.wrap_socket(raw, server_hostname="localhost")      # refused before any handshake
        raw.close()
        raw = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.91", 0), timeout=5)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        assert tls.recv(100).startswith(b"220 ")
        tls.close()
