"""The shipped example configurations stay valid (certificate and data paths pointed at test files)."""
from pathlib import Path

import pytest

from smtpgate.config.load import load_text
from tests.fixtures.certs import make_pki

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path, tmp_path):
    pki = make_pki(tmp_path / "pki")
    text = (path.read_text()
            .replace("/etc/smtpgate/tls/fullchain.pem", str(pki.cert))
            .replace("/etc/smtpgate/tls/privkey.pem", str(pki.key))
            .replace("/var/lib/smtpgate", str(tmp_path))
            .replace("/var/spool/smtpgate", str(tmp_path / "spool")))
    settings = load_text(text, source=str(path), base_dir=str(tmp_path))
    assert settings.listeners


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"submission-starttls.toml", "submissions-465.toml", "mx-25.toml"}
