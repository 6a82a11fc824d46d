"""smtpgate as a system service (issue 12 items 2 and 5): the systemd unit passes ``systemd-analyze
verify``; ``smtpgate serve`` tells systemd it is ready / reloading / stopping over ``$NOTIFY_SOCKET``;
``smtpgate reload`` finds the server through its pid file; the last log line on stop; and
``server.run-as`` drops root after binding a port below 1024 while mail still reaches the spool."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fixtures.certs import make_pki
from tests.smtpclient import Raw
from tests.support import free_port, missing, need_binary

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "smtpgate.service"
SMTPGATE = str(Path(sys.executable).with_name("smtpgate"))


# -- the unit ---------------------------------------------------------------------------------------
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = need_binary("systemd-analyze")
    # verify checks that ExecStart= exists: point it at this installation.
    unit = tmp_path / "smtpgate.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/smtpgate", SMTPGATE))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values ("ignoring"): every warning is a failure here.
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "smtpgate.service" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
    text = UNIT.read_text()
    for needed in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "User=smtpgate",
                   "AmbientCapabilities=CAP_NET_BIND_SERVICE", "ProtectSystem=strict", "NoNewPrivileges=yes",
                   "PrivateTmp=yes", "ReadWritePaths=/var/lib/smtpgate"):
        assert needed in text, needed
    sec = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True,
                         timeout=60)
    match = re.search(r"Overall exposure level for smtpgate.service: ([0-9.]+)", sec.stdout + sec.stderr)
    assert match, sec.stdout + sec.stderr
    assert float(match.group(1)) <= 2.5, sec.stdout


def test_systemd_unit_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt sandboxing key is reported."""
    analyze = need_binary("systemd-analyze")
    unit = tmp_path / "smtpgate.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/smtpgate", SMTPGATE)
                    .replace("ProtectSystem=strict", "ProtectSystm=strict"))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "ProtectSystm" in proc.stdout + proc.stderr


# -- serve as a service ----------------------------------------------------------------------------------
def service_config(tmp: Path, pki, port: int, mechanisms: str = '["plain", "login"]', extra: str = "") -> str:
    return f"""
[server]
hostname = "mx.test"
shutdown-grace = "2s"
{extra}
[certificate.default]
cert = "file://{pki.cert}"
private-key = "file://{pki.key}"

[server.listener.submission]
bind = "127.0.0.1:{port}"

[session.auth]
mechanisms = {mechanisms}
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
wait = "1ms"

[session.rcpt.lookup]
domains = "list/domains"

[list]
users = ["john@example.test:secret"]
domains = ["example.test"]

[queue]
path = "{tmp}/spool"
"""


