"""smtpgate in front of a real Dovecot (issue 9 items 13 and 14).

Item 14: ``remote/imap`` forwards the SMTP client's address with IMAP ``ID`` before logging in, so
Dovecot's per-IP auth penalty (anvil) punishes the client that guessed, not every user behind smtpgate.
Dovecot trusts only smtpgate's address (``login_trusted_networks = 127.0.0.1``); the clients connect from
other loopback addresses (127.0.0.2, 127.0.0.3).

Item 13: a login without ``@`` (Dovecot user ``john``) owns ``john@d`` for each local domain ``d``.
"""
from __future__ import annotations

import base64
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.certs import test_pki  # noqa: F401  (fixture)
from tests.fixtures.dovecot import DOMAIN, DovecotServer, dovecot_factory  # noqa: F401  (fixtures)
from tests.fixtures.server import listeners, run_server
from tests.smtpclient import Raw

pytestmark = pytest.mark.service("dovecot")

ALICE = f"alice@{DOMAIN}"
JOHN_PASSWORD = "john-secret"


def config(dc: DovecotServer, protocol: str = "imap") -> str:
    return """
[server]
hostname = "mx.test"
""" + listeners("submission").replace("127.0.0.1:0", "0.0.0.0:0") + f"""
[session.auth]
mechanisms = ["plain", "login"]
lookup = "remote/dovecot"
allow-plain-text = true
[session.auth.errors]
wait = "1ms"
total = 100

[session.rcpt.lookup]
domains = "list/domains"

[list]
domains = ["{DOMAIN}", "other.test"]

[remote.dovecot]
address = "127.0.0.1"
port = {dc.imap_port if protocol == "imap" else dc.submission_port}
protocol = "{protocol}"
lookup = true
timeout = "20s"
concurrency = 20

[queue]
path = "{{tmp}}/spool"
"""


def auth_plain(port: int, user: str, password: str, source: str, timeout: float = 20) -> tuple[str, float, Raw]:
    c = Raw(port, source=source, timeout=timeout)
    assert c.cmd("EHLO client.test").startswith("250")
    ir = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    started = time.monotonic()
    try:
        reply = c.cmd(f"AUTH PLAIN {ir}")
    except socket.timeout:
        reply = "(no reply)"
    return reply, time.monotonic() - started, c


@pytest.mark.parametrize("protocol, service", [("imap", "imap-login"), ("smtp", "submission-login")])
def test_client_address_forwarded_so_one_guesser_does_not_slow_others(tmp_path: Path, dovecot_factory,
                                                                       protocol: str, service: str) -> None:
    """IMAP ``ID`` for remote/imap; XCLIENT for remote/smtp (Dovecot's submission service)."""
    # Dovecot's defaults for failures: a delayed reply (which is also what feeds the penalty) and anvil's
    # per-IP penalty; only smtpgate's own address is trusted to forward a client's.
    dc = dovecot_factory(trusted_networks="127.0.0.1", auth_penalty=True, extra_config="auth_failure_delay = 2s")
    with run_server(config(dc, protocol), tmp_path) as srv:
        port = srv.port("submission")
        # A burst of wrong passwords from 127.0.0.2 (side by side, as an attacker would).
        replies: list[str] = []

        def guess(i: int) -> None:
            reply, _, c = auth_plain(port, ALICE, f"guess-{i}", "127.0.0.2")
            replies.append(reply)
            c.close()

        threads = [threading.Thread(target=guess, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert replies == ["535 5.7.8 Authentication credentials invalid."] * 5, replies

        # Someone else, from another address, logs in at once.
        reply, took, c = auth_plain(port, ALICE, dc.users[ALICE], "127.0.0.3")
        c.close()
        assert reply == "235 2.7.0 Authentication succeeded.", reply
        assert took < 1.5, f"good login from 127.0.0.3 took {took:.2f} s"

        # The guesser itself is now held back by Dovecot's penalty, even with the right password.
        reply, took, c = auth_plain(port, ALICE, dc.users[ALICE], "127.0.0.2", timeout=1.5)
        c.close()
        assert reply == "(no reply)" or took >= 1.5, (reply, took)

    # Dovecot's log names the SMTP clients, not smtpgate.
    log = dc.log_text()
    logins = [ln for ln in log.splitlines() if f"{service}: Info: Login: user=<{ALICE}>" in ln]
    assert any("rip=127.0.0.3" in ln for ln in logins), logins
    failed = [ln for ln in log.splitlines() if f"{service}: " in ln and f"user=<{ALICE}>" in ln and "auth failed" in ln]
    assert len(failed) == 5 and all("rip=127.0.0.2" in ln for ln in failed), failed
    assert not re.search(r"user=<[^>]+>.*rip=127\.0\.0\.1,", log), "a login seen as smtpgate's own"


def test_bare_imap_login_owns_its_local_addresses(tmp_path: Path, dovecot_factory) -> None:
    """Item 13 with remote/imap: Dovecot's user ``john`` (no domain) may send as john@<each local domain>."""
    dc = dovecot_factory(users={"john": JOHN_PASSWORD})
    with run_server(config(dc), tmp_path) as srv:
        reply, _, c = auth_plain(srv.port("submission"), "john", JOHN_PASSWORD, "127.0.0.1")
        assert reply == "235 2.7.0 Authentication succeeded."
        for own in (f"<john@{DOMAIN}>", "<John@Other.Test>"):
            assert c.cmd(f"MAIL FROM:{own}") == "250 2.1.0 Sender OK", own
            assert c.cmd("RSET").startswith("250")
        for other in ("<john@remote.test>", f"<alice@{DOMAIN}>", f"<john.doe@{DOMAIN}>"):
            assert c.cmd(f"MAIL FROM:{other}") == "550 5.7.1 Sender address not owned by authenticated user.", other
        assert c.cmd(f"MAIL FROM:<john@{DOMAIN}>").startswith("250")
        assert c.cmd(f"RCPT TO:<alice@{DOMAIN}>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(b"Subject: hi\r\n\r\nhi\r\n.\r\n").startswith("250 2.0.0")
        c.close()
