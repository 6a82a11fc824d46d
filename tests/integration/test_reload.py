"""Reload without dropping anyone (issue 12 item 2): sessions in progress keep the settings they started
with, new sessions get the new ones (mechanisms, certificate, listeners), an invalid file changes nothing,
and the previous generation's lookups are closed once its last session has ended."""
from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.certs import make_pki
from tests.fixtures.reload import PLAIN, config, fingerprint, finish_session, open_session
from tests.fixtures.server import run_server
from tests.smtpclient import Raw

def reload(srv, path: Path) -> bool:
    return srv.call(srv.server.reload(str(path)))


def test_reload_under_load_mechanisms_and_certificate(tmp_path: Path) -> None:
    pki_a, pki_b = make_pki(tmp_path / "pki-a"), make_pki(tmp_path / "pki-b")
    path = tmp_path / "smtpgate.toml"
    path.write_text(config(pki_a, tmp_path))
    with run_server(path.read_text(), tmp_path, pki=pki_a) as srv:
        ports = {"submission": srv.port("submission"), "submissions": srv.port("submissions")}
        sessions = []
        for i in range(50):
            implicit = i % 2 == 1
            c, ehlo = open_session(ports["submissions" if implicit else "submission"], implicit)
            assert "AUTH PLAIN LOGIN" in ehlo
            sessions.append((c, fingerprint(c.sock)))
        old_fp = sessions[0][1]
        assert all(fp == old_fp for _, fp in sessions)

        # New connections keep arriving while the reload happens: none may be refused or fail.
        stop = threading.Event()
        failures: list[str] = []
        done = [0]

        def hammer() -> None:
            while not stop.is_set():
                try:
                    c = Raw(ports["submission"])
                    if not c.cmd("EHLO hammer.test").startswith("250"):
                        failures.append("EHLO")
                    c.cmd("QUIT")
                    c.close()
                    done[0] += 1
                except OSError as exc:
                    failures.append(repr(exc))
        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            time.sleep(0.2)
            path.write_text(config(pki_b, tmp_path, mechanisms='["login"]'))
            assert reload(srv, path) is True
            time.sleep(0.2)
        finally:
            stop.set()
            thread.join(10)
        assert not failures, failures
        assert done[0] > 0

        # Every session that started before the reload finishes with its own settings: AUTH PLAIN works.
        for c, _ in sessions:
            replies = finish_session(c)
            assert replies[0].startswith("235"), replies
            assert replies[4].startswith("250"), replies
        assert len(srv.spool_files()) == 50

        # New sessions see the change: new EHLO capabilities and the new certificate, on both listeners.
        for name, implicit in (("submission", False), ("submissions", True)):
            c, ehlo = open_session(ports[name], implicit)
            assert "AUTH LOGIN" in ehlo and "PLAIN" not in ehlo, ehlo
            assert fingerprint(c.sock) != old_fp
            new_fp = fingerprint(c.sock)
            assert c.cmd(f"AUTH PLAIN {PLAIN}").startswith("504")
            c.close()
        expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pki_b.cert.read_text())).hexdigest()
        assert new_fp == expected
        assert any("configuration reloaded" in line for line in srv.logs)


