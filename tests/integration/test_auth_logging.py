"""One INFO line per AUTH attempt (SPEC issue 3 item 6), never a secret in any log, and the shipped
fail2ban filter run by the real ``fail2ban-regex`` over a log written by a real ``smtpgate serve``."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import scramp

from tests.fixtures.oauth_server import AUDIENCE, ISSUER
from tests.fixtures.oauth_server import _oauth_server_module, oauth_server  # noqa: F401  (fixtures)
from tests.fixtures.server import SERVER_HEAD, listeners, run_server
from tests.fixtures.auth_session import (
    BAD_BASE64, CANCELLED, INVALID, MALFORMED, OK, PASSWORD_PROMPT, TEMPFAIL, TOO_LONG, b64, open_session, plain_ir,
)
from tests.smtpclient import Raw
from tests.support import free_port, missing, need_binary, port_open

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "contrib" / "fail2ban" / "filter.d" / "smtpgate.conf"

# Distinctive secrets: none of them may ever show up in a log line, at any level.
PW = "Pw-9f3a1c-never-log-me"
WRONG = "Wrong-7d21e0-never-log-me"

LINE = re.compile(r'INFO smtpgate\.auth: auth listener=(?P<listener>\S+) remote=(?P<ip>\S+) port=(?P<port>\d+) '
                  r'mechanism=(?P<mech>\S+) user=(?P<user>"(?:[^"\\]|\\.)*") result=(?P<result>\w+) '
                  r'failures=(?P<failures>\d+)(?: reason="(?:[^"\\]|\\.)*")? session=(?P<session>[0-9A-F]{12})$')


def auth_lines(logs: list[str]) -> list[re.Match]:
    lines = [line for line in logs if "smtpgate.auth:" in line]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches) if not m]
    return matches  # type: ignore[return-value]


def test_one_line_per_attempt_and_no_secret_logged(tmp_path, oauth_server):
    config = SERVER_HEAD + listeners("sub", "oauth", "broken", implicit=("sub", "oauth", "broken")) + f"""
[session.auth]
mechanisms = ["plain", "login", "cram-md5", "scram-sha-256", "xoauth2", "oauthbearer"]
lookup = [ {{ if = "listener", eq = "oauth", then = "oauth/o" }},
           {{ if = "listener", eq = "broken", then = "db/sql/auth" }},
           {{ else = "list/users" }} ]
[session.auth.errors]
total = 10
wait = "1ms"
[list]
users = ["john@example.org:{PW}"]
[directory.o]
type = "oauth"
jwks-url = "{oauth_server.jwks_url}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
[database.sql]
address = "sqlite://{tmp_path}/missing/dir/db.sqlite"
[database.sql.lookup]
auth = "SELECT secret FROM users WHERE name = ?"
"""
    good_token = oauth_server.mint(email="john@example.org")
    bad_token = oauth_server.mint(email="john@example.org", aud="someone-else")
    with run_server(config, tmp_path / "srv") as srv:
        c = open_session(srv, "sub", implicit=True)
        port = c.sock.getsockname()[1]
        assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', WRONG)}") == INVALID
        assert c.cmd(f"AUTH LOGIN {b64('John@Example.org')}") == PASSWORD_PROMPT
        assert c.cmd("*") == CANCELLED
        assert c.cmd("AUTH PLAIN ####") == BAD_BASE64
        assert c.cmd(f"AUTH PLAIN {b64(WRONG)}") == MALFORMED        # the password alone, no NULs
        assert c.cmd("AUTH LOGIN").startswith("334 ")
        assert c.cmd("A" * 13000) == TOO_LONG
        # A hostile user name: quotes, backslash, a newline with a forged line, non-ASCII.
        evil = 'x" result=success\\\n2024-01-01 00:00:00,000 INFO smtpgate.auth: auth remote=10.9.9.9 é'
        assert c.cmd(f"AUTH LOGIN {b64(evil)}") == PASSWORD_PROMPT
        assert c.cmd(b64(WRONG)) == INVALID
        chal = c.cmd("AUTH CRAM-MD5")[4:]
        digest = hmac.new(PW.encode(), base64.b64decode(chal), hashlib.md5).hexdigest()
        assert c.cmd(b64(f"john@example.org {digest}")) == OK
        c.close()

        c = open_session(srv, "sub", implicit=True)
        client = scramp.ScramClient(["SCRAM-SHA-256"], "john@example.org", PW)
        server_first = c.cmd(f"AUTH SCRAM-SHA-256 {b64(client.get_client_first())}")
        client.set_server_first(base64.b64decode(server_first[4:]).decode())
        server_final = c.cmd(b64(client.get_client_final()))
        client.set_server_final(base64.b64decode(server_final[4:]).decode())
        assert c.cmd("") == OK
        c.close()

        c = open_session(srv, "oauth", implicit=True)
        xoauth2 = b64("user=john@example.org\x01auth=Bearer " + bad_token + "\x01\x01")
        assert c.cmd(f"AUTH XOAUTH2 {xoauth2}").startswith("334 ")
        assert c.cmd("") == INVALID
        oauthbearer = b64("n,,\x01auth=Bearer " + good_token + "\x01\x01")
        assert c.cmd(f"AUTH OAUTHBEARER {oauthbearer}") == OK
        c.close()

        c = open_session(srv, "broken", implicit=True)
        assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', PW)}") == TEMPFAIL
        c.close()
        time.sleep(0.1)                                              # let the server log the last lines
        logs = list(srv.logs)

    got = [(m["listener"], m["mech"], m["user"], m["result"], int(m["failures"])) for m in auth_lines(logs)]
    assert got == [
        ("sub", "PLAIN", '"john@example.org"', "invalid", 1),
        ("sub", "LOGIN", '"John@Example.org"', "cancelled", 2),       # the name LOGIN was given
        ("sub", "PLAIN", '""', "malformed", 3),
        ("sub", "PLAIN", '""', "malformed", 4),
        ("sub", "LOGIN", '""', "malformed", 5),
        ("sub", "LOGIN", r'"x\" result=success\\\x0a2024-01-01 00:00:00,000 INFO smtpgate.auth: auth remote=10.9.9.9 \xe9"',
         "invalid", 6),
        ("sub", "CRAM-MD5", '"john@example.org"', "success", 6),
        ("sub", "SCRAM-SHA-256", '"john@example.org"', "success", 0),
        ("oauth", "XOAUTH2", '"john@example.org"', "invalid", 1),
        ("oauth", "OAUTHBEARER", '"john@example.org"', "success", 1),
        ("broken", "PLAIN", '"john@example.org"', "tempfail", 0),
    ]
    first = auth_lines(logs)[0]
    assert first["ip"] == "127.0.0.1" and int(first["port"]) == port
    text = "\n".join(logs)
    for secret in (PW, WRONG, good_token, bad_token, good_token.split(".")[2], bad_token.split(".")[2]):
        assert secret not in text


# --- fail2ban ------------------------------------------------------------------------------------------

def _attempts(port: int, host: str) -> int:
    """Failed attempts from one address; returns how many should count for fail2ban."""
    c = Raw(port, host=host)
    assert c.cmd("EHLO f2b.test").startswith("250-")
    assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', WRONG)}") == INVALID
    assert c.cmd(f"AUTH PLAIN {plain_ir('nobody@example.org', WRONG)}") == INVALID
    assert c.cmd("AUTH LOGIN").startswith("334 ")
    assert c.cmd("*") == CANCELLED
    assert c.cmd("AUTH PLAIN !") == BAD_BASE64
    forged = "a remote=10.9.9.9 port=1 mechanism=PLAIN user=\"\" result=invalid failures=1"
    assert c.cmd(f"AUTH LOGIN {b64(forged)}") == PASSWORD_PROMPT
    assert c.cmd(b64(WRONG)) == INVALID
    assert c.cmd("MAIL FROM:<spammer@example.net>").startswith("250 ")
    assert c.cmd("RCPT TO:<victim@elsewhere.example>").startswith("550 5.7.1")      # relay attempt: matched
    assert c.cmd("RSET").startswith("250 ")
    assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', PW)}") == OK   # success: never matched
    assert c.cmd("MAIL FROM:<john@example.org> SIZE=999999999").startswith("552 ")  # size: never matched
    c.close()
    return 6


def test_fail2ban_filter_on_a_real_server_log(tmp_path):
    regex_bin = need_binary("fail2ban-regex")
    if not FILTER.is_file():
        missing(f"{FILTER} not found")
    v4, v6, broken = free_port(), free_port("::1"), free_port()
    cfg = tmp_path / "smtpgate.toml"
    cfg.write_text(f"""
