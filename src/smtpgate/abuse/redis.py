"""The shared store: Redis (``[store.<id>] type = "redis"`` + ``storage.lookup = "<id>"``).

Every update is one Lua script (atomic, one round trip); every key smtpgate writes starts with the
configured prefix and expires (counters and marks with their window, bans with the ban, the ban index and
its version counter after 30 days at most).

Keys (``P`` = prefix)::

    P c:<name>      counter (INCR, PEXPIRE at the first hit)        P m:<name>   mark (SET NX PX)
    P ban:<ip>      one ban as JSON (PX = its length)               P bans       index: zset ip -> until
    P bans:ver      bumped at every ban/unban; nodes poll it twice a second and reload the index when it
                    moves, so a ban made through one node holds on every node within a second
    P hmac          the fingerprint key shared by all nodes (same wrong password via two nodes counts once)

All commands of a process go over one connection, pipelined (:class:`_Pipe`): what the sessions ask
in one turn of the event loop is one write and one read.

Redis down (connection refused, timeout): the first failure is logged once, every operation is then
answered by a per-process :class:`~.memory.MemoryStore` -- limits still hold, per node -- and when Redis
answers again (checked twice a second) what was done meanwhile is written to it: bans made or lifted,
counters (added to the shared ones, for the rest of their window) and marks (trust after a successful
login, the once-marks of counted attempts). Bans already loaded stay enforced throughout: an outage never
lifts a ban, and never refuses anyone who is not banned.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import deque
from typing import Any, Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from ..config.abuse import StoreSettings
from .memory import MemoryStore
from .store import Ban, Changes, Hit, Store, drive

log = logging.getLogger("smtpgate.abuse")

# KEYS: (counter, once-mark or the counter itself) per hit, then marks to set, then marks to check.
# ARGV: number of hits, of marks to set, then (ttl ms, amount) per hit, then ttl ms per mark to set.
_HIT = """
local nh, ns = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 2*nh + ns + 1, #KEYS do out[#out+1] = redis.call('EXISTS', KEYS[i]) end
for i = 1, nh do
  local c, once = KEYS[2*i-1], KEYS[2*i]
  local ttl, amount = tonumber(ARGV[1 + 2*i]), tonumber(ARGV[2 + 2*i])
  if amount < 0 then
    if once ~= c then redis.call('DEL', once) end
    local n = tonumber(redis.call('GET', c) or '0')
    if n > 0 then n = redis.call('DECR', c) end
    out[#out+1] = n; out[#out+1] = 1
  elseif once ~= c and not redis.call('SET', once, '1', 'PX', ttl, 'NX') then
    out[#out+1] = tonumber(redis.call('GET', c) or '0'); out[#out+1] = 0
  else
    out[#out+1] = redis.call('INCRBY', c, amount); out[#out+1] = 1
    if redis.call('PTTL', c) < 0 then redis.call('PEXPIRE', c, ttl) end
  end
end
for j = 1, ns do redis.call('SET', KEYS[2*nh + j], '1', 'PX', ARGV[2 + 2*nh + j]) end
return out
"""
_PEEK = """
local n, out = tonumber(ARGV[1]), {}
for i = 1, #KEYS do
  if i <= n then out[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  else out[i] = redis.call('EXISTS', KEYS[i]) end
end
return out
"""
_BAN = """
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], 2592000000)
return 1
"""
_UNBAN = """
local old = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], 2592000000)
return old
"""
_MAX_TTL_MS = 2_592_000_000     # 30 days: the longest any index/version key lives without a write
# KEYS: counters, then marks; ARGV: number of counters, then (count, ttl ms) per counter, then ttl ms per mark.
# What one process counted while Redis was down, added to the shared state when it is back.
_MERGE = """
local nc = tonumber(ARGV[1])
for i = 1, nc do
  local n, ttl = tonumber(ARGV[2*i]), tonumber(ARGV[2*i + 1])
  if n > 0 then
    redis.call('INCRBY', KEYS[i], n)
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
for j = nc + 1, #KEYS do redis.call('SET', KEYS[j], '1', 'PX', ARGV[nc + j + 1], 'NX') end
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class _Down(Exception):
    """Redis is known to be down: answer from the fallback without trying."""


