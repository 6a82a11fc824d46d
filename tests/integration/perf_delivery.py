"""Throughput of accepted mail, for the closing note of issue 5 (a script, not a test: it prints, it does
not assert).

    .venv/bin/python -m tests.integration.perf_delivery [--messages 4000] [--clients 16] [--size 10240]

Runs ``smtpgate serve`` as a subprocess (one process, one event loop) twice: with the spool (write, fsync,
rename, fsync the directory per message) and with a real Dovecot LMTP next hop (one LMTP transaction per
message, ``250`` only after Dovecot wrote it into the Maildir). ``--clients`` concurrent clients, spread
over several client processes so the load generator is not the bottleneck, each keeps one session open:
STARTTLS, AUTH PLAIN, then message after message of ``--size`` octets.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import ssl
import tempfile
import time
from pathlib import Path

from tests.fixtures.certs import make_pki
from tests.fixtures.process import SmtpgateProcess
from tests.support import free_port

CONFIG = """
[server]
hostname = "perf.test"

[server.listener.submission]
bind = ["127.0.0.1:{port}"]

[server.tls]
enable = true
certificate = "default"

[certificate.default]
cert = "file://{cert}"
private-key = "file://{key}"

[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
require = true

[session.data.limits]
messages = 1000000

[list]
users = ["john@local.test:secret"]

[queue]
path = "{spool}"
"""

NEXT_HOP = """
[remote.dovecot]
address = "127.0.0.1"
port = {lmtp}
protocol = "lmtp"
concurrency = 64
timeout = "30s"

[queue.outbound]
next-hop = "remote/dovecot"
"""


def _message(size: int, n: int) -> bytes:
    head = f"From: john@local.test\r\nTo: alice@example.test\r\nSubject: perf {n}\r\n\r\n".encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = (line * (size // len(line) + 1))[:max(0, size - len(head) - 2)] + b"\r\n"
    return head + body


async def _client(port: int, ca: str, count: int, size: int, rcpt: str) -> int:
    import aiosmtplib
    ctx = ssl.create_default_context(cafile=ca)
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=ctx, timeout=60)
    await smtp.connect()
    await smtp.login("john@local.test", "secret")
    ok = 0
    msg = _message(size, 0)
    for _ in range(count):
        errors, _ = await smtp.sendmail("john@local.test", [rcpt], msg)
        ok += not errors
    await smtp.quit()
    return ok


def _worker(args: tuple[int, str, int, int, int, str]) -> int:
    port, ca, clients, per_client, size, rcpt = args

    async def run() -> int:
        results = await asyncio.gather(*(_client(port, ca, per_client, size, rcpt) for _ in range(clients)))
        return sum(results)
    return asyncio.run(run())


def measure(label: str, config: str, workdir: Path, ca: str, port: int, messages: int, clients: int,
            size: int, rcpt: str, procs: int) -> float:
    server = SmtpgateProcess(config, workdir, port)
    server.start()
    try:
        procs = min(procs, clients)
        per_client = max(1, messages // clients)
        split = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            pool.map(_worker, [(port, ca, 1, 2, size, rcpt)] * procs)           # warm-up
            start = time.perf_counter()
            done = sum(pool.map(_worker, [(port, ca, n, per_client, size, rcpt) for n in split]))
            elapsed = time.perf_counter() - start
    finally:
        server.stop()
    rate = done / elapsed
    print(f"{label:<28} {done:>6} messages of {size} octets, {clients} clients: {elapsed:6.2f} s  "
          f"{rate:8.1f} messages/s")
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--size", type=int, default=10240)
    p.add_argument("--client-processes", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--skip-lmtp", action="store_true")
    args = p.parse_args()

    base = Path(tempfile.mkdtemp(prefix="smtpgate-perf-"))
    try:
        pki = make_pki(base / "pki")
        print(f"cpus={os.cpu_count()}  spool on {base} ({_fs(base)})")
        spool_dir = base / "spool-run"
        spool_dir.mkdir()
        port = free_port()
        cfg = CONFIG.format(port=port, cert=pki.cert, key=pki.key, spool=base / "spool")
        measure("spool (fsync per message)", cfg, spool_dir, str(pki.ca_cert), port, args.messages, args.clients,
                args.size, "alice@example.test", args.client_processes)
        if not args.skip_lmtp:
            from tests.fixtures.dovecot import cleanup_dovecot, start_dovecot
            dovecot = start_dovecot(base / "dovecot", pki)
            try:
                lmtp_dir = base / "lmtp-run"
                lmtp_dir.mkdir()
                port = free_port()
                cfg = CONFIG.format(port=port, cert=pki.cert, key=pki.key, spool=base / "spool2") + \
                    NEXT_HOP.format(lmtp=dovecot.lmtp_port)
                measure("LMTP next hop (Dovecot)", cfg, lmtp_dir, str(pki.ca_cert), port, args.messages,
                        args.clients, args.size, "alice@example.test", args.client_processes)
                box = dovecot.maildir_root / "alice@example.test" / "new"
                print(f"  Dovecot Maildir now holds {len(list(box.iterdir())) if box.is_dir() else 0} messages")
            finally:
                cleanup_dovecot(dovecot)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _fs(path: Path) -> str:
    try:
        best = ("", "?")
        with open("/proc/mounts") as fh:
            for line in fh:
                dev, mnt, fstype = line.split()[:3]
                if str(path).startswith(mnt) and len(mnt) > len(best[0]):
                    best = (mnt, fstype)
        return best[1]
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
