"""``remote/<id>`` end to end through the real SMTP server, against a real Dovecot (issue 4).

IMAP over STARTTLS and implicit TLS (``tls.ca-file`` = the fixture's CA) and SMTP AUTH against Dovecot's
submission service; bearer tokens passed through to Dovecot; the result cache configured with
``cache.entries`` / ``cache.ttl.positive`` / ``cache.ttl.negative``; the seed's own example verbatim; and a
burst of 1,000 concurrent AUTH PLAIN sessions against a remote limited to ``concurrency = 5``.

Dovecot answers a failed login only on its 500 ms failure-flush tick, so negative cases run side by side.
"""
from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.certs import test_pki  # noqa: F401  (fixture)
from tests.fixtures.dovecot import DOMAIN, DovecotServer, black_hole, dovecot, dovecot_session  # noqa: F401  (fixtures)
from tests.fixtures.e2e import (
    INVALID, NOT_OWNED, OK, TEMPFAIL, assert_black_hole, assert_failures_counted, assert_spooled,
    assert_unavailable_not_counted, auth, b64, by_listener, connect, gate_config, login, msmtp, parallel, send,
    swaks, timed,
)
from tests.fixtures.seed import SEED
from tests.fixtures.server import BASE_CONFIG, run_server

pytestmark = pytest.mark.service("dovecot")

ALICE, BOB, CAROL, DAVE = (f"{u}@{DOMAIN}" for u in ("alice", "bob", "carol", "dave"))
OAUTH_AND_PASSWORD = '["plain", "login", "oauthbearer", "xoauth2"]'


def remote(ident: str, port: int, *, protocol: str = "imap", tls: str = "", timeout: str = "3s",
           concurrency: int = 10, extra: str = "") -> str:
    """A ``[remote.<id>]`` section with the keys of SPEC §2.3 (``tls`` = "starttls:CA" / "implicit:CA")."""
    lines = [f"\n[remote.{ident}]", 'address = "127.0.0.1"', f"port = {port}", f'protocol = "{protocol}"',
             "lookup = true", f"concurrency = {concurrency}", f'timeout = "{timeout}"']
    if tls:
        mode, _, ca = tls.partition(":")
        lines += [f"tls.{mode} = true", "tls.allow-invalid-certs = false", f'tls.ca-file = "{ca}"']
    return "\n".join(lines + [extra]) + "\n"


def dovecot_logins(dc: DovecotServer, service: str, user: str) -> list[str]:
    return [ln for ln in dc.log_text().splitlines() if f"{service}: Info: Login: user=<{user}>" in ln]


def wait_for_log(dc: DovecotServer, service: str, user: str) -> str:
    """Dovecot's log process writes asynchronously."""
    for _ in range(100):
        if lines := dovecot_logins(dc, service, user):
            return lines[-1]
        time.sleep(0.02)
    raise AssertionError(f"no {service} login of {user} in Dovecot's log")


# ----------------------------------------------------------------------------------------------------
# IMAP (STARTTLS, implicit TLS) and SMTP AUTH (Dovecot submission) through smtpgate

