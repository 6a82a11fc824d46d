"""Relay protection (SPEC §6, issue 5): smtpgate is never an open relay.

Every attempt here is what an attacker would type at port 25 without authenticating: the local domains are
``list/domains``; anything that could make smtpgate (or the next hop behind it) route to another domain
must be refused with ``550 5.7.1 Relay access denied.`` and nothing may reach the spool.
"""
from __future__ import annotations

import base64
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.server import SERVER_HEAD, listeners, run_server
from tests.smtpclient import Raw, client_tls

RELAY_DENIED = "550 5.7.1 Relay access denied."

CONFIG = SERVER_HEAD + listeners("smtp", "submission") + """
[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
wait = "1ms"

[session.rcpt.lookup]
domains = "list/domains"

[list]
users = ["john@local.test:secret"]
domains = ["local.test", "Other-Local.test"]

# Dozens of relay tricks from one address would earn it an auto-ban (abuse.rate, 35/1d by default; tested
# in tests/integration/test_abuse_server.py); here every trick must get its own 550.
[server.allowed-ip]
"127.0.0.0/8" = ""
"""

# Syntactically valid recipients that must never be accepted from an unauthenticated session.
REMOTE_RECIPIENTS = [
    "<x@remote.test>",
    "<x@REMOTE.TEST>",                          # uppercase remote domain
    "<X@Remote.Test.>",                         # trailing dot: still remote
    "<user@remote.>",
    "<@local.test:user@remote.test>",           # source route through a local domain (RFC 5321 §4.1.2)
    "<@local.test,@other-local.test:user@remote.test>",
    "<@a.test:b@c.test>",
    "<user%remote.test@local.test>",            # % hack
    "<user%remote.test%local.test@local.test>",
    "<remote.test!user@local.test>",            # UUCP bang path
    "<user!remote.test@local.test>",
    '<"user@remote.test"@local.test>',          # quoted local part carrying a route
    '<"user%remote.test"@local.test>',
    '<"user\\@remote.test"@local.test>',
    "<user@[127.0.0.1]>",                       # IP literals are never local domains
    "<user@[IPv6:::1]>",
    "<user@127.0.0.1>",
    "<user@sub.local.test>",                    # a subdomain of a local domain is not local
    "<user@local.test.remote.test>",
    "<user@xn--lcal-5za.test>",
    "<user@l\u043ecal.test>",                   # Cyrillic o: looks local, is not
    "<user@\uff4c\uff4f\uff43\uff41\uff4c.test>",          # full-width letters
    "<user@local.test\u3002remote.test>",        # ideographic full stop, a dot to IDNA
    "<user@local.test\u200b>",                  # zero-width space
    "<x@remote.test> NOTIFY=NEVER",             # junk / unadvertised parameters do not bypass the check
    "<x@remote.test> ORCPT=rfc822;x@local.test",
    "<x@remote.test> FOO",
    "<x@remote.test> X=",
]

# Not addresses at all: refused as syntax errors (never "guessed" into a local or remote domain).
MALFORMED_RECIPIENTS = [
    "<user@local.test@remote.test>",
    "<user@remote.test@local.test>",
    "<user@local.test..>",
    "<user@local.test >",
    "<user@remote.test#local.test>",
    "<user@(local.test)>",
    "<user@>",
    "<@local.test>",
    '<"user@remote.test">',
    "<user@[local.test]>",
    "<user@local.test\tx>",
]


def _session(port: int, source: str | None = None) -> Raw:
    if source is None:
        c = Raw(port)
    else:
        c = Raw.__new__(Raw)
        c.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        c.buf = b""
        c.greeting = c.reply()
    assert c.cmd("EHLO attacker.test").startswith("250")
    return c


