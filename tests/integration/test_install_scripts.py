"""The install path of the README's two commands (issue 9 item 10), run for real but against stub
``id``/``dpkg-query``/``apt-get``/``sudo``/``python3`` that record what they were asked to do.

``scripts/serve`` and ``scripts/test`` are copied into a scratch tree and run with a PATH that holds only
the stubs and a few core utilities, so the machine's own sudo or Python cannot leak in. The stubs model a
fresh Debian 12: packages missing until ``apt-get install`` adds them, Debian's python3 unable to make a
venv (half-made, without pip) until ``python3.11-venv`` is installed. The same path on a real machine is
``.ci/install-check``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

STUBS = {
    # whoami-style uid from the environment: the test decides whether "we" are root
    "id": """
        [ "$1" = -u ] && { echo "$FAKE_UID"; exit 0; }
        echo "uid=$FAKE_UID"
    """,
    "dpkg-query": """
        pkg=${@: -1}
        grep -qx "$pkg" "$STATE/installed" && { printf 'install ok installed'; exit 0; }
        exit 1
    """,
    "apt-get": """
        echo "apt-get uid=$FAKE_UID DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-} $*" >> "$STATE/log"
        [ "$FAKE_UID" = 0 ] || { echo "E: Could not open lock file - are you root?" >&2; exit 100; }
        if [ "$1" = -o ]; then shift 2; fi
        if [ "$1" = install ]; then
          for a in "$@"; do case $a in -*|install) ;; *) echo "$a" >> "$STATE/installed" ;; esac; done
          # Debian's python3-venv depends on python3.11-venv
          for a in "$@"; do if [ "$a" = python3-venv ]; then echo python3.11-venv >> "$STATE/installed"; fi; done
        fi
    """,
    "sudo": """
        echo "sudo $*" >> "$STATE/log"
        # sudo resets the environment: only what `env` on its command line sets survives
        exec env -i PATH="$PATH" STATE="$STATE" FAKE_UID=0 "$@"
    """,
    # Debian's /usr/bin/python3 without python3-venv: `-m venv` leaves a .venv without pip and fails.
    "python3": """
        case "$1 $2" in
          "-m venv")
            mkdir -p "$3/bin"
            cp "$STATE/venv-python" "$3/bin/python"
            if ! grep -qx python3.11-venv "$STATE/installed"; then
              echo "The virtual environment was not created successfully because ensurepip is not available." >&2
              exit 1
            fi
            touch "$3/pip-ok"; exit 0 ;;
          "-c import sys; sys.exit(sys.version_info < (3, 11))") exit 0 ;;
          "-c import sys; print(\\"%d.%d\\" % sys.version_info[:2])") echo 3.11; exit 0 ;;
        esac
        echo "python3 stub: unexpected $*" >&2; exit 99
    """,
}

VENV_PYTHON = """#!/bin/bash
venv=$(dirname "$(dirname "$0")")
case "$1 $2" in
  "-m pip")
    [ -e "$venv/pip-ok" ] || { echo "No module named pip" >&2; exit 1; }
    echo "pip $*" >> "$STATE/log"; exit 0 ;;
  "-m pytest") echo "pytest ${*:3}" >> "$STATE/log"; exit 0 ;;
  "-c import smtpgate"*) [ -e "$venv/installed" ] ;;
  *) echo "venv python stub: unexpected $*" >&2; exit 99 ;;
