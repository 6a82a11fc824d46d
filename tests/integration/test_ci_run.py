"""``.ci/run`` passes only when tests ran and none failed: pytest's "no tests collected" (exit 5), an
all-skipped run and a failing test are all failures (issue 9 item 10)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture
def ci(tmp_path):
    """A tree with the real .ci/run, a scripts/test that only runs pytest (no installing), and tests."""
    tree = tmp_path / "repo"
    (tree / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", tree / ".ci" / "run")
    (tree / "scripts").mkdir()
    (tree / "scripts" / "test").write_text('#!/bin/sh\ncd "$(dirname "$0")/.."\n'
                                           'exec .venv/bin/python -m pytest -q -p no:randomly "$@"\n')
    (tree / "scripts" / "test").chmod(0o755)
    (tree / ".venv" / "bin").mkdir(parents=True)
    # a wrapper, not a symlink: a symlinked venv interpreter would lose its venv (and pytest)
    (tree / ".venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (tree / ".venv" / "bin" / "python").chmod(0o755)
    (tree / "tests").mkdir()
    (tree / "tests" / "test_some.py").write_text(
        "import pytest\n"
        "def test_good():\n    assert True\n"
        "def test_bad():\n    assert False\n"
        "@pytest.mark.skip(reason='x')\ndef test_skipped():\n    pass\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        return subprocess.run([str(tree / ".ci" / "run"), *args], cwd=tree, env=env, capture_output=True,
                              text=True, timeout=120)
    return run


def test_passes_when_tests_pass(ci):
    proc = ci("tests", "-k", "good")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CI: 1 tests passed, 0 skipped" in proc.stdout


def test_fails_when_a_test_fails(ci):
    proc = ci("tests")
    assert proc.returncode == 1
    assert "CI: test run failed (exit status 1)" in proc.stderr


def test_fails_when_no_tests_ran(ci):
    proc = ci("tests", "-k", "nothing_matches_this")
    assert proc.returncode == 1
    assert "CI: no tests ran (pytest exit status 5)" in proc.stderr


def test_fails_when_everything_was_skipped(ci):
    proc = ci("tests", "-k", "skipped")
    assert proc.returncode == 1
    assert "no pass" in proc.stderr
