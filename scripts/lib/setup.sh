# Shared by scripts/serve and scripts/test (sourced, not run): install what they need on a Debian
# machine, as root or through sudo, and create ./.venv with any Python >= 3.11.
#
#   ensure_debs PKG...        install the Debian packages that are missing (nothing to do: no apt-get)
#   ensure_venv EXTRA         ./.venv with smtpgate installed editable with its EXTRA ("fast", "test")
#
# Both are exercised with stub commands by tests/integration/test_install_scripts.py, and for real on a
# throw-away Debian machine by .ci/install-check.

SMTPGATE_PY=${PYTHON:-python3}

say() { echo "smtpgate setup: $*" >&2; }
die() { say "$*"; exit 1; }

# Run a command as root: directly when we are root (no sudo on minimal images), else through sudo.
# `env` carries DEBIAN_FRONTEND through sudo, which resets the environment; `sudo -E` would need
# extra sudoers rights, and as root there is no `sudo` to take `-E`.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    env DEBIAN_FRONTEND=noninteractive "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo env DEBIAN_FRONTEND=noninteractive "$@"
  else
    die "need root to run '$*': run this script as root, or install sudo and allow this user to use it"
  fi
}

deb_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

ensure_debs() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    say "not a Debian system: make sure these are installed yourself: $*"
    return 0
  fi
  local missing=() p
  for p in "$@"; do
    deb_installed "$p" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  # Lock timeout: on a fresh machine unattended-upgrades may hold the dpkg lock for a while.
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq \
    || die "apt-get update failed (see above)"
  as_root apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed (see above)"
}

# Python >= 3.11 first; then a venv that really has pip. Debian's python3 cannot make one without the
# python3-venv package: `python3 -m venv` then fails *after* creating a half-made .venv (no pip), which
# must not be mistaken for a working one on the next run.
make_venv() {
  command -v "$SMTPGATE_PY" >/dev/null 2>&1 || ensure_debs python3
  command -v "$SMTPGATE_PY" >/dev/null 2>&1 || die "no $SMTPGATE_PY (set PYTHON=/path/to/python3.11+)"
  "$SMTPGATE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$SMTPGATE_PY is $("$SMTPGATE_PY" -V 2>&1); smtpgate needs Python 3.11 or newer (set PYTHON=...)"
  if [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1; then
    return 0
  fi
  rm -rf .venv
  if ! "$SMTPGATE_PY" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    # Debian's interpreter: the venv module's ensurepip lives in python3.X-venv.
    local ver
    ver=$("$SMTPGATE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    ensure_debs python3-venv "python$ver-venv"
    "$SMTPGATE_PY" -m venv .venv || { rm -rf .venv; die "cannot create .venv with $SMTPGATE_PY"; }
  fi
  .venv/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf .venv; die "the new .venv has no pip"; }
}

ensure_venv() {
  local extra=$1 stamp=".venv/.installed-$1"
  make_venv
  if ! .venv/bin/python -c 'import smtpgate' 2>/dev/null || [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing smtpgate[$extra] into ./.venv (first run: a minute or two)"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[$extra]"
    touch "$stamp"
  fi
}
