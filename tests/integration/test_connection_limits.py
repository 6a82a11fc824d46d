"""Connections that cost a descriptor before they are sessions (issue 9 item 5).

Implicit-TLS connections count toward ``max-connections`` from accept, while they handshake; a client
that never handshakes is dropped after ``tls.timeout`` (default 10 s); when descriptors run short new
connections are refused at once and sessions already served carry on; RLIMIT_NOFILE is raised to its
hard limit at start and logged.
"""
from __future__ import annotations

import resource
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.certs import make_pki
from tests.fixtures.server import run_server
from tests.smtpclient import Raw, client_tls
from tests.support import free_port, port_open

CONFIG = """
[server]
hostname = "mx.test"
[server.listener.tls]
bind = "127.0.0.1:0"
max-connections = 3
[server.listener.tls.tls]
implicit = true
timeout = "1s"
[server.tls]
certificate = "default"
[certificate.default]
cert = "file://{pki_cert}"
private-key = "file://{pki_key}"
[queue]
path = "{tmp}/spool"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with run_server(CONFIG, tmp_path_factory.mktemp("limits")) as running:
        yield running


def tls_client(srv) -> Raw:
    return Raw(srv.port("tls"), tls=client_tls(srv.ca_file), timeout=5)


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_handshaking_connections_count_toward_max_connections(srv):
    silent = [socket.create_connection(("127.0.0.1", srv.port("tls"))) for _ in range(3)]
    try:
        wait_until(lambda: srv.server.connection_count == 3)
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
            tls_client(srv)                                 # the fourth: refused, no handshake
    finally:
        for s in silent:
            s.close()
    wait_until(lambda: srv.server.connection_count == 0)   # a client gone mid-handshake frees its slot
    c = tls_client(srv)
    assert c.greeting == "220 mx.test smtpgate at your service"
    assert c.cmd("NOOP") == "250 2.0.0 OK"
    c.close()


def test_silent_client_is_dropped_after_the_handshake_timeout(srv):
    s = socket.create_connection(("127.0.0.1", srv.port("tls")), timeout=5)
    started = time.monotonic()
    assert s.recv(1) == b""                                 # closed by the server, nothing said
    assert 0.8 <= time.monotonic() - started < 4
    s.close()


def test_default_handshake_timeout_is_ten_seconds():
    from smtpgate.config.load import load_text
    assert load_text('[server.listener.a]\nbind = "127.0.0.1:0"\n').listeners["a"].tls.timeout == 10.0


SERVE = """
[server]
hostname = "mx.test"
[server.listener.smtp]
bind = "127.0.0.1:{port}"
[queue]
path = "{tmp}/spool"
"""


def test_descriptor_shortage_refuses_new_connections_and_spares_served_ones(tmp_path):
    """With 128 descriptors a process can serve about 64 connections; the rest get 421 at once."""
    port = free_port()
    cfg = tmp_path / "smtpgate.toml"
    cfg.write_text(SERVE.format(port=port, tmp=tmp_path))

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 128))

    proc = subprocess.Popen([str(Path(sys.executable).parent / "smtpgate"), "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=low_limit)
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15
        while not port_open("127.0.0.1", port, 0.2):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        served = Raw(port)
        assert served.cmd("EHLO client.test").startswith("250-")
        greeted = refused = 0
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(s)
            first = s.recv(200)
            if first.startswith(b"220 "):
                greeted += 1
            else:
                assert first == b"421 4.7.0 Too many connections, try again later\r\n"
                refused += 1
        assert 30 <= greeted < 100 and refused > 0
        assert served.cmd("NOOP") == "250 2.0.0 OK"             # the served session is unharmed
        assert served.cmd("QUIT") == "221 2.0.0 Bye"
    finally:
        for s in clients:
            s.close()
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "RLIMIT_NOFILE raised from 64 to 128" in err
    assert "Traceback" not in err and "Too many open files" not in err
