"""The command line, as an operator uses it: ``smtpgate check-config`` / ``serve`` as real processes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.smtpclient import Raw
from tests.support import free_port, on_embedded_default_ports, port_open

# The console script installed next to the interpreter running the tests (.venv/bin/smtpgate).
PYTHON = sys.executable
SMTPGATE = str(Path(sys.executable).parent / "smtpgate")

GOOD = """
[server]
hostname = "mx.test"
shutdown-grace = "{grace}"

[server.listener.smtp]
bind = "127.0.0.1:{port}"

[session.rcpt.lookup]
domains = "list/domains"

[list]
domains = ["example.org"]

[queue]
path = "spool"
"""

BASE = '[server.listener.smtp]\nbind = "127.0.0.1:0"\n'

#: one configuration per error class -> the exact line check-config and serve must print
ERRORS = {
    "unknown-key": (BASE + "[session.auth]\nmechanizms = []\n",
                    "session.auth.mechanizms: unknown configuration key"),
    "wrong-type": (BASE + "[session.auth]\nrequire = \"yes\"\n",
                   "session.auth.require: expected true or false, got 'yes'"),
    "missing-else": (BASE + '[session.auth]\nrequire = [ { if = "listener", eq = "smtp", then = true } ]\n',
                     "session.auth.require: if-block needs a final { else = ... } rule"),
    "else-not-last": (BASE + '[session.auth]\nrequire = [ { else = true }, '
                             '{ if = "listener", eq = "smtp", then = true } ]\n',
                      "session.auth.require[0]: 'else' must be the last rule"),
    "unknown-variable": (BASE + '[session.auth]\nrequire = [ { if = "ip", eq = "1.2.3.4", then = true }, '
                                '{ else = false } ]\n',
                         "session.auth.require[0].if: unknown variable 'ip'"),
    "variable-too-early": (BASE + '[session.auth]\nrequire = [ { if = "sender", eq = "a@b", then = true }, '
                                  '{ else = false } ]\n',
                           "session.auth.require[0].if: variable 'sender' is not available when this setting "
                           "is evaluated"),
    "bad-regex": (BASE + '[session.auth]\nrequire = [ { if = "remote-ip", matches = "[", then = true }, '
                         '{ else = false } ]\n',
                  "session.auth.require[0].matches: invalid regular expression: unterminated character set at "
                  "position 0"),
    "unknown-listener": (BASE + '[session.auth]\nrequire = [ { if = "listener", eq = "sub", then = true }, '
                                '{ else = false } ]\n',
                         "session.auth.require[0].eq: unknown listener id 'sub'"),
    "unknown-lookup": (BASE + '[session.auth]\nlookup = "list/users"\n',
                       "session.auth.lookup: unknown lookup 'list/users'"),
    "unknown-list": (BASE + '[session.rcpt]\nrelay = [ { if = "rcpt", in-list = "list/x", then = true }, '
                            '{ else = false } ]\n',
                     "session.rcpt.relay[0].in-list: unknown list 'list/x'"),
    "unknown-certificate": (BASE + '[server.tls]\ncertificate = "main"\n',
                            "server.tls.certificate: unknown certificate 'main' (define [certificate.main])"),
    "unknown-mechanism": (BASE + '[session.auth]\nmechanisms = ["digest-md5"]\n',
                          "session.auth.mechanisms: unknown SASL mechanism 'digest-md5' (known: PLAIN, LOGIN, "
                          "OAUTHBEARER, XOAUTH2, SCRAM-SHA-256, SCRAM-SHA-1, SCRAM-SHA-256-PLUS, SCRAM-SHA-1-PLUS, "
                          "CRAM-MD5)"),
    "remote-not-lookup": (BASE + '[remote.imap]\naddress = "127.0.0.1"\nprotocol = "imap"\n'
                                 '[session.auth]\nlookup = "remote/imap"\n',
                          "session.auth.lookup: remote 'imap' is not enabled for lookups "
                          "(set remote.imap.lookup = true)"),
    "open-relay": (BASE + "[session.rcpt]\nrelay = true\n",
                   "session.rcpt.relay: an unconditional true would make an open relay; use an if-block "
                   "(e.g. { if = \"authenticated-as\", ne = \"\", then = true })"),
    "duplicate-bind": ('[server.listener.a]\nbind = "127.0.0.1:2600"\n[server.listener.b]\nbind = "127.0.0.1:2600"\n',
                       "server.listener.b.bind: 127.0.0.1:2600 is already bound by listener 'a'"),
    "invalid-bind": ('[server.listener.a]\nbind = "mail.example.org:25"\n',
                     "server.listener.a.bind: invalid IP address 'mail.example.org' in bind address"),
    "bad-duration": (BASE + '[session]\ntimeout = "0"\n', "session.timeout: duration must be greater than 0"),
}


#: serve shares check-config's validation; a few classes show it prints the same line
SERVE_TOO = ("unknown-key", "variable-too-early", "open-relay", "unknown-certificate")


def run(*args: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([SMTPGATE, *args], capture_output=True, text=True, timeout=timeout, **kw)


def one_error_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr == f"Configuration error: {expected}\n"
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
    """Run check-config and serve on every bad configuration at once (each start costs ~0.5 s)."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    jobs = {}
    for name, (text, _) in ERRORS.items():
        path = tmp / f"{name}.toml"
        path.write_text(text)
        jobs[(name, "check-config")] = ["check-config", "--config", str(path)]
        if name in SERVE_TOO:
            jobs[(name, "serve")] = ["serve", "--config", str(path)]
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text('[server\nhostname = "x"\n')
    jobs[("bad-toml", "check-config")] = ["check-config", "--config", str(bad_toml)]
    jobs[("bad-toml", "serve")] = ["serve", "--config", str(bad_toml)]
    jobs[("missing-file", "check-config")] = ["check-config", "--config", str(tmp / "none.toml")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {key: pool.submit(run, *args) for key, args in jobs.items()}
        return {key: f.result() for key, f in futures.items()}, tmp


@pytest.mark.parametrize("name", list(ERRORS))
def test_check_config_errors(error_runs, name):
    results, _ = error_runs
    one_error_line(results[(name, "check-config")], ERRORS[name][1])


@pytest.mark.parametrize("name", SERVE_TOO)
def test_serve_stops_on_the_same_errors(error_runs, name):
    results, _ = error_runs
    one_error_line(results[(name, "serve")], ERRORS[name][1])


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_bad_toml(error_runs, command):
    results, tmp = error_runs
    proc = results[("bad-toml", command)]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"Configuration error: {tmp}/bad.toml: invalid TOML: ")
    assert proc.stderr.count("\n") == 1