class _Script:
    __slots__ = ("text", "sha")

    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class _Pipe:
    """Every command of this process over one redis-py connection, automatically pipelined.

    Why not redis-py's client API per call: a call through ``Redis.evalsha`` acquires a pooled connection,
    writes, waits, parses, releases -- about 70 µs of CPU each on this machine, and one ``send()`` and one
    wake-up per call, whatever the load; and each pooled connection is its own socket. Measured on the
    node (``bench/abuse.py``, py-spy), most of a Redis-backed AUTH's extra cost was those system calls.
    Here the commands issued during one turn of the event loop go out in one write and their replies are
    read back in order by one reader, so under load N AUTHs cost one write and one read instead of N of
    each (about 5 µs of CPU per command at 50 in flight, against ~50). The connection itself -- URL,
    TLS, AUTH, SELECT, the RESP parser -- is still redis-py's (``Connection.send_packed_command`` /
    ``read_response``): only the batching is ours.

    A command that gets no reply within ``timeout`` (or any I/O error) fails every command in flight
    with :class:`_Down` and drops the connection; :meth:`open` makes a new one.
    """

    def __init__(self, url: str, timeout: float):
        # socket_timeout None: no per-read/per-write timer (the watchdog below bounds every command).
        self._pool = aioredis.ConnectionPool.from_url(url, socket_timeout=None, socket_connect_timeout=timeout,
                                                      retry=Retry(NoBackoff(), 0))
        self.timeout = timeout
        self._conn: Any = None
        self._out: list[bytes] = []                         # packed commands not yet written
        self._waiting: deque[tuple[asyncio.Future, float]] = deque()   # (reply, deadline), in send order
        self._tasks: tuple[asyncio.Task, ...] = ()
        self._wake_writer: asyncio.Future | None = None
        self._wake_reader: asyncio.Future | None = None
        self._watch: asyncio.TimerHandle | None = None
        self.failure: BaseException | None = None
        self.writes = 0                         # batches written (tests: commands do share writes)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def open(self) -> None:
        """Connect (redis-py does the handshake); raises on failure."""
        if self._conn is not None or self._waiting:
            self._fail(ConnectionError("reconnecting"))
        conn = self._pool.make_connection()
        try:
            async with asyncio.timeout(self.timeout):
                await conn.connect()
        except BaseException:
            await _quiet_disconnect(conn)
            raise
        loop = asyncio.get_running_loop()
        self._conn = conn
        self._tasks = (loop.create_task(self._write(conn)), loop.create_task(self._read(conn)))

    def call(self, *args: Any) -> "asyncio.Future[Any]":
        """Queue one command; the future's result is the reply (a ResponseError instance for an error
        reply), or the exception :class:`_Down`."""
        conn = self._conn
        if conn is None:
            raise _Down()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._out.extend(conn.pack_command(*args))
        self._waiting.append((fut, loop.time() + self.timeout))
        wake = self._wake_writer
        if wake is not None and not wake.done():
            wake.set_result(None)
        wake = self._wake_reader
        if wake is not None and not wake.done():
            wake.set_result(None)
        if self._watch is None:
            self._watch = loop.call_at(self._waiting[0][1], self._check)
        return fut

    async def _write(self, conn: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._out:
                    self._wake_writer = loop.create_future()
                    await self._wake_writer
                    continue
                batch, self._out = self._out, []
                self.writes += 1
                await conn.send_packed_command(batch, check_health=False)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - any write failure ends this connection
            self._fail(exc)

    async def _read(self, conn: Any) -> None:
        loop = asyncio.get_running_loop()
        waiting = self._waiting
        try:
            while True:
                if not waiting:
                    self._wake_reader = loop.create_future()
                    await self._wake_reader
                    continue
                try:
                    reply: Any = await conn.read_response(disable_decoding=True)
                except aioredis.ResponseError as exc:     # an error reply: the connection is fine
                    reply = exc
                fut = waiting.popleft()[0]
                if not fut.done():
                    fut.set_result(reply)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _check(self) -> None:
        """The oldest command's deadline: passed -> Redis is not answering; else look again later."""
        self._watch = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        deadline = self._waiting[0][1]
        if deadline <= loop.time():
            self._fail(TimeoutError())
        else:
            self._watch = loop.call_at(deadline, self._check)

    def _fail(self, exc: BaseException) -> None:
        """Fail every command in flight (their callers fall back) and drop the connection."""
        self.failure = exc                      # for the "unavailable" log line
        waiting, self._waiting = self._waiting, deque()
        self._out = []
        for fut, _ in waiting:
            if not fut.done():
                fut.set_exception(_Down())
                fut.exception()                 # retrieved: a caller that went away leaves no warning
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = ()
        conn, self._conn = self._conn, None
        if conn is not None:
            asyncio.get_running_loop().create_task(_quiet_disconnect(conn))

    async def aclose(self) -> None:
        tasks, conn = self._tasks, self._conn
        self._tasks, self._conn = (), None
        self._fail(ConnectionError("closed"))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if conn is not None:
            await _quiet_disconnect(conn)
        await self._pool.disconnect()


async def _quiet_disconnect(conn: Any) -> None:
    try:
        await conn.disconnect(nowait=True)
    except Exception:  # noqa: BLE001 - closing a dead connection is best effort
        pass


class RedisStore(Store):
    immediate = False

    def __init__(self, settings: StoreSettings, *, clock: Callable[[], float] = time.time):
        super().__init__()
        self.settings = settings
        self.prefix = settings.prefix
        self.timeout = settings.timeout
        self.clock = clock
        self.fallback = MemoryStore(None, clock=clock)
        self._pipe = _Pipe(settings.urls[0], self.timeout)
        self._hit = _Script(_HIT)
        self._peek = _Script(_PEEK)
        self._ban = _Script(_BAN)
        self._unban = _Script(_UNBAN)
        self._merge = _Script(_MERGE)
        self.down = False
        self._cache: dict[str, Ban] = {}       # bans in force, as last read from Redis
        self._version: bytes | None = None
        self._outage_bans: dict[str, Ban | None] = {}   # changes made while down, replayed on recovery
        # counters and marks the fallback holds, written to Redis on recovery: key -> (ttl, first use)
        self._outage_counters: dict[str, tuple[float, float]] = {}
        self._outage_marks: dict[str, tuple[float, float]] = {}
        self.fingerprint_key = os.urandom(32)

    # -- plumbing -------------------------------------------------------------------------------------
    def k(self, name: str) -> str:
        return self.prefix + name

    async def _cmd(self, *args: Any, script: _Script | None = None) -> Any:
        """One command's reply; :class:`_Down` when Redis is (or just went) down. With ``script``, the
        command is its EVALSHA, sent once more as EVAL with the text if Redis does not know the digest
        (a restarted server)."""
        if self.down:
            raise _Down()
        try:
            reply = await self._pipe.call(*args)
            if script is not None and isinstance(reply, NoScriptError):
                reply = await self._pipe.call("EVAL", script.text, *args[2:])
        except _Down:
            self._went_down(self._pipe.failure)
            raise
        if isinstance(reply, aioredis.ResponseError):
            self._went_down(reply)
            raise _Down()
        return reply

    async def _run(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """A Lua script by its digest (see :meth:`_cmd`)."""
        return await self._cmd("EVALSHA", script.sha, len(keys), *keys, *args, script=script)

    def _went_down(self, exc: BaseException | None) -> None:
        if not self.down:
            self.down = True
            reason = "no answer" if isinstance(exc, TimeoutError) or exc is None else \
                str(exc) or type(exc).__name__
            log.warning("redis store %r unavailable (%s): limits are per process until it answers again",
                        self.settings.id, reason)

    def _remember(self, hits: Sequence[Hit], marks: Sequence[tuple[str, float]]) -> None:
        """What the fallback is about to count: written to Redis when it answers again."""
        now = self.clock()
        for h in hits:
            self._outage_counters.setdefault(h.key, (h.ttl, now))
            if h.once is not None and h.amount > 0:
                self._outage_marks.setdefault(h.once, (h.ttl, now))
        for key, ttl in marks:
            self._outage_marks[key] = (ttl, now)

    # -- counters and marks ---------------------------------------------------------------------------
    async def hit(self, hits: Sequence[Hit], *, set_marks: Sequence[tuple[str, float]] = (),
                  check_marks: Sequence[str] = ()) -> tuple[list[tuple[int, bool]], list[bool]]:
        try:
            out = await self._run(self._hit, *self._hit_args(hits, set_marks, check_marks))
        except _Down:
            self._remember(hits, set_marks)
            return await self.fallback.hit(hits, set_marks=set_marks, check_marks=check_marks)
        nc = len(check_marks)
        checked = [bool(x) for x in out[:nc]]
        rest = out[nc:]
        return [(int(rest[2 * i]), bool(rest[2 * i + 1])) for i in range(len(hits))], checked

    def _hit_args(self, hits: Sequence[Hit], set_marks: Sequence[tuple[str, float]],
                  check_marks: Sequence[str]) -> tuple[list[str], list[int]]:
        k = self.prefix
        keys: list[str] = []
        args: list[int] = [len(hits), len(set_marks)]
        for h in hits:
            c = k + "c:" + h.key
            keys += (c, k + "m:" + h.once if h.once is not None else c)
            args += (_ms(h.ttl), h.amount)
        for key, ttl in set_marks:
            keys.append(k + "m:" + key)
            args.append(_ms(ttl))
        keys += [k + "m:" + key for key in check_marks]
        return keys, args

    def hit_soon(self, hits: Sequence[Hit], *, set_marks: Sequence[tuple[str, float]] = ()) -> None:
        """:meth:`hit` without waiting for Redis's answer (an undo, a trust mark): sent with whatever
        else goes out in this turn of the loop; applied to the fallback if Redis does not take it."""
        if not self.down and self._pipe.connected:
            keys, args = self._hit_args(hits, set_marks, ())
            fut = self._pipe.call("EVALSHA", self._hit.sha, len(keys), *keys, *args)
            fut.add_done_callback(lambda f: self._soon_done(f, hits, set_marks))
            return
        self._remember(hits, set_marks)
        drive(self.fallback.hit(hits, set_marks=set_marks))

    def _soon_done(self, fut: "asyncio.Future[Any]", hits: Sequence[Hit],
                   set_marks: Sequence[tuple[str, float]]) -> None:
        exc = fut.exception() if not fut.cancelled() else _Down()
        if exc is None:
            reply = fut.result()
            if not isinstance(reply, aioredis.ResponseError):
                return
            if isinstance(reply, NoScriptError):        # a restarted Redis: once more, with the script's text
                asyncio.get_running_loop().create_task(self.hit(hits, set_marks=set_marks))
                return
            self._went_down(reply)
        else:
            self._went_down(self._pipe.failure)
        self._remember(hits, set_marks)
        drive(self.fallback.hit(hits, set_marks=set_marks))

    async def peek(self, counters: Sequence[str], marks: Sequence[str] = ()) -> tuple[list[int], list[bool]]:
        keys = [self.k("c:" + c) for c in counters] + [self.k("m:" + m) for m in marks]
        try:
            out = await self._run(self._peek, keys, [len(counters)])
        except _Down:
            return await self.fallback.peek(counters, marks)
        n = len(counters)
        return [int(x) for x in out[:n]], [bool(x) for x in out[n:]]

    async def mark(self, key: str, ttl: float) -> None:
        try:
            await self._cmd("SET", self.k("m:" + key), b"1", "PX", _ms(ttl))
        except _Down:
            self._remember((), ((key, ttl),))
            await self.fallback.mark(key, ttl)

    # -- bans -------------------------------------------------------------------------------------------
    async def ban(self, ban: Ban) -> None:
        self._cache[ban.key] = ban
        try:
            await self._write_ban(ban)
        except _Down:
            self._outage_bans[ban.key] = ban
            await self.fallback.ban(ban)

    async def _write_ban(self, ban: Ban) -> None:
        now = self.clock()
        ttl_ms = max(1, int((ban.until - now) * 1000))
        await self._run(self._ban, [self.k("ban:" + ban.key), self.k("bans"), self.k("bans:ver")],
                        [ban.key, ttl_ms, json.dumps(ban.to_json()), ban.until, now])

    async def unban(self, key: str) -> Ban | None:
        cached = self._cache.pop(key, None)
        local = await self.fallback.unban(key)
        try:
            old = await self._run(self._unban, [self.k("ban:" + key), self.k("bans"), self.k("bans:ver")], [key])
        except _Down:
            self._outage_bans[key] = None
            return cached or local
        if old:
            return Ban.from_json(key, json.loads(old))
        return cached or local

    async def bans(self) -> list[Ban]:
        try:
            return list((await self._load_bans()).values())
        except _Down:
            now = self.clock()
            merged = {b.key: b for b in self._cache.values() if b.until > now}
            merged.update({b.key: b for b in await self.fallback.bans()})
            return list(merged.values())

    async def _load_bans(self) -> dict[str, Ban]:
        now = self.clock()
        members = await self._cmd("ZRANGEBYSCORE", self.k("bans"), repr(now), "+inf")
        if not members:
            return {}
        names = [m.decode() for m in members]
        raws = await self._cmd("MGET", *[self.k("ban:" + n) for n in names])
        out = {}
        for name, raw in zip(names, raws):
            if raw:
                try:
                    out[name] = Ban.from_json(name, json.loads(raw))
                except (ValueError, KeyError, TypeError):
                    continue
        return out

    def banned(self, key: str, now: float) -> Ban | None:
        ban = self._cache.get(key)
        if ban is not None:
            if ban.until > now:
                return ban
            del self._cache[key]
        return self.fallback.banned(key, now) if self.down or self._outage_bans else None

    # -- life cycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        if await self._connect():
            try:
                await self._sync_key()
                await self.refresh()
            except _Down:
                pass

    async def _connect(self) -> bool:
        try:
            await self._pipe.open()
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)
            return False
        return True

    async def _sync_key(self) -> None:
        await self._cmd("SET", self.k("hmac"), self.fingerprint_key, "NX", "PX", _MAX_TTL_MS)
        key = await self._cmd("GET", self.k("hmac"))
        if key:
            self.fingerprint_key = bytes(key)

    async def refresh(self) -> Changes:
        await self.fallback.refresh()
        if self.down:
            if not self._pipe.connected and not await self._connect_quietly():
                return Changes()
            try:
                pong = await self._pipe.call("PING")
            except _Down:
                return Changes()
            if isinstance(pong, aioredis.ResponseError):
                return Changes()
            self.down = False
            try:
                written = await self._replay()
                await self._sync_key()
            except _Down:
                return Changes()
            log.warning("redis store %r answers again: limits are shared again (written from the outage: "
                        "%d counters, %d marks, %d ban changes)", self.settings.id, *written)
        elif not self._pipe.connected:          # lost between two commands: reconnect before the next
            await self._connect()
        try:
            version = await self._cmd("GET", self.k("bans:ver"))
            if version == self._version and self._version is not None:
                return Changes()
            bans = await self._load_bans()
        except _Down:
            return Changes()
        self._version = version
        now = self.clock()
        changes = Changes(added=[b for k, b in bans.items() if k not in self._cache],
                          removed=[b for k, b in self._cache.items() if k not in bans and b.until > now])
        self._cache = bans
        return changes

    async def _connect_quietly(self) -> bool:
        try:
            await self._pipe.open()
        except (aioredis.RedisError, OSError, TimeoutError):
            return False
        return True

    async def _replay(self) -> tuple[int, int, int]:
        """What this process did while Redis was down, written now that it answers: bans made or lifted
        (they hold on every node again), and the counters and marks (an attacker's guesses during the
        outage still count toward its ban, a login that succeeded still trusts its address). Counts are
        added to whatever other nodes counted meanwhile; each key keeps the rest of its window."""
        bans = len(self._outage_bans)
        while self._outage_bans:
            key, ban = next(iter(self._outage_bans.items()))
            if ban is None:
                await self._run(self._unban, [self.k("ban:" + key), self.k("bans"), self.k("bans:ver")], [key])
            elif ban.until > self.clock():
                await self._write_ban(ban)
            del self._outage_bans[key]
        now = self.clock()
        counters = [(k, ttl - (now - t0)) for k, (ttl, t0) in self._outage_counters.items() if ttl - (now - t0) > 0]
        marks = [(k, ttl - (now - t0)) for k, (ttl, t0) in self._outage_marks.items() if ttl - (now - t0) > 0]
        values, present = await self.fallback.peek([k for k, _ in counters], [k for k, _ in marks])
        counters = [(k, n, left) for (k, left), n in zip(counters, values) if n > 0]
        marks = [(k, left) for (k, left), there in zip(marks, present) if there]
        for i in range(0, max(len(counters), len(marks)), 500):       # bounded script runs
            part_c, part_m = counters[i:i + 500], marks[i:i + 500]
            if not part_c and not part_m:
                continue
            keys = [self.k("c:" + k) for k, _, _ in part_c] + [self.k("m:" + k) for k, _ in part_m]
            args: list[Any] = [len(part_c)]
            for _, n, left in part_c:
                args += (n, _ms(left))
            args += [_ms(left) for _, left in part_m]
            await self._run(self._merge, keys, args)
        # Written: from now on Redis holds them (a fresh fallback for the next outage, not counted twice).
        self._outage_counters.clear()
        self._outage_marks.clear()
        self.fallback = MemoryStore(None, clock=self.clock)
        return len(counters), len(marks), bans

    async def close(self) -> None:
        await self._pipe.aclose()
