#!/usr/bin/env python3
"""CPU per refused connection of a blocked address, with and without ``server.auto-ban.tarpit``.

    .venv/bin/python bench/refusals.py                         # false and "250ms", alternating, 2 rounds
    .venv/bin/python bench/refusals.py --variants false,1s --count 6000 --concurrency 500 --rounds 3

Each variant is one ``smtpgate serve`` on a plain loopback listener with ``server.blocked-ip`` =
127.0.0.90; this process opens ``--count`` connections from that address, ``--concurrency`` at a time,
each read until the server closes it. Server CPU (utime+stime from /proc) over the run, minus its idle
rate measured for 2 s before, per refusal. (bench/abuse.py measures the same through HAProxy with PROXY
headers, as phase 3.)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK = os.sysconf("SC_CLK_TCK")
SOURCE = "127.0.0.90"


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _refusals(port: int, count: int, conc: int) -> int:
    sem = asyncio.Semaphore(conc)
    refused = 0

    async def one() -> None:
        nonlocal refused
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(SOURCE, 0))
            try:
                data = await asyncio.wait_for(reader.read(), 30)
                refused += data.startswith(b"421 ")
            finally:
                writer.close()
    await asyncio.gather(*(one() for _ in range(count)))
    return refused


def run(variant: str, count: int, conc: int, tmp: Path) -> tuple[float, float, int]:
    port = _free_port()
    d = tmp / f"v{abs(hash(variant))}"
    d.mkdir(exist_ok=True)
    value = "false" if variant == "false" else f'"{variant}"'
    (d / "c.toml").write_text(f"""[server]
hostname = "bench.test"
blocked-ip = ["{SOURCE}"]
auto-ban.tarpit = {value}
[server.listener.smtp]
bind = ["127.0.0.1:{port}"]
[queue]
path = "{d / 'spool'}"
""")
    smtpgate = Path(sys.executable).parent / "smtpgate"
    proc = subprocess.Popen([str(smtpgate), "serve", "--config", str(d / "c.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"smtpgate did not start for variant {variant}")
                time.sleep(0.1)
        time.sleep(1)
        c0, t0 = _cpu(proc.pid), time.monotonic()
        time.sleep(2)
        idle = (_cpu(proc.pid) - c0) / (time.monotonic() - t0)
        c0, t0 = _cpu(proc.pid), time.monotonic()
        refused = asyncio.run(_refusals(port, count, conc))
        seconds = time.monotonic() - t0
        used = _cpu(proc.pid) - c0 - idle * seconds
        return used / count * 1e6, seconds, refused
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default='false,250ms', help="server.auto-ban.tarpit values, comma-separated")
    ap.add_argument("--count", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="smtpgate-refusals-") as tmp:
        for r in range(args.rounds):
            for variant in args.variants.split(","):
                us, seconds, refused = run(variant, args.count, args.concurrency, Path(tmp))
                results.setdefault(variant, []).append(us)
                print(f"round {r + 1} tarpit={variant}: {refused}/{args.count} refused in {seconds:.2f} s, "
                      f"{us:.0f} us server CPU per refusal", flush=True)
    print("\n| server.auto-ban.tarpit | server CPU per refusal (us), each round |\n|---|---|")
    for variant, values in results.items():
        print(f"| {variant} | {' / '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
