"""The shipped example configurations stay valid: parsed with a test certificate in place (fast), and
checked as shipped by the real ``check-config`` in tests/integration/test_examples_shipped.py."""
import shutil
from pathlib import Path

import pytest

from smtpgate.config.load import load_text
from tests.fixtures.certs import make_pki

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path, tmp_path):
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "tls").mkdir()
    shutil.copy(pki.cert, tmp_path / "tls" / "fullchain.pem")
    shutil.copy(pki.key, tmp_path / "tls" / "privkey.pem")
    settings = load_text(path.read_text(), source=str(path), base_dir=str(tmp_path))
    assert settings.listeners
    assert settings.queue_path == str(tmp_path / "spool")              # relative to the file's directory


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"submission-starttls.toml", "submissions-465.toml", "mx-25.toml"}
