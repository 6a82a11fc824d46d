"""issue 9 item 15: the three examples pass ``smtpgate check-config`` exactly as shipped, after the one
preparation line the README gives (a throw-away certificate; no private key is in the repository)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import need_binary

ROOT = Path(__file__).parents[2]
SMTPGATE = str(Path(sys.executable).parent / "smtpgate")
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def preparation_line() -> str:
    """The certificate command from the README's Examples block (the test runs what users read)."""
    readme = (ROOT / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith("mkdir -p examples/tls && openssl ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of examples/ as shipped (no files the tests or a user made), prepared as the README says."""
    need_binary("openssl")
    top = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "examples", top / "examples",
                    ignore=shutil.ignore_patterns("tls", "spool", "users.db*"))
    proc = subprocess.run(["sh", "-c", preparation_line()], cwd=top, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return top


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_check_config_as_shipped(checkout, path):
    proc = subprocess.run([SMTPGATE, "check-config", "--config", f"examples/{path.name}"], cwd=checkout,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"examples/{path.name}: OK\n", "")
    # ... and from another working directory: the paths in it are relative to the file, not to the cwd
    proc = subprocess.run([SMTPGATE, "check-config", "--config", str(checkout / "examples" / path.name)],
                          cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_examples_name_the_preparation_line():
    line = preparation_line()
    for path in EXAMPLES:
        assert line in path.read_text(), path.name


def test_no_private_key_is_shipped():
    tracked = subprocess.run(["git", "ls-files", "examples"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    for name in tracked.stdout.split():
        assert "PRIVATE KEY" not in (ROOT / name).read_text(errors="replace"), name
    assert re.search(r"^tls/$", (ROOT / "examples" / ".gitignore").read_text(), re.M)