class Notifications:
    """A stand-in for systemd's notification socket."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.seen: list[str] = []

    def wait_for(self, field: str, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.seen.append(data)
            if field in data.split("\n"):
                return self.seen
        raise AssertionError(f"no {field} from the server; got {self.seen}")

    def close(self) -> None:
        self.sock.close()


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


def ehlo(port: int) -> str:
    c = Raw(port)
    reply = c.cmd("EHLO client.test")
    c.cmd("QUIT")
    c.close()
    return reply


def test_serve_notifies_systemd_reloads_by_pid_file_and_logs_stop(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(service_config(tmp_path, pki, port))
    pid_file = tmp_path / "run" / "smtpgate.pid"
    notify = Notifications(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": notify.path}
    log = (tmp_path / "stderr.log").open("w+")
    proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(conf), "--pid-file", str(pid_file)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        notify.wait_for("READY=1")
        wait_port(port)
        assert pid_file.read_text().strip() == str(proc.pid)
        assert "AUTH PLAIN LOGIN" in ehlo(port)

        # An invalid file: `smtpgate reload --config` refuses to signal (one line, exit 1) ...
        conf.write_text(service_config(tmp_path, pki, port, mechanisms='["plain", "nope"]'))
        r = subprocess.run([SMTPGATE, "reload", "--pid-file", str(pid_file), "--config", str(conf)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("Configuration error: session.auth.mechanisms: unknown SASL mechanism")
        # ... and reloading it anyway (SIGHUP) logs one line, keeps serving the old configuration, and
        # `smtpgate reload` reports the server's outcome: that line, exit status 1.
        notify.seen.clear()
        r = subprocess.run([SMTPGATE, "reload", "--pid-file", str(pid_file)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert r.stderr.startswith("Configuration error: session.auth.mechanisms"), r.stderr
        notify.wait_for("READY=1")
        assert any("RELOADING=1" in n for n in notify.seen)
        assert "AUTH PLAIN LOGIN" in ehlo(port)
        # Log lines are written in batches by a background thread: wait for the line, then count.
        deadline = time.monotonic() + 10
        while True:
            log.seek(0)
            lines = [line for line in log.read().splitlines() if "Configuration error:" in line]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        log.seek(0)
        lines = [line for line in log.read().splitlines() if "Configuration error:" in line]
        assert len(lines) == 1 and "session.auth.mechanisms" in lines[0], lines
        assert proc.poll() is None

        # A valid change through `smtpgate reload`: new sessions see it.
        conf.write_text(service_config(tmp_path, pki, port, mechanisms='["login"]'))
        notify.seen.clear()
        r = subprocess.run([SMTPGATE, "reload", "--pid-file", str(pid_file)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert f"pid {proc.pid} serves the new configuration" in r.stdout
        notify.wait_for("READY=1")
        assert "AUTH LOGIN" in ehlo(port) and "PLAIN" not in ehlo(port)

        notify.seen.clear()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        notify.wait_for("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    log.seek(0)
    out = log.read()
    assert out.rstrip().splitlines()[-1].split("smtpgate: ", 1)[-1].startswith("smtpgate stopped"), out
    assert not pid_file.exists() and not Path(str(pid_file) + ".reload").exists()
    assert "Traceback" not in out


def test_reload_without_a_server_says_so(tmp_path: Path) -> None:
    r = subprocess.run([SMTPGATE, "reload", "--pid-file", str(tmp_path / "none.pid")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "cannot read pid file" in r.stderr
    (tmp_path / "stale.pid").write_text("999999\n")
    r = subprocess.run([SMTPGATE, "reload", "--pid-file", str(tmp_path / "stale.pid")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "not a running smtpgate" in r.stderr


# -- run-as ------------------------------------------------------------------------------------------
RUN_AS_USER = "smtpgate"


def _service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/var/lib/smtpgate",
                    "--shell", "/usr/sbin/nologin", RUN_AS_USER], check=True, capture_output=True)
    return pwd.getpwnam(RUN_AS_USER)


def _free_low_port() -> int:
    for port in range(1023, 600, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port below 1024")


def test_run_as_drops_root_after_binding_a_low_port() -> None:
    if os.geteuid() != 0:
        missing("dropping privileges needs the tests to run as root")
    user = _service_user()
    # Not under pytest's tmp_path: that is private to root, and the dropped process must reach its spool.
    base = Path(tempfile.mkdtemp(prefix="smtpgate-runas-"))
    os.chmod(base, 0o755)
    try:
        pki = make_pki(base / "pki")
        port = _free_low_port()
        conf = base / "smtpgate.toml"
        conf.write_text(service_config(base, pki, port, extra=f'run-as.user = "{RUN_AS_USER}"'))
        proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(conf)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            wait_port(port)
            # The port opens before the switch (bind first, then drop): wait for the switch itself.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                if "\nUid:\t0\t" not in status:
                    break
                time.sleep(0.05)
            uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
            gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
            assert uids == [str(user.pw_uid)] * 4, status
            assert gids == [str(user.pw_gid)] * 4, status
            assert "CapEff:\t0000000000000000" in status, status     # no capability survived the switch
            c = Raw(port)
            import base64
            assert c.cmd("EHLO client.test").startswith("250")
            token = base64.b64encode(b"\0john@example.test\0secret").decode()
            assert c.cmd(f"AUTH PLAIN {token}").startswith("235")
            assert c.cmd("MAIL FROM:<john@example.test>").startswith("250")
            assert c.cmd("RCPT TO:<jane@example.test>").startswith("250")
            assert c.cmd("DATA").startswith("354")
            reply = c.cmd("Subject: dropped\r\n\r\nhello\r\n.")
            assert reply.startswith("250"), reply
            c.cmd("QUIT")
            c.close()
            spooled = list((base / "spool" / "new").iterdir())
            assert len(spooled) == 1
            assert os.stat(spooled[0]).st_uid == user.pw_uid
            assert stat.S_IMODE(os.stat(spooled[0]).st_mode) == 0o600
        finally:
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, out
        assert f"running as user {RUN_AS_USER}" in out
        assert "Traceback" not in out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_run_as_unknown_user_is_a_configuration_error(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(service_config(tmp_path, pki, 0, extra='run-as.user = "no-such-user-xyz"'))
    r = subprocess.run([SMTPGATE, "check-config", "--config", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr == "Configuration error: server.run-as.user: no such user 'no-such-user-xyz' on this system\n"
    conf.write_text(service_config(tmp_path, pki, 0, extra='run-as.group = "mail"'))
    r = subprocess.run([SMTPGATE, "check-config", "--config", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "server.run-as.group: needs server.run-as.user" in r.stderr
