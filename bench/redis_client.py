#!/usr/bin/env python3
"""CPU per Redis command of the ways a node can talk to Redis (issue 11: why abuse/redis.py pipelines).

Starts a private ``redis-server`` on a free loopback port, loads a small Lua script (the shape of the
store's: a few keys, an array of integers back) and sends it ``--calls`` times with 1 and with 50 callers
in flight, each way below, measuring this process's CPU (``getrusage``) and wall time per call:

* ``pool+Script``      -- what the store did before: ``Script.__call__`` through a blocking pool, inside
                          ``asyncio.timeout``
* ``pool evalsha``     -- ``Redis.evalsha`` through a pool, no timeout
* ``pinned+lock``      -- one redis-py ``Connection``, ``send_command`` + ``read_response`` under a lock
* ``pipeline batcher`` -- redis-py ``Pipeline`` gathering what is asked in one turn of the loop
* ``store _Pipe``      -- the store's own: one redis-py connection, our batching (abuse/redis.py)
* ``raw protocol``     -- a minimal RESP client on an ``asyncio.Protocol`` (the floor; not used)

    .venv/bin/python bench/redis_client.py [--calls 4000]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from smtpgate.abuse.redis import _Pipe  # noqa: E402
from tests.fixtures.redis import PrivateRedis  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

SCRIPT = "return {redis.call('INCR', KEYS[1]), redis.call('EXISTS', KEYS[2])}"
KEYS = ["bench:k1", "bench:k2"]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(fn, calls: int, conc: int) -> tuple[float, float]:
    for _ in range(200):
        await fn()

    async def worker(n: int) -> None:
        for _ in range(n):
            await fn()
    c0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker(calls // conc) for _ in range(conc)))
    return (_cpu() - c0) / calls * 1e6, (time.perf_counter() - t0) / calls * 1e6


class _Raw(asyncio.Protocol):
    """Minimal auto-pipelined RESP2 client: the floor of what Python can do here."""

    def __init__(self) -> None:
        self.waiting: collections.deque = collections.deque()
        self.buf = b""
        self.out: list[bytes] = []
        self.scheduled = False
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            parsed = _parse(self.buf, 0)
            if parsed is None:
                return
            value, pos = parsed
            self.buf = self.buf[pos:]
            self.waiting.popleft().set_result(value)

    def call(self, *args) -> asyncio.Future:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.out.append(b"".join(parts))
        loop = asyncio.get_running_loop()
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._flush)
        fut = loop.create_future()
        self.waiting.append(fut)
        return fut

    def _flush(self) -> None:
        self.scheduled = False
        self.transport.write(b"".join(self.out))
        self.out.clear()


def _parse(b: bytes, p: int):
    end = b.find(b"\r\n", p)
    if end < 0:
        return None
    kind, line = b[p:p + 1], b[p + 1:end]
    if kind in (b":", b"+"):
        return (int(line) if kind == b":" else line), end + 2
    if kind == b"-":
        return RuntimeError(line.decode()), end + 2
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, end + 2
        if len(b) < end + 4 + n:
            return None
        return b[end + 2:end + 2 + n], end + 4 + n
    n, p, out = int(line), end + 2, []
    for _ in range(max(n, 0)):
        item = _parse(b, p)
        if item is None:
            return None
        value, p = item
        out.append(value)
    return out, p


async def main(url: str, port: int, calls: int) -> None:
    client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(url, max_connections=16))
    sha = await client.script_load(SCRIPT)
    script = client.register_script(SCRIPT)

    async def pool_script():
        async with asyncio.timeout(1.0):
            return await script(keys=KEYS, args=[])

    conn = aioredis.Connection(host="127.0.0.1", port=port)
    await conn.connect()
    lock = asyncio.Lock()

    async def pinned():
        async with lock:
            await conn.send_command("EVALSHA", sha, 2, *KEYS)
            return await conn.read_response()

    pending: list = []
    scheduled = [False]

    async def flush() -> None:
        batch = pending[:]
        pending.clear()
        scheduled[0] = False
        pipe = client.pipeline(transaction=False)
        for _, args in batch:
            pipe.execute_command(*args)
        for (fut, _), result in zip(batch, await pipe.execute()):
            fut.set_result(result)

    def batched(*args):
        fut = asyncio.get_running_loop().create_future()
        pending.append((fut, args))
        if not scheduled[0]:
            scheduled[0] = True
            asyncio.get_running_loop().create_task(flush())
        return fut

    pipe = _Pipe(url, 5.0)
    await pipe.open()
    _, raw = await asyncio.get_running_loop().create_connection(_Raw, "127.0.0.1", port)
    ways = [("pool+Script", pool_script),
            ("pool evalsha", lambda: client.evalsha(sha, 2, *KEYS)),
            ("pinned+lock", pinned),
            ("pipeline batcher", lambda: batched("EVALSHA", sha, 2, *KEYS)),
            ("store _Pipe", lambda: pipe.call("EVALSHA", sha, 2, *KEYS)),
            ("raw protocol", lambda: raw.call("EVALSHA", sha, 2, *KEYS))]
    print("| way | CPU µs/call, 1 in flight | wall µs | CPU µs/call, 50 in flight | wall µs |")
    print("|---|---|---|---|---|")
    for name, fn in ways:
        one = await _measure(fn, calls, 1)
        many = await _measure(fn, calls, 50)
        print(f"| {name} | {one[0]:.1f} | {one[1]:.1f} | {many[0]:.1f} | {many[1]:.1f} |")
    await pipe.aclose()
    await conn.disconnect()
    await client.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=4000)
    args = ap.parse_args()
    server = PrivateRedis()
    server.start()
    try:
        try:
            import hiredis  # noqa: F401
            print("redis-py parser: hiredis")
        except ImportError:
            print("redis-py parser: pure Python (hiredis not installed)")
        (uvloop.run if uvloop else asyncio.run)(main(server.url, server.port, args.calls))
    finally:
        server.stop()