def test_unauthenticated_relay_attempts_are_denied(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        for listener in ("smtp", "submission"):
            c = _session(srv.port(listener))
            # SMTPUTF8, so that look-alike non-ASCII domains are judged as relay attempts (without it they
            # are refused earlier, 553 5.6.7: RFC 6531)
            assert c.cmd("MAIL FROM:<someone@remote.test> SMTPUTF8").startswith("250 ")
            for rcpt in REMOTE_RECIPIENTS:
                assert c.cmd(f"RCPT TO:{rcpt}") == RELAY_DENIED, rcpt
            for rcpt in MALFORMED_RECIPIENTS:
                reply = c.cmd(f"RCPT TO:{rcpt}")
                assert reply == "501 5.1.3 Bad recipient address syntax", (rcpt, reply)
            # Nothing was accepted, so there is nothing to send.
            assert c.cmd("DATA") == "554 5.5.1 No valid recipients"
            # The session is still usable and the check is not sticky: a local recipient works.
            assert c.cmd("RCPT TO:<postmaster@LOCAL.TEST>") == "250 2.1.5 Recipient OK"
            assert c.cmd("RCPT TO:<John@other-local.TEST.>") == "250 2.1.5 Recipient OK"
            assert c.cmd("RCPT TO:<@remote.test:john@local.test>") == "250 2.1.5 Recipient OK"
            assert c.cmd("RCPT TO:<x@remote.test>") == RELAY_DENIED
            assert c.cmd("DATA").startswith("354")
            assert c.cmd(b"Subject: local\r\n\r\nhello\r\n.\r\n").startswith("250 2.0.0")
            c.close()
        from smtpgate.delivery.spool import read_message
        files = srv.spool_files()
        assert len(files) == 2
        for f in files:
            env, _ = read_message(str(f))
            # Only the three local recipients, as the client wrote them (domain lower-cased).
            assert env["rcpt_to"] == ["postmaster@local.test", "John@other-local.test", "john@local.test"]


def test_pipelined_relay_attempt_spools_nothing(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = Raw(srv.port("smtp"))
        c.send("EHLO a.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<victim@remote.test>\r\n"
               "RCPT TO:<victim%remote.test@local.test>\r\nDATA\r\nSubject: spam\r\n\r\nspam\r\n.\r\nQUIT\r\n")
        replies = [c.reply() for _ in range(7)]
        assert replies[0].startswith("250-")
        assert replies[1].startswith("250 ")
        assert replies[2] == RELAY_DENIED and replies[3] == RELAY_DENIED
        assert replies[4] == "554 5.5.1 No valid recipients"
        # The body lines are then read as commands and refused one by one; never as a message.
        assert all(r.startswith("500 ") for r in replies[5:7])
        c.close()
        assert srv.spool_files() == []


def test_authenticated_session_may_relay(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = _session(srv.port("submission"))
        assert c.cmd("MAIL FROM:<john@local.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@remote.test>") == RELAY_DENIED  # not yet authenticated
        assert c.cmd("RSET").startswith("250")
        ir = base64.b64encode(b"\0john@local.test\0secret").decode()
        assert c.cmd(f"AUTH PLAIN {ir}").startswith("235")
        assert c.cmd("MAIL FROM:<john@local.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@remote.test>") == "250 2.1.5 Recipient OK"
        assert c.cmd("RCPT TO:<y@[192.0.2.1]>") == "250 2.1.5 Recipient OK"
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(b"Subject: out\r\n\r\nbody\r\n.\r\n").startswith("250 2.0.0")
        c.close()
        from smtpgate.delivery.spool import read_message
        (f,) = srv.spool_files()
        env, _ = read_message(str(f))
        assert env["rcpt_to"] == ["x@remote.test", "y@[192.0.2.1]"]
        assert env["authenticated_as"] == "john@local.test"


def test_authentication_is_forgotten_after_starttls(tmp_path: Path) -> None:
    """RFC 3207: the session restarts after STARTTLS, including the right to relay."""
    with run_server(CONFIG, tmp_path) as srv:
        c = _session(srv.port("submission"))
        ir = base64.b64encode(b"\0john@local.test\0secret").decode()
        assert c.cmd(f"AUTH PLAIN {ir}").startswith("235")
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls(client_tls(srv.ca_file))
        assert c.cmd("EHLO attacker.test").startswith("250")
        assert c.cmd("MAIL FROM:<john@local.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@remote.test>") == RELAY_DENIED
        c.close()


RELAY_BY_NETWORK = CONFIG + """
[session.rcpt]
relay = [ { if = "remote-ip", eq = "127.0.0.2/32", then = true },
          { if = "authenticated-as", ne = "", then = true },
          { else = false } ]
"""


def test_relay_for_trusted_network(tmp_path: Path) -> None:
    with run_server(RELAY_BY_NETWORK, tmp_path) as srv:
        try:
            trusted = _session(srv.port("smtp"), source="127.0.0.2")
        except OSError:
            pytest.skip("cannot bind a client to 127.0.0.2")
        assert trusted.cmd("MAIL FROM:<app@local.test>").startswith("250")
        assert trusted.cmd("RCPT TO:<x@remote.test>") == "250 2.1.5 Recipient OK"
        # Rerouting tricks are the next hop's business once relaying is allowed anyway.
        assert trusted.cmd("RCPT TO:<a%b@local.test>") == "250 2.1.5 Recipient OK"
        assert trusted.cmd("DATA").startswith("354")
        assert trusted.cmd(b"Subject: t\r\n\r\nx\r\n.\r\n").startswith("250 2.0.0")
        trusted.close()

        other = _session(srv.port("smtp"), source="127.0.0.1")
        assert other.cmd("MAIL FROM:<app@local.test>").startswith("250")
        assert other.cmd("RCPT TO:<x@remote.test>") == RELAY_DENIED
        assert other.cmd("RCPT TO:<a%b@local.test>") == RELAY_DENIED
        assert other.cmd("RCPT TO:<a@local.test>") == "250 2.1.5 Recipient OK"
        other.close()
        assert len(srv.spool_files()) == 1


def test_no_local_domains_means_no_unauthenticated_recipients(tmp_path: Path) -> None:
    config = CONFIG.replace('[session.rcpt.lookup]\ndomains = "list/domains"\n', "")
    with run_server(config, tmp_path) as srv:
        c = _session(srv.port("smtp"))
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        assert c.cmd("RCPT TO:<john@local.test>") == RELAY_DENIED
        c.close()


MINIMAL = """
[server.listener.smtp]
bind = ["127.0.0.1:2525"]
[queue]
path = "{tmp}/spool"
"""


@pytest.mark.parametrize("relay, needle", [
    ("relay = true", "session.rcpt.relay"),
    ('relay = [ { if = "listener", eq = "smtp", then = false }, { else = true } ]', "session.rcpt.relay"),
    ('relay = [ { if = "authenticated-as", ne = "", then = true }, { else = true } ]', "session.rcpt.relay"),
    # issue 9 item 7: a destination is the client's choice, and two halves make the whole address space.
    ('relay = [ { if = "rcpt-domain", ends-with = ".com", then = true }, { else = false } ]',
     "session.rcpt.relay[0]: this rule would relay for sessions that are neither authenticated nor from a chosen"),
    ('relay = [ { if = "remote-ip", eq = "0.0.0.0/1", then = true }, { if = "remote-ip", eq = "128.0.0.0/1", '
     'then = true }, { else = false } ]', "session.rcpt.relay: the remote-ip networks of the relaying rules "
     "together cover every IPv4 address"),
])
def test_open_relay_config_is_refused(tmp_path: Path, relay: str, needle: str) -> None:
    cfg = tmp_path / "smtpgate.toml"
    cfg.write_text(MINIMAL.replace("{tmp}", str(tmp_path)) + "[session.rcpt]\n" + relay + "\n")
    smtpgate = Path(sys.executable).with_name("smtpgate")
    proc = subprocess.run([str(smtpgate), "check-config", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Configuration error: {needle}"), proc.stderr
    assert "Traceback" not in proc.stderr

    # The same file with an authentication-bound rule is fine.
    cfg.write_text(MINIMAL.replace("{tmp}", str(tmp_path)) +
                   '[session.rcpt]\nrelay = [ { if = "authenticated-as", ne = "", then = true }, { else = false } ]\n')
    ok = subprocess.run([str(smtpgate), "check-config", "--config", str(cfg)], capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("relay", [
    '[ { if = "remote-ip", eq = "10.0.0.0/8", then = true }, { else = true } ]',
    '[ { if = "rcpt-domain", ends-with = ".com", then = true }, { else = false } ]',
    '[ { if = "remote-ip", eq = "::/1", then = true }, { if = "remote-ip", eq = "8000::/1", then = true }, '
    '{ else = false } ]',
])
def test_open_relay_config_stops_serve(tmp_path: Path, relay: str) -> None:
    cfg = tmp_path / "smtpgate.toml"
    cfg.write_text(MINIMAL.replace("{tmp}", str(tmp_path)) + f'[session.rcpt]\nrelay = {relay}\n')
    smtpgate = Path(sys.executable).with_name("smtpgate")
    proc = subprocess.run([str(smtpgate), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Configuration error: session.rcpt.relay"), proc.stderr
    assert "Traceback" not in proc.stderr
