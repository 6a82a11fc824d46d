"""remote/<id> lookups (IMAP, SMTP submission, LMTP) against a real Dovecot 2.3.

Dovecot answers failed logins only on its 500 ms failure-flush tick, so negative cases run
concurrently where a test has several of them.
"""
from __future__ import annotations

import asyncio
import logging
import re
import select
import time
from typing import Callable

import pytest

from smtpgate.config.model import RemoteSettings, TlsClientSettings
from smtpgate.lookup.base import Capability, Credentials, Outcome
from smtpgate.lookup.imap import ImapLookup
from smtpgate.lookup.remote_smtp import SmtpAuthLookup
from tests.fixtures.certs import make_pki, test_pki  # noqa: F401  (fixture)
from tests.fixtures.dovecot import (  # noqa: F401  (fixtures)
    DOMAIN, DovecotServer, black_hole, dovecot, dovecot_factory, dovecot_session,
)

pytestmark = pytest.mark.service("dovecot")

ALICE, BOB, CAROL, DAVE = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}", f"dave@{DOMAIN}"


def remote(port: int, protocol: str = "imap", *, timeout: float = 5.0, concurrency: int = 10,
           **tls) -> RemoteSettings:
    return RemoteSettings(id="test", address="127.0.0.1", port=port, protocol=protocol, lookup=True,
                          concurrency=concurrency, timeout=timeout, tls=TlsClientSettings(**tls))


def password(user: str, secret: str, mechanism: str = "PLAIN") -> Credentials:
    return Credentials(mechanism=mechanism, username=user, secret=secret)


def token(user: str, tok: str, mechanism: str = "OAUTHBEARER") -> Credentials:
    return Credentials(mechanism=mechanism, username=user, secret=tok, kind="token")


async def outcomes(lookup, creds: list[Credentials]) -> list[Outcome]:
    return [r.outcome for r in await asyncio.gather(*(lookup.authenticate(c) for c in creds))]


def standard_cases(dc: DovecotServer) -> tuple[list[Credentials], list[Outcome]]:
    """Valid users ({PLAIN}, {SSHA512}, quoting-hostile password), wrong password, unknown user."""
    creds = [password(ALICE, dc.users[ALICE]), password(BOB, dc.users[BOB], "LOGIN"),
             password(CAROL, dc.users[CAROL]), password(ALICE, "not-her-password"),
             password(f"nobody@{DOMAIN}", "whatever"), password(BOB, dc.users[ALICE])]
    V, I = Outcome.VALID, Outcome.INVALID
    return creds, [V, V, V, I, I, I]


