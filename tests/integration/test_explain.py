"""``smtpgate explain`` (issue 12 item 3): every session.* value for one client with the rule (file:line)
that produced it, and with --user what the auth lookup answers and why -- against real stores (SQLite,
the embedded user store, a real Dovecot over IMAP, a store that is down)."""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from smtpgate.config.positions import key_lines
from tests.fixtures.dovecot import DovecotServer, dovecot, dovecot_session  # noqa: F401
from tests.support import free_port

SMTPGATE = str(Path(sys.executable).with_name("smtpgate"))

CONFIG = """\
[server]
hostname = "mx.test"

[server.listener.smtp]
bind = "127.0.0.1:25"

[server.listener.submission]
bind = ["127.0.0.1:587"]

[session.auth]
mechanisms = [ { if = "listener", eq = "smtp", then = [] },
               { all-of = [ { if = "tls", eq = true },
                            { if = "remote-ip", eq = "10.0.0.0/8" } ], then = ["plain", "login", "scram-sha-256"] },
               { if = "tls", eq = true, then = ["plain", "login"] },
               { else = ["scram-sha-256"] } ]
lookup = [ { if = "listener", eq = "submission", then = "db/sql/auth" },
           { else = false } ]
require = [ { if = "listener", eq = "submission", then = true }, { else = false } ]
errors.total = 5

[session.rcpt]
max-recipients = [ { if = "sender-domain", eq = "bulk.test", then = 1000 },
                   { else = 50 } ]
relay = [ { if = "authenticated-as", ne = "", then = true }, { else = false } ]

[database.sql]
address = "sqlite://{db}"

[database.sql.lookup]
auth = "SELECT secret, disabled FROM users WHERE name = ?"

[remote.imap]
address = "127.0.0.1"
port = {imap_port}
protocol = "imap"
lookup = true
timeout = "3s"
"""


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def write(tmp: Path, imap_port: int = 0, extra: str = "") -> tuple[Path, str]:
    db = tmp / "users.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, secret TEXT, disabled INTEGER)")
    con.execute("INSERT OR REPLACE INTO users VALUES ('john@example.test', 'secret', 0)")
    con.execute("INSERT OR REPLACE INTO users VALUES ('old@example.test', 'secret', 1)")
    con.commit()
    con.close()
    text = CONFIG.replace("{db}", str(db)).replace("{imap_port}", str(imap_port or free_port())) + extra
    path = tmp / "smtpgate.toml"
    path.write_text(text)
    return path, text


def explain(conf: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SMTPGATE, "explain", "--config", str(conf), *args], input=password or "",
                          capture_output=True, text=True, timeout=60)


def value(out: str, key: str) -> tuple[str, str]:
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(key + " = "))
    return lines[i].split(" = ", 1)[1], lines[i + 1].strip()


def test_every_setting_with_its_rule_and_line(tmp_path: Path) -> None:
    conf, text = write(tmp_path)
    r = explain(conf, "--listener", "submission", "--remote-ip", "10.1.2.3", "--tls")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # The all-of rule (index 1) decides, and its line is where that rule starts.
    val, where = value(out, "session.auth.mechanisms")
    assert val == '["PLAIN", "LOGIN", "SCRAM-SHA-256"]'
    assert where.startswith(f"{conf}:{line_of(text, '{ all-of')}: session.auth.mechanisms[1] matched")
    val, where = value(out, "session.auth.lookup")
    assert val == '"db/sql/auth"' and where.startswith(f"{conf}:{line_of(text, 'lookup = [')}: session.auth.lookup[0]")
    val, where = value(out, "session.auth.errors.total")          # a dotted key under [session.auth]
    assert val == "5" and where == f"{conf}:{line_of(text, 'errors.total')}: session.auth.errors.total = 5"
    val, where = value(out, "session.timeout")
    assert val == "300s" and where == "built-in default (not set in the file)"
    # Every session.* key of the schema is listed.
    from smtpgate.config.schema import SESSION_SETTINGS
    for s in SESSION_SETTINGS:
        assert f"\n{s.key} = " in "\n" + out, s.key
    # A later-stage setting without its variable: evaluated anyway, and the note says what to give.
    val, where = value(out, "session.rcpt.max-recipients")
    assert val == "50" and "else = 50" in where
    assert "note: evaluated without sender-domain (give --sender)" in out

    # Another context: other rules, other lines.
    r = explain(conf, "--listener", "submission", "--remote-ip", "192.0.2.1", "--sender", "a@bulk.test")
    val, where = value(r.stdout, "session.auth.mechanisms")
    else_line = line_of(text, '{ else = ["scram')
    assert val == '["SCRAM-SHA-256"]' and f":{else_line}: session.auth.mechanisms[3]" in where
    assert value(r.stdout, "session.rcpt.max-recipients")[0] == "1000"
    r = explain(conf, "--listener", "smtp", "--remote-ip", "192.0.2.1")
    assert value(r.stdout, "session.auth.mechanisms")[0] == "[]"
    assert value(r.stdout, "session.auth.lookup")[0] == "false"


