"""Start/stop the servers under test on loopback ports, and read their CPU time and memory from /proc.

Every server is a subprocess tree that we start ourselves (never a system service), bound to 127.0.0.1 on a
free port, configured from generated files in a scratch directory, and stopped again by its own pid.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("smtpgate.bench.servers")

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS = BENCH / ".peers"
AIOSMTPD_VENV = PEERS / "aiosmtpd-venv"
MAIN_PY = REPO / ".venv" / "bin" / "python"
SMTPGATE_BIN = REPO / ".venv" / "bin" / "smtpgate"
HOSTNAME = "bench.localhost"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_greeting(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"no SMTP greeting on 127.0.0.1:{port} within {timeout}s ({last!r})")


# ---------------------------------------------------------------- /proc accounting

def _children_map():
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(roots) -> list[int]:
    kids = _children_map()
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(roots) -> float:
    """CPU of the live tree plus everything its dead descendants used (reaped into cutime/cstime)."""
    total = 0
    for p in tree(roots):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kib(roots) -> int:
    """Proportional set size summed over a process tree (fair for multi-process servers)."""
    total = 0
    for p in tree(roots):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


# ---------------------------------------------------------------- base

class Server:
    name = "?"
    multiprocess = False

    def __init__(self, workdir: Path, users_plain: Path, *, argon_users: Path | None = None,
                 tls: tuple[Path, Path] | None = None, wait_s: float = 5.0, total: int = 3,
                 process_limit: int = 300):
        self.workdir = workdir
        self.users_plain = users_plain      # user:password (plaintext secrets)
        self.argon_users = argon_users      # user:$argon2id$... (scenario b) or None
        self.tls = tls
        self.wait_s = wait_s
        self.total = total
        self.process_limit = process_limit
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        workdir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, argv, logname, **kw):
        logf = self.workdir / logname
        self.logs.append(logf)
        p = subprocess.Popen(argv, stdout=open(logf, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def roots(self):
        return [p.pid for p in self.procs]

    def main_pid(self) -> int:
        return self.procs[-1].pid

    def memory_kib(self) -> int:
        return pss_kib(self.roots()) if self.multiprocess else rss_kib(self.main_pid())

    def cpu(self) -> float:
        return cpu_seconds(self.roots())

    def start(self):
        raise NotImplementedError

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # our own session/process group only
                p.wait(timeout=5)
        self.procs.clear()

    def log_tail(self, n=15) -> str:
        out = []
        for lf in self.logs:
            try:
                out += lf.read_text(errors="replace").splitlines()[-n:]
            except OSError:
                pass
        return "\n".join(out)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n{tail}") from None
        return self

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------- canned

class Canned(Server):
    name = "canned"

    def start(self):
        argv = [str(MAIN_PY), str(BENCH / "peers" / "canned.py"), "--port", str(self.port),
                "--users", str(self.users_plain), "--wait", str(self.wait_s), "--total", str(self.total)]
        if self.tls:
            argv += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]
        self._spawn(argv, "canned.log")
        wait_greeting(self.port)


class CannedBurn(Canned):
    """canned, slower by ``CANNED_BURN_US`` (default 35) microseconds of Python per command line."""
    name = "canned-burn"

    def start(self):
        argv = [str(MAIN_PY), str(BENCH / "peers" / "canned.py"), "--port", str(self.port),
                "--users", str(self.users_plain), "--wait", str(self.wait_s), "--total", str(self.total),
                "--burn-us", os.environ.get("CANNED_BURN_US", "35")]
        if self.tls:
            argv += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]
        self._spawn(argv, "canned-burn.log")
        wait_greeting(self.port)


# ---------------------------------------------------------------- aiosmtpd

def ensure_aiosmtpd_venv():
    py = AIOSMTPD_VENV / "bin" / "python"
    if py.exists():
        r = subprocess.run([str(py), "-c", "import aiosmtpd, argon2; print(aiosmtpd.__version__)"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == "1.4.6":
            return py
    log.warning("creating %s (python -m venv + pip install aiosmtpd==1.4.6 argon2-cffi)", AIOSMTPD_VENV)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(AIOSMTPD_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "aiosmtpd==1.4.6", "argon2-cffi"], check=True)
    return py


class Aiosmtpd(Server):
    name = "aiosmtpd"

    def start(self):
        py = ensure_aiosmtpd_venv()
        users = self.argon_users or self.users_plain
        argv = [str(py), str(BENCH / "peers" / "aiosmtpd_peer.py"), "--port", str(self.port),
                "--users", str(users), "--wait", str(self.wait_s), "--total", str(self.total)]
        if self.tls:
            argv += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]
        self._spawn(argv, "aiosmtpd.log")
        wait_greeting(self.port)


# ---------------------------------------------------------------- Postfix + Dovecot SASL

def ensure_postfix_dovecot():
    missing = [b for b in ("postfix", "dovecot", "doveadm") if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if not missing:
        return
    log.warning("installing postfix dovecot-core from Debian packages (missing: %s)", missing)
    subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                   check=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-q", "postfix", "dovecot-core"], env=env)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "postfix", "dovecot-core"], env=env, check=True)


MASTER_CF = """\
# generated by bench/servers.py: chroot off everywhere, the stock port-25 listener replaced by one loopback port
127.0.0.1:{port} inet n - n - {limit} smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
# generated by bench/servers.py (Postfix 3.7, Debian 12), after shared/reference/peer-setup.md
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
myhostname = bench.localhost
mydomain = localhost
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
relayhost =
alias_maps =
alias_database =
# accepted test mail is thrown away instead of being relayed
default_transport = discard
relay_transport = discard
maillog_file_prefixes = /var, /dev/stdout, /tmp
maillog_file = {root}/postfix.log
smtpd_banner = $myhostname ESMTP
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {dovecot}/run/auth-postfix
smtpd_tls_auth_only = no
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_peername_lookup = no
# same failure policy as errors.total = {total}
smtpd_hard_error_limit = {total}
default_process_limit = {limit}
{tls}
"""

DOVECOT_CONF = """\
# generated by bench/servers.py: Dovecot 2.3 auth-only instance (started with dovecot -F -c THIS_FILE)
protocols =
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# the same non-blocking delay before a failure reply as smtpgate's errors.wait
auth_failure_delay = {wait}
auth_cache_size = 0
auth_verbose = no
passdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
# per-IP auth penalty off: all bench load comes from 127.0.0.1
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