async def last_login_line(dc: DovecotServer, service: str, user: str) -> str:
    """Dovecot's log process writes asynchronously: wait briefly for the line to appear."""
    for _ in range(50):
        lines = [ln for ln in dc.log_text().splitlines()
                 if f"{service}: Info: Login: user=<{user}>" in ln]
        if lines:
            return lines[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {service} login line for {user}")


# --------------------------------------------------------------------------------------------------
# A TCP proxy in front of Dovecot: counts simultaneous client connections exactly and can rewrite
# server lines (to make the real Dovecot look like a server without some capability).

class Proxy:
    def __init__(self, upstream_port: int, rewrite: Callable[[bytes], bytes] | None = None):
        self.upstream_port = upstream_port
        self.rewrite = rewrite
        self.active: set = set()
        self.max_active = 0
        self.total = 0
        self.client_verbs: list[bytes] = []      # IMAP command names the client sent
        self.continuations = 0                    # "+" lines the server sent

    async def __aenter__(self) -> "Proxy":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    def _count(self, sock) -> None:
        # A client that already closed (FIN queued) is no longer "open" even if our reader task has
        # not run yet: POLLRDHUP reports the peer's shutdown immediately and does not race with us.
        poller = select.poll()
        for s in self.active:
            poller.register(s.fileno(), select.POLLRDHUP)
        gone = {fd for fd, ev in poller.poll(0) if ev & (select.POLLRDHUP | select.POLLHUP)}
        self.active = {s for s in self.active if s.fileno() not in gone}
        self.active.add(sock)
        self.total += 1
        self.max_active = max(self.max_active, len(self.active))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        self._count(sock)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def client_to_server() -> None:
            while line := await reader.readline():
                m = re.match(rb"\S+ (\w+)", line)
                if m:
                    self.client_verbs.append(m.group(1).upper())
                up_w.write(line)
                await up_w.drain()

        async def server_to_client() -> None:
            while line := await up_r.readline():
                if line.startswith(b"+"):
                    self.continuations += 1
                writer.write(self.rewrite(line) if self.rewrite else line)
                await writer.drain()

        try:
            tasks = [asyncio.create_task(client_to_server()), asyncio.create_task(server_to_client())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
        except OSError:
            pass
        finally:
            self.active.discard(sock)
            for w in (writer, up_w):
                w.close()


# --------------------------------------------------------------------------------------------------
# IMAP

def test_capabilities_and_protocol_check(dovecot: DovecotServer) -> None:
    lookup = ImapLookup(remote(dovecot.imap_port))
    assert lookup.capabilities == Capability.PASSWORD | Capability.TOKEN
    assert lookup.name == "remote/test"
    with pytest.raises(ValueError):
        ImapLookup(remote(dovecot.imap_port, "smtp"))
    with pytest.raises(ValueError):
        SmtpAuthLookup(remote(dovecot.imap_port, "imap"))
    with pytest.raises(ValueError, match="CA file"):
        ImapLookup(remote(dovecot.imap_port, starttls=True, ca_file="/nonexistent/ca.pem"))


@pytest.mark.parametrize("mode", ["plain", "starttls", "implicit"])
async def test_imap_valid_invalid_unknown(dovecot: DovecotServer, mode: str) -> None:
    tls = {"plain": {}, "starttls": {"starttls": True, "ca_file": str(dovecot.ca_file)},
           "implicit": {"implicit": True, "ca_file": str(dovecot.ca_file)}}[mode]
    port = dovecot.imaps_port if mode == "implicit" else dovecot.imap_port
    lookup = ImapLookup(remote(port, **tls))
    creds, expected = standard_cases(dovecot)
    results = await asyncio.gather(*(lookup.authenticate(c) for c in creds))
    assert [r.outcome for r in results] == expected
    assert results[0].account == ALICE and results[1].account == BOB
    assert all(r.account == "" for r in results[3:])
    # Dovecot's own log says whether the session it authenticated was encrypted ("TLS" vs "secured").
    line = await last_login_line(dovecot, "imap-login", CAROL)
    assert (", TLS," in line) == (mode != "plain"), line


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_imap_certificate_checks(dovecot: DovecotServer, mode: str) -> None:
    port = dovecot.imaps_port if mode == "implicit" else dovecot.imap_port
    alice = password(ALICE, dovecot.users[ALICE])

    untrusted = await ImapLookup(remote(port, **{mode: True})).authenticate(alice)   # system CA store
    assert untrusted.outcome is Outcome.UNAVAILABLE
    assert "certificate" in untrusted.reason

    trusted = await ImapLookup(remote(port, ca_file=str(dovecot.ca_file), **{mode: True})).authenticate(alice)
    assert trusted.outcome is Outcome.VALID

    anything = ImapLookup(remote(port, allow_invalid_certs=True, **{mode: True}))
    assert await outcomes(anything, [alice, password(ALICE, "bad")]) == [Outcome.VALID, Outcome.INVALID]


async def test_imap_hostname_is_checked(dovecot_factory, tmp_path) -> None:
    # A certificate from the trusted CA but for another name: rejected unless allow-invalid-certs,
    # which switches off the name check too.
    dc = dovecot_factory(pki=make_pki(tmp_path / "pki", hosts=("mail.elsewhere.test",)))
    alice = password(ALICE, dc.users[ALICE])
    result = await ImapLookup(remote(dc.imaps_port, implicit=True, ca_file=str(dc.ca_file))).authenticate(alice)
    assert result.outcome is Outcome.UNAVAILABLE and "certificate" in result.reason
    assert "mismatch" in result.reason or "not valid for" in result.reason, result.reason
    lax = ImapLookup(remote(dc.imaps_port, implicit=True, allow_invalid_certs=True))
    assert (await lax.authenticate(alice)).valid


async def test_imap_tokens(dovecot: DovecotServer) -> None:
    lookup = ImapLookup(remote(dovecot.imap_port, starttls=True, ca_file=str(dovecot.ca_file)))
    good = dovecot.make_token(ALICE)
    results = await asyncio.gather(
        lookup.authenticate(token(ALICE, good)),
        lookup.authenticate(token(ALICE, good, "XOAUTH2")),
        lookup.authenticate(token(BOB, good)),                                  # someone else's token
        lookup.authenticate(token(ALICE, dovecot.make_token(ALICE, key=b"k" * 32))),  # forged
        lookup.authenticate(token(ALICE, dovecot.make_token(ALICE, ttl=-60))),  # expired
        lookup.authenticate(token("", good)),                                   # no user to log in as
    )
    assert [r.outcome for r in results] == [Outcome.VALID, Outcome.VALID] + [Outcome.INVALID] * 4
    assert results[0].account == ALICE
    assert "without a user name" in results[5].reason


async def test_imap_xoauth2_only_and_no_sasl_ir(dovecot_factory) -> None:
    # Without SASL-IR (explicit capability list) every AUTHENTICATE goes through a "+" continuation,
    # and the rejected-token error challenge must be acknowledged before Dovecot sends NO.
    dc = dovecot_factory(auth_mechanisms="plain login xoauth2", extra_config="imap_capability = IMAP4rev1")
    async with Proxy(dc.imap_port) as proxy:
        lookup = ImapLookup(remote(proxy.port))
        results = await asyncio.gather(
            lookup.authenticate(token(ALICE, dc.make_token(ALICE))),
            lookup.authenticate(token(ALICE, dc.make_token(ALICE, key=b"x" * 32))),
            lookup.authenticate(password(CAROL, dc.users[CAROL])),
            lookup.authenticate(password(CAROL, "nope")))
    assert [r.outcome for r in results] == [Outcome.VALID, Outcome.INVALID, Outcome.VALID, Outcome.INVALID]
    assert proxy.client_verbs.count(b"AUTHENTICATE") == 4
    assert proxy.continuations == 5     # 4 empty challenges + 1 token error challenge
    assert "method=XOAUTH2" in dc.log_text()


async def test_imap_no_oauth_mechanism(dovecot_factory) -> None:
    dc = dovecot_factory(auth_mechanisms="plain login")
    result = await ImapLookup(remote(dc.imap_port)).authenticate(token(ALICE, dc.make_token(ALICE)))
    assert result.outcome is Outcome.UNAVAILABLE
    assert "remote offers no OAUTHBEARER/XOAUTH2" in result.reason


@pytest.mark.parametrize("literal_plus", [True, False])
async def test_imap_login_command_quoting(dovecot: DovecotServer, literal_plus: bool) -> None:
    # Hide AUTH=PLAIN (and LITERAL+) so the lookup must fall back to the LOGIN command with quoted
    # strings and literals; Dovecot itself still parses what we send.
    def hide(line: bytes) -> bytes:
        if b"CAPABILITY" not in line:
            return line
        line = line.replace(b" AUTH=PLAIN", b"")
        return line if literal_plus else line.replace(b" LITERAL+", b"")

    async with Proxy(dovecot.imap_port, rewrite=hide) as proxy:
        lookup = ImapLookup(remote(proxy.port))
        assert await outcomes(lookup, [password(CAROL, dovecot.users[CAROL]), password(DAVE, dovecot.users[DAVE]),
                                       password(CAROL, dovecot.users[CAROL] + "x")]) \
            == [Outcome.VALID, Outcome.VALID, Outcome.INVALID]
    assert b"AUTHENTICATE" not in proxy.client_verbs and proxy.client_verbs.count(b"LOGIN") == 3
    # carol's password is 8-bit: a synchronising literal needs the server's "+" first.
    assert (proxy.continuations > 0) == (not literal_plus)


async def test_imap_dovecot_stopped_and_back(dovecot: DovecotServer) -> None:
    lookup = ImapLookup(remote(dovecot.imap_port))
    alice = password(ALICE, dovecot.users[ALICE])
    assert (await lookup.authenticate(alice)).valid
    dovecot.stop()
    try:
        down = await lookup.authenticate(alice)
        assert down.outcome is Outcome.UNAVAILABLE and "refused" in down.reason
    finally:
        dovecot.start()
    assert (await lookup.authenticate(alice)).valid


@pytest.mark.parametrize("implicit", [False, True])
async def test_imap_black_hole_times_out(black_hole, implicit: bool) -> None:
    lookup = ImapLookup(remote(black_hole.port, timeout=0.6, implicit=implicit, allow_invalid_certs=True))
    started = time.monotonic()
    result = await lookup.authenticate(password(ALICE, "x"))
    elapsed = time.monotonic() - started
    assert result.outcome is Outcome.UNAVAILABLE and "no answer within 0.6s" in result.reason
    assert 0.55 <= elapsed < 1.2, elapsed


async def test_black_hole_queue_respects_concurrency_and_deadline(black_hole) -> None:
    # 12 waiting callers, 3 slots, 0.5 s: everyone gets an answer at the deadline, only 3 ever connect.
    lookup = ImapLookup(remote(black_hole.port, timeout=0.5, concurrency=3))
    started = time.monotonic()
    results = await asyncio.gather(*(lookup.authenticate(password(ALICE, "x")) for _ in range(12)))
    elapsed = time.monotonic() - started
    assert {r.outcome for r in results} == {Outcome.UNAVAILABLE}
    assert elapsed < 1.1, elapsed
    # The black hole accepts in a thread; give it time to catch up, then check nobody else came.
    for _ in range(100):
        if black_hole.accepted >= 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert black_hole.accepted == 3


async def test_imap_concurrency_limit(dovecot: DovecotServer) -> None:
    async with Proxy(dovecot.imap_port) as proxy:
        lookup = ImapLookup(remote(proxy.port, concurrency=5, timeout=30))
        started = time.monotonic()
        results = await asyncio.gather(*(lookup.authenticate(password(ALICE, dovecot.users[ALICE]))
                                         for _ in range(200)))
        elapsed = time.monotonic() - started
    assert [r.outcome for r in results] == [Outcome.VALID] * 200
    assert proxy.total == 200
    assert proxy.max_active == 5, proxy.max_active      # the limit is used, and never exceeded
    assert elapsed < 20, elapsed


async def test_imap_garbage_and_injection(dovecot: DovecotServer) -> None:
    # An SMTP server is garbage to an IMAP client.
    result = await ImapLookup(remote(dovecot.submission_port)).authenticate(password(ALICE, "x"))
    assert result.outcome is Outcome.UNAVAILABLE and "greeting" in result.reason

    # A server (or a man in the middle) that appends cleartext to its STARTTLS reply: the extra bytes
    # would be read as if they came through TLS -- here a forged "OK" for the login command.
    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN SASL-IR] ready\r\n")
            while line := await reader.readline():
                tag = line.split(b" ", 1)[0]
                if b"STARTTLS" in line.upper():
                    writer.write(tag + b" OK go ahead\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n"
                                 b"S2 OK forged\r\nS3 OK forged\r\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(hostile, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await ImapLookup(remote(port, starttls=True, allow_invalid_certs=True)) \
            .authenticate(password(ALICE, "wrong"))
    finally:
        server.close()
        await server.wait_closed()
    assert result.outcome is Outcome.UNAVAILABLE and "injection" in result.reason


async def test_secrets_never_logged(dovecot: DovecotServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpgate")
    secret_pw, tok = dovecot.users[ALICE], dovecot.make_token(ALICE)
    for lookup in (ImapLookup(remote(dovecot.imap_port, starttls=True, ca_file=str(dovecot.ca_file))),
                   SmtpAuthLookup(remote(dovecot.submission_port, "smtp"))):
        await outcomes(lookup, [password(ALICE, secret_pw), password(ALICE, secret_pw + "!"),
                                token(ALICE, tok)])
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "valid for 'alice@" in text            # the debug log is really there
    assert secret_pw not in text and tok not in text and tok[:20] not in text


# --------------------------------------------------------------------------------------------------
# SMTP (Dovecot submission) and LMTP

@pytest.mark.parametrize("mode", ["plain", "starttls"])
async def test_smtp_submission(dovecot: DovecotServer, mode: str) -> None:
    tls = {"starttls": True, "ca_file": str(dovecot.ca_file)} if mode == "starttls" else {}
    lookup = SmtpAuthLookup(remote(dovecot.submission_port, "smtp", **tls), helo_name="gate.example.test")
    creds, expected = standard_cases(dovecot)
    good = dovecot.make_token(ALICE)
    creds += [token(ALICE, good), token(ALICE, good, "XOAUTH2"), token(BOB, good)]
    expected += [Outcome.VALID, Outcome.VALID, Outcome.INVALID]
    results = await asyncio.gather(*(lookup.authenticate(c) for c in creds))
    assert [r.outcome for r in results] == expected
    assert results[0].account == ALICE and "535" in results[3].reason


async def test_smtp_untrusted_certificate(dovecot: DovecotServer) -> None:
    lookup = SmtpAuthLookup(remote(dovecot.submission_port, "smtp", starttls=True))
    result = await lookup.authenticate(password(ALICE, dovecot.users[ALICE]))
    assert result.outcome is Outcome.UNAVAILABLE and "certificate" in result.reason


async def test_smtp_auth_login_fallback(dovecot_factory) -> None:
    dc = dovecot_factory(auth_mechanisms="login")     # no PLAIN, no OAuth
    lookup = SmtpAuthLookup(remote(dc.submission_port, "smtp"))
    assert await outcomes(lookup, [password(CAROL, dc.users[CAROL]), password(CAROL, "wrong")]) \
        == [Outcome.VALID, Outcome.INVALID]
    assert "method=LOGIN" in dc.log_text()
    no_oauth = await lookup.authenticate(token(ALICE, dc.make_token(ALICE)))
    assert no_oauth.outcome is Outcome.UNAVAILABLE and "OAUTHBEARER/XOAUTH2" in no_oauth.reason


async def test_smtp_unavailable(dovecot: DovecotServer, black_hole) -> None:
    lookup = SmtpAuthLookup(remote(dovecot.submission_port, "smtp"))
    alice = password(ALICE, dovecot.users[ALICE])
    dovecot.stop()
    try:
        assert (await lookup.authenticate(alice)).outcome is Outcome.UNAVAILABLE
    finally:
        dovecot.start()
    assert (await lookup.authenticate(alice)).valid

    started = time.monotonic()
    hole = await SmtpAuthLookup(remote(black_hole.port, "smtp", timeout=0.5)).authenticate(alice)
    assert hole.outcome is Outcome.UNAVAILABLE and time.monotonic() - started < 1.0

    garbage = await SmtpAuthLookup(remote(dovecot.imap_port, "smtp")).authenticate(alice)
    assert garbage.outcome is Outcome.UNAVAILABLE and "malformed reply" in garbage.reason


async def test_lmtp_without_auth_is_unavailable(dovecot: DovecotServer) -> None:
    lookup = SmtpAuthLookup(remote(dovecot.lmtp_port, "lmtp"))
    result = await lookup.authenticate(password(ALICE, dovecot.users[ALICE]))
    assert result.outcome is Outcome.UNAVAILABLE
    assert "remote offers no AUTH" in result.reason
