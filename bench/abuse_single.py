#!/usr/bin/env python3
"""Abuse resistance on one node (issue 11): what an attack costs the attacker and everybody else.

Starts smtpgate (``smtpgate serve``, its own config in a scratch directory, a free 127.0.0.1 port), then:

1. **baseline** -- ``--good`` clients (16, from 127.0.1.x) log in and QUIT in a loop: AUTH p50/p99;
2. **attack** -- the same good clients next to ``--attackers`` sessions (from ``--attack-ips`` source
   addresses 127.0.2.x) sending wrong passwords for names rotating through ``--names`` user names and
   reconnecting whenever dropped: good clients' AUTH p99 again, and per attacking address the guesses that
   reached the lookup (the server's ``auth`` log lines without a ``reason=``: banned or locked attempts
   carry one) against the configured ``auth.rate``;
3. **refusal cost** -- server CPU (``/proc/<pid>/stat``) per connection for ``--cost-n`` connections of a
   banned address (connect, read the one line, close) vs ``--cost-n`` full sessions (greeting, EHLO,
   AUTH PLAIN that succeeds, QUIT) of a good one;
4. with ``--redis URL``: the same run against a Redis store, and Redis commands per AUTH (``INFO
   commandstats``: the Lua scripts smtpgate sends, over good AUTHs on an otherwise idle store).

Everything is on loopback and stops by itself. Figures print as a table and one JSON line.

    .venv/bin/python bench/abuse_single.py                     # about 1 minute
    .venv/bin/python bench/abuse_single.py --redis redis://127.0.0.1:6379 --duration 10
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMTPGATE = REPO / ".venv" / "bin" / "smtpgate"
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """
[server]
hostname = "bench.localhost"

[server.listener.smtp]
bind = "127.0.0.1:{port}"

[session]
timeout = "30s"

