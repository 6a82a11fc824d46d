"""The seed's own example (``seed/auth-stage.md``), verbatim, against a real Dovecot as ``remote/imap``:
listener-dependent mechanisms, lookup and require, ``errors.total = 3`` and ``errors.wait = "5s"``."""
from __future__ import annotations

import threading
import time

import pytest

from tests.fixtures.certs import test_pki  # noqa: F401  (fixture)
from tests.fixtures.dovecot import DOMAIN, DovecotServer, dovecot, dovecot_session  # noqa: F401  (fixtures)
from tests.fixtures.server import BASE_CONFIG, run_server
from tests.fixtures.auth_session import (
    DISABLED, ENCRYPT, INVALID, OK, PASSWORD_PROMPT, REQUIRED, USERNAME_PROMPT, auth_line, b64, expect_disconnect,
    open_session, plain_ir,
)
from tests.smtpclient import client_tls

pytestmark = pytest.mark.service("dovecot")

from tests.fixtures.seed import SEED  # noqa: E402

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"


def config(dc: DovecotServer, seed: str = SEED) -> str:
    return BASE_CONFIG + f"""
[remote.imap]
address = "127.0.0.1"
port = {dc.imaps_port}
protocol = "imap"
lookup = true
tls.implicit = true
tls.ca-file = "{dc.ca_file}"
""" + seed


def test_seed_example_verbatim(tmp_path, dovecot):
    with run_server(config(dovecot), tmp_path) as srv:
        # One wrong password on the implicit-TLS listener, in the background: it must take errors.wait (5 s)
        # plus Dovecot's own failure delay, and hold up nothing else meanwhile.
        timing: dict[str, object] = {}

        def slow_failure() -> None:
            c = open_session(srv, "submissions", implicit=True)
            start = time.monotonic()
            timing["reply"] = c.cmd(f"AUTH PLAIN {plain_ir(ALICE, 'wrong')}")
            timing["took"] = time.monotonic() - start
            timing["noop"] = c.cmd("NOOP")
            c.close()

        waiter = threading.Thread(target=slow_failure)
        waiter.start()
        began = time.monotonic()

        # listener "smtp": mechanisms [] and lookup false -> no AUTH at all; require false.
        c = open_session(srv, "smtp")
        assert auth_line(c.ehlo) is None and "250-STARTTLS" in c.ehlo
        assert c.cmd(f"AUTH PLAIN {plain_ir(ALICE, dovecot.users[ALICE])}") == DISABLED
        assert c.cmd("MAIL FROM:<someone@remote.example>") == "250 2.1.0 Sender OK"
        c.close()

        # listener "submission" (STARTTLS): PLAIN/LOGIN only after TLS; require true.
        c = open_session(srv, "submission")
        assert auth_line(c.ehlo) is None
        assert c.cmd(f"AUTH PLAIN {plain_ir(ALICE, dovecot.users[ALICE])}") == ENCRYPT
        assert c.cmd(f"MAIL FROM:<{ALICE}>") == REQUIRED
        assert c.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        c.starttls(client_tls(srv.ca_file))
        assert auth_line(c.cmd("EHLO client.test")) == ["PLAIN", "LOGIN"]
        assert c.cmd(f"RCPT TO:<{ALICE}>") == REQUIRED
        assert c.cmd(f"AUTH PLAIN {plain_ir(ALICE, dovecot.users[ALICE])}") == OK
        assert c.cmd(f"MAIL FROM:<{ALICE}>") == "250 2.1.0 Sender OK"
        c.close()

        # listener "submissions" (implicit TLS): LOGIN against Dovecot's hashed user.
        c = open_session(srv, "submissions", implicit=True)
        assert auth_line(c.ehlo) == ["PLAIN", "LOGIN"]
        assert c.cmd("AUTH LOGIN") == USERNAME_PROMPT
        assert c.cmd(b64(BOB)) == PASSWORD_PROMPT
        assert c.cmd(b64(dovecot.users[BOB])) == OK
        c.close()
        others_done = time.monotonic() - began

        waiter.join(15)
    assert timing["reply"] == INVALID and timing["noop"] == "250 2.0.0 OK"
    assert 5.0 <= timing["took"] < 8.0, timing                      # type: ignore[operator]
    assert others_done < 2.0, others_done                             # not stuck behind the waiting session


def test_seed_example_total_3(tmp_path, dovecot):
    # The same text with only the wait shortened (the 5 s wait itself is measured above).
    seed = SEED.replace('wait = "5s"', 'wait = "10ms"')
    assert seed != SEED
    with run_server(config(dovecot, seed), tmp_path) as srv:
        c = open_session(srv, "submissions", implicit=True)
        assert c.cmd(f"AUTH PLAIN {plain_ir(ALICE, 'wrong')}") == INVALID
        assert c.cmd(f"AUTH PLAIN {plain_ir('nobody@' + DOMAIN, 'x')}") == INVALID
        c.send(f"AUTH PLAIN {plain_ir(BOB, dovecot.users[ALICE])}\r\n")
        expect_disconnect(c, INVALID)
