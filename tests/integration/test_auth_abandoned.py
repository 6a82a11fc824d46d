"""An AUTH whose credentials were sent is always recorded, even if the client leaves before the verdict
(issue 9 item 2): the lookup runs to its end, bounded by its own timeout and concurrency, and the log
says ``result=abandoned`` with the verdict -- no free, unlogged password guesses by hanging up early."""
from __future__ import annotations

import asyncio
import base64
import re
import socket
import struct
import time

import pytest

from smtpgate.lookup.base import AuthResult, Capability, Credentials, Lookup, Outcome
from tests.fixtures.server import run_server
from tests.smtpclient import Raw, client_tls

CONFIG = """
[server]
hostname = "mx.test"
[server.listener.smtp]
bind = "127.0.0.1:0"
[server.listener.tls]
bind = "127.0.0.1:0"
tls.implicit = true
[server.tls]
certificate = "default"
[certificate.default]
cert = "file://{pki_cert}"
private-key = "file://{pki_key}"
[session.auth]
mechanisms = ["plain"]
lookup = "list/slow"
allow-plain-text = true
[list]
slow = ["placeholder:x"]
[queue]
path = "{tmp}/spool"
"""


class SlowStore(Lookup):
    """Like Dovecot's auth penalty: failures answered after a delay."""
    capabilities = Capability.PASSWORD
    timeout = 5.0

    def __init__(self) -> None:
        self.finished: list[str] = []

    async def authenticate(self, creds: Credentials) -> AuthResult:
        await asyncio.sleep(0.5)
        self.finished.append(creds.username)
        if creds.secret == "right":
            return AuthResult(Outcome.VALID, account=creds.username)
        return AuthResult(Outcome.INVALID)


@pytest.fixture()
def store():
    return SlowStore()


@pytest.fixture()
def srv(tmp_path, store):
    with run_server(CONFIG, tmp_path, lookups={"list/slow": store}) as running:
        yield running


def hang_up_after_auth(port: int, user: str, password: str) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.recv(1024)
    s.sendall(b"EHLO x\r\n")
    time.sleep(0.1)
    s.recv(4096)
    s.sendall(b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n")
    time.sleep(0.1)                      # no answer yet: the store is slow
    # Gone for good (a reset; a TLS client's close does the same): not a half-close, after which the
    # server still answers what was sent and the attempt is logged with its plain result.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def auth_lines(srv) -> list[str]:
    return [line for line in srv.logs if "smtpgate.auth:" in line]


@pytest.mark.parametrize("password, verdict", [("guess", "invalid"), ("right", "valid")])
def test_abandoned_attempt_is_logged_with_its_verdict(srv, store, password, verdict):
    hang_up_after_auth(srv.port("smtp"), "victim@example.org", password)
    deadline = time.monotonic() + 5
    while not auth_lines(srv) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.finished == ["victim@example.org"]         # the lookup ran to its end
    line, = auth_lines(srv)
    assert 'user="victim@example.org" result=abandoned ' in line
    assert re.search(f' reason="verdict {verdict}" session=[0-9A-F]+$', line), line
    assert password not in line
    assert srv.server.connection_count == 0


def test_many_abandoned_attempts_are_each_logged(srv, store):
    for i in range(5):
        hang_up_after_auth(srv.port("smtp"), f"u{i}@example.org", "guess")
    deadline = time.monotonic() + 5
    while len(auth_lines(srv)) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(store.finished) == [f"u{i}@example.org" for i in range(5)]
    assert len([line for line in auth_lines(srv) if "result=abandoned" in line]) == 5


def test_tls_client_closing_before_the_verdict(srv, store):
    """Over TLS a close is never a half-close: the connection is lost while the lookup works."""
    c = Raw(srv.port("tls"), tls=client_tls(srv.ca_file))
    assert c.cmd("EHLO x").startswith("250-")
    c.send(b"AUTH PLAIN " + base64.b64encode(b"\0tls@example.org\0guess") + b"\r\n")
    time.sleep(0.1)
    c.close()
    deadline = time.monotonic() + 5
    while not auth_lines(srv) and time.monotonic() < deadline:
        time.sleep(0.02)
    line, = auth_lines(srv)
    assert 'user="tls@example.org" result=abandoned ' in line and re.search(' reason="verdict invalid" session=[0-9A-F]+$', line)