[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true

[session.auth.errors]
total = 3
wait = "{wait}"

[server.auto-ban]
auth.rate = "{rate}"
auth.period = "1h"

[list]
users = "file://{users}"

[queue]
path = "{tmp}/spool"
{store}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Server:
    def __init__(self, tmp: Path, port: int, rate: str, wait: str, redis_url: str | None, prefix: str):
        store = ""
        if redis_url:
            store = (f'[store.bench]\ntype = "redis"\nurls = ["{redis_url}"]\nprefix = "{prefix}"\n'
                     f'[storage]\nlookup = "bench"\n')
        self.config = tmp / "smtpgate.toml"
        self.config.write_text(CONFIG.format(port=port, wait=wait, rate=rate, users=tmp / "users.txt",
                                             tmp=tmp, store=store))
        self.port = port
        self.log = tmp / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(SMTPGATE), "serve", "--config", str(self.config), "--log-level", "info"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("smtpgate did not start: " + self.log.read_text()[-2000:])

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- clients ---------------------------------------------------------------------------------------------
async def read_reply(reader: asyncio.StreamReader) -> bytes:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return b"".join(lines)


def plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"


async def good_session(port: int, source: str, user: str, password: str) -> tuple[float, bool]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        greeting = await read_reply(reader)
        if not greeting.startswith(b"220"):
            return 0.0, False
        writer.write(b"EHLO good.test\r\n")
        await read_reply(reader)
        t0 = time.perf_counter()
        writer.write(plain(user, password))
        ok = (await read_reply(reader)).startswith(b"235")
        took = time.perf_counter() - t0
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
        return took, ok
    finally:
        writer.close()


async def good_loop(port: int, source: str, users: list[tuple[str, str]], stop: float, out: list,
                    errors: list) -> None:
    while time.monotonic() < stop:
        user, password = random.choice(users)
        try:
            took, ok = await asyncio.wait_for(good_session(port, source, user, password), 30)
            if ok:
                out.append(took)
            else:
                errors.append("refused")
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            errors.append(type(exc).__name__)


async def attack_loop(port: int, source: str, names: list[str], stop: float, stats: dict) -> None:
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            greeting = await read_reply(reader)
            if not greeting.startswith(b"220"):
                stats["refused_connections"] += 1
                await asyncio.sleep(0.05)       # a real attacker would back off; we just keep knocking
                continue
            writer.write(b"EHLO attacker.test\r\n")
            await read_reply(reader)
            while time.monotonic() < stop:
                writer.write(plain(random.choice(names), "guess-%08x" % random.getrandbits(32)))
                await asyncio.wait_for(read_reply(reader), 30)
                stats["attempts"] += 1
        except (OSError, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()


def _attack_process(port: int, args, stop_in: float, out) -> None:
    """The attackers run in a process of their own: their event loop must not delay the good clients'
    (whose latency is what is measured); they still share the machine's CPUs, as a real attack would."""
    async def main() -> dict:
        stop = time.monotonic() + stop_in
        stats = {"attempts": 0, "refused_connections": 0}
        names = [f"user{i}@bench.test" for i in range(args.names)]
        await asyncio.gather(*(attack_loop(port, f"127.0.2.{1 + i % args.attack_ips}", names, stop, stats)
                               for i in range(args.attackers)))
        return stats
    out.put(asyncio.run(main()))


async def phase(port: int, args, users, attack: bool) -> dict:
    import multiprocessing
    stats = {"attempts": 0, "refused_connections": 0}
    proc = None
    if attack:
        queue = multiprocessing.Queue()
        proc = multiprocessing.Process(target=_attack_process, args=(port, args, args.duration + 1.0, queue))
        proc.start()
        await asyncio.sleep(1.0)                  # the attack is under way before the good clients measure
    stop = time.monotonic() + args.duration
    good_times: list[float] = []
    good_errors: list[str] = []
    await asyncio.gather(*(good_loop(port, f"127.0.1.{1 + i % 250}", users, stop, good_times, good_errors)
                           for i in range(args.good)))
    if proc is not None:
        stats = await asyncio.get_running_loop().run_in_executor(None, queue.get)
        proc.join(30)
    return {"good_auth": len(good_times), "good_errors": len(good_errors),
            "good_p50_ms": _ms(pct(good_times, 50)), "good_p99_ms": _ms(pct(good_times, 99)), **stats}


def _ms(v):
    return None if v is None else round(v * 1000, 2)


async def banned_burst(port: int, source: str, n: int) -> int:
    refused = 0
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        line = await reader.readline()
        refused += line.startswith(b"421")
        writer.close()
    return refused


async def good_burst(port: int, source: str, users, n: int) -> int:
    ok = 0
    for i in range(n):
        user, password = users[i % len(users)]
        _, good = await good_session(port, source, user, password)
        ok += good
    return ok


def lookup_guesses(log: Path) -> dict[str, int]:
    """Per attacking address: failed attempts whose credentials went to the lookup (no reason= field:
    attempts refused by a ban or a login lock are logged with reason="banned"/"locked")."""
    per_ip: dict[str, int] = {}
    # (the line goes on with " session=<id>", and " reason=..." for a refused attempt)
    rx = re.compile(r"auth listener=\S+ remote=(127\.0\.2\.\d+) .* result=invalid failures=\d+( reason=\S+)?")
    for line in log.read_text(errors="replace").splitlines():
        m = rx.search(line)
        if m and m.group(2) is None:
            per_ip[m.group(1)] = per_ip.get(m.group(1), 0) + 1
    return per_ip


def redis_evals(url: str) -> int:
    import redis
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        # Round trips: the scripts smtpgate sends (commands run inside a script are counted by Redis too,
        # but cost no round trip).
        return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    finally:
        client.close()


def limit_of(rate: str) -> int:
    return int(rate.split("/")[0])


def run(args, redis_url: str | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-abuse-bench-"))
    users = [(f"good{i}@bench.test", f"pw-{i:04d}") for i in range(1000)]
    (tmp / "users.txt").write_text("".join(f"{u}:{p}\n" for u, p in users))
    port = free_port()
    prefix = f"bench-{os.getpid()}-{int(time.time())}:"
    server = Server(tmp, port, args.rate, args.wait, redis_url, prefix)
    server.start()
    out: dict = {"store": "redis" if redis_url else "memory", "auth_rate": args.rate, "wait": args.wait,
                 "attackers": args.attackers, "attack_ips": args.attack_ips, "names": args.names,
                 "good_clients": args.good, "duration_s": args.duration}
    try:
        if redis_url:
            # Redis round trips per AUTH: good AUTHs (gate + success) and failed ones (gate only, unless it
            # earns a ban), against the idle node.
            n = 300
            before = redis_evals(redis_url)
            asyncio.run(good_burst(port, "127.0.1.200", users, n))
            out["redis_round_trips_per_auth_success"] = round((redis_evals(redis_url) - before) / n, 2)
            before = redis_evals(redis_url)
            bad = [(u, "wrong") for u, _ in users[:n]]
            asyncio.run(good_burst(port, "127.0.1.199", bad, min(5, limit_of(args.rate) - 1)))
            out["redis_round_trips_per_auth_failure"] = round((redis_evals(redis_url) - before)
                                                              / min(5, limit_of(args.rate) - 1), 2)
        out["baseline"] = asyncio.run(phase(port, args, users, attack=False))
        out["attack"] = asyncio.run(phase(port, args, users, attack=True))
        time.sleep(1.0)                         # log lines are written by a thread in batches
        guesses = lookup_guesses(server.log)
        limit = limit_of(args.rate)
        out["lookup_guesses_per_attacking_ip"] = {"max": max(guesses.values(), default=0),
                                                  "min": min(guesses.values(), default=0),
                                                  "ips": len(guesses), "limit": limit}
        # Refusal cost: an address banned by the operator (smtpgate ban add), once the server applies it.
        banned_ip = "127.0.3.1"
        subprocess.run([str(SMTPGATE), "ban", "add", banned_ip, "--config", str(server.config)], check=True,
                       stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while asyncio.run(banned_burst(port, banned_ip, 1)) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        c0 = server.cpu()
        t0 = time.monotonic()
        refused = asyncio.run(banned_burst(port, banned_ip, args.cost_n))
        banned_cpu = server.cpu() - c0
        c0 = server.cpu()
        ok = asyncio.run(good_burst(port, "127.0.1.201", users, args.cost_n))
        good_cpu = server.cpu() - c0
        out["refusal_cost"] = {"banned_refused": refused, "n": args.cost_n, "banned_cpu_us_per_conn": round(banned_cpu / args.cost_n * 1e6),
                               "auth_ok": ok, "auth_session_cpu_us": round(good_cpu / args.cost_n * 1e6),
                               "ratio": round(banned_cpu / good_cpu, 3) if good_cpu else None,
                               "seconds": round(time.monotonic() - t0, 1)}
    finally:
        server.stop()
        if redis_url:
            import redis
            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
    return out


def table(r: dict) -> str:
    b, a, g, c = r["baseline"], r["attack"], r["lookup_guesses_per_attacking_ip"], r["refusal_cost"]
    rows = [
        ("store", r["store"]),
        ("good clients' AUTH p50 / p99, no attack (ms)", f'{b["good_p50_ms"]} / {b["good_p99_ms"]}  ({b["good_auth"]} AUTHs)'),
        ("good clients' AUTH p50 / p99, under attack (ms)", f'{a["good_p50_ms"]} / {a["good_p99_ms"]}  ({a["good_auth"]} AUTHs, '
                                                           f'{a["good_errors"]} errors)'),
        ("p99 under attack / without", f'{a["good_p99_ms"] / b["good_p99_ms"]:.2f}x' if a["good_p99_ms"] and b["good_p99_ms"] else "-"),
        ("attacker attempts answered / connections refused", f'{a["attempts"]} / {a["refused_connections"]}'),
        ("guesses reaching the lookup per attacking IP (max/min)", f'{g["max"]} / {g["min"]} over {g["ips"]} IPs '
                                                                    f'(auth.rate {r["auth_rate"]})'),
        ("server CPU per refused connection (banned IP)", f'{c["banned_cpu_us_per_conn"]} µs ({c["banned_refused"]} of {c["n"]} refused)'),
        ("server CPU per full AUTH session", f'{c["auth_session_cpu_us"]} µs'),
        ("refused / full", f'{c["ratio"]}'),
    ]
    if "redis_round_trips_per_auth_success" in r:
        rows.append(("Redis round trips per AUTH (success / failure)",
                     f'{r["redis_round_trips_per_auth_success"]} / {r["redis_round_trips_per_auth_failure"]}'))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=15.0, help="seconds per phase (default 15)")
    p.add_argument("--good", type=int, default=16)
    p.add_argument("--attackers", type=int, default=200, help="attacking sessions at once (default 200)")
    p.add_argument("--attack-ips", type=int, default=50)
    p.add_argument("--names", type=int, default=5000)
    p.add_argument("--rate", default="20/1d", help="server.auto-ban.auth.rate (default 20/1d)")
    p.add_argument("--wait", default="1s", help="session.auth.errors.wait (default 1s)")
    p.add_argument("--cost-n", type=int, default=500)
    p.add_argument("--redis", default=None, help="also run against this Redis (a unique key prefix, deleted after)")
    args = p.parse_args()
    if not SMTPGATE.exists():
        print(f"{SMTPGATE} missing: run ./scripts/test once (it creates .venv)", file=sys.stderr)
        return 1
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = [run(args, None)]
    if args.redis:
        results.append(run(args, args.redis))
    for r in results:
        print(table(r))
        print()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
