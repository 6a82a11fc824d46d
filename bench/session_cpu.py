#!/usr/bin/env python3
"""CPU per session of smtpgate's own Python code, in process, without sockets: bench (a)'s dialogue
(greeting, EHLO, AUTH PLAIN against a plaintext ``list/``, QUIT) through ``SmtpConnection`` and
``Session`` with a fake transport, with the bench's configuration (auto-ban on by default, info logging
through the batching handler to /dev/null). No kernel, no client: far less noisy than run.py on a
shared machine, so it shows what a hot-path change is worth; run.py remains the figure that counts.

    .venv/bin/python bench/session_cpu.py [--sessions 10000] [--rounds 5] [--profile] [--interleave 64]
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/session_cpu.py      # another tree (git archive), 1f003db on

Prints the best round's process CPU (all threads: the log writer too) per session, or with
``--profile`` the function calls per session and the costliest functions (cProfile).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import tempfile
import time
from pathlib import Path

from smtpgate.config.load import load_file
from smtpgate.logsink import BatchingHandler
from smtpgate.server import Server
from smtpgate.server.connection import SmtpConnection
try:
    from smtpgate.session.context import ListenerContext
except ImportError:  # trees before the session-core redesign (1f003db)
    from smtpgate.session.machine import ListenerContext

USERS = [(f"user{i:04d}@bench.localhost", f"password-{i:04d}") for i in range(1, 1001)]
AUTH_LINES = [b"AUTH PLAIN " + base64.b64encode(b"\0" + u.encode() + b"\0" + p.encode()) + b"\r\n" for u, p in USERS]

CONFIG = """\
[server]
hostname = "bench.localhost"

[server.listener.bench]
bind = ["127.0.0.1:0"]
protocol = "smtp"

[session.auth]
mechanisms = ["plain", "login", "scram-sha-256"]
lookup = "list/users"
require = true
allow-plain-text = true

[session.auth.errors]
total = 3
wait = "1ms"

[list]
users = "file://{users}"

[queue]
path = "{spool}"
"""


class FakeTransport:
    __slots__ = ("port", "written")

    def __init__(self, port: int):
        self.port = port
        self.written = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "peername":
            return ("127.0.0.1", self.port)
        if name == "sockname":
            return ("127.0.0.1", 2525)
        return default

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def close(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def main(args: argparse.Namespace) -> None:
    # Logging as `smtpgate serve` sets it up (cli._setup_logging), into /dev/null.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchingHandler(open(os.devnull, "w"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("INFO")
    try:                            # as cli._serve does (trees that have the direct path)
        from smtpgate.observe import events
        events.emit_directly(handler.submit)
    except (ImportError, AttributeError):
        pass
    with tempfile.TemporaryDirectory(prefix="sg-cpu-") as tmp:
        users = Path(tmp, "users.txt")
        users.write_text("".join(f"{u}:{p}\n" for u, p in USERS))
        config = Path(tmp, "smtpgate.toml")
        config.write_text(CONFIG.format(users=users, spool=Path(tmp, "spool")))
        settings = load_file(str(config))
        server = Server(settings)
        await server.start()
        listener = next(iter(settings.listeners.values()))
        ctx = ListenerContext(settings, listener, server.lookups, starttls_available=False)
        ctx.local_addr = ("127.0.0.1", 2525)

        def session(i: int) -> int:
            conn = SmtpConnection(server, ctx)
            transport = FakeTransport(40000 + i % 20000)
            conn.connection_made(transport)
            conn.data_received(b"EHLO bench.client\r\n")
            conn.data_received(AUTH_LINES[i % len(AUTH_LINES)])
            conn.data_received(b"QUIT\r\n")
            conn.connection_lost(None)
            return transport.written

        def interleaved(i: int) -> None:
            """``--interleave N`` sessions at a time, one step each in turn (as a loaded server sees them)."""
            steps = []
            for j in range(args.interleave):
                conn = SmtpConnection(server, ctx)
                transport = FakeTransport(40000 + (i + j) % 20000)
                steps.append((conn, transport, AUTH_LINES[(i + j) % len(AUTH_LINES)]))
            for conn, transport, _ in steps:
                conn.connection_made(transport)
            for conn, _, _ in steps:
                conn.data_received(b"EHLO bench.client\r\n")
            for conn, _, auth_line in steps:
                conn.data_received(auth_line)
            for conn, _, _ in steps:
                conn.data_received(b"QUIT\r\n")
            for conn, _, _ in steps:
                conn.connection_lost(None)

        if args.interleave > 1:
            one = session

            def session(i: int) -> int:  # noqa: F811 - one session's share of an interleaved batch
                if i % args.interleave == 0:
                    interleaved(i)
                return 1

            assert one(0) > 100
        assert session(0) > 0
        try:                        # as cli._serve does once the server is up
            from smtpgate.cli import _tune_gc
            _tune_gc()
        except ImportError:
            pass
        n = args.sessions
        if args.profile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.enable()
            for i in range(n):
                session(i)
            prof.disable()
            stats = pstats.Stats(prof).stats
            calls = sum(v[1] for v in stats.values())
            python_calls = sum(v[1] for k, v in stats.items() if k[0] != "~")
            print(f"calls per session: {calls / n:.1f} (Python functions: {python_calls / n:.1f})")
            rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:45]
            for (file, line, name), (_, nc, tt, ct, _) in rows:
                print(f"{nc / n:6.2f} calls  self {tt / n * 1e6:6.2f} µs  cum {ct / n * 1e6:7.2f} µs  "
                      f"{file.split('src/')[-1]}:{line}({name})")
        else:
            best = float("inf")
            for _ in range(args.rounds):
                t0 = time.process_time()
                for i in range(n):
                    session(i)
                best = min(best, time.process_time() - t0)
            import smtpgate
            print(f"{Path(smtpgate.__file__).parent}: {best / n * 1e6:.1f} µs CPU per session "
                  f"(best of {args.rounds} rounds of {n})")
        await server.stop(grace=0)
    handler.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--interleave", type=int, default=1, help="run N sessions side by side, a step each in turn")
    a = p.parse_args()
    try:
        import uvloop
        uvloop.run(main(a))
    except ImportError:
        asyncio.run(main(a))