def test_user_answers_and_why(tmp_path: Path) -> None:
    conf, _ = write(tmp_path)
    base = ("--listener", "submission", "--remote-ip", "192.0.2.1", "--tls")
    r = explain(conf, *base, "--user", "john@example.test", password="secret\n")
    assert "auth lookup db/sql/auth for 'john@example.test':\n    valid: account 'john@example.test'" in r.stdout
    # Once authenticated, the settings that test authenticated-as see it.
    assert re.search(r"^session.rcpt.relay = true\n\s+.*session.rcpt.relay\[0\] matched", r.stdout, re.M)
    for user, password, why in (("john@example.test", "wrong", "wrong secret"),
                                ("nobody@example.test", "secret", "unknown user"),
                                ("old@example.test", "secret", "account disabled (the secret is right)")):
        r = explain(conf, *base, "--user", user, password=password + "\n")
        assert r.returncode == 0, r.stderr
        assert f"invalid (clients get 535 5.7.8, counted): {why}" in r.stdout, r.stdout
        assert "session.rcpt.relay = false" in r.stdout
    assert "secret" not in r.stdout.replace("the secret is right", "")


def test_user_against_a_store_that_is_down_and_a_real_imap_server(tmp_path: Path, dovecot: DovecotServer) -> None:
    conf, _ = write(tmp_path, imap_port=dovecot.imap_port, extra="")
    text = conf.read_text().replace('then = "db/sql/auth"', 'then = "remote/imap"')
    conf.write_text(text)
    user, password = next(iter(dovecot.users.items()))
    base = ("--listener", "submission", "--remote-ip", "192.0.2.1", "--tls")
    r = explain(conf, *base, "--user", user, password=password + "\n")
    assert f"auth lookup remote/imap for {user!r}:\n    valid" in r.stdout, r.stdout + r.stderr
    r = explain(conf, *base, "--user", user, password="not-the-password\n")
    assert "invalid (clients get 535 5.7.8, counted): " in r.stdout and "NO" in r.stdout, r.stdout
    # The store is down: unavailable, with its error.
    conf.write_text(text.replace(f"port = {dovecot.imap_port}", f"port = {free_port()}"))
    r = explain(conf, *base, "--user", user, password=password + "\n")
    assert "store unavailable (clients get 454 4.7.0, not counted): " in r.stdout, r.stdout
    assert "refused" in r.stdout.lower() or "connect" in r.stdout.lower()


def test_errors_are_one_line(tmp_path: Path) -> None:
    conf, _ = write(tmp_path)
    r = explain(conf, "--listener", "nope", "--remote-ip", "192.0.2.1")
    assert r.returncode == 2 and "no listener 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = explain(conf, "--listener", "smtp", "--remote-ip", "not-an-ip")
    assert r.returncode == 2 and "not an IP address" in r.stderr
    conf.write_text(conf.read_text() + "\n[bogus]\nkey = 1\n")
    r = explain(conf, "--listener", "smtp", "--remote-ip", "192.0.2.1")
    assert r.returncode == 1 and r.stderr == "Configuration error: bogus.key: unknown configuration key\n"


def test_key_lines_positions() -> None:
    text = ('# comment\n[session]\nauth.mechanisms = [\n  { if = "tls", eq = true, then = ["plain"] }, # x\n'
            '  { else = [] } ]\n[session.rcpt]\nrelay = false\n[[session.throttle]]\nkey = "a"\n'
            '[[session.throttle]]\nkey = """multi\n[not.a.table]\n"""\n[list]\n"quoted.id" = ["a"]\n')
    lines = key_lines(text)
    assert lines["session.auth.mechanisms"] == 3
    assert lines["session.auth.mechanisms[0]"] == 4
    assert lines["session.auth.mechanisms[1]"] == 5
    assert lines["session.rcpt.relay"] == 7
    assert lines["session.throttle[0].key"] == 9 and lines["session.throttle[1].key"] == 11
    assert "not.a.table" not in lines
    assert lines["list.quoted.id"] == 15


