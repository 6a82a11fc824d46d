"""Reply amplification (issue 9 item 1): clients that write bare LFs and never read their replies.

    .venv/bin/python bench/amplification.py [--attackers 200] [--size 262144] [--servers smtpgate,smtpgate-before]

For each server (started by ``servers.py`` on a free loopback port, one after the other): a probe client
sends NOOP every 10 ms; then ``--attackers`` connections each write ``--size`` bytes of ``\\n`` with a
4 KiB receive buffer and read nothing for ``--hold`` seconds (then they read what they were sent, to count
it and see whether the server hung up). Printed per server: RSS before, peak RSS during the attack, its
growth per attacking connection, RSS after the attackers left, the probe's NOOP p50/p99/max while
attacked, and how many attacker connections the server closed. ``smtpgate-before`` is the tree at
``SMTPGATE_BEFORE`` (default HEAD~1), see servers.py. Targets: growth <= 128 KiB per attacking
connection, probe NOOP p99 < 50 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import servers  # noqa: E402


async def probe(port: int, stop: asyncio.Event, samples: list[tuple[float, float]]) -> None:
    """NOOP every 10 ms; each sample is (time sent, latency ms)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(b"EHLO probe.test\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    while not stop.is_set():
        t0 = time.perf_counter()
        writer.write(b"NOOP\r\n")
        line = await asyncio.wait_for(reader.readline(), 120)
        samples.append((t0, (time.perf_counter() - t0) * 1000))
        assert line.startswith(b"250"), line
        await asyncio.sleep(0.01)
    writer.close()


async def attacker(port: int, size: int, hold: float) -> tuple[bool, int]:
    """Write ``size`` bare LFs without reading for ``hold`` seconds; then read what the server sent.
    Returns (the server had closed the connection, bytes of replies)."""
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, ("127.0.0.1", port))
        until = loop.time() + hold
        try:
            await asyncio.wait_for(loop.sock_sendall(s, b"\n" * size), hold)
        except (asyncio.TimeoutError, OSError):
            pass
        await asyncio.sleep(max(0.0, until - loop.time()))
        received = 0
        try:
            while True:
                chunk = await asyncio.wait_for(loop.sock_recv(s, 65536), 2)
                if not chunk:
                    return True, received
                received += len(chunk)
        except (asyncio.TimeoutError, OSError) as exc:
            return isinstance(exc, ConnectionResetError), received
    finally:
        s.close()


async def run_attack(server, attackers: int, size: int, hold: float) -> dict:
    pid = server.main_pid()
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    probe_task = asyncio.create_task(probe(server.port, stop, samples))
    await asyncio.sleep(0.5)
    base = servers.rss_kib(pid)
    peak = base

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, servers.rss_kib(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    tasks = [asyncio.create_task(attacker(server.port, size, hold)) for _ in range(attackers)]
    await asyncio.sleep(hold)                 # the attack window: every attacker writes, none reads
    ended = time.perf_counter()
    before_reads = len(samples)
    while len(samples) == before_reads and not probe_task.done():
        await asyncio.sleep(0.01)             # the NOOP in flight at the end of the window counts too
    attacked = [ms for t0, ms in samples if started <= t0 <= ended]
    results = await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)
    after = servers.rss_kib(pid)
    stop.set()
    await asyncio.gather(probe_task, sampler, return_exceptions=True)
    q = statistics.quantiles(attacked, n=100) if len(attacked) >= 2 else [max(attacked or [0])] * 99
    return {"base_kib": base, "peak_kib": peak, "after_kib": after,
            "growth_per_conn_kib": (peak - base) / attackers, "noop_p50_ms": statistics.median(attacked or [0]),
            "noop_p99_ms": q[98], "noop_max_ms": max(attacked or [0]), "noops": len(attacked),
            "closed_by_server": sum(c for c, _ in results),
            "reply_kib_per_attacker": sum(n for _, n in results) / attackers / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attackers", type=int, default=200)
    ap.add_argument("--size", type=int, default=262_144)
    ap.add_argument("--servers", default="smtpgate,smtpgate-before")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds the attackers write without reading")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sgb-amp-") as tmp:
        users = Path(tmp) / "users.txt"
        users.write_text("user0@bench.localhost:secret0\n")
        for name in a.servers.split(","):
            cls = servers.SERVERS[name]
            with cls(Path(tmp) / name, users) as srv:
                r = asyncio.run(run_attack(srv, a.attackers, a.size, a.hold))
            rows.append((name, r))
            print(f"  {name}: {r}", flush=True)
    print(f"\n### Reply amplification: {a.attackers} clients x {a.size // 1024} KiB of bare LF, never reading\n")
    print("| server | RSS before MiB | peak MiB | growth per attacker KiB | after MiB | probe NOOP p50/p99/max ms "
          "(NOOPs) | replies KiB per attacker | attackers closed by server |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['base_kib'] / 1024:.1f} | {r['peak_kib'] / 1024:.1f} | {r['growth_per_conn_kib']:.1f} "
              f"| {r['after_kib'] / 1024:.1f} | {r['noop_p50_ms']:.1f}/{r['noop_p99_ms']:.1f}/{r['noop_max_ms']:.0f} "
              f"({r['noops']}) | {r['reply_kib_per_attacker']:.1f} | {r['closed_by_server']}/{a.attackers} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
