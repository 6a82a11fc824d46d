"""Reload without dropping anyone (issue 12 item 2): sessions in progress keep the settings they started
with, new sessions get the new ones (mechanisms, certificate, listeners -- the management listener
too), an invalid file changes nothing, and the previous generation's lookups are closed once its last
session has ended."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.certs import make_pki
from tests.fixtures.reload import PLAIN, config, fingerprint, finish_session, open_session
from tests.fixtures.server import run_server
from tests.smtpclient import Raw
from tests.support import free_port, port_open

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


# --- the management (http) listener follows a reload --------------------------------------------------

TOKEN_A, TOKEN_B = "tok-a-5c1e-never-log-me", "tok-b-9d0f-never-log-me"


def _hashed(token: str) -> str:
    return "{SHA256}" + base64.b64encode(hashlib.sha256(token.encode()).digest()).decode()


def _with_mgmt(text: str, port: int, token: str | None = None, tls: bool = False) -> str:
    text += f'\n[server.listener.mgmt]\nbind = "127.0.0.1:{port}"\nprotocol = "http"\n'
    if tls:
        text += "tls.implicit = true\n"
    if token is not None:
        text += f'\n[server.management]\ntoken = "{_hashed(token)}"\n'
    return text


def _metrics(port: int) -> dict[tuple[str, tuple], float]:
    """/metrics on ``port``, parsed by prometheus_client: {(sample name, sorted labels): value}."""
    resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _http_keepalive(port: int) -> socket.socket:
    """A connection that got one answer and stays open for the next request (HTTP/1.1 keep-alive)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: mgmt\r\n\r\n")
    data = b""
    while b'"alive"' not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    return sock