def test_bearer_token_through_real_dovecot(tmp_path: Path, dovecot: DovecotServer) -> None:
    conf, _ = write(tmp_path, imap_port=dovecot.imap_port)
    conf.write_text(conf.read_text().replace('then = "db/sql/auth"', 'then = "remote/imap"'))
    user = next(iter(dovecot.users))
    base = ("--listener", "submission", "--remote-ip", "192.0.2.1", "--tls", "--bearer", "--user", user)
    r = explain(conf, *base, password=dovecot.make_token(user) + "\n")
    assert f"auth lookup remote/imap for {user!r}:\n    valid" in r.stdout, r.stdout + r.stderr
    r = explain(conf, *base, password=dovecot.make_token(user, key=b"k" * 32) + "\n")   # forged
    assert "invalid (clients get 535 5.7.8, counted)" in r.stdout, r.stdout


def test_user_in_the_internal_store(tmp_path: Path) -> None:
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(f"""
[server.listener.submission]
bind = "127.0.0.1:587"
[directory.users]
type = "internal"
store = "sqlite://{tmp_path}/users.db"
[session.auth]
lookup = "directory/users"
""")
    def cli(*args: str, stdin: str = "") -> None:
        r = subprocess.run([SMTPGATE, *args, "--config", str(conf)], input=stdin, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
    cli("user", "add", "alice@example.test", "--password-stdin", stdin="s3cret\n")
    cli("user", "add", "bob@example.test", "--password-stdin", stdin="s3cret\n")
    cli("user", "disable", "bob@example.test")
    base = ("--listener", "submission", "--remote-ip", "192.0.2.1", "--tls")
    assert "valid: account 'alice@example.test'" in explain(conf, *base, "--user", "alice@example.test",
                                                            password="s3cret\n").stdout
    assert "invalid (clients get 535 5.7.8, counted): wrong secret" in explain(
        conf, *base, "--user", "alice@example.test", password="nope\n").stdout
    assert "account disabled (the secret is right)" in explain(conf, *base, "--user", "bob@example.test",
                                                               password="s3cret\n").stdout
    assert "unknown user" in explain(conf, *base, "--user", "carol@example.test", password="s3cret\n").stdout


def test_throttles_and_progressive_wait_are_explained(tmp_path: Path) -> None:
    extra = """
[[session.throttle]]
key = ["remote-ip"]
concurrency = 5
match = { if = "remote-ip", eq = "10.0.0.0/8" }

[[session.throttle]]
key = ["sender"]
rate = "5/1s"

[[session.throttle]]
key = ["listener"]
rate = "100/1m"
enable = false
"""
    conf, text = write(tmp_path, extra=extra)
    inside = explain(conf, "--listener", "submission", "--remote-ip", "10.1.2.3")
    assert inside.returncode == 0, inside.stderr
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line == "[[session.throttle]]")
    assert value(inside.stdout, "session.throttle[0]") == (
        'key=["remote-ip"] concurrency=5: applies, checked at connect', f"{conf}:{first}: session.throttle[0]")
    assert value(inside.stdout, "session.throttle[1]")[0] == 'key=["sender"] rate=5/1s: applies, checked at MAIL'
    assert "note: counted per sender, which this report was not given" in inside.stdout
    assert value(inside.stdout, "session.throttle[2]")[0] == 'key=["listener"] rate=100/1m: disabled (enable = false)'
    assert value(inside.stdout, "session.auth.errors.wait-growth") == ("0s", "built-in default (not set in the file)")
    assert value(inside.stdout, "session.auth.errors.wait-max") == ("60s", "built-in default (not set in the file)")

    outside = explain(conf, "--listener", "submission", "--remote-ip", "192.0.2.7", "--sender", "a@example.test")
    assert value(outside.stdout, "session.throttle[0]")[0] == \
        'key=["remote-ip"] concurrency=5: does not apply: match is false'
    assert "counted per sender" not in outside.stdout
