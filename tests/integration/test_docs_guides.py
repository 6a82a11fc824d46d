"""The guides work as written, against the real services they describe: the PostgreSQL guide's schema,
queries and configuration; the Dovecot guide end to end; the OpenLDAP configurations against slapd; the
Keycloak configurations against a JWKS/introspection stand-in.
(The check-config test of every guide's configurations is tests/unit/test_docs.py.)"""
from __future__ import annotations

import asyncio
import re
import time
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.fixtures.certs import make_pki
from tests.fixtures.dovecot import DovecotServer, dovecot, dovecot_session  # noqa: F401
from tests.fixtures.oauth_server import _oauth_server_module, oauth_server  # noqa: F401
from tests.fixtures.postgres import pg_url  # noqa: F401
from tests.fixtures.slapd import ldap_pki, slapd  # noqa: F401

DOCS = Path(__file__).resolve().parents[2] / "docs"
SMTPGATE = str(Path(sys.executable).with_name("smtpgate"))


def _block(text: str, lang: str, index: int = 0) -> str:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)[index]


def test_postgresql_guide_schema_queries_and_config(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    guide = (DOCS / "postgresql-users.md").read_text()
    # The roles and grants are cluster-wide: the test database keeps to the tables.
    schema = "\n".join(line for line in _block(guide, "sql").splitlines()
                       if not line.startswith(("CREATE ROLE", "GRANT")))

    async def setup() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(schema)
            await conn.execute("""
                INSERT INTO mail_accounts VALUES ('john@example.org', '{PLAIN}secret', true, '{j@example.org}');
                INSERT INTO mail_accounts VALUES ('old@example.org', '{PLAIN}secret', false, '{}');
                INSERT INTO mail_domains VALUES ('example.org');""")
        finally:
            await conn.close()
    asyncio.run(setup())

    pki = make_pki(tmp_path / "pki")
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(_block(guide, "toml")
                    .replace("postgres://smtpgate@db.example.org:5432/mail", pg_url)
                    .replace("/etc/smtpgate/tls/fullchain.pem", str(pki.cert))
                    .replace("/etc/smtpgate/tls/privkey.pem", str(pki.key))
                    .replace("/var/lib/smtpgate", str(tmp_path)))

    def explain(user: str, password: str) -> str:
        r = subprocess.run([SMTPGATE, "explain", "--config", str(conf), "--listener", "submission",
                            "--remote-ip", "192.0.2.7", "--tls", "--user", user], input=password + "\n",
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = explain("John@Example.ORG", "secret")            # lower(?) in the query: case-insensitive
    assert "valid: account 'John@Example.ORG'" in out and "owns: j@example.org, john@example.org" in out, out
    assert "invalid (clients get 535 5.7.8, counted): wrong secret" in explain("john@example.org", "nope")
    assert "account disabled (the secret is right)" in explain("old@example.org", "secret")
    assert "unknown user" in explain("nobody@example.org", "secret")

    from smtpgate.config.load import load_file
    from smtpgate.lookup import registry

    async def domains() -> tuple[bool, bool]:
        lookups = registry.build(load_file(str(conf)))
        lk = lookups["db/pg/domains"]
        await lk.start()
        try:
            return await lk.contains("Example.org"), await lk.contains("example.net")
        finally:
            for one in registry.unique(lookups):
                await one.close()
    assert asyncio.run(domains()) == (True, False)


def _certs(text: str, pki) -> str:
    return (text.replace("/etc/smtpgate/tls/fullchain.pem", str(pki.cert))
                .replace("/etc/smtpgate/tls/privkey.pem", str(pki.key)))


def test_dovecot_guide_end_to_end(tmp_path: Path, dovecot: DovecotServer) -> None:  # noqa: F811
    """The guide's smtpgate configuration in front of a real Dovecot: login checked over IMAP STARTTLS,
    the message delivered through LMTP into the recipient's Maildir."""
    import base64
    import uuid

    from tests.fixtures.server import run_server
    from tests.smtpclient import Raw, client_tls

    guide = (DOCS / "dovecot-submission.md").read_text()
    pki = make_pki(tmp_path / "pki")
    text = (_certs(_block(guide, "toml"), pki)
            .replace('bind = ["0.0.0.0:587", "[::]:587"]', 'bind = ["127.0.0.1:0"]')
            .replace('bind = ["0.0.0.0:465", "[::]:465"]', 'bind = ["127.0.0.1:0"]')
            .replace('address = "mail.example.org"\nport = 143',
                     f'address = "127.0.0.1"\nport = {dovecot.imap_port}\ntls.ca-file = "{dovecot.ca_file}"')
            .replace("port = 24", f"port = {dovecot.lmtp_port}")
            .replace('domains = ["example.org"]', 'domains = ["example.test"]')
            .replace("/var/lib/smtpgate", str(tmp_path)))
    sender, password = "alice@example.test", dovecot.users["alice@example.test"]
    token = uuid.uuid4().hex
    with run_server(text, tmp_path, pki=pki) as srv:
        c = Raw(srv.port("submission"))
        assert "AUTH" not in c.cmd("EHLO client.test")             # no AUTH before TLS
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls(client_tls(srv.ca_file))
        assert "AUTH PLAIN LOGIN OAUTHBEARER XOAUTH2" in c.cmd("EHLO client.test")
        bad = base64.b64encode(f"\0{sender}\0wrong".encode()).decode()
        assert c.cmd(f"AUTH PLAIN {bad}").startswith("535")
        good = base64.b64encode(f"\0{sender}\0{password}".encode()).decode()
        assert c.cmd(f"AUTH PLAIN {good}").startswith("235")
        assert c.cmd(f"MAIL FROM:<{sender}>").startswith("250")
        assert c.cmd("RCPT TO:<bob@example.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(f"Subject: {token}\r\n\r\nvia the guide\r\n.").startswith("250")
        c.cmd("QUIT")
        c.close()
        assert srv.spool_files() == []
    root = dovecot.maildir_root / "bob@example.test"
    got = [p for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()
           if token.encode() in p.read_bytes()]
    assert len(got) == 1


def test_openldap_guide_against_real_slapd(tmp_path: Path, slapd, ldap_pki) -> None:  # noqa: F811
    """Both OpenLDAP configurations of the LDAP guide, as written, against a real slapd holding the
    same tree (ou=people,dc=example,dc=org)."""
    from tests.fixtures.slapd import SERVICE_DN, SERVICE_PW, USERS

    guide = (DOCS / "ldap.md").read_text()
    pki = make_pki(tmp_path / "pki")
    template = _certs(_block(guide, "toml", 0), pki).replace(
        'url = "ldaps://ldap.example.org"', f'url = "{slapd.ldaps_url}"\ntls.ca-file = "{ldap_pki.ca_cert}"')
    search = (_certs(_block(guide, "toml", 1), pki)
              .replace('url = "ldap://ldap.example.org"', f'url = "{slapd.url}"\ntls.ca-file = "{ldap_pki.ca_cert}"')
              .replace("cn=smtpgate,ou=services,dc=example,dc=org", SERVICE_DN)
              .replace("service-account-password", SERVICE_PW))
    password = USERS["alice"][0]
    for name, text, login, account in (("template", template, "alice@example.org", "alice@example.org"),
                                       ("search", search, "A.Liddell@example.org", "alice@example.org")):
        conf = tmp_path / f"{name}.toml"
        conf.write_text(text.replace("/var/lib/smtpgate", str(tmp_path)))
        base = [SMTPGATE, "explain", "--config", str(conf), "--listener", "submission", "--remote-ip",
                "192.0.2.7", "--tls", "--user", login]
        out = subprocess.run(base, input=password + "\n", capture_output=True, text=True, timeout=60).stdout
        assert f"valid: account {account!r}" in out, (name, out)
        assert "postmaster@example.org" in out or name == "search", (name, out)   # mailLocalAddress
        out = subprocess.run(base, input="wrong\n", capture_output=True, text=True, timeout=60).stdout
        assert "invalid (clients get 535 5.7.8, counted)" in out, (name, out)


def test_keycloak_guide_jwt_and_introspection(tmp_path: Path, oauth_server) -> None:  # noqa: F811
    """The Keycloak configurations of the OAuth guide against a stand-in provider (JWKS + RFC 7662)."""
    from tests.fixtures.oauth_server import CLIENT_ID, CLIENT_SECRET, ISSUER

    guide = (DOCS / "oauth.md").read_text()
    pki = make_pki(tmp_path / "pki")
    realm = "https://sso.example.org/realms/mail"
    jwt_conf = (_certs(_block(guide, "toml", 0), pki)
                .replace(f"{realm}/protocol/openid-connect/certs", oauth_server.jwks_url)
                .replace(realm, ISSUER))
    intro_conf = (_certs(_block(guide, "toml", 1), pki)
                  .replace(f"{realm}/protocol/openid-connect/token/introspect", oauth_server.introspection_url)
                  .replace('introspection.client-id = "smtpgate"', f'introspection.client-id = "{CLIENT_ID}"')
                  .replace("client-secret-from-keycloak", CLIENT_SECRET)
                  .replace(realm, ISSUER))
    opaque = "opaque-token-for-alice"
    oauth_server.register_opaque(opaque, active=True, username="alice@example.org", email="alice@example.org",
                                 iss=ISSUER, exp=int(time.time()) + 300)
    cases = (("jwt", jwt_conf, oauth_server.mint(), oauth_server.mint(aud="someone-else")),
             ("introspection", intro_conf, opaque, "unknown-token"))
    for name, text, good, bad in cases:
        conf = tmp_path / f"{name}.toml"
        conf.write_text(text.replace("/var/lib/smtpgate", str(tmp_path)))
        base = [SMTPGATE, "explain", "--config", str(conf), "--listener", "submission", "--remote-ip",
                "192.0.2.7", "--tls", "--bearer", "--user", "alice@example.org"]
        out = subprocess.run(base, input=good + "\n", capture_output=True, text=True, timeout=60)
        assert "valid: account 'alice@example.org'" in out.stdout, (name, out.stdout, out.stderr)
        out = subprocess.run(base, input=bad + "\n", capture_output=True, text=True, timeout=60)
        assert "invalid (clients get 535 5.7.8, counted)" in out.stdout, (name, out.stdout, out.stderr)
