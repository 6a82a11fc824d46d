"""Every ```toml block in docs/*.md is a complete configuration that ``smtpgate check-config`` accepts
(with the certificate and state paths pointed at test files), so a guide never shows a config that does
not start."""
from __future__ import annotations

import pwd
import re
from pathlib import Path

import pytest

from smtpgate.cli import main
from smtpgate.config.load import load_file
from tests.fixtures.certs import make_pki

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```toml\n(.*?)^```", re.M | re.S)


def blocks() -> list[tuple[str, int, str]]:
    out = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        for m in BLOCK.finditer(text):
            out.append((path.name, text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.parametrize("name,line,text", blocks(), ids=[f"{n}:{line}" for n, line, _ in blocks()])
def test_doc_config_passes_check_config(name: str, line: int, text: str, tmp_path: Path, capsys) -> None:
    pki = make_pki(tmp_path / "pki")
    text = (text.replace("/etc/smtpgate/tls/fullchain.pem", str(pki.cert))
                .replace("/etc/smtpgate/tls/privkey.pem", str(pki.key))
                .replace("/var/lib/smtpgate", str(tmp_path)))
    if not _user_exists("smtpgate"):      # the guides' service account; the test machine may not have it
        text = text.replace('user = "smtpgate"', 'user = "nobody"').replace('group = "smtpgate"', 'group = "nogroup"')
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(text)
    status = main(["check-config", "--config", str(conf)])
    err = capsys.readouterr().err
    assert status == 0, f"docs/{name}:{line}: {err}"
    # A guide that sets up a certificate means every listener to use it (STARTTLS or implicit), and one
    # that requires AUTH must not leave a listener where the offered mechanisms are unusable without TLS.
    settings = load_file(str(conf))
    if settings.certificates:
        plain = [ident for ident, listener in settings.listeners.items() if not listener.tls.enable]
        assert not plain, f"docs/{name}:{line}: listeners without TLS: {plain} (add [server.tls])"


def test_every_guide_has_a_checked_config_and_is_listed() -> None:
    index = (DOCS / "README.md").read_text()
    with_blocks = {name for name, _, _ in blocks()}
    for guide in ("dovecot-submission.md", "postgresql-users.md", "ldap.md", "oauth.md", "fail2ban.md",
                  "migrating-from-stalwart.md", "several-nodes.md", "operations.md"):
        assert guide in with_blocks, f"{guide} has no ```toml block"
        assert f"]({guide})" in index, f"{guide} missing from docs/README.md"
    assert len(blocks()) >= 12


def test_a_broken_block_would_fail(tmp_path: Path, capsys) -> None:
    """The check above can fail: the same path with a typo in a key is refused."""
    _, _, text = next(b for b in blocks() if b[0] == "dovecot-submission.md")
    pki = make_pki(tmp_path / "pki")
    text = (text.replace("/etc/smtpgate/tls/fullchain.pem", str(pki.cert))
                .replace("/etc/smtpgate/tls/privkey.pem", str(pki.key))
                .replace("cache.ttl.negative", "cache.ttl.negativ"))
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(text)
    assert main(["check-config", "--config", str(conf)]) == 1
    assert "cache.ttl.negativ: unknown configuration key" in capsys.readouterr().err