def test_missing_config_file(error_runs):
    results, tmp = error_runs
    one_error_line(results[("missing-file", "check-config")],
                   f"{tmp}/none.toml: cannot read configuration file: No such file or directory")


def test_check_config_ok(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD.format(grace="1s", port=0))
    proc = run("check-config", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{path}: OK\n" and proc.stderr == ""
    assert not (tmp_path / "spool").exists()           # validation starts nothing


def test_python_dash_m(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD.format(grace="1s", port=0))
    proc = subprocess.run([PYTHON, "-m", "smtpgate", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == f"{path}: OK\n"
    bad = tmp_path / "bad.toml"
    bad.write_text(ERRORS["unknown-key"][0])
    proc = subprocess.run([PYTHON, "-m", "smtpgate", "check-config", "--config", str(bad)],
                          capture_output=True, text=True, timeout=30)
    one_error_line(proc, ERRORS["unknown-key"][1])


# --- startup failures: one line naming the key and the address or path, exit 1 at once --------------
#: The shape of the embedded default that hung (issue 9 item 11): its SQLite user store runs a worker
#: thread, which kept the process alive after a failed start.
WITH_STORE = """
[server.listener.smtp]
bind = "127.0.0.1:{free}"

[server.listener.submission]
bind = "{bind}"

[directory.users]
type = "internal"
store = "sqlite://users.db"

[session.auth]
lookup = "directory/users"

[queue]
path = "{queue}"
"""


def _start_failure(args: list[str], cwd: Path, **kw) -> tuple[int, str, float]:
    """Run ``smtpgate serve`` expecting it to fail: (exit status, stderr, seconds from the "cannot start"
    line to the exit). Timed from the message, not from exec, so a busy machine's slow Python start does
    not count -- what is measured is that nothing keeps the process alive after it gave up."""
    proc = subprocess.Popen([SMTPGATE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, **kw)
    lines = []
    try:
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            lines.append(line)
            if "cannot start" in line or line.startswith("Configuration error"):
                break
            assert time.monotonic() < deadline
        said = time.monotonic()
        try:
            status = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            status = "still running 10 s after it said it cannot start"
        elapsed = time.monotonic() - said
        lines.extend(proc.stderr.read().splitlines(keepends=True))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return status, "".join(lines), elapsed


def _assert_one_line_exit(result: tuple[int, str, float], expected: str) -> None:
    status, err, elapsed = result
    assert status == 1, (status, err)
    assert err == expected + "\n"                                   # one line, nothing else
    assert elapsed < 1.0, elapsed


def test_serve_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "busy.toml"
        path.write_text(WITH_STORE.format(free=free_port(), bind=f"127.0.0.1:{port}", queue="spool"))
        result = _start_failure(["serve", "--config", str(path)], tmp_path)
    _assert_one_line_exit(result, f"smtpgate: cannot start: server.listener.submission.bind: cannot listen on "
                                  f"127.0.0.1:{port}: Address already in use")


def test_serve_address_not_on_this_machine(tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text(WITH_STORE.format(free=free_port(), bind="192.0.2.1:2587", queue="spool"))
    _assert_one_line_exit(
        _start_failure(["serve", "--config", str(path)], tmp_path),
        "smtpgate: cannot start: server.listener.submission.bind: cannot listen on 192.0.2.1:2587: "
        "Cannot assign requested address (no interface of this machine has that address)")


def test_serve_bind_race_still_exits(tmp_path):
    """A port taken between the check and the real bind: the server's own error, same one line, and the
    user store's worker thread is closed so the process exits."""
    script = textwrap.dedent("""
        import socket, sys
        from smtpgate import startup, cli
        startup.check_binds = lambda settings: None      # lose the race on purpose
        busy = socket.socket(); busy.bind(("127.0.0.1", int(sys.argv[2]))); busy.listen()
        sys.exit(cli.main(["serve", "--config", sys.argv[1]]))
    """)
    port = free_port()
    path = tmp_path / "race.toml"
    path.write_text(WITH_STORE.format(free=free_port(), bind=f"127.0.0.1:{port}", queue="spool"))
    proc = subprocess.run([PYTHON, "-c", script, str(path), str(port)], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == (f"smtpgate: cannot start: server.listener.submission.bind: cannot listen on "
                           f"127.0.0.1:{port}: Address already in use\n")


def test_serve_exits_even_if_cleanup_hangs(tmp_path):
    """Belt and braces: a failed start whose cleanup hangs (here: stop() never returns, so the user store's
    worker thread stays) still exits -- after the 2 s bound on cleanup, not never."""
    script = textwrap.dedent("""
        import asyncio, socket, sys
        from smtpgate import startup, cli
        from smtpgate.server import Server
        async def stuck(self, grace=None):
            await asyncio.sleep(3600)
        Server.stop = stuck
        startup.check_binds = lambda settings: None
        busy = socket.socket(); busy.bind(("127.0.0.1", int(sys.argv[2]))); busy.listen()
        sys.exit(cli.main(["serve", "--config", sys.argv[1]]))
    """)
    port = free_port()
    path = tmp_path / "stuck.toml"
    path.write_text(WITH_STORE.format(free=free_port(), bind=f"127.0.0.1:{port}", queue="spool"))
    proc = subprocess.Popen([PYTHON, "-c", script, str(path), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stderr.readline()
        said = time.monotonic()
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert line.startswith("smtpgate: cannot start: server.listener.submission.bind:")
    assert status == 1 and time.monotonic() - said < 1.0


def test_serve_unwritable_queue_path(tmp_path):
    (tmp_path / "afile").write_text("not a directory\n")
    path = tmp_path / "queue.toml"
    path.write_text(WITH_STORE.format(free=free_port(), bind=f"127.0.0.1:{free_port()}", queue="afile/spool"))
    expected = (f"Configuration error: queue.path: cannot create directory {tmp_path}/afile/spool: "
                f"{tmp_path}/afile is not a directory")
    _assert_one_line_exit(_start_failure(["serve", "--config", str(path)], tmp_path), expected)
    check = run("check-config", "--config", str(path))
    one_error_line(check, expected.removeprefix("Configuration error: "))


def _check_paths_unprivileged(config: Path) -> str:
    """``startup.check_paths`` (what check-config and serve run) on ``config``, as an unprivileged user:
    root may write anywhere, so as root the check runs in a forked child that became ``nobody``.
    Returns the error line, or "OK"."""
    from smtpgate.config.errors import ConfigError
    from smtpgate.config.load import load_file
    from smtpgate.startup import check_paths

    def check() -> str:
        try:
            check_paths(load_file(str(config)))
        except ConfigError as exc:
            return exc.line()
        return "OK"

    if os.geteuid() != 0:
        return check()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, check, report, leave without running pytest's teardown
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, check().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    return out


@pytest.fixture
def open_tmp():
    """A temporary directory every user can reach (pytest's own tmp_path is private to root)."""
    import shutil
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="smtpgate-paths-"))
    path.chmod(0o755)
    yield path
    for d in [path, *path.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    shutil.rmtree(path)


@pytest.mark.parametrize("key", ["queue.path", "directory.users.store"])
def test_check_config_unwritable_paths(open_tmp, key):
    tmp_path = open_tmp
    locked = tmp_path / "locked"
    locked.mkdir()
    free = tmp_path / "free"
    free.mkdir()
    for d in (tmp_path, locked):
        d.chmod(0o555)
    free.chmod(0o777)
    queue = locked / "spool" if key == "queue.path" else free / "spool"
    store = locked / "users.db" if key != "queue.path" else free / "users.db"
    path = free / "c.toml"
    path.write_text(WITH_STORE.format(free=0, bind="127.0.0.1:0", queue=queue)
                    .replace("sqlite://users.db", f"sqlite://{store}"))
    path.chmod(0o644)
    what, target = ("directory", queue) if key == "queue.path" else ("file", store)
    assert _check_paths_unprivileged(path) == \
        f"Configuration error: {key}: cannot create {what} {target}: {locked} is not writable"
    locked.chmod(0o777)
    assert _check_paths_unprivileged(path) == "OK"
    assert not queue.exists() and not store.exists()                  # checking creates nothing


def test_check_config_user_store_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("")
    path = tmp_path / "c.toml"
    path.write_text(WITH_STORE.format(free=0, bind="127.0.0.1:0", queue="spool")
                    .replace("sqlite://users.db", "sqlite://afile/users.db"))
    one_error_line(run("check-config", "--config", str(path)),
                   f"directory.users.store: cannot create file {tmp_path}/afile/users.db: "
                   f"{tmp_path}/afile is not a directory")


def test_describe_os_error_names_the_key():
    from smtpgate.config.load import load_text
    from smtpgate.startup import describe_os_error
    settings = load_text('[server.listener.a]\nbind = "127.0.0.1:2600"\n[queue]\npath = "/srv/q"\n')
    err = OSError(13, "Permission denied", "/srv/q/tmp")
    assert describe_os_error(settings, err) == \
        "queue.path: cannot create or write /srv/q: Permission denied (/srv/q/tmp)"
    err = OSError(98, "error while attempting to bind on address ('127.0.0.1', 2600): address already in use")
    assert describe_os_error(settings, err) == \
        "server.listener.a.bind: cannot listen on 127.0.0.1:2600: Address already in use"


# --- small things a newcomer meets ------------------------------------------------------------------
def test_version():
    from importlib.metadata import version
    for proc in (run("--version"),
                 subprocess.run([PYTHON, "-m", "smtpgate", "--version"], capture_output=True, text=True,
                                timeout=30)):
        assert proc.returncode == 0
        assert proc.stdout == f"smtpgate {version('smtpgate')}\n" and proc.stderr == ""


def test_certificate_path_without_file_scheme(tmp_path, test_pki):
    path = tmp_path / "c.toml"
    path.write_text(BASE + f'[certificate.main]\ncert = "{test_pki.cert}"\nprivate-key = "file://{test_pki.key}"\n')
    one_error_line(run("check-config", "--config", str(path)),
                   f'certificate.main.cert: not a PEM document (to read a file, write "file://{test_pki.cert}")')
    # inline PEM garbage gets no such hint
    path.write_text(BASE + '[certificate.main]\ncert = """\nnot\npem\n"""\nprivate-key = "x"\n')
    one_error_line(run("check-config", "--config", str(path)), "certificate.main.cert: not a PEM document")


def test_relative_queue_path_is_relative_to_the_configuration(tmp_path):
    """README: relative paths in a configuration file (queue.path, sqlite://, file://) are relative to
    the file's directory, whatever the working directory."""
    conf = tmp_path / "etc"
    conf.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    port = free_port()
    path = conf / "smtpgate.toml"
    path.write_text(GOOD.format(grace="1s", port=port))            # queue.path = "spool"
    proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=elsewhere)
    try:
        _wait_port(port, proc)
        c = Raw(port)
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@remote.test>")
        c.cmd("RCPT TO:<u@example.org>")
        c.cmd("DATA")
        assert c.cmd("Subject: x\r\n\r\nx\r\n.").startswith("250")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert len(list((conf / "spool" / "new").iterdir())) == 1
    assert not (elsewhere / "spool").exists()


def test_user_without_config_uses_smtpgate_data_in_the_working_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_DATA"}
    add = subprocess.run([SMTPGATE, "user", "add", "carol@localhost"], input="pw\n", capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env=env)
    assert add.returncode == 0, add.stderr
    assert (tmp_path / "smtpgate-data" / "users.db").exists()
    listed = subprocess.run([SMTPGATE, "user", "list", "--data-dir", "smtpgate-data"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env=env)
    assert listed.stdout == "carol@localhost: carol@localhost\n"
    env["SMTPGATE_DATA"] = str(tmp_path / "other")
    listed = subprocess.run([SMTPGATE, "user", "list"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env=env)
    assert listed.returncode == 0 and listed.stdout == ""          # $SMTPGATE_DATA, as for serve
    assert (tmp_path / "other" / "users.db").exists()


# --- a running server: signals and graceful stop --------------------------------------------------
def _serve(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=path.parent)
    return proc


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port, 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not start: {proc.communicate()[1]}")
        time.sleep(0.05)


def test_sigterm_lets_the_session_finish(tmp_path):
    port = free_port()
    path = tmp_path / "smtpgate.toml"
    path.write_text(GOOD.format(grace="10s", port=port))
    proc = _serve(path)
    try:
        _wait_port(port, proc)
        c = Raw(port)
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while port_open("127.0.0.1", port, 0.2):         # stops accepting new connections
            assert time.monotonic() < deadline, "still accepting after SIGTERM"
            time.sleep(0.05)
        assert proc.poll() is None                       # ... but waits for the open session
        assert c.cmd("RCPT TO:<u@example.org>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd("Subject: last\r\n\r\nbye\r\n.").startswith("250 2.0.0")
        assert c.cmd("QUIT") == "221 2.0.0 Bye"
        c.close()
        assert proc.wait(timeout=5) == 0                 # exits as soon as the last session ended
        err = proc.stderr.read()
        assert "Traceback" not in err and "stopping" in err
        assert len(list((tmp_path / "spool" / "new").iterdir())) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_grace_time_is_bounded(tmp_path):
    port = free_port()
    path = tmp_path / "smtpgate.toml"
    path.write_text(GOOD.format(grace="1s", port=port))
    proc = _serve(path)
    try:
        _wait_port(port, proc)
        c = Raw(port)
        c.cmd("EHLO lingering.test")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        c.sock.settimeout(10)
        assert c.reply() == "421 4.3.2 Server shutting down"
        assert c.closed()
        c.close()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_implicit_tls_under_serve(tmp_path, test_pki):
    """`smtpgate serve` runs on uvloop when it is installed (scripts/serve installs it), which starts
    reading a new connection even if it was paused in connection_made: a ClientHello sent at once must
    still reach the TLS layer (it used to be swallowed and every handshake timed out)."""
    import ssl
    pytest.importorskip("uvloop")
    port = free_port()
    path = tmp_path / "tls.toml"
    path.write_text(f'[server.listener.submissions]\nbind = "127.0.0.1:{port}"\ntls.implicit = true\n'
                    f'[certificate.main]\ncert = "file://{test_pki.cert}"\nprivate-key = "file://{test_pki.key}"\n'
                    f'[queue]\npath = "spool"\n')
    proc = _serve(path)
    try:
        _wait_port(port, proc)
        ctx = ssl.create_default_context(cafile=str(test_pki.ca_cert))
        for _ in range(5):
            c = Raw(port, tls=ctx, timeout=10)
            assert c.greeting.startswith("220 ")
            assert c.cmd("EHLO client.test").startswith("250-")
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


# --- the embedded default ------------------------------------------------------------------------
#: Runs `smtpgate serve --data-dir D` (no --config), talks to it, stops it, prints what it saw as JSON.
DRIVER = textwrap.dedent("""
    import json, os, signal, socket, ssl, subprocess, sys, time
    smtpgate, data = sys.argv[1], sys.argv[2]
    out = {}
    # the README's order: the user can be added before the first serve (it writes the default then)
    out["user_add"] = subprocess.run([smtpgate, "user", "add", "alice@localhost", "--data-dir", data],
                                     input="s3cret\\n", capture_output=True, text=True).returncode
    proc = subprocess.Popen([smtpgate, "serve", "--data-dir", data], stderr=subprocess.PIPE, text=True)

    def is_open(port):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    class Client:
        def __init__(self, sock):
            self.sock, self.buf = sock, b""
        def reply(self):
            lines = []
            while True:
                while b"\\r\\n" not in self.buf:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise EOFError(self.buf)
                    self.buf += chunk
                line, _, self.buf = self.buf.partition(b"\\r\\n")
                lines.append(line.decode())
                if line[3:4] != b"-":
                    return "\\n".join(lines)
        def cmd(self, text):
            self.sock.sendall(text.encode() + b"\\r\\n")
            return self.reply()

    deadline = time.monotonic() + 20
    while not all(is_open(p) for p in (2525, 5870, 4650)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        ctx = ssl.create_default_context(cafile=os.path.join(data, "tls", "cert.pem"))
        c = Client(socket.create_connection(("127.0.0.1", 2525), 5))
        out["smtp"] = [c.reply(), c.cmd("EHLO client.test"), c.cmd("QUIT")]
        c.sock.close()
        c = Client(socket.create_connection(("127.0.0.1", 5870), 5))
        out["submission"] = [c.reply(), c.cmd("EHLO client.test"), c.cmd("AUTH SCRAM-SHA-256"),
                             c.cmd("MAIL FROM:<alice@localhost>"), c.cmd("STARTTLS")]
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
        out["submission_tls"] = c.cmd("EHLO client.test")
        import base64
        out["submission_auth"] = c.cmd("AUTH PLAIN " + base64.b64encode(b"\\0alice@localhost\\0s3cret").decode())
        out["submission_mail"] = [c.cmd("MAIL FROM:<alice@localhost>"), c.cmd("RCPT TO:<bob@example.com>"),
                                  c.cmd("DATA"), c.cmd("Subject: hi\\r\\n\\r\\nhello\\r\\n.")]
        c.cmd("QUIT")
        c.sock.close()
        c = Client(ctx.wrap_socket(socket.create_connection(("127.0.0.1", 4650), 5), server_hostname="localhost"))
        out["submissions"] = [c.reply(), c.cmd("EHLO client.test"), c.cmd("QUIT")]
        c.sock.close()
        out["files"] = sorted(os.path.relpath(os.path.join(d, n), data)
                              for d, dirs, files in os.walk(data) for n in dirs + files)
    except Exception as exc:
        out["error"] = repr(exc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out["returncode"] = proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        out["returncode"] = "timeout"
    out["stop_seconds"] = time.monotonic() - started
    out["stderr"] = proc.stderr.read()
    # the same default with its submission port taken: one line, exit 1, no hang (issue 9 item 11)
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", 5870))
    busy.listen()
    try:
        again = subprocess.run([smtpgate, "serve", "--data-dir", data], capture_output=True, text=True, timeout=30)
        out["busy"] = [again.returncode, again.stderr]
    except subprocess.TimeoutExpired:
        out["busy"] = ["timeout", ""]
    busy.close()
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    data = tmp_path_factory.mktemp("embedded") / "data"
    cmd = [PYTHON, "-c", DRIVER, SMTPGATE, str(data)]
    cmd = on_embedded_default_ports(cmd)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "error" not in out, out
    return data, out


def test_embedded_default(embedded):
    data, out = embedded
    smtp_greeting, smtp_ehlo, smtp_quit = out["smtp"]
    assert smtp_greeting == "220 localhost smtpgate at your service"
    assert "250-STARTTLS" in smtp_ehlo and "AUTH" not in smtp_ehlo
    assert smtp_quit == "221 2.0.0 Bye"
    _, sub_ehlo, sub_auth, sub_mail, sub_starttls = out["submission"]
    assert "250-STARTTLS" in sub_ehlo and "AUTH" not in sub_ehlo     # no AUTH of any kind before TLS
    assert sub_auth.startswith("5") and sub_mail == "530 5.7.0 Authentication required."
    assert sub_starttls == "220 2.0.0 Ready to start TLS"
    assert "AUTH PLAIN LOGIN SCRAM-SHA-256 SCRAM-SHA-1" in out["submission_tls"]
    assert "STARTTLS" not in out["submission_tls"]
    assert out["user_add"] == 0 and out["submission_auth"] == "235 2.7.0 Authentication succeeded."
    assert [r[:3] for r in out["submission_mail"]] == ["250", "250", "354", "250"]
    # one line says it is ready and where
    assert ("smtpgate ready: smtp 127.0.0.1:2525 (STARTTLS), submission 127.0.0.1:5870 (STARTTLS), "
            "submissions 127.0.0.1:4650 (implicit TLS)") in out["stderr"]
    greeting, ehlo, bye = out["submissions"]
    assert greeting.startswith("220 localhost") and "AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo
    for name in ("smtpgate.toml", "tls/cert.pem", "tls/key.pem", "spool/new", "spool/tmp", "users.db"):
        assert name in out["files"], out["files"]
    assert oct((data / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    assert out["returncode"] == 0 and "Traceback" not in out["stderr"]
    assert out["stop_seconds"] < 5                          # no session left: SIGTERM stops at once
    assert out["busy"] == [1, "smtpgate: cannot start: server.listener.submission.bind: cannot listen on "
                              "127.0.0.1:5870: Address already in use\n"]
    # the generated configuration is a valid configuration
    check = run("check-config", "--config", str(data / "smtpgate.toml"))
    assert check.returncode == 0, check.stderr


def test_embedded_default_creates_the_user_store(embedded):
    data, out = embedded
    assert "users.db" in out["files"]
