"""The embedded default (``defaults.py``, what ``smtpgate serve`` runs without ``--config``) over real
sockets: submission offers no AUTH before TLS (issue 9, item 12), and the generated file is clean.

The configuration is the generated one, byte for byte, except that its fixed ports become ephemeral ones
(the real processes on 2525/5870/4650 are in tests/integration/test_cli.py).
"""
from __future__ import annotations

import base64
import re
import ssl
import tomllib
from pathlib import Path

import pytest

from smtpgate import defaults
from tests.fixtures.server import run_server
from tests.smtpclient import Raw

MECHANISMS = "PLAIN LOGIN SCRAM-SHA-256 SCRAM-SHA-1"


def _generated(data: Path) -> str:
    return Path(defaults.ensure(str(data))).read_text()


@pytest.fixture
def default_server(tmp_path):
    data = tmp_path / "data"
    text = _generated(data)
    for port in ("2525", "5870", "4650"):
        assert f'"127.0.0.1:{port}"' in text
        text = text.replace(f'"127.0.0.1:{port}"', '"127.0.0.1:0"')
    with run_server(text, tmp_path) as srv:
        store = srv.server.lookups["directory/users"].store
        srv.call(store.add_user("alice@localhost", "s3cret"))
        srv.tls = ssl.create_default_context(cafile=str(data / "tls" / "cert.pem"))
        yield srv


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_submission_offers_no_auth_before_starttls(default_server):
    c = Raw(default_server.port("submission"))
    ehlo = c.cmd("EHLO client.test")
    assert "250-STARTTLS" in ehlo
    assert "AUTH" not in ehlo                                       # not even SCRAM in cleartext
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN"):
        reply = c.cmd(f"AUTH {mech}")
        assert reply[:1] == "5" and not reply.startswith("334"), (mech, reply)
    assert c.cmd(f"AUTH PLAIN {plain('alice@localhost', 's3cret')}")[:1] == "5"
    # nothing of a transaction before TLS: every step refused as "authenticate first" (530 5.7.0)
    for command in ("MAIL FROM:<alice@localhost>", "RCPT TO:<bob@example.com>", "DATA"):
        assert c.cmd(command) == "530 5.7.0 Authentication required.", command
    assert c.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
    c.starttls(default_server.tls)
    ehlo = c.cmd("EHLO client.test")
    assert f"250-AUTH {MECHANISMS}" in ehlo and "STARTTLS" not in ehlo
    assert c.cmd(f"AUTH PLAIN {plain('alice@localhost', 's3cret')}") == "235 2.7.0 Authentication succeeded."
    assert c.cmd("MAIL FROM:<alice@localhost>").startswith("250")
    assert c.cmd("RCPT TO:<bob@example.com>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    assert c.cmd("Subject: hi\r\n\r\nhello\r\n.").startswith("250 2.0.0")
    c.close()
    assert len(default_server.spool_files()) == 1


def test_scram_works_once_encrypted(default_server):
    """What the cleartext offer used to allow is still there behind TLS (msmtp speaks SCRAM)."""
    c = Raw(default_server.port("submissions"), tls=default_server.tls)
    assert f"250-AUTH {MECHANISMS}" in c.cmd("EHLO client.test")
    assert c.cmd("AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,n=alice@localhost,r=abcdefgh").decode()
                 ).startswith("334 ")
    c.close()


def test_inbound_smtp_listener(default_server):
    c = Raw(default_server.port("smtp"))
    ehlo = c.cmd("EHLO relay.test")
    assert "250-STARTTLS" in ehlo and "AUTH" not in ehlo
    assert c.cmd("MAIL FROM:<someone@example.net>").startswith("250")
    assert c.cmd("RCPT TO:<alice@localhost>").startswith("250")         # local domain
    assert c.cmd("RCPT TO:<victim@example.com>") == "550 5.7.1 Relay access denied."
    c.close()


def test_generated_file_is_clean(tmp_path):
    text = _generated(tmp_path / "data")
    parsed = tomllib.loads(text)
    domains = parsed["list"]["domains"]
    assert domains == sorted(set(domains), key=domains.index) == ["localhost"]   # no ["localhost", "localhost"]
    assert re.search(r'path = "/.*/data/spool"', text)                  # absolute: not cwd-dependent


def test_generated_file_with_another_hostname(tmp_path):
    text = defaults.render(str(tmp_path), hostname="Mail.Example.org")
    assert tomllib.loads(text)["list"]["domains"] == ["localhost", "mail.example.org"]


#: What smtpgate 0.1.0 wrote on first run (the insecure submission default of issue 9 item 12).
OLD_GENERATED_PART = '''[session.auth]
mechanisms = [ { if = "listener", ne = "smtp", then = ["plain", "login", "scram-sha-256", "scram-sha-1"] },
               { else = [] } ]
'''


def test_a_data_dir_from_the_old_version_is_fixed(tmp_path, capsys):
    data = tmp_path / "data"
    path = Path(defaults.ensure(str(data)))
    new = path.read_text()
    new_part = new[new.index("[session.auth]\n"):new.index("lookup = ")]
    old = new.replace(new_part, OLD_GENERATED_PART).replace('domains = ["localhost"]',
                                                            'domains = ["localhost", "localhost"]')
    path.write_text(old)
    capsys.readouterr()
    defaults.ensure(str(data))
    assert path.read_text() == new
    assert capsys.readouterr().err == f"smtpgate: updated {path}: no AUTH offered before TLS on submission\n"
    defaults.ensure(str(data))                                       # once only
    assert capsys.readouterr().err == ""


def test_an_edited_default_is_left_alone(tmp_path):
    data = tmp_path / "data"
    path = Path(defaults.ensure(str(data)))
    edited = "# mine\n" + path.read_text().replace('domains = ["localhost"]', 'domains = ["localhost", "localhost"]')
    path.write_text(edited)
    defaults.ensure(str(data))
    assert path.read_text() == edited