def test_remote_imap_and_smtp(tmp_path: Path, dovecot: DovecotServer, black_hole) -> None:
    ca = dovecot.ca_file
    sections = (remote("imap", dovecot.imap_port, tls=f"starttls:{ca}")
                + remote("imaps", dovecot.imaps_port, tls=f"implicit:{ca}")
                + remote("submission", dovecot.submission_port, protocol="smtp", tls=f"starttls:{ca}")
                + remote("hole", black_hole.port, timeout="500ms")
                + remote("smtphole", black_hole.port, protocol="smtp", timeout="500ms"))
    lookup = by_listener("remote/imap", submissions="remote/imaps", sub="remote/submission",
                         hole="remote/hole", smtphole="remote/smtphole")
    config = gate_config(lookup, sections, mechanisms=OAUTH_AND_PASSWORD,
                         extra_listeners=("sub", "hole", "smtphole"))
    with run_server(config, tmp_path) as srv:
        pw = dovecot.users
        forged = dovecot.make_token(ALICE, key=b"k" * 32)
        assert parallel(login, [
            (srv, "submission", ALICE, pw[ALICE]),                      # IMAP, STARTTLS
            (srv, "submissions", BOB, pw[BOB], "LOGIN"),                # IMAPS; bob is {SSHA512} in Dovecot
            (srv, "submissions", CAROL, pw[CAROL]),                     # 8-bit password: an IMAP literal
            (srv, "sub", DAVE, pw[DAVE], "LOGIN"),                      # SMTP AUTH at Dovecot submission
            (srv, "submission", ALICE, dovecot.make_token(ALICE), "OAUTHBEARER"),   # token passed through
            (srv, "sub", ALICE, dovecot.make_token(ALICE), "XOAUTH2"),
            (srv, "smtp", ALICE, pw[BOB]), (srv, "smtp", f"nobody@{DOMAIN}", "x"),
            (srv, "sub", BOB, pw[ALICE], "LOGIN"), (srv, "submissions", ALICE, forged, "XOAUTH2"),
            (srv, "sub", ALICE, forged, "OAUTHBEARER"),
        ]) == [OK] * 6 + [INVALID] * 5
        # Dovecot itself says the sessions smtpgate opened to it were encrypted.
        assert ", TLS," in wait_for_log(dovecot, "imap-login", ALICE)
        assert ", TLS," in wait_for_log(dovecot, "imap-login", CAROL)
        assert ", TLS," in wait_for_log(dovecot, "submission-login", DAVE)

        # An IMAP store knows no addresses: the login (an address here) is the only sender allowed.
        c = connect(srv, "submission")
        try:
            assert auth(c, ALICE, pw[ALICE]) == OK
            assert c.cmd(f"MAIL FROM:<{BOB}>") == NOT_OWNED
            send(c, ALICE, "imap-raw")
        finally:
            c.close()
        assert_spooled(srv, ALICE, "imap-raw")

        # Real clients, AUTH + message: swaks and msmtp over each path.
        results = parallel(lambda f, *a, **k: f(*a, **k), [
            (swaks, srv, "submission", ALICE, pw[ALICE], "imap-swaks"),
            (msmtp, srv, "submissions", BOB, pw[BOB], "imaps-msmtp", tmp_path),
            (swaks, srv, "sub", CAROL, pw[CAROL], "smtp-swaks"),
        ])
        r = msmtp(srv, "submission", ALICE, dovecot.make_token(ALICE), "imap-oauth", tmp_path, mech="oauthbearer")
        results.append(r)
        assert [r.returncode for r in results] == [0] * 4, [r.stdout + r.stderr for r in results]
        for user, marker in ((ALICE, "imap-swaks"), (BOB, "imaps-msmtp"), (ALICE, "imap-oauth")):
            assert_spooled(srv, user, marker)
        assert_spooled(srv, CAROL, "smtp-swaks", protocol="ESMTPA")       # listener "sub" is cleartext

        assert_failures_counted(srv, "smtp", ALICE, "not-her-password")
        elapsed = parallel(assert_black_hole, [(srv, "hole", ALICE, "x", 0.5), (srv, "smtphole", ALICE, "x", 0.5)])
        assert all(e < 1.1 for e in elapsed)

        # Dovecot stopped: IMAP and SMTP lookups both answer 454, uncounted; one restart serves both.
        stopped = threading.Event()

        def down() -> None:
            if not stopped.is_set():
                stopped.set()
                dovecot.stop()

        imap_session = connect(srv, "smtp")
        try:
            down()
            for _ in range(3):
                assert auth(imap_session, ALICE, pw[ALICE]) == TEMPFAIL
            assert_unavailable_not_counted(srv, "sub", DAVE, pw[DAVE], down=down, up=dovecot.start, bound=1.5)
            assert auth(imap_session, ALICE, pw[ALICE]) == OK       # the same session, 3 x 454 before
        finally:
            imap_session.close()
            dovecot.start()
        # logged with the reason
        tempfails = [ln for ln in srv.logs if "result=tempfail" in ln]
        assert any("listener=smtp " in ln and "connection refused" in ln for ln in tempfails), tempfails
        assert any("listener=sub " in ln and "connection refused" in ln for ln in tempfails), tempfails