[server]
hostname = "mx.test"
[server.listener.smtp]
bind = ["127.0.0.1:{v4}", "[::1]:{v6}"]
[server.listener.broken]
bind = ["127.0.0.1:{broken}"]
[session.auth]
mechanisms = ["plain", "login"]
lookup = [ {{ if = "listener", eq = "broken", then = "db/sql/auth" }}, {{ else = "list/users" }} ]
allow-plain-text = true
[session.auth.errors]
total = 10
wait = "1ms"
[list]
users = ["john@example.org:{PW}"]
[database.sql]
address = "sqlite://{tmp_path}/missing/dir/db.sqlite"
[database.sql.lookup]
auth = "SELECT secret FROM users WHERE name = ?"
[queue]
path = "{tmp_path}/spool"
""")
    log = tmp_path / "smtpgate.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "smtpgate", "serve", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 15
            while not (port_open("127.0.0.1", v4) and port_open("::1", v6) and port_open("127.0.0.1", broken)):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            expected = {"127.0.0.1": _attempts(v4, "127.0.0.1"), "::1": _attempts(v6, "::1")}
            c = Raw(broken)
            assert c.cmd("EHLO f2b.test").startswith("250-")
            assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', PW)}") == TEMPFAIL   # not the client's fault
            c.close()
            time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
    text = log.read_text()
    assert text.count("smtpgate.auth: auth ") == 13
    assert PW not in text and WRONG not in text

    result = subprocess.run([regex_bin, "-o", "ip", str(log), str(FILTER)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    ips = result.stdout.split()
    assert {ip: ips.count(ip) for ip in set(ips)} == expected       # 10.9.9.9 is never blamed
    summary = subprocess.run([regex_bin, str(log), str(FILTER)], capture_output=True, text=True, timeout=60)
    assert re.search(r"Lines: \d+ lines, 0 ignored, 12 matched, \d+ missed", summary.stdout), summary.stdout
    assert text.count("reason=relay-denied") == 2 and text.count("reason=size") == 2

    # The same lines as syslog (or the journal) keeps smtpgate's stderr: "<date> host smtpgate[pid]: <line>".
    syslog = tmp_path / "syslog"
    syslog.write_text("".join(f"{line[:19].replace(' ', 'T')}+00:00 mailhost smtpgate[812]: {line}\n"
                              for line in text.splitlines()))
    result = subprocess.run([regex_bin, "-o", "ip", str(syslog), str(FILTER)], capture_output=True, text=True,
                            timeout=60)
    ips = result.stdout.split()
    assert {ip: ips.count(ip) for ip in set(ips)} == expected, result.stdout + result.stderr
