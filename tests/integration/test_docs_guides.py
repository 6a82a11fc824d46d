"""The PostgreSQL guide works as written: its SQL schema, its queries and its configuration, against a
real PostgreSQL (the configuration checks of every guide are in tests/unit/test_docs.py)."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.fixtures.certs import make_pki
from tests.fixtures.postgres import pg_url  # noqa: F401

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
