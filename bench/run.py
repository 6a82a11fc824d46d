#!/usr/bin/env python3
"""One command for the side-by-side SMTP AUTH benchmark: smtpgate against aiosmtpd 1.4.6, Postfix +
Dovecot SASL and the canned asyncio server, alternating (A B A B ...) over several rounds, medians.

    .venv/bin/python bench/run.py                      # everything (about 15 minutes)
    .venv/bin/python bench/run.py --quick              # scenario (a) only, short rounds (< 3 minutes)
    .venv/bin/python bench/run.py --scenarios a,e --rounds 3 --duration 5 --servers smtpgate,aiosmtpd

Scenarios: (a) AUTH PLAIN against a plaintext list at several concurrencies; (b) argon2id user store
(+ the machine's raw argon2id hash rate); (c) 1,000 bad clients held in errors.wait = 5s while 16 good
clients measure AUTH latency; (d) RSS per idle connection; (e) STARTTLS + AUTH PLAIN.
All servers are started here on free 127.0.0.1 ports and stopped again; the table goes to stdout and to
bench/out/results-<time>.md (+ .json with every raw run).
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import servers  # noqa: E402

log = logging.getLogger("smtpgate.bench.run")
BENCH = servers.BENCH
OUT = BENCH / "out"
ORDER = ["smtpgate", "smtpgate-before", "canned", "canned-burn", "aiosmtpd", "postfix"]
LABEL = {"smtpgate": "smtpgate", "smtpgate-before": "smtpgate-before", "canned": "canned", "canned-burn": "canned-burn", "aiosmtpd": "aiosmtpd", "postfix": "postfix+dovecot"}


def raise_nofile(want=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for lim in ((max(want, hard), max(want, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, lim)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, nd=0):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"


def ratio(a, b):
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}x"


# ---------------------------------------------------------------- running the load generator

def run_load(server: servers.Server, users: Path, args: list[str], timeout: float) -> dict:
    """Run loadgen against one server; server CPU is sampled over exactly the measured window."""
    argv = [str(servers.MAIN_PY), str(BENCH / "loadgen.py"), "--port", str(server.port),
            "--users", str(users)] + args
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu0 = cpu1 = None
    t0 = t1 = None
    result = None
    deadline = time.monotonic() + timeout
    for line in p.stdout:
        line = line.strip()
        if line == "MEASURE-START":
            cpu0, t0 = server.cpu(), time.monotonic()
        elif line == "MEASURE-END":
            cpu1, t1 = server.cpu(), time.monotonic()
        elif line.startswith("{"):
            result = json.loads(line)
        if time.monotonic() > deadline:
            p.kill()
            break
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    if result is None:
        raise RuntimeError(f"loadgen gave no result: {err.strip()[-500:]}")
    if cpu0 is not None and cpu1 is not None:
        used = cpu1 - cpu0
        result["server_cpu_pct"] = round(used / (t1 - t0) * 100, 1)
        result["server_cpu_us_per_session"] = round(used / result["sessions"] * 1e6, 1) if result["sessions"] else None
    return result


def run_idle(server: servers.Server, n: int, hold: float) -> dict:
    argv = [str(servers.MAIN_PY), str(BENCH / "loadgen.py"), "--port", str(server.port), "--idle", str(n),
            "--hold", str(hold)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem_n = opened = None
    result = None
    for line in p.stdout:
        line = line.strip()
        if line.startswith("IDLE-READY"):
            opened = int(line.split()[1])
            time.sleep(min(1.0, hold / 2))  # let the last sessions settle
            mem_n = server.memory_kib()
        elif line.startswith("{"):
            result = json.loads(line)
    p.communicate(timeout=60)
    return {"opened": opened, "mem_kib": mem_n, "result": result}


# ---------------------------------------------------------------- fixtures

def make_users(dirpath: Path, n: int) -> Path:
    path = dirpath / "users.txt"
    path.write_text("".join(f"user{i:04d}@bench.localhost:password-{i:04d}\n" for i in range(1, n + 1)))
    return path


def _hash_one(pw: str) -> str:
    return _hasher().hash(pw)


def _hasher():
    """The same argon2id parameters smtpgate's user store uses (its secrets module), else argon2-cffi's."""
    try:
        from smtpgate.lookup import secrets as sg_secrets
        h = getattr(sg_secrets, "_hasher", None)
        if h is not None:
            return h
    except Exception:
        pass
    from argon2 import PasswordHasher
    return PasswordHasher()


def make_argon_users(dirpath: Path, users: Path, n: int) -> Path:
    pairs = [ln.split(":", 1) for ln in users.read_text().splitlines()][:n]
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        hashes = pool.map(_hash_one, [p for _, p in pairs])
    path = dirpath / "users-argon2id.txt"
    path.write_text("".join(f"{u}:{h}\n" for (u, _), h in zip(pairs, hashes)))
    return path


def _verify_loop(args):
    phc, pw, seconds = args
    h = _hasher()
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        h.verify(phc, pw)
        n += 1
    return n


def argon2_rate(argon_users: Path, users: Path, seconds: float = 4.0) -> dict:
    """Raw argon2id verifications/s on all cores (one process per core), same parameters and library."""
    u, phc = argon_users.read_text().splitlines()[0].split(":", 1)
    pw = dict(ln.split(":", 1) for ln in users.read_text().splitlines())[u]
    cores = os.cpu_count() or 1
    t0 = time.monotonic()
    with mp.get_context("fork").Pool(cores) as pool:
        counts = pool.map(_verify_loop, [(phc, pw, seconds)] * cores)
    elapsed = time.monotonic() - t0
    one = time.monotonic()
    _hasher().verify(phc, pw)
    single_ms = (time.monotonic() - one) * 1000
    params = phc.split("$")[3]
    return {"params": params, "cores": cores, "verifies_per_s": round(sum(counts) / seconds, 2),
            "single_verify_ms": round(single_ms, 1), "elapsed_s": round(elapsed, 1)}


def make_cert(dirpath: Path):
    cert, key = dirpath / "cert.pem", dirpath / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "7", "-subj", "/CN=bench.localhost"], check=True, capture_output=True)
    os.chmod(key, 0o644)  # Postfix's smtpd (user postfix) reads it; throwaway key for the bench only
    return cert, key


# ---------------------------------------------------------------- scenarios

class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = Path(tempfile.mkdtemp(prefix="sgbench-"))
        os.chmod(self.tmp, 0o755)
        self.users = make_users(self.tmp, a.users)
        self.cert = None
        self.raw: list[dict] = []
        self.sections: list[str] = []
        self.summary: dict = {}
        ok, why = servers.smtpgate_available()
        self.servers = [s for s in a.servers if s != "smtpgate" or ok]
        if "smtpgate" in a.servers and not ok:
            self.note(f"smtpgate not runnable ({why}); peers only")

    def note(self, s):
        print(s, flush=True)
        self.sections.append(s)

    def tls(self):
        if self.cert is None:
            self.cert = make_cert(self.tmp)
        return self.cert

    def start(self, name, sub, **kw):
        cls = servers.SERVERS[name]
        srv = cls(self.tmp / f"{name}-{sub}", self.users, **kw)
        srv.__enter__()
        return srv

    def start_all(self, sub, names=None, **kw):
        started = {}
        for name in names or self.servers:
            try:
                started[name] = self.start(name, sub, **kw)
            except Exception as e:
                self.note(f"  ! {LABEL[name]} skipped in ({sub}): {str(e).splitlines()[0]}")
                log.warning("%s", e)
        return started

    @staticmethod
    def stop_all(started):
        for s in started.values():
            s.stop()

    def load(self, srv, name, scenario, key, args, timeout):
        try:
            r = run_load(srv, self.users, args, timeout)
        except Exception as e:
            r = {"error": str(e)}
        r.update({"server": name, "scenario": scenario, "key": key})
        self.raw.append(r)
        brief = (f"{r.get('sessions_per_s', '-')}/s p99 {r.get('auth_p99_ms', '-')} ms"
                 f" srvCPU {r.get('server_cpu_pct', '-')}% cli {r.get('client_cpu_pct', '-')}%"
                 f" fail {r.get('failed', '-')} {r.get('errors') or ''}")
        print(f"    [{scenario}] {key:<14} {LABEL[name]:<16} {brief}", flush=True)
        return r

    def med(self, scenario, key, name, field):
        return median([r.get(field) for r in self.raw
                       if r["scenario"] == scenario and r["key"] == key and r["server"] == name])

    def throughput_table(self, scenario, keys, names, title):
        hdr = (["", *(f"{LABEL[n]} s/s" for n in names)]
               + [f"smtpgate/{LABEL[n]}" for n in names if n != "smtpgate" and "smtpgate" in names]
               + [f"{LABEL[n]} p50/p99 ms" for n in names] + [f"{LABEL[n]} CPU us/sess" for n in names])
        rows = []
        for k in keys:
            sps = {n: self.med(scenario, k, n, "sessions_per_s") for n in names}
            row = [k, *(fmt(sps[n]) for n in names)]
            row += [ratio(sps["smtpgate"], sps[n]) for n in names if n != "smtpgate" and "smtpgate" in names]
            row += [f"{fmt(self.med(scenario, k, n, 'auth_p50_ms'), 2)}/{fmt(self.med(scenario, k, n, 'auth_p99_ms'), 1)}"
                    for n in names]
            row += [fmt(self.med(scenario, k, n, "server_cpu_us_per_session")) for n in names]
            rows.append(row)
            self.summary.setdefault(scenario, {})[k] = sps
        cli = max((r.get("client_cpu_max_proc_pct") or 0) for r in self.raw if r["scenario"] == scenario) \
            if any(r["scenario"] == scenario for r in self.raw) else 0
        self.table(title, hdr, rows, f"busiest client process: {cli}% CPU (of one core)")

    def table(self, title, hdr, rows, foot=None):
        lines = [f"\n### {title}\n", "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        if foot:
            lines.append(f"\n{foot}")
        self.note("\n".join(lines))

    # (a) AUTH PLAIN, plaintext list
    def scenario_a(self):
        a = self.a
        print(f"\n== (a) AUTH PLAIN, plaintext list, concurrency {a.conc}", flush=True)
        started = self.start_all("a")
        try:
            for rnd in range(a.rounds):
                for c in a.conc:
                    for name in self._order(started, rnd):
                        self.load(started[name], name, "a", f"c={c}",
                                  ["--concurrency", str(c), "--duration", str(a.duration), "--warmup",
                                   str(a.warmup), "--mech", "plain", "--timeout", "30"], a.duration + 120)
        finally:
            self.stop_all(started)
        self.throughput_table("a", [f"c={c}" for c in a.conc], [n for n in ORDER if n in started],
                              f"(a) AUTH PLAIN, plaintext list: sessions/s (median of {a.rounds})")

    def _order(self, started, rnd):
        names = [n for n in ORDER if n in started]
        return names if rnd % 2 == 0 else names[::-1]

    # (b) argon2id
    def scenario_b(self):
        a = self.a
        print("\n== (b) argon2id user store", flush=True)
        argon = make_argon_users(self.tmp, self.users, a.argon_users)
        names = [n for n in self.servers if n != "canned"]
        started = self.start_all("b", names, argon_users=argon)
        rate = argon2_rate(argon, self.users)
        self.summary["argon2_rate"] = rate
        try:
            for rnd in range(a.rounds):
                for name in self._order(started, rnd):
                    self.load(started[name], name, "b", f"c={a.argon_conc}",
                              ["--concurrency", str(a.argon_conc), "--duration", str(max(a.duration, 8)),
                               "--warmup", str(max(a.warmup, 2)), "--users", str(self._users_subset(a.argon_users)),
                               "--timeout", "60"], a.duration + 180)
        finally:
            self.stop_all(started)
        key = f"c={a.argon_conc}"
        names = [n for n in ORDER if n in started]
        rows = []
        for n in names:
            sps = self.med("b", key, n, "sessions_per_s")
            rows.append([LABEL[n], fmt(sps, 1), ratio(sps, rate["verifies_per_s"]),
                         fmt(self.med("b", key, n, "auth_p50_ms"), 1), fmt(self.med("b", key, n, "auth_p99_ms"), 1),
                         fmt(self.med("b", key, n, "ehlo_p99_ms"), 1), fmt(self.med("b", key, n, "server_cpu_pct")),
                         fmt(self.med("b", key, n, "failed"))])
        self.summary.setdefault("b", {})[key] = {n: self.med("b", key, n, "sessions_per_s") for n in names}
        self.table(f"(b) argon2id ({rate['params']}), concurrency {a.argon_conc}: raw hash rate "
                   f"{rate['verifies_per_s']}/s on {rate['cores']} cores (argon2-cffi, one verify "
                   f"{rate['single_verify_ms']} ms)",
                   ["server", "sessions/s", "of raw hash rate", "AUTH p50 ms", "AUTH p99 ms", "EHLO p99 ms",
                    "server CPU %", "failed"], rows)

    def _users_subset(self, n):
        path = self.tmp / f"users-{n}.txt"
        if not path.exists():
            path.write_text("\n".join(self.users.read_text().splitlines()[:n]) + "\n")
        return path

    # (c) tarpit
    def scenario_c(self):
        a = self.a
        print(f"\n== (c) {a.attackers} bad clients in errors.wait=5s + 16 good clients", flush=True)
        started = self.start_all("c", wait_s=5.0, total=3)
        dur = max(a.duration, 6)
        try:
            for rnd in range(a.rounds):
                for name in self._order(started, rnd):
                    base = ["--concurrency", "16", "--duration", str(dur), "--warmup", "3", "--timeout", "10"]
                    self.load(started[name], name, "c", "no attack", base, dur + 120)
                    self.load(started[name], name, "c", "attack", base + ["--attackers", str(a.attackers)], dur + 200)
                    time.sleep(1)
        finally:
            self.stop_all(started)
        rows = []
        names = [n for n in ORDER if n in started]
        for n in names:
            p0 = self.med("c", "no attack", n, "auth_p99_ms")
            p1 = self.med("c", "attack", n, "auth_p99_ms")
            att = [r.get("attack", {}) for r in self.raw if r["scenario"] == "c" and r["key"] == "attack"
                   and r["server"] == n]
            rej = median([x.get("auth_rejected") for x in att])
            fails = sum((r.get("failed") or 0) for r in self.raw
                        if r["scenario"] == "c" and r["key"] == "attack" and r["server"] == n)
            errs = {}
            for r in self.raw:
                if r["scenario"] == "c" and r["key"] == "attack" and r["server"] == n:
                    for k, v in (r.get("errors") or {}).items():
                        errs[k] = errs.get(k, 0) + v
            rows.append([LABEL[n], fmt(self.med("c", "no attack", n, "sessions_per_s")),
                         fmt(self.med("c", "attack", n, "sessions_per_s")), fmt(p0, 1), fmt(p1, 1),
                         ratio(p1, p0), fails, errs or "-", fmt(rej)])
            self.summary.setdefault("c", {})[n] = {"p99_no_attack": p0, "p99_attack": p1, "good_failed": fails}
        self.table(f"(c) {a.attackers} attackers (wrong passwords, errors.wait 5s, errors.total 3) vs 16 good "
                   f"clients (median of {a.rounds})",
                   ["server", "good s/s", "good s/s attacked", "AUTH p99 ms", "AUTH p99 attacked",
                    "p99 ratio", "good sessions failed", "good errors", "535s to attackers"], rows)

    # (d) memory per idle connection
    def scenario_d(self):
        a = self.a
        print(f"\n== (d) RSS per idle session at {a.idle}", flush=True)
        rows = []
        for n in a.idle:
            for name in [x for x in ORDER if x in self.servers]:
                kw = {}
                if name == "postfix":
                    if n > a.postfix_idle_max:
                        rows.append([LABEL[name], n, "-", "-", "-", f"skipped: one process per session "
                                     f"(> --postfix-idle-max {a.postfix_idle_max})"])
                        continue
                    kw["process_limit"] = n + 50
                try:
                    srv = self.start(name, f"d{n}", **kw)
                except Exception as e:
                    rows.append([LABEL[name], n, "-", "-", "-", f"did not start: {str(e).splitlines()[0]}"])
                    continue
                try:
                    run_load(srv, self.users, ["--concurrency", "16", "--duration", "1", "--warmup", "0.5"], 120)
                    time.sleep(0.5)
                    m0 = srv.memory_kib()
                    r = run_idle(srv, n, a.hold)
                finally:
                    srv.stop()
                opened = r["opened"] or 0
                per = (r["mem_kib"] - m0) / opened if opened and r["mem_kib"] else None
                res = r["result"] or {}
                self.raw.append({"scenario": "d", "key": f"idle={n}", "server": name, "base_kib": m0,
                                 "mem_kib": r["mem_kib"], "opened": opened, "per_conn_kib": per, **res})
                what = "PSS (sum)" if srv.multiprocess else "RSS"
                rows.append([LABEL[name], n, f"{opened}", fmt(m0), fmt(r["mem_kib"]),
                             f"{fmt(per, 2)} KiB ({what}); dropped {res.get('dropped_while_held', '-')}"])
                self.summary.setdefault("d", {}).setdefault(f"idle={n}", {})[name] = per
                print(f"    [d] idle={n} {LABEL[name]:<16} {fmt(per, 2)} KiB/conn", flush=True)
        self.table("(d) memory per idle session (greeting + EHLO done, then idle)",
                   ["server", "sessions", "held", "base KiB", "KiB with sessions", "growth per session"], rows)

    # (e) STARTTLS + AUTH
    def scenario_e(self):
        a = self.a
        print("\n== (e) STARTTLS + AUTH PLAIN", flush=True)
        started = self.start_all("e", tls=self.tls())
        try:
            for rnd in range(a.rounds):
                for c in a.tls_conc:
                    for name in self._order(started, rnd):
                        self.load(started[name], name, "e", f"c={c}",
                                  ["--concurrency", str(c), "--duration", str(a.duration), "--warmup",
                                   str(a.warmup), "--starttls", "--timeout", "30"], a.duration + 120)
        finally:
            self.stop_all(started)
        self.throughput_table("e", [f"c={c}" for c in a.tls_conc], [n for n in ORDER if n in started],
                              f"(e) STARTTLS (RSA-2048) + AUTH PLAIN: sessions/s (median of {a.rounds})")

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="a,b,c,d,e")
    ap.add_argument("--servers", default=",".join(n for n in ORDER if n != "canned-burn"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--conc", default="1,16,64,256", help="concurrencies for (a)")
    ap.add_argument("--tls-conc", default="16,64", help="concurrencies for (e)")
    ap.add_argument("--users", type=int, default=1000, help="users in the plaintext list")
    ap.add_argument("--argon-users", type=int, default=32, help="users in the argon2id store (b)")
    ap.add_argument("--argon-conc", type=int, default=16)
    ap.add_argument("--attackers", type=int, default=1000)
    ap.add_argument("--idle", default="2000,10000")
    ap.add_argument("--hold", type=float, default=4.0)
    ap.add_argument("--postfix-idle-max", type=int, default=2000,
                    help="Postfix forks one smtpd per session: largest idle count it is asked to hold")
    ap.add_argument("--quick", action="store_true", help="scenario (a) only, 2 rounds of 2 s (< 3 minutes)")
    a = ap.parse_args()
    if a.quick:
        a.scenarios, a.rounds, a.duration, a.warmup = "a", 2, 2.0, 0.5
    a.conc = [int(x) for x in a.conc.split(",")]
    a.tls_conc = [int(x) for x in a.tls_conc.split(",")]
    a.idle = [int(x) for x in a.idle.split(",")]
    a.servers = [s.strip() for s in a.servers.split(",")]
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    nofile = raise_nofile()
    OUT.mkdir(parents=True, exist_ok=True)
    b = Bench(a)
    t0 = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    b.note(f"# smtpgate benchmark {time.strftime('%Y-%m-%d %H:%M')}\n\n"
           f"command: `{' '.join([Path(sys.executable).name] + sys.argv)}`  \n"
           f"machine: {os.cpu_count()} cores, {os.uname().release}; RLIMIT_NOFILE {nofile[0]}; "
           f"rounds {a.rounds}, {a.duration}s measured after {a.warmup}s warm-up per run, alternating servers")
    try:
        for sc in a.scenarios.split(","):
            getattr(b, f"scenario_{sc.strip()}")()
    finally:
        b.note(f"\ntotal wall time {time.monotonic() - t0:.0f} s")
        md = OUT / f"results-{stamp}.md"
        md.write_text("\n".join(b.sections) + "\n")
        (OUT / f"results-{stamp}.json").write_text(json.dumps({"summary": b.summary, "runs": b.raw}, indent=1))
        print(f"\nwritten: {md} (+ .json)")
        b.cleanup()


if __name__ == "__main__":
    main()