esac
"""

CORE_UTILS = ("bash", "env", "grep", "cat", "rm", "mkdir", "touch", "dirname", "cp", "sed", "head", "ls")


@pytest.fixture
def box(tmp_path):
    """A scratch checkout with the scripts, stub commands and a state directory."""
    tree = tmp_path / "repo"
    shutil.copytree(ROOT / "scripts", tree / "scripts")
    (tree / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in CORE_UTILS:
        os.symlink(shutil.which(name), stubs / name)
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/bin/bash\n" + textwrap.dedent(body))
        (stubs / name).chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    (state / "installed").write_text("")
    (state / "log").write_text("")
    (state / "venv-python").write_text(VENV_PYTHON)
    (state / "venv-python").chmod(0o755)
    return tree, stubs, state


def run(box, script: str, *args: str, uid: int, with_sudo: bool = True, installed: tuple[str, ...] = ()):
    tree, stubs, state = box
    if not with_sudo:
        (stubs / "sudo").unlink()
    with open(state / "installed", "a") as fh:
        fh.writelines(p + "\n" for p in installed)
    env = {"PATH": str(stubs), "STATE": str(state), "FAKE_UID": str(uid), "HOME": str(tree)}
    proc = subprocess.run([str(stubs / "bash"), str(tree / "scripts" / script), *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd="/")
    return proc, (state / "log").read_text().splitlines(), (state / "installed").read_text().split()


def packages() -> list[str]:
    text = (ROOT / "scripts" / "test").read_text()
    block = text[text.index("DEB_PACKAGES=(") + len("DEB_PACKAGES=("):text.index(")", text.index("DEB_PACKAGES=("))]
    return block.split()


def test_package_list():
    for needed in ("python3-venv", "swaks", "msmtp", "dovecot-imapd", "slapd", "haproxy", "openssl"):
        assert needed in packages()


def test_as_root_without_sudo(box):
    """Root on a minimal image: no sudo exists, apt-get runs directly, non-interactive."""
    proc, log, installed = run(box, "test", "-q", "tests/unit", uid=0, with_sudo=False)
    assert proc.returncode == 0, proc.stderr
    assert "command not found" not in proc.stderr
    apt = [line for line in log if line.startswith("apt-get")]
    assert apt[0] == "apt-get uid=0 DEBIAN_FRONTEND=noninteractive -o DPkg::Lock::Timeout=300 update -qq"
    assert apt[1].startswith("apt-get uid=0 DEBIAN_FRONTEND=noninteractive -o DPkg::Lock::Timeout=300 install -y")
    assert set(packages()) <= set(installed)
    assert not any(line.startswith("sudo") for line in log)
    assert "pip -m pip install -q -e .[test]" in log
    assert log[-1] == "pytest -q -ra -q tests/unit"


def test_as_user_with_sudo(box):
    proc, log, installed = run(box, "test", uid=1000, installed=tuple(p for p in packages() if p != "swaks"))
    assert proc.returncode == 0, proc.stderr
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq" in log
    assert ("apt-get uid=0 DEBIAN_FRONTEND=noninteractive -o DPkg::Lock::Timeout=300 install -y -qq "
            "--no-install-recommends swaks") in log
    assert "swaks" in installed and log[-1] == "pytest -q -ra"


def test_as_user_without_sudo_says_what_to_do(box):
    proc, log, _ = run(box, "test", uid=1000, with_sudo=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("smtpgate setup: installing Debian packages: ")
    assert proc.stderr.splitlines()[-1] == (
        "smtpgate setup: need root to run 'apt-get -o DPkg::Lock::Timeout=300 update -qq': run this script "
        "as root, or install sudo and allow this user to use it")
    assert not any(line.startswith("pytest") for line in log)


def test_nothing_missing_no_apt(box):
    proc, log, _ = run(box, "test", uid=1000, with_sudo=False, installed=(*packages(), "python3.11-venv"))
    assert proc.returncode == 0, proc.stderr
    assert not any(line.startswith(("apt-get", "sudo")) for line in log)


@pytest.mark.parametrize("uid", [0, 1000])
def test_serve_with_debians_python_and_no_venv_package(box, uid):
    """Debian's python3 cannot make a venv until python3.11-venv is installed; serve installs it (and
    nothing else) and does not trust the half-made .venv the failed attempt left behind."""
    tree = box[0]
    (tree / ".venv" / "bin").mkdir(parents=True)               # a previous run's half-made venv (no pip)
    shutil.copy(box[2] / "venv-python", tree / ".venv" / "bin" / "python")
    proc, log, installed = run(box, "serve", uid=uid)
    # serve ends by exec'ing .venv/bin/smtpgate, which the stub venv lacks: everything before it ran
    assert ".venv/bin/smtpgate" in proc.stderr
    assert sorted(set(installed)) == ["python3-venv", "python3.11-venv"]
    assert ("sudo" in " ".join(log)) == (uid != 0)
    assert (tree / ".venv" / "pip-ok").exists()
    assert "pip -m pip install -q -e .[fast]" in log