def test_reload_adds_moves_and_removes_the_management_listener(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "smtpgate.toml"
    base = config(pki, tmp_path)
    path.write_text(base)
    p1, p2 = free_port(), free_port()
    with run_server(path.read_text(), tmp_path, pki=pki) as srv:
        assert _refused(p1)
        # Sessions before any management listener exists: they must show in its first scrape.
        c, _ = open_session(srv.port("submission"), False)
        assert finish_session(c)[4].startswith("250")
        held, _ = open_session(srv.port("submission"), False)          # still in progress at every reload

        # Added.
        path.write_text(_with_mgmt(base, p1, TOKEN_A))
        assert reload(srv, path) is True
        assert httpx.get(f"http://127.0.0.1:{p1}/healthz", timeout=10).json() == {"status": "alive"}
        assert httpx.get(f"http://127.0.0.1:{p1}/readyz", timeout=10).status_code == 200
        m = _metrics(p1)
        assert m[("smtpgate_connections_total", (("listener", "submission"),))] == 2
        assert m[("smtpgate_sessions_active", (("listener", "submission"),))] == 1
        assert m[("smtpgate_messages_accepted_total", (("listener", "submission"),))] == 1
        assert m[("smtpgate_lookup_requests_total", (("lookup", "list/users"), ("outcome", "positive")))] == 1
        assert ("smtpgate_event_loop_lag_seconds", ()) in m
        bans = httpx.get(f"http://127.0.0.1:{p1}/api/bans", headers={"Authorization": f"Bearer {TOKEN_A}"},
                         timeout=10)
        assert bans.status_code == 200 and bans.json() == {"bans": []}
        kept_alive = _http_keepalive(p1)

        # A reload that does not touch the listener: a request half sent before it is answered after it.
        partial = socket.create_connection(("127.0.0.1", p1), timeout=10)
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: mgmt\r\n")
        path.write_text(_with_mgmt(base.replace('"plain", "login"', '"login"'), p1, TOKEN_A))
        assert reload(srv, path) is True
        partial.sendall(b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := partial.recv(65536):
            answer += chunk
        partial.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert "smtpgate_sessions_active" in {f.name for f in text_string_to_metric_families(body.decode())}

        # Moved, with a new token: the old port refuses, the new one answers; the token follows.
        path.write_text(_with_mgmt(base, p2, TOKEN_B))
        assert reload(srv, path) is True
        assert _refused(p1)
        kept_alive.settimeout(5)
        assert kept_alive.recv(4096) == b""          # its idle keep-alive connection is closed too
        kept_alive.close()
        assert httpx.get(f"http://127.0.0.1:{p2}/healthz", timeout=10).status_code == 200
        assert _metrics(p2)[("smtpgate_sessions_active", (("listener", "submission"),))] == 1
        for token, status in ((TOKEN_A, 401), (TOKEN_B, 200)):
            resp = httpx.get(f"http://127.0.0.1:{p2}/api/bans", headers={"Authorization": f"Bearer {token}"},
                             timeout=10)
            assert resp.status_code == status, (token, resp.text)
        assert srv.server.ports("mgmt") == [p2]

        # Removed: the port closes, SMTP goes on (the session held since the start finishes).
        path.write_text(base)
        assert reload(srv, path) is True
        assert _refused(p2)
        assert "mgmt" not in srv.server._servers
        assert finish_session(held)[4].startswith("250")
        c, ehlo = open_session(srv.port("submission"), False)
        assert "AUTH PLAIN LOGIN" in ehlo
        assert finish_session(c)[4].startswith("250")
        assert len(srv.spool_files()) == 3
    logs = "\n".join(srv.logs)
    assert TOKEN_A not in logs and TOKEN_B not in logs
    assert "listener mgmt removed: no new connections, its requests in progress are answered" in logs


def test_management_listener_on_a_busy_port_refuses_the_reload(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "smtpgate.toml"
    base = config(pki, tmp_path)
    p1, p2 = free_port(), free_port()
    path.write_text(_with_mgmt(base, p1))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    try:
        with run_server(path.read_text(), tmp_path, pki=pki) as srv:
            held, _ = open_session(srv.port("submission"), False)
            before = _metrics(p1)
            # Moved to a busy port (with another change that must not apply either).
            path.write_text(_with_mgmt(base.replace('"plain", "login"', '"login"'), taken))
            mark = len(srv.logs)
            assert reload(srv, path) is False
            errors = [line for line in srv.logs[mark:] if line.startswith("ERROR")]
            assert len(errors) == 1 and errors[0].count("\n") == 0, errors
            assert (f"Configuration error: server.listener.mgmt.bind: cannot listen on 127.0.0.1:{taken}: "
                    "Address already in use (reload refused; the running configuration stays)") in errors[0]
            assert httpx.get(f"http://127.0.0.1:{p1}/healthz", timeout=10).status_code == 200
            assert _metrics(p1)[("smtpgate_sessions_active", (("listener", "submission"),))] == 1
            assert before[("smtpgate_sessions_active", (("listener", "submission"),))] == 1
            c, ehlo = open_session(srv.port("submission"), False)
            assert "AUTH PLAIN LOGIN" in ehlo                   # the old configuration, untouched
            c.close()

            # Moved to a free port while an added SMTP listener cannot bind: nothing of it stays bound.
            path.write_text(_with_mgmt(base, p2) + f'\n[server.listener.late]\nbind = "127.0.0.1:{taken}"\n')
            mark = len(srv.logs)
            assert reload(srv, path) is False
            errors = [line for line in srv.logs[mark:] if line.startswith("ERROR")]
            assert len(errors) == 1 and "Configuration error: server.listener.late.bind" in errors[0], errors
            assert _refused(p2)
            assert httpx.get(f"http://127.0.0.1:{p1}/healthz", timeout=10).status_code == 200
            assert srv.server.ports("mgmt") == [p1]
            assert finish_session(held)[4].startswith("250")
    finally:
        busy.close()


def test_reload_rotates_the_https_management_certificate(tmp_path: Path) -> None:
    pki_a, pki_b = make_pki(tmp_path / "pki-a"), make_pki(tmp_path / "pki-b")
    path = tmp_path / "smtpgate.toml"
    port = free_port()
    path.write_text(_with_mgmt(config(pki_a, tmp_path), port, tls=True))

    def served_cert() -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            with ctx.wrap_socket(raw) as tls:
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()

    def der(pki) -> str:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pki.cert.read_text())).hexdigest()

    with run_server(path.read_text(), tmp_path, pki=pki_a) as srv:
        assert served_cert() == der(pki_a)
        path.write_text(_with_mgmt(config(pki_b, tmp_path), port, tls=True))
        assert reload(srv, path) is True
        assert srv.server.ports("mgmt") == [port]             # the same socket, a new certificate
        assert served_cert() == der(pki_b)
        verify = ssl.create_default_context(cafile=str(pki_b.ca_cert))
        resp = httpx.get(f"https://localhost:{port}/healthz", verify=verify, timeout=10)
        assert resp.status_code == 200


def test_smtpgate_reload_adds_a_management_listener_to_a_running_serve(tmp_path: Path) -> None:
    """End to end: `smtpgate serve` without one, SIGHUP through `smtpgate reload`, then curl-able /metrics."""
    smtp, mgmt = free_port(), free_port()
    conf = tmp_path / "smtpgate.toml"
    text = f"""
[server]
hostname = "mx.test"
[server.listener.smtp]
bind = "127.0.0.1:{smtp}"
[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true
[list]
users = ["john@example.test:secret"]
[queue]
path = "{tmp_path}/spool"
"""
    conf.write_text(text)
    pid_file = tmp_path / "smtpgate.pid"
    log = (tmp_path / "stderr.log").open("w+")
    cmd = [sys.executable, "-m", "smtpgate"]
    proc = subprocess.Popen(cmd + ["serve", "--config", str(conf), "--pid-file", str(pid_file)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not (port_open("127.0.0.1", smtp) and pid_file.exists()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read()
            time.sleep(0.05)
        c = Raw(smtp)
        assert c.cmd("EHLO client.test").startswith("250")
        assert c.cmd(f"AUTH PLAIN {PLAIN}").startswith("235")
        conf.write_text(text + f'\n[server.listener.mgmt]\nbind = "127.0.0.1:{mgmt}"\nprotocol = "http"\n')
        r = subprocess.run(cmd + ["reload", "--pid-file", str(pid_file)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        m = _metrics(mgmt)
        assert m[("smtpgate_sessions_active", (("listener", "smtp"),))] == 1
        assert m[("smtpgate_auth_attempts_total", (("listener", "smtp"), ("mechanism", "PLAIN"),
                                                   ("result", "success")))] == 1
        assert c.cmd("QUIT").startswith("221")
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    assert "Traceback" not in log.read()