# ----------------------------------------------------------------------------------------------------
# caching

def test_remote_cache(tmp_path: Path, dovecot: DovecotServer) -> None:
    ttl_negative = 3.0
    cache = f'cache.entries = 100\ncache.ttl.positive = "1h"\ncache.ttl.negative = "{ttl_negative:g}s"'
    config = gate_config('"remote/imap"', remote("imap", dovecot.imap_port, timeout="2s", extra=cache),
                         extra_listeners=())
    pw = dovecot.users
    with run_server(config, tmp_path) as srv:
        assert parallel(login, [(srv, "smtp", ALICE, pw[ALICE]), (srv, "smtp", BOB, "bob-wrong"),
                                (srv, "smtp", CAROL, pw[CAROL])]) == [OK, INVALID, OK]
        negative_at = time.monotonic()
        assert login(srv, "smtp", CAROL, "carol-wrong") == INVALID      # drops carol's positive entry
        alice_logins = len(dovecot_logins(dovecot, "imap-login", ALICE))

        dovecot.stop()
        try:
            results = parallel(login, [
                (srv, "smtp", ALICE, pw[ALICE]),     # positive hit: Dovecot is down, still 235
                (srv, "smtp", BOB, "bob-wrong"),     # negative hit: 535, not 454
                (srv, "smtp", CAROL, pw[CAROL]),     # its positive entry was dropped: the store is asked
                (srv, "smtp", DAVE, pw[DAVE]),       # never seen: the store is asked
            ])
            assert time.monotonic() - negative_at < ttl_negative, "too slow to observe the negative entry"
            assert results == [OK, INVALID, TEMPFAIL, TEMPFAIL]
            # The negative entry expires: the same wrong password now reaches the (stopped) store.
            time.sleep(max(0.0, negative_at + ttl_negative + 0.2 - time.monotonic()))
            assert login(srv, "smtp", BOB, "bob-wrong") == TEMPFAIL
        finally:
            dovecot.start()
        # "unavailable" was never cached: dave and carol now log in at once.
        assert parallel(login, [(srv, "smtp", DAVE, pw[DAVE]), (srv, "smtp", CAROL, pw[CAROL])]) == [OK, OK]
        assert len(dovecot_logins(dovecot, "imap-login", ALICE)) == alice_logins   # alice: cache only
        stats = srv.server.lookups["remote/imap"].stats
        assert (stats.hits, stats.misses) == (2, 9), stats


# ----------------------------------------------------------------------------------------------------
# the seed's example

SEED_AUTH = SEED  # the seed document's block, verbatim (tests/integration/test_auth_seed.py)


def seed_config(dc: DovecotServer, wait: str | None = None) -> str:
    auth_block = SEED_AUTH if wait is None else SEED_AUTH.replace('wait = "5s"', f'wait = "{wait}"')
    return BASE_CONFIG + remote("imap", dc.imaps_port, tls=f"implicit:{dc.ca_file}", timeout="5s") + auth_block