class PostfixDovecot(Server):
    name = "postfix+dovecot"
    multiprocess = True

    def start(self):
        ensure_postfix_dovecot()
        # unix socket paths must stay short: keep the runtime tree under /tmp
        base = Path(f"/tmp/sgb-{os.getpid()}-{self.port}")
        self.base = base
        dv, pf = base / "dovecot", base / "postfix"
        for d in (dv / "run", dv / "state", pf / "etc", pf / "spool", pf / "data"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        # passwd-file: user:{SCHEME}secret
        lines = []
        if self.argon_users:
            for ln in self.argon_users.read_text().splitlines():
                u, _, h = ln.partition(":")
                lines.append(f"{u}:{{ARGON2ID}}{h}")
        else:
            for ln in self.users_plain.read_text().splitlines():
                u, _, p = ln.partition(":")
                lines.append(f"{u}:{{PLAIN}}{p}")
        (dv / "users").write_text("\n".join(lines) + "\n")
        os.chmod(dv / "users", 0o644)
        (dv / "dovecot.conf").write_text(DOVECOT_CONF.format(root=dv, wait=f"{int(self.wait_s)}s"
                                                             if self.wait_s >= 1 else "0"))
        tls = ""
        if self.tls:
            tls = (f"smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {self.tls[0]}\n"
                   f"smtpd_tls_key_file = {self.tls[1]}\n")
        else:
            tls = "smtpd_tls_security_level = none\n"
        (pf / "etc" / "main.cf").write_text(MAIN_CF.format(root=pf, dovecot=dv, total=self.total,
                                                           limit=self.process_limit, tls=tls))
        (pf / "etc" / "master.cf").write_text(MASTER_CF.format(port=self.port, limit=self.process_limit))
        self.logs += [dv / "dovecot.log", pf / "postfix.log"]
        self._spawn(["dovecot", "-F", "-c", str(dv / "dovecot.conf")], "dovecot.out")
        deadline = time.monotonic() + 15
        while not (dv / "run" / "auth-postfix").exists():
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                raise RuntimeError("dovecot auth socket did not appear")
            time.sleep(0.1)
        etc = str(pf / "etc")
        subprocess.run(["postfix", "-c", etc, "set-permissions"], capture_output=True)
        subprocess.run(["postfix", "-c", etc, "check"], capture_output=True)
        self._spawn(["postfix", "-c", etc, "start-fg"], "postfix.out")
        wait_greeting(self.port)

    def main_pid(self):
        return self.procs[-1].pid

    def stop(self):
        if getattr(self, "base", None) is not None and self.procs:
            # master runs in its own session (setsid): remember its group before asking it to stop
            groups = set()
            for pid in tree(self.roots()):
                try:
                    if os.getsid(pid) == pid:
                        groups.add(pid)
                except OSError:
                    pass
            try:
                subprocess.run(["postfix", "-c", str(self.base / "postfix" / "etc"), "stop"], capture_output=True,
                               timeout=15)
            except subprocess.TimeoutExpired:
                pass
            for g in groups - {p.pid for p in self.procs}:
                try:
                    os.killpg(g, signal.SIGKILL)  # our own master's group: smtpd that ignored the stop
                except OSError:
                    pass
        super().stop()
        if getattr(self, "base", None) is not None:
            shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------- smtpgate

SMTPGATE_TOML = """\
# generated by bench/servers.py
[server]
hostname = "bench.localhost"

[server.listener.bench]
bind = ["127.0.0.1:{port}"]
protocol = "smtp"
max-connections = 25000
{tls}
[session.auth]
mechanisms = ["plain", "login", "scram-sha-256"]
lookup = "{lookup}"
require = true
allow-plain-text = true

[session.auth.errors]
total = {total}
wait = "{wait}"

[list]
users = "file://{users}"
{directory}
[session.rcpt]
relay = [ {{ if = "authenticated-as", ne = "", then = true }}, {{ else = false }} ]

[queue]
path = "{spool}"
"""


def smtpgate_available() -> tuple[bool, str]:
    if not SMTPGATE_BIN.exists():
        return False, f"{SMTPGATE_BIN} not found"
    r = subprocess.run([str(SMTPGATE_BIN), "serve", "--help"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return False, (r.stderr or r.stdout).strip().splitlines()[-1:] and (r.stderr or r.stdout).strip()[-300:]
    return True, ""


class Smtpgate(Server):
    name = "smtpgate"

    def config_text(self, users_db: Path | None = None) -> str:
        tls = ""
        if self.tls:
            tls = (f'\n[server.tls]\nenable = true\ncertificate = "bench"\n\n[certificate.bench]\n'
                   f'cert = "file://{self.tls[0]}"\nprivate-key = "file://{self.tls[1]}"\n')
        directory = ""
        lookup = "list/users"
        if users_db is not None:
            lookup = "directory/users"
            directory = (f'\n[directory.users]\ntype = "internal"\nstore = "sqlite://{users_db}"\n')
        wait = f"{int(self.wait_s * 1000)}ms" if self.wait_s > 0 else "1ms"
        return SMTPGATE_TOML.format(port=self.port, tls=tls, lookup=lookup, total=self.total, wait=wait,
                                    users=self.users_plain, directory=directory, spool=self.workdir / "spool")

    def start(self):
        users_db = None
        if self.argon_users:
            users_db = self.workdir / "users.db"
        (self.workdir / "spool").mkdir(exist_ok=True)
        self.config = self.workdir / "smtpgate.toml"
        self.config.write_text(self.config_text(users_db))
        if users_db is not None and not users_db.exists():
            create_user_store(self.config, users_db, self.users_plain, self.argon_users)
        self._spawn([str(SMTPGATE_BIN), "serve", "--config", str(self.config)], "smtpgate.log")
        wait_greeting(self.port)


class SmtpgateBefore(Smtpgate):
    """smtpgate at another commit (``SMTPGATE_BEFORE=<rev>``, default ``HEAD~1``), run from its ``src/``
    extracted with ``git archive`` on the same interpreter and dependencies: before/after figures of a
    change in one bench run, alternating with the current tree like any other peer."""
    name = "smtpgate-before"

    def start(self):
        rev = os.environ.get("SMTPGATE_BEFORE", "HEAD~1")
        src = self.workdir / "before-src"
        if not src.exists():
            src.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        (self.workdir / "spool").mkdir(exist_ok=True)
        self.config = self.workdir / "smtpgate.toml"
        self.config.write_text(self.config_text(None))
        env = dict(os.environ, PYTHONPATH=str(src / "src"))
        self._spawn([str(MAIN_PY), "-m", "smtpgate", "serve", "--config", str(self.config)], "smtpgate.log",
                    env=env)
        wait_greeting(self.port)


def create_user_store(config: Path, db: Path, users_plain: Path, argon_users: Path | None):
    """Fill smtpgate's internal user store: through smtpgate.lookup.users.UserStore when importable
    (fast: hashes in parallel), else one `smtpgate user add` per user (password on stdin)."""
    pairs = [ln.split(":", 1) for ln in users_plain.read_text().splitlines() if ln]
    n = len(argon_users.read_text().splitlines()) if argon_users else len(pairs)
    pairs = pairs[:n]
    code = (
        "import asyncio, sys\n"
        "from smtpgate.lookup.users import UserStore\n"
        "pairs = [l.split(':', 1) for l in sys.stdin.read().splitlines() if l]\n"
        "async def main():\n"
        "    async with UserStore(sys.argv[1]) as s:\n"
        "        await asyncio.gather(*(s.add_user(u, p) for u, p in pairs))\n"
        "asyncio.run(main())\n"
    )
    r = subprocess.run([str(MAIN_PY), "-c", code, f"sqlite://{db}"], input="\n".join(f"{u}:{p}" for u, p in pairs),
                       capture_output=True, text=True, timeout=600)
    if r.returncode == 0:
        return
    log.warning("UserStore not usable (%s); falling back to `smtpgate user add`", r.stderr.strip()[-200:])
    db.unlink(missing_ok=True)
    for user, pw in pairs:
        r = subprocess.run([str(SMTPGATE_BIN), "user", "add", "--config", str(config), user],
                           input=pw + "\n", capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"smtpgate user add failed: {r.stderr.strip()[-300:]}")


SERVERS = {"smtpgate": Smtpgate, "smtpgate-before": SmtpgateBefore, "canned": Canned, "canned-burn": CannedBurn, "aiosmtpd": Aiosmtpd, "postfix": PostfixDovecot}
