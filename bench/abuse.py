#!/usr/bin/env python3
"""Distributed password guessing against two smtpgate nodes behind HAProxy, sharing Redis (issue 11).

    .venv/bin/python bench/abuse.py                       # about a minute and a half
    .venv/bin/python bench/abuse.py --attack-seconds 30 --attackers 1000 --json-out out.json

Everything runs on loopback and is started (and stopped) here: a private redis-server, two
``smtpgate serve`` processes whose listener trusts PROXY headers from 127.0.0.1, and HAProxy in front with
``send-proxy-v2``. Users: a plaintext ``list/`` lookup, so the figures measure the abuse machinery, not
argon2. Phases:

1. **baseline**: 16 good clients (sources 127.0.2.1-16) log in ``--good-rate`` times a second each:
   connect, EHLO, AUTH PLAIN (right password), QUIT. Their AUTH latency (AUTH sent -> 235) and the nodes'
   CPU per session. Then a short run of the same with ``redis-cli monitor`` attached (kept out of the
   baseline: MONITOR slows every Redis command) for the Redis requests per good AUTH.
2. **attack**: the same good clients, plus ``--attackers`` concurrent attacking sessions from 50 source
   addresses (127.0.1.1-50), rotating through 5,000 user names with fresh wrong passwords, reconnecting
   when dropped (after ``--attacker-pause`` when refused). Figures: guesses that reached the lookup per
   attacking address (every ``result=invalid`` AUTH log line without a ``reason``: those the guard refused
   never reach it; target: at most the ``auth.rate`` count), the good clients' AUTH p99 (target <= 2x
   baseline), Redis requests per AUTH (target <= 2 round trips; under attack, where MONITOR would slow
   every AUTH, the EVALSHA count: only clients send it).
3. **refusals**: every attacking address is banned now; ``--refusals`` connections from them, and the
   nodes' CPU per refused connection (target <= 1/5 of the CPU of a full AUTH session from phase 1).

Node CPU is read from /proc (utime+stime of both node processes) over each measured window, minus what
the nodes spend idle (health checks, timers; measured for 3 s first). Where the machine's two cores go
in phases 1 and 2 is sampled every second per process group (nodes, HAProxy, Redis, each client process,
the kernel's softirq work, and the rest: other processes; /proc/stat is tick-sampled, so the rest is
approximate, +-0.2 cores).

By default the 1,000 attacking sessions run in lockstep: started in the same millisecond, and reconnecting
after a fixed pause, so each round of guesses (and later of reconnects) would reach the nodes as one burst
that the good logins queue behind. The nodes' defaults break the step up: ``session.auth.errors.wait-spread``
(each failure's wait drawn from [wait, 1.5 wait]) and ``server.auto-ban.tarpit`` (a banned address refused
after a random pause up to 250 ms); ``--wait-spread 0 --tarpit false`` turns both off (fixed waits,
immediate refusals). ``--attacker-jitter`` spreads the attackers themselves (start within the first
second, pause 0.5-1.5x): the same attack volume, not synchronised.
``--attacker-nice 19`` approximates attackers on another host; ``--quiet CORES`` waits for an idle machine.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures import haproxy as haproxy_fixture  # noqa: E402
from tests.fixtures.haproxy import run_haproxy  # noqa: E402
from tests.fixtures.nodes import start_node  # noqa: E402
from tests.fixtures.redis import PrivateRedis  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

GOOD = 16
ATTACK_IPS = [f"127.0.1.{i}" for i in range(1, 51)]
GOOD_IPS = [f"127.0.2.{i}" for i in range(1, GOOD + 1)]
NAMES = 5000
CLK = os.sysconf("SC_CLK_TCK")

NODE_CONFIG = """
[server]
hostname = "node-{name}.bench"
{tarpit}
[server.listener.submission]
bind = ["127.0.0.1:{port}"]
proxy.trusted-networks = ["127.0.0.1/32"]