def test_seed_example_verbatim(tmp_path: Path, dovecot: DovecotServer) -> None:
    assert 'then = "remote/imap" }, \n' in SEED_AUTH        # byte for byte, trailing space included
    pw = dovecot.users
    with run_server(seed_config(dovecot), tmp_path) as srv:
        # errors.wait = 5s: a wrong password is answered after five seconds (run alongside the rest).
        slow: list = []
        waiter = threading.Thread(target=lambda: slow.append(timed(login, srv, "submissions", ALICE, "wrong")))
        waiter.start()

        c = connect(srv, "smtp")                  # listener "smtp": no AUTH at all, nothing required
        try:
            assert "AUTH" not in c.ehlo  # type: ignore[attr-defined]
            assert c.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0{pw[ALICE]}")) == "503 5.5.1 AUTH not allowed."
            assert c.cmd(f"MAIL FROM:<{ALICE}>").startswith("250 ")
        finally:
            c.close()

        c = connect(srv, "submission")            # STARTTLS; AUTH and its requirement
        try:
            assert "AUTH PLAIN LOGIN" in [ln[4:] for ln in c.ehlo.split("\r\n")]  # type: ignore[attr-defined]
            assert c.cmd(f"MAIL FROM:<{ALICE}>") == "530 5.7.0 Authentication required."
            assert auth(c, ALICE, pw[ALICE]) == OK
            send(c, ALICE, "seed-raw")
        finally:
            c.close()
        assert login(srv, "submissions", BOB, pw[BOB], "LOGIN") == OK
        r = swaks(srv, "submission", CAROL, pw[CAROL], "seed-swaks", mech="LOGIN")
        assert r.returncode == 0, r.stdout + r.stderr
        assert_spooled(srv, ALICE, "seed-raw")
        assert_spooled(srv, CAROL, "seed-swaks")

        waiter.join(15)
        (reply, elapsed), = slow
        assert reply == INVALID and 5.0 <= elapsed < 6.5, (reply, elapsed)


def test_seed_example_short_wait(tmp_path: Path, dovecot: DovecotServer) -> None:
    """The same configuration with only ``wait`` changed: the third failure disconnects, and a down
    Dovecot gives 454 that does not count."""
    pw = dovecot.users
    with run_server(seed_config(dovecot, wait="100ms"), tmp_path) as srv:
        assert parallel(assert_failures_counted, [(srv, "submission", BOB, "wrong", "LOGIN"),
                                                  (srv, "submissions", f"nobody@{DOMAIN}", "x")]) == [None, None]
        assert_unavailable_not_counted(srv, "submissions", ALICE, pw[ALICE], down=dovecot.stop, up=dovecot.start,
                                       bound=1.5)


# ----------------------------------------------------------------------------------------------------
# 1,000 concurrent sessions against concurrency = 5

async def _one_session(port: int, user: str, password: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async def reply() -> str:
            lines = []
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("closed")
                lines.append(line.decode().rstrip("\r\n"))
                if line[3:4] != b"-":
                    return lines[-1]
        assert (await reply()).startswith("220 ")
        writer.write(b"EHLO burst.test\r\n")
        assert (await reply()).startswith("250 ")
        writer.write(b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n")
        result = await reply()
        writer.write(b"QUIT\r\n")
        await reply()
        return result
    finally:
        writer.close()


async def _burst(port: int, n: int, user: str, password: str) -> list[str]:
    async def guarded() -> str:
        try:
            return await asyncio.wait_for(_one_session(port, user, password), 60)
        except (OSError, ConnectionError, TimeoutError, AssertionError) as exc:
            return f"client error: {type(exc).__name__}"
    return await asyncio.gather(*(guarded() for _ in range(n)))


def test_thousand_concurrent_auths(tmp_path: Path, dovecot: DovecotServer) -> None:
    config = gate_config('"remote/imap"', remote("imap", dovecot.imap_port, concurrency=5, timeout="30s"),
                         extra_listeners=())
    with run_server(config, tmp_path) as srv:
        started = time.monotonic()
        replies = asyncio.run(_burst(srv.port("smtp"), 1000, ALICE, dovecot.users[ALICE]))
        elapsed = time.monotonic() - started
        assert replies == [OK] * 1000, {r: replies.count(r) for r in set(replies)}
        assert not [ln for ln in srv.logs if "tempfail" in ln or "WARNING" in ln or "ERROR" in ln][:5]
        assert sum(" result=success " in ln for ln in srv.logs) == 1000
    assert elapsed < 40, elapsed
