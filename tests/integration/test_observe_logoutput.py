"""``server.log.*`` with a real ``smtpgate serve``: JSON lines on stderr, syslog datagrams, the level from
the configuration, and one-line configuration errors for the new keys."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.auth_session import plain_ir
from tests.smtpclient import Raw
from tests.support import free_port, port_open

PW = "Pw-7c1d-never-log-me"


def config(tmp: Path, port: int, log: str) -> Path:
    cfg = tmp / "smtpgate.toml"
    cfg.write_text(f"""
[server]
hostname = "mx.test"
[server.listener.smtp]
bind = ["127.0.0.1:{port}"]
[server.log]
{log}
[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
wait = "1ms"
[list]
users = ["john@example.org:{PW}"]
[queue]
path = "{tmp}/spool"
""")
    return cfg


def serve(tmp: Path, log: str, session) -> str:
    """Run ``smtpgate serve`` with ``[server.log]`` = ``log``, call ``session(port)``, stop; returns stderr."""
    port = free_port()
    cfg = config(tmp, port, log)
    errfile = tmp / "stderr.log"
    with open(errfile, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "smtpgate", "serve", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=tmp)
        try:
            deadline = time.monotonic() + 15
            while not port_open("127.0.0.1", port):
                assert proc.poll() is None, errfile.read_text()
                assert time.monotonic() < deadline, errfile.read_text()
                time.sleep(0.05)
            session(port)
            time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
    return errfile.read_text()


def one_session(port: int) -> None:
    c = Raw(port)
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', 'wrong')}").startswith("535 ")
    assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', PW)}").startswith("235 ")
    assert c.cmd("QUIT").startswith("221 ")
    c.close()


def test_json_lines_on_stderr(tmp_path):
    text = serve(tmp_path, 'format = "json"', one_session)
    records = [json.loads(line) for line in text.splitlines() if line.strip()]   # every line is JSON
    sid = next(r["session"] for r in records if r.get("event") == "auth")
    events = [r for r in records if r.get("session") == sid]        # not the readiness probe's connection
    assert [r["event"] for r in events] == ["connect", "auth", "auth", "disconnect"]
    connect, failed, ok, disconnect = events
    assert connect == {"time": connect["time"], "level": "INFO", "logger": "smtpgate.session", "event": "connect",
                       "session": sid, "listener": "smtp", "remote": "127.0.0.1", "port": connect["port"],
                       "tls": "no"}
    assert (failed["user"], failed["result"], failed["failures"]) == ("john@example.org", "invalid", 1)
    assert (ok["mechanism"], ok["result"], ok["logger"]) == ("PLAIN", "success", "smtpgate.auth")
    assert (disconnect["ehlo"], disconnect["auth"], disconnect["quit"], disconnect["commands"]) == \
        ("1", "1/2", "1", "3/4")
    assert isinstance(disconnect["duration"], float)
    assert any(r.get("message", "").startswith("smtpgate ready") for r in records)
    assert connect["time"].endswith("Z") and "T" in connect["time"]
    assert PW not in text


def test_debug_level_from_the_configuration(tmp_path):
    text = serve(tmp_path, 'level = "debug"', one_session)
    assert 'smtpgate.dialogue: smtp session=' in text
    assert 'dir=in line="AUTH PLAIN ***"' in text
    assert PW not in text and plain_ir("john@example.org", PW) not in text


def test_syslog_output(tmp_path):
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    try:
        text = serve(tmp_path, f'output = "syslog"\nsyslog.socket = "{path}"\nsyslog.facility = "mail"',
                     one_session)
        datagrams = []
        while True:
            try:
                datagrams.append(sock.recv(65536).decode())
            except TimeoutError:
                break
    finally:
        sock.close()
    auth = [d for d in datagrams if "smtpgate.auth: auth " in d]
    assert len(auth) == 2, datagrams
    # <22> = facility mail (2) * 8 + severity info (6); the tag names the process.
    assert auth[0].startswith("<22>smtpgate[")
    assert "]: INFO smtpgate.auth: auth listener=smtp remote=127.0.0.1 " in auth[0]
    assert any("disconnect session=" in d for d in datagrams)
    assert "smtpgate.auth" not in text                 # not on stderr as well
    assert all(PW not in d for d in datagrams)


@pytest.mark.parametrize("log,line", [
    ('format = "xml"', "Configuration error: server.log.format: expected one of text, json, got 'xml'"),
    ('output = "syslog"\nsyslog.socket = "/nonexistent/log.sock"',
     "Configuration error: server.log.syslog.socket: cannot reach /nonexistent/log.sock: No such file or directory"),
])
def test_log_configuration_errors(tmp_path, log, line):
    cfg = config(tmp_path, free_port(), log)
    out = subprocess.run([sys.executable, "-m", "smtpgate", "serve", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("extra,line", [
    ('[server.management]\ntoken = "plain-secret"',
     'server.management.token: store the token hashed (e.g. "{SHA256}<base64>" or an argon2 hash) or in a file '
     '("file:///etc/smtpgate/api-token"), never in plaintext here'),
    ('[server.management]\ntoken = "file:///nonexistent/token"',
     "server.management.token: cannot read /nonexistent/token: No such file or directory"),
    ('[server.management]\nallow-remote = "yes"', "server.management.allow-remote: expected true or false, got 'yes'"),
    ('[server.management]\nport = 1', "server.management.port: unknown configuration key"),
])
def test_management_configuration_errors(tmp_path, extra, line):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server.listener.smtp]\nbind = "127.0.0.1:0"\n{extra}\n')
    out = subprocess.run([sys.executable, "-m", "smtpgate", "check-config", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip() == f"Configuration error: {line}"


def test_management_listener_off_loopback_needs_allow_remote(tmp_path):
    cfg = tmp_path / "c.toml"
    base = '[server.listener.smtp]\nbind = "127.0.0.1:0"\n[server.listener.mgmt]\nbind = "[::]:9465"\nprotocol = "http"\n'
    cfg.write_text(base)
    out = subprocess.run([sys.executable, "-m", "smtpgate", "check-config", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith(
        "Configuration error: server.listener.mgmt.bind: [::]:9465 is not a loopback address")
    cfg.write_text(base + "[server.management]\nallow-remote = true\n")
    out = subprocess.run([sys.executable, "-m", "smtpgate", "check-config", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