[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true
errors.total = 3
errors.wait = "{wait}"
{spread}
[list]
users = [{users}]

[server.auto-ban.auth]
rate = "{rate}"
period = "1h"

[store.shared]
type = "redis"
urls = ["{redis}"]

[storage]
lookup = "shared"

[queue]
path = "{tmp}/spool-{name}"
"""


# -- clients (run in their own processes) -------------------------------------------------------------------

async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise EOFError
        if line[3:4] != b"-":
            return line


def _plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"


async def _good_client(port: int, source: str, user: str, deadline: float, interval: float, out: list) -> None:
    next_at = time.monotonic() + random.random() * interval
    while time.monotonic() < deadline:
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at += interval
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10)
            try:
                await asyncio.wait_for(_read_reply(reader), 10)
                writer.write(b"EHLO good.bench\r\n")
                await asyncio.wait_for(_read_reply(reader), 10)
                t0 = time.monotonic()
                writer.write(_plain(user, "good-" + user))
                reply = await asyncio.wait_for(_read_reply(reader), 10)
                dt = time.monotonic() - t0
                out.append((dt, reply[:3].decode(), t0))
                writer.write(b"QUIT\r\n")
                await asyncio.wait_for(_read_reply(reader), 10)
            finally:
                writer.close()
        except (OSError, EOFError, asyncio.TimeoutError):
            out.append((None, "error", time.monotonic()))
            await asyncio.sleep(0.05)


async def _attacker(port: int, source: str, deadline: float, pause: float, stats: dict) -> None:
    rnd = random.Random()
    if ATTACKER_JITTER:
        await asyncio.sleep(rnd.random())       # sessions start spread over a second, not in one burst
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10)
        except (OSError, asyncio.TimeoutError):
            stats["connect_errors"] += 1
            await asyncio.sleep(_pause(rnd, pause))
            continue
        try:
            greeting = await asyncio.wait_for(_read_reply(reader), 15)
            if not greeting.startswith(b"220"):
                raise EOFError
            writer.write(b"EHLO attacker.bench\r\n")
            await asyncio.wait_for(_read_reply(reader), 15)
            for _ in range(3):
                user = f"user{rnd.randrange(NAMES)}@example.bench"
                writer.write(_plain(user, secrets.token_hex(6)))
                reply = await asyncio.wait_for(_read_reply(reader), 15)
                stats["guesses"] += 1
                stats["replies"][reply[:3].decode()] = stats["replies"].get(reply[:3].decode(), 0) + 1
            await asyncio.wait_for(_read_reply(reader), 15)        # 421 after errors.total
        except (OSError, EOFError, asyncio.TimeoutError):
            stats["refused_or_dropped"] += 1
            await asyncio.sleep(_pause(rnd, pause))
        finally:
            writer.close()


ATTACKER_NICE = 0      # --attacker-nice: the attack's client process yields the CPU like another host would
ATTACKER_JITTER = False  # --attacker-jitter: sessions not in lockstep (start and reconnect pauses spread)


def _pause(rnd: random.Random, pause: float) -> float:
    return pause * (0.5 + rnd.random()) if ATTACKER_JITTER else pause


def _run_clients(kind: str, port: int, seconds: float, n: int, pause: float, queue: mp.Queue) -> None:
    if kind == "attack" and ATTACKER_NICE:
        os.nice(ATTACKER_NICE)
    async def main() -> dict:
        deadline = time.monotonic() + seconds
        if kind == "good":
            out: list = []
            await asyncio.gather(*(_good_client(port, GOOD_IPS[i], f"good{i}@example.bench", deadline, pause, out)
                                   for i in range(n)))
            start = deadline - seconds
            return {"latencies": [dt for dt, code, _ in out if code == "235"],
                    "timeline": [(round(t - start, 3), round(dt, 4)) for dt, code, t in out if code == "235"],
                    "codes": {c: sum(1 for _, x, _ in out if x == c) for c in {x for _, x, _ in out}}}
        stats = {"guesses": 0, "replies": {}, "refused_or_dropped": 0, "connect_errors": 0}
        await asyncio.gather(*(_attacker(port, ATTACK_IPS[i % len(ATTACK_IPS)], deadline, pause, stats)
                               for i in range(n)))
        return stats
    runner = uvloop.run if uvloop else asyncio.run
    queue.put(runner(main()))


def _spawn(kind: str, port: int, seconds: float, n: int, pause: float = 0.0) -> tuple[mp.Process, mp.Queue]:
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=_run_clients, args=(kind, port, seconds, n, pause, q), daemon=True)
    p.start()
    return p, q


def _collect(p: mp.Process, q: mp.Queue, timeout: float) -> dict:
    result = q.get(timeout=timeout)
    p.join(10)
    return result


async def _refusals(port: int, count: int, conc: int = 50) -> dict:
    """``count`` connections from banned addresses: each must be closed without a greeting."""
    closed = greeted = 0
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        nonlocal closed, greeted
        async with sem:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                               local_addr=(ATTACK_IPS[i % len(ATTACK_IPS)], 0))
            except OSError:
                closed += 1
                return
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                if line.startswith(b"220"):
                    greeted += 1
                else:
                    closed += 1
            except (OSError, asyncio.TimeoutError):
                closed += 1
            finally:
                writer.close()
    await asyncio.gather(*(one(i) for i in range(count)))
    return {"closed": closed, "greeted": greeted}


# -- measurement helpers ------------------------------------------------------------------------------------

def _cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK


def _machine() -> tuple[float, float]:
    """(busy, softirq) CPU seconds of the whole machine so far (/proc/stat): busy includes the kernel's
    softirq work (much of loopback TCP), which is charged to no process."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK, v[6] / CLK


def _haproxy_threads(n: int) -> None:
    """The test fixture's HAProxy configuration with ``nbthread n`` in its global section."""
    build = haproxy_fixture.haproxy_config

    def config(*a, **kw) -> str:
        return build(*a, **kw).replace("global\n", f"global\n    nbthread {n}\n", 1)
    haproxy_fixture.haproxy_config = config


def _wait_quiet(cores: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        b0, t0 = _machine()[0], time.monotonic()
        time.sleep(3.0)
        busy = (_machine()[0] - b0) / (time.monotonic() - t0)
        if busy < cores:
            print(f"machine quiet: {busy:.2f} cores busy", file=sys.stderr)
            return
        if time.monotonic() > deadline:
            print(f"machine not quiet after {timeout:.0f} s ({busy:.2f} cores busy): running anyway", file=sys.stderr)
            return


class CpuShares:
    """Where the machine's CPU goes during a phase: each process group's CPU seconds per second of wall
    time (1.0 = one core), the whole machine's busy cores, and the rest (kernel softirq work charged to no
    process, other processes). Sampled every ``step`` seconds, so slices of the phase can be told apart."""

    def __init__(self, groups: dict[str, list[int]], step: float = 1.0):
        import threading
        self.groups = groups
        self.step = step
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> tuple[float, dict[str, float]]:
        out = {}
        for name, pids in self.groups.items():
            try:
                out[name] = self._last[name] = _cpu(pids)
            except (OSError, IndexError):            # exited: its CPU stays what it was
                out[name] = self._last.get(name, 0.0)
        out["machine_busy"], out["softirq"] = _machine()
        return time.monotonic(), out

    def _run(self) -> None:
        self.samples.append(self._read())
        while not self._stop.wait(self.step):
            self.samples.append(self._read())

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(5)
        self.samples.append(self._read())

        def rates(a: tuple, b: tuple, digits: int) -> dict[str, float]:
            (ta, ca), (tb, cb) = a, b
            out = {k: round((cb[k] - ca[k]) / (tb - ta), digits) for k in ca}
            # not in any process above: other processes on the machine and (mostly) unaccounted kernel work
            out["rest"] = round(out["machine_busy"] - out["softirq"] - sum(out[k] for k in self.groups), digits)
            return out
        whole = rates(self.samples[0], self.samples[-1], 3)
        slices = [rates(a, b, 2) for a, b in zip(self.samples, self.samples[1:]) if b[0] - a[0] > 0.2]
        return {"cores": whole, "per_second": slices}


class RedisMonitor:
    """``redis-cli monitor`` over a phase: the commands clients sent (round trips, at most), by name.
    Commands a Lua script runs inside Redis are tagged ``[N lua]`` by MONITOR and not counted."""

    _LINE = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"')

    def __init__(self, port: int, path: Path):
        self.path = path
        self.fh = open(path, "wb")
        self.proc = subprocess.Popen([shutil.which("redis-cli") or "redis-cli", "-p", str(port), "monitor"],
                                     stdout=self.fh, stderr=subprocess.DEVNULL)
        time.sleep(0.2)

    def stop(self) -> dict[str, int]:
        time.sleep(0.2)
        self.proc.terminate()
        self.proc.wait(10)
        self.fh.close()
        counts: dict[str, int] = {}
        with open(self.path, errors="replace") as fh:
            for line in fh:
                m = self._LINE.match(line)
                if m and not m.group(1).endswith("lua"):
                    name = m.group(2).lower()
                    if name not in ("info", "client", "hello", "monitor"):
                        counts[name] = counts.get(name, 0) + 1
        return counts


class RedisCalls:
    """INFO commandstats of the private Redis: calls per command (our own INFO/CLIENT/HELLO left out)."""

    def __init__(self, port: int):
        self.port = port

    def snapshot(self) -> dict[str, int]:
        import redis
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return {k[8:]: v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_client", "cmdstat_hello")}

    @staticmethod
    def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
        return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}


_AUTH_LINE = re.compile(r"\bauth listener=\S+ remote=(\S+) .* result=(\w+) failures=\d+( reason=\S+)?")


def _auth_lines(logs: list[Path], offsets: dict[Path, int]) -> list[tuple[str, str]]:
    out = []
    for path in logs:
        with open(path, "rb") as fh:
            fh.seek(offsets.get(path, 0))
            for raw in fh:
                m = _AUTH_LINE.search(raw.decode(errors="replace"))
                if m:       # an attempt with a reason (banned, locked) never reached the lookup
                    out.append((m.group(1), m.group(2) + ("/refused" if m.group(3) else "")))
    return out


def _sizes(logs: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_size for p in logs}


def _windows(timeline: list, width: float) -> list[float]:
    """Good AUTH p99 (ms) per ``width``-second slice of the attack phase: where the tail comes from."""
    slices: dict[int, list[float]] = {}
    for t, dt in timeline:
        slices.setdefault(int(t // width), []).append(dt)
    return [round(_p(slices[k], 0.99) * 1000, 1) for k in sorted(slices)]


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- the run ------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attackers", type=int, default=1000)
    ap.add_argument("--baseline-seconds", type=float, default=10)
    ap.add_argument("--attack-seconds", type=float, default=25)
    ap.add_argument("--attacker-pause", type=float, default=0.5,
                    help="seconds a dropped/refused attacking session waits before reconnecting")
    ap.add_argument("--good-rate", type=float, default=10.0,
                    help="sessions per second of each good client (a mail client, not a load generator)")
    ap.add_argument("--refusals", type=int, default=3000)
    ap.add_argument("--refusal-concurrency", type=int, default=500,
                    help="refused connections in flight in the refusal phase: the nodes hold each for a random part "
                         "of server.auto-ban.tarpit, and a long phase would charge idle CPU to the refusals")
    ap.add_argument("--auth-rate", default="100/1d", help="server.auto-ban.auth.rate")
    ap.add_argument("--wait", default="1s", help="session.auth.errors.wait")
    ap.add_argument("--tarpit", default=None,
                    help='server.auto-ban.tarpit, e.g. "250ms" or false (default: not set, the server\'s default)')
    ap.add_argument("--wait-spread", default=None,
                    help="session.auth.errors.wait-spread (default: not set, the server's default; 0 = a fixed wait)")
    ap.add_argument("--attacker-nice", type=int, default=0,
                    help="nice value for the attacking client process (0-19): on a 2-core machine the attack's own "
                         "client competes with the servers for CPU; a high value approximates attackers on another host")
    ap.add_argument("--profile", metavar="FILE",
                    help="py-spy (must be installed) samples node a during the attack phase into FILE (raw "
                         "collapsed stacks, one line per stack: for flamegraph.pl or a quick sort)")
    ap.add_argument("--attacker-jitter", action="store_true",
                    help="attacking sessions start spread over the first second and wait 0.5-1.5x --attacker-pause "
                         "before reconnecting; without it all 1,000 run in lockstep (started in the same "
                         "millisecond, then paced by the server's fixed errors.wait and the fixed pause), so "
                         "every node gets each round of guesses or reconnects as one burst")
    ap.add_argument("--haproxy-threads", type=int, default=0,
                    help="HAProxy's nbthread (default: HAProxy's own, one per core); on 2 cores shared with "
                         "everything else, 1 costs less CPU per connection and waits less for a core")
    ap.add_argument("--node-log-level", default="info",
                    help="the nodes' --log-level (info: every AUTH and refusal is a line, as the figures above need)")
    ap.add_argument("--quiet", type=float, default=0.0, metavar="CORES",
                    help="first wait (up to --quiet-timeout s) until the machine's busy CPU over 3 s is below CORES: "
                         "on a shared machine other work's CPU would otherwise land in the p99")
    ap.add_argument("--quiet-timeout", type=float, default=900.0)
    ap.add_argument("--json-out")
    ap.add_argument("--keep", action="store_true", help="keep the nodes' logs and configuration (path printed)")
    args = ap.parse_args()
    global ATTACKER_NICE, ATTACKER_JITTER
    ATTACKER_NICE = args.attacker_nice
    ATTACKER_JITTER = args.attacker_jitter
    rate_count = int(args.auth_rate.split("/")[0])
    if args.quiet > 0:
        _wait_quiet(args.quiet, args.quiet_timeout)
    if args.haproxy_threads:
        _haproxy_threads(args.haproxy_threads)

    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-nodes-bench-"))
    users = ", ".join(f'"good{i}@example.bench:good-good{i}@example.bench"' for i in range(GOOD))
    redis = PrivateRedis()
    redis.start()
    nodes = []
    try:
        for name in ("a", "b"):
            text = (NODE_CONFIG.replace("{name}", name).replace("{users}", users).replace("{rate}", args.auth_rate)
                    .replace("{wait}", args.wait)
                    .replace("{spread}", "" if args.wait_spread is None else f"errors.wait-spread = {args.wait_spread}\n")
                    .replace("{tarpit}", "" if args.tarpit is None else
                             f"auto-ban.tarpit = {args.tarpit if args.tarpit == 'false' else repr(args.tarpit)}\n")
                    .replace("{redis}", redis.url))
            nodes.append(start_node(name, text, tmp, log_level=args.node_log_level))
        pids = [n.proc.pid for n in nodes]
        logs = [n.logfile for n in nodes]
        with run_haproxy(tmp / "haproxy", {"all": [n.port for n in nodes]}) as hap:
            port = hap.port("all")
            time.sleep(1.0)                         # health checks up

            # 0. idle: what the nodes spend with no client (health checks, timers), subtracted below
            cpu0, t0 = _cpu(pids), time.monotonic()
            time.sleep(3.0)
            idle_rate = (_cpu(pids) - cpu0) / (time.monotonic() - t0)

            hap_pids, redis_pids = [hap.proc.pid], [redis.proc.pid]

            # 1. baseline (no MONITOR here: it slows every Redis command, and so the baseline's AUTHs)
            rc = RedisCalls(redis.port)
            off, cpu0, redis0, t0 = _sizes(logs), _cpu(pids), rc.snapshot(), time.monotonic()
            p, q = _spawn("good", port, args.baseline_seconds, GOOD, 1.0 / args.good_rate)
            base_cpu = CpuShares({"nodes": pids, "haproxy": hap_pids, "redis": redis_pids, "good_client": [p.pid]})
            base = _collect(p, q, args.baseline_seconds + 60)
            base_shares = base_cpu.stop()
            cpu_base = _cpu(pids) - cpu0 - idle_rate * (time.monotonic() - t0)
            base_redis = RedisCalls.delta(rc.snapshot(), redis0)
            base_auth = _auth_lines(logs, off)
            base_sessions = len(base["latencies"])

            # 1b. Redis requests per AUTH of good clients alone: MONITOR over a short run of its own
            off = _sizes(logs)
            mon = RedisMonitor(redis.port, tmp / "monitor-baseline.txt")
            p, q = _spawn("good", port, 3.0, GOOD, 1.0 / args.good_rate)
            _collect(p, q, 60)
            base_trips = mon.stop()
            mon_auths = len(_auth_lines(logs, off))

            # 2. attack
            off, cpu0, redis0 = _sizes(logs), _cpu(pids), rc.snapshot()
            pa, qa = _spawn("attack", port, args.attack_seconds, args.attackers, args.attacker_pause)
            time.sleep(0.5)
            pg, qg = _spawn("good", port, args.attack_seconds - 1.0, GOOD, 1.0 / args.good_rate)
            spy = None
            if args.profile:
                spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                                        "record", "-r", "200", "-f", "raw", "-o", args.profile, "-p", str(pids[0])],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            attack_cpu = CpuShares({"nodes": pids, "haproxy": hap_pids, "redis": redis_pids,
                                    "good_client": [pg.pid], "attack_client": [pa.pid]})
            good = _collect(pg, qg, args.attack_seconds + 60)
            attack_shares = attack_cpu.stop()
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            attack = _collect(pa, qa, args.attack_seconds + 60)
            cpu_attack = _cpu(pids) - cpu0
            attack_redis = RedisCalls.delta(rc.snapshot(), redis0)
            # No MONITOR under attack (it would slow Redis, and so every AUTH): EVALSHA is only ever sent
            # by a client (a script cannot call one), the rest of the top-level traffic is the ban refresh.
            attack_trips = {"evalsha": attack_redis.get("evalsha", 0)}
            lines = _auth_lines(logs, off)
            per_ip = {ip: 0 for ip in ATTACK_IPS}
            for ip, result in lines:
                if ip in per_ip and result == "invalid":
                    per_ip[ip] += 1
            auths = len(lines)

            # 3. refusals of banned addresses
            time.sleep(1.5)                          # bans made on one node reach the other
            cpu0 = _cpu(pids)
            t0 = time.monotonic()
            runner = uvloop.run if uvloop else asyncio.run
            ref = runner(_refusals(port, args.refusals, args.refusal_concurrency))
            ref_seconds = time.monotonic() - t0
            cpu_ref = _cpu(pids) - cpu0 - idle_rate * ref_seconds
    finally:
        for n in nodes:
            n.stop()
        redis.stop()
        if args.keep:
            print(f"logs and configuration kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    cpu_per_session = cpu_base / max(1, base_sessions)
    cpu_per_refusal = cpu_ref / max(1, ref["closed"])
    result = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "attackers": args.attackers, "attack_ips": len(ATTACK_IPS), "user_names": NAMES, "good_clients": GOOD,
        "auth_rate": args.auth_rate, "errors_wait": args.wait, "wait_spread": args.wait_spread, "tarpit": args.tarpit,
        "haproxy_threads": args.haproxy_threads or "default",
        "attacker_jitter": args.attacker_jitter, "attacker_nice": args.attacker_nice,
        "baseline": {"sessions": base_sessions, "auth_p50_ms": _p(base["latencies"], 0.5) * 1000,
                     "auth_p99_ms": _p(base["latencies"], 0.99) * 1000, "codes": base["codes"],
                     "node_cpu_s": cpu_base, "cpu_per_session_us": cpu_per_session * 1e6,
                     "redis_commands": base_redis, "auths": len(base_auth),
                     "redis_commands_per_auth": sum(base_redis.values()) / max(1, len(base_auth)),
                     "redis_requests": base_trips,
                     "redis_requests_per_auth": sum(base_trips.values()) / max(1, mon_auths),
                     "cpu_cores": base_shares},
        "attack": {"good_sessions": len(good["latencies"]), "good_codes": good["codes"],
                   "good_p99_by_5s": _windows(good["timeline"], 5.0),
                   "good_timeline": good["timeline"],          # (s since start, AUTH latency s) per login
                   "good_auth_p50_ms": _p(good["latencies"], 0.5) * 1000,
                   "good_auth_p99_ms": _p(good["latencies"], 0.99) * 1000,
                   "attacker": attack, "lookups_per_ip_max": max(per_ip.values()),
                   "lookups_per_ip_median": statistics.median(per_ip.values()),
                   "lookups_total": sum(per_ip.values()), "auths_logged": auths,
                   "redis_commands": attack_redis,
                   "redis_commands_per_auth": sum(attack_redis.values()) / max(1, auths),
                   "redis_requests": attack_trips,
                   "redis_requests_per_auth": sum(attack_trips.values()) / max(1, auths),
                   "node_cpu_s": cpu_attack, "cpu_cores": attack_shares},
        "idle_node_cpu_per_s": idle_rate,
        "refusals": {**ref, "seconds": ref_seconds, "node_cpu_s": cpu_ref,
                     "cpu_per_refusal_us": cpu_per_refusal * 1e6,
                     "ratio_to_auth_session": cpu_per_refusal / cpu_per_session if cpu_per_session else None},
    }
    b, a, r = result["baseline"], result["attack"], result["refusals"]
    print(f"""
smtpgate abuse bench: {args.attackers} attacking sessions from {len(ATTACK_IPS)} addresses rotating {NAMES} user names,
{GOOD} good clients, 2 nodes behind HAProxy (send-proxy-v2), shared Redis; auth.rate {args.auth_rate}, errors.wait {args.wait} (wait-spread {args.wait_spread or "default"}, tarpit {args.tarpit or "default"})

| figure | value | target |
|---|---|---|
| guesses reaching the lookup per attacking IP (max / median) | {a['lookups_per_ip_max']} / {a['lookups_per_ip_median']:.0f} | <= {rate_count} |
| attacker guesses answered in total / reaching the lookup | {a['attacker']['guesses']} / {a['lookups_total']} | |
| good AUTH p99 without attack / under attack | {b['auth_p99_ms']:.1f} ms / {a['good_auth_p99_ms']:.1f} ms (x{a['good_auth_p99_ms'] / b['auth_p99_ms']:.2f}) | <= x2 |
| good AUTH p50 without / under attack | {b['auth_p50_ms']:.1f} ms / {a['good_auth_p50_ms']:.1f} ms | |
| good sessions completed without / under attack | {b['sessions']} in {args.baseline_seconds:.0f} s / {a['good_sessions']} in {args.attack_seconds - 1:.0f} s ({a['good_codes']}) | |
| node CPU per full AUTH session (baseline) | {b['cpu_per_session_us']:.0f} us | |
| node CPU per refused connection of a banned IP | {r['cpu_per_refusal_us']:.0f} us ({r['closed']} closed, {r['greeted']} greeted) = {r['ratio_to_auth_session']:.2f} of an AUTH session | <= 0.20 |
| Redis requests per AUTH: all (MONITOR), good clients alone / EVALSHA only, under attack | {b['redis_requests_per_auth']:.2f} / {a['redis_requests_per_auth']:.2f} | <= 2 round trips |
| Redis commands per AUTH incl. those inside Lua (commandstats) | {b['redis_commands_per_auth']:.2f} / {a['redis_commands_per_auth']:.2f} | |
""")
    print("good AUTH p99 per 5 s of the attack phase (ms):", a["good_p99_by_5s"])
    print("CPU (cores) without attack:", json.dumps(b["cpu_cores"]["cores"]))
    print("CPU (cores) under attack:  ", json.dumps(a["cpu_cores"]["cores"]))
    print("CPU (cores) under attack, per second:")
    for row in a["cpu_cores"]["per_second"]:
        print("   ", "  ".join(f"{k}={v:.2f}" for k, v in row.items()))
    print("Redis requests (top-level), good clients alone:", json.dumps(b["redis_requests"]))
    print("Redis commands under attack (commandstats, Lua-internal included):", json.dumps(a["redis_commands"]))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    mp.set_start_method("fork")
    sys.exit(main())
