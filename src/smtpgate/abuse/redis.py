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

Redis down (connection refused, timeout): the first failure is logged once, every operation is then
answered by a per-process :class:`~.memory.MemoryStore` -- limits still hold, per node -- and bans made
meanwhile are kept and written to Redis when it answers again (checked twice a second). Bans already
loaded stay enforced throughout: an outage never lifts a ban, and never refuses anyone who is not banned.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config.abuse import StoreSettings
from .memory import MemoryStore
from .store import Ban, Changes, Hit, Store

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
POOL_SIZE = 16
_MAX_TTL_MS = 2_592_000_000     # 30 days: the longest any index/version key lives without a write


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class _Down(Exception):
    """Redis is known to be down: answer from the fallback without trying."""


class RedisStore(Store):
    immediate = False

    def __init__(self, settings: StoreSettings, *, clock: Callable[[], float] = time.time):
        super().__init__()
        self.settings = settings
        self.prefix = settings.prefix
        self.timeout = settings.timeout
        self.clock = clock
        self.fallback = MemoryStore(None, clock=clock)
        # A bounded pool: a burst of AUTHs queues for a connection instead of opening hundreds (whose
        # connects would time out and look like an outage). No retries: the fallback is the retry.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.urls[0], max_connections=POOL_SIZE, timeout=None, socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 0))
        self.client = aioredis.Redis(connection_pool=pool)
        self._hit = self.client.register_script(_HIT)
        self._peek = self.client.register_script(_PEEK)
        self._ban = self.client.register_script(_BAN)
        self._unban = self.client.register_script(_UNBAN)
        self.down = False
        self._cache: dict[str, Ban] = {}       # bans in force, as last read from Redis
        self._version: bytes | None = None
        self._outage_bans: dict[str, Ban | None] = {}   # changes made while down, replayed on recovery
        self.fingerprint_key = os.urandom(32)

    # -- plumbing -------------------------------------------------------------------------------------
    def k(self, name: str) -> str:
        return self.prefix + name

    async def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        if self.down:
            raise _Down()
        try:
            async with asyncio.timeout(self.timeout):
                return await fn(*args, **kw)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)
            raise _Down() from None

    def _went_down(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            log.warning("redis store %r unavailable (%s): limits are per process until it answers again",
                        self.settings.id, type(exc).__name__ if isinstance(exc, TimeoutError) else exc)

    # -- counters and marks ---------------------------------------------------------------------------
    async def hit(self, hits: Sequence[Hit], *, set_marks: Sequence[tuple[str, float]] = (),
                  check_marks: Sequence[str] = ()) -> tuple[list[tuple[int, bool]], list[bool]]:
        keys: list[str] = []
        args: list[int] = [len(hits), len(set_marks)]
        for h in hits:
            c = self.k("c:" + h.key)
            keys += [c, self.k("m:" + h.once) if h.once is not None else c]
            args += [_ms(h.ttl), h.amount]
        keys += [self.k("m:" + key) for key, _ in set_marks]
        args += [_ms(ttl) for _, ttl in set_marks]
        keys += [self.k("m:" + key) for key in check_marks]
        try:
            out = await self._call(self._hit, keys=keys, args=args)
        except _Down:
            return await self.fallback.hit(hits, set_marks=set_marks, check_marks=check_marks)
        nc = len(check_marks)
        checked = [bool(x) for x in out[:nc]]
        rest = out[nc:]
        return [(int(rest[2 * i]), bool(rest[2 * i + 1])) for i in range(len(hits))], checked

    async def peek(self, counters: Sequence[str], marks: Sequence[str] = ()) -> tuple[list[int], list[bool]]:
        keys = [self.k("c:" + c) for c in counters] + [self.k("m:" + m) for m in marks]
        try:
            out = await self._call(self._peek, keys=keys, args=[len(counters)])
        except _Down:
            return await self.fallback.peek(counters, marks)
        n = len(counters)
        return [int(x) for x in out[:n]], [bool(x) for x in out[n:]]

    async def mark(self, key: str, ttl: float) -> None:
        try:
            await self._call(self.client.set, self.k("m:" + key), b"1", px=max(1, int(ttl * 1000)))
        except _Down:
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
        await self._call(self._ban, keys=[self.k("ban:" + ban.key), self.k("bans"), self.k("bans:ver")],
                         args=[ban.key, ttl_ms, json.dumps(ban.to_json()), ban.until, now])

    async def unban(self, key: str) -> Ban | None:
        cached = self._cache.pop(key, None)
        local = await self.fallback.unban(key)
        try:
            old = await self._call(self._unban, keys=[self.k("ban:" + key), self.k("bans"), self.k("bans:ver")],
                                   args=[key])
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
        members = await self._call(self.client.zrangebyscore, self.k("bans"), now, "+inf")
        if not members:
            return {}
        names = [m.decode() for m in members]
        raws = await self._call(self.client.mget, [self.k("ban:" + n) for n in names])
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
        try:
            await self._sync_key()
            await self.refresh()
        except _Down:
            pass

    async def _sync_key(self) -> None:
        await self._call(self.client.set, self.k("hmac"), self.fingerprint_key, nx=True, px=_MAX_TTL_MS)
        key = await self._call(self.client.get, self.k("hmac"))
        if key:
            self.fingerprint_key = bytes(key)

    async def refresh(self) -> Changes:
        await self.fallback.refresh()
        if self.down:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
            except (aioredis.RedisError, OSError, TimeoutError):
                return Changes()
            self.down = False
            try:
                await self._replay()
                await self._sync_key()
            except _Down:
                return Changes()
            log.warning("redis store %r answers again: limits are shared again", self.settings.id)
        try:
            version = await self._call(self.client.get, self.k("bans:ver"))
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

    async def _replay(self) -> None:
        """Bans made or lifted while Redis was down, written now that it answers."""
        while self._outage_bans:
            key, ban = next(iter(self._outage_bans.items()))
            if ban is None:
                await self._call(self._unban, keys=[self.k("ban:" + key), self.k("bans"), self.k("bans:ver")],
                                 args=[key])
            elif ban.until > self.clock():
                await self._write_ban(ban)
            del self._outage_bans[key]

    async def close(self) -> None:
        try:
            await self.client.aclose()
            await self.client.connection_pool.disconnect()
        except Exception:  # noqa: BLE001 - closing a dead connection is best effort
            pass