def test_invalid_config_is_one_line_and_old_keeps_serving(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "smtpgate.toml"
    path.write_text(config(pki, tmp_path))
    with run_server(path.read_text(), tmp_path, pki=pki) as srv:
        path.write_text(config(pki, tmp_path, mechanisms='["plain", "no-such-mech"]'))
        before = len(srv.logs)
        assert reload(srv, path) is False
        errors = [line for line in srv.logs[before:] if line.startswith("ERROR")]
        assert len(errors) == 1, errors
        assert "Configuration error: session.auth.mechanisms[0].then: unknown SASL mechanism" in errors[0]
        c, ehlo = open_session(srv.port("submission"), False)
        assert "AUTH PLAIN LOGIN" in ehlo
        assert finish_session(c)[4].startswith("250")

        # A port that cannot be bound is refused the same way, and nothing of the new generation stays.
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            path.write_text(config(pki, tmp_path, mechanisms='["login"]') +
                            f'\n[server.listener.busy]\nbind = "127.0.0.1:{port}"\n')
            before = len(srv.logs)
            assert reload(srv, path) is False
            errors = [line for line in srv.logs[before:] if line.startswith("ERROR")]
            assert len(errors) == 1 and "Configuration error: server.listener.busy.bind" in errors[0], errors
        finally:
            busy.close()
        c, ehlo = open_session(srv.port("submission"), False)
        assert "AUTH PLAIN LOGIN" in ehlo
        c.close()


def test_listeners_added_and_removed(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "smtpgate.toml"
    path.write_text(config(pki, tmp_path))
    with run_server(path.read_text(), tmp_path, pki=pki) as srv:
        implicit_port = srv.port("submissions")
        held, _ = open_session(implicit_port, True)
        path.write_text(config(pki, tmp_path, extra_listener=True, implicit=False))
        assert reload(srv, path) is True
        extra = srv.port("extra")
        c = Raw(extra)
        assert c.greeting.startswith("220 mx.test")
        c.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", implicit_port), timeout=2).close()
        # The session on the removed listener finishes normally.
        assert finish_session(held)[4].startswith("250")

        # A listener that gains an address keeps its socket for the address it had: same port, no gap.
        port = srv.port("submission")
        path.write_text(config(pki, tmp_path, extra_listener=True, implicit=False).replace(
            '[server.listener.submission]\nbind = ["127.0.0.1:0"]',
            '[server.listener.submission]\nbind = ["127.0.0.1:0", "[::1]:0"]'))
        assert reload(srv, path) is True
        ports = srv.server.ports("submission")
        assert len(ports) == 2 and ports[0] == port
        c6 = Raw(ports[1], host="::1")
        assert c6.greeting.startswith("220 mx.test")
        c6.close()


def test_old_lookups_closed_after_last_session(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "smtpgate.toml"
    path.write_text(config(pki, tmp_path))
    with run_server(path.read_text(), tmp_path, pki=pki) as srv:
        old = srv.server.lookups["list/users"]
        closed = asyncio.Event()
        calls: list[float] = []

        async def close() -> None:
            calls.append(time.monotonic())
            closed.set()
        old.close = close
        held, _ = open_session(srv.port("submission"), False)
        assert reload(srv, path) is True
        time.sleep(1.5)
        assert not calls, "closed while a session of its generation was still running"
        assert srv.server.lookups["list/users"] is not old
        assert finish_session(held)[0].startswith("235")      # the old lookup still answered
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.1)
        assert calls, "the previous generation's lookup was never closed"


def test_reload_on_a_proxy_protocol_listener(tmp_path: Path) -> None:
    """A PROXY listener keeps its socket across a reload and hands new connections the new settings."""
    path = tmp_path / "smtpgate.toml"

    def write(mechanisms: str) -> None:
        path.write_text(f"""
[server]
hostname = "mx.test"
[server.listener.submission]
bind = "127.0.0.1:0"
proxy.trusted-networks = ["127.0.0.1/32"]
[session.auth]
mechanisms = {mechanisms}
lookup = "list/users"
allow-plain-text = true
[list]
users = ["john@example.test:secret"]
[queue]
path = "{tmp_path}/spool"
""")

    def proxied_ehlo(port: int) -> str:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 587\r\n")
        c = Raw.__new__(Raw)              # the PROXY header goes first: no greeting read on connect
        c.sock, c.buf = sock, b""
        assert c.reply().startswith("220 mx.test")
        reply = c.cmd("EHLO client.test")
        c.close()
        return reply

    write('["plain", "login"]')
    with run_server(path.read_text(), tmp_path) as srv:
        port = srv.port("submission")
        assert "AUTH PLAIN LOGIN" in proxied_ehlo(port)
        write('["login"]')
        assert reload(srv, path) is True
        assert srv.port("submission") == port                 # the same socket
        ehlo = proxied_ehlo(port)
        assert "AUTH LOGIN" in ehlo and "PLAIN" not in ehlo, ehlo


def test_reload_changes_the_abuse_policy_and_keeps_its_store(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "smtpgate.toml"
    path.write_text(config(pki, tmp_path))
    with run_server(path.read_text(), tmp_path, pki=pki) as srv:
        port = srv.port("submission")
        before = Raw(port, source="127.0.0.9")
        assert before.greeting.startswith("220 mx.test")
        store = srv.server.guard.store
        path.write_text(config(pki, tmp_path).replace('hostname = "mx.test"',
                                                      'hostname = "mx.test"\nblocked-ip = ["127.0.0.9"]'))
        assert reload(srv, path) is True
        assert srv.server.guard.store is store           # counters, bans and slots carry over
        refused = Raw(port, source="127.0.0.9")
        assert refused.greeting.startswith("421 4.7.0")
        refused.close()
        other = Raw(port, source="127.0.0.10")
        assert other.greeting.startswith("220 mx.test")
        other.close()
        # The session admitted before the reload goes on.
        assert before.cmd("NOOP").startswith("250")
        before.close()

        path.write_text(config(pki, tmp_path))          # and back: the block is lifted by the next reload
        assert reload(srv, path) is True
        again = Raw(port, source="127.0.0.9")
        assert again.greeting.startswith("220 mx.test")
        again.close()
