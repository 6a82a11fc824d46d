"""The README's Quickstart block, pasted at once into bash (issue 9 item 15).

It runs in a copy of the repository whose ``.venv`` is already "installed" (wrappers around the test
interpreter, so nothing is downloaded), but whose ``smtpgate`` takes a few seconds to come up, the way
the first ``./scripts/serve`` spends a minute installing: the block must wait for the server instead of
racing it. The embedded default's fixed ports are used, in a private network namespace when the machine
allows one.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import need_binary, on_embedded_default_ports

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


def quickstart_block() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quickstart")
    start = readme.index("```sh\n", start) + len("```sh\n")
    return readme[start:readme.index("```", start)]


@pytest.fixture
def checkout(tmp_path):
    tree = tmp_path / "smtpgate"
    for name in ("scripts", "README.md", "pyproject.toml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tree / name if src.is_dir() else tree)
    venv = tree / ".venv" / "bin"
    venv.mkdir(parents=True)
    # .venv/bin/python and smtpgate: the test's own, installed; smtpgate starts 3 s late (first-run install)
    (venv / "python").write_text(f'#!/bin/sh\nexec "{BIN / "python"}" "$@"\n')
    (venv / "smtpgate").write_text(f'#!/bin/sh\n[ "$1" = serve ] && sleep 3\nexec "{BIN / "smtpgate"}" "$@"\n')
    for f in venv.iterdir():
        f.chmod(0o755)
    (tree / ".venv" / ".installed-fast").touch()
    return tree


def test_quickstart_pasted_at_once(checkout):
    need_binary("swaks")
    block = quickstart_block()
    assert block.startswith("./scripts/serve &")
    # set -e: any failing step fails the run; the trap stops the server if the block does not get to its
    # own `kill`, and `wait` makes sure that `kill` stopped it
    script = ("set -e\ntrap 'rc=$?; kill %1 2>/dev/null || true; exit $rc' EXIT\n" + block
              + "wait %1 || true\n")
    cmd = ["bash", "-c", script]
    # Another server on the fixed ports would answer wait-ready and swaks instead of ours.
    cmd = on_embedded_default_ports(cmd)
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_DATA"}
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=120, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "smtpgate ready: " in proc.stderr
    assert "user alice@localhost added" in proc.stdout
    spooled = list((checkout / "smtpgate-data" / "spool" / "new").iterdir())
    assert len(spooled) == 1 and proc.stdout.splitlines()[-1] == spooled[0].name   # `ls` showed it
    assert "stopping" in proc.stderr and "Traceback" not in out
