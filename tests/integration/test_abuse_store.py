"""The store contract, run against the in-memory store and against the real Redis on 127.0.0.1:6379
(each test under its own key prefix, deleted afterwards); then what only Redis has: every key expires,
atomicity under concurrent hits, and an outage (a private redis-server killed and restarted)."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest

from smtpgate.abuse.memory import MemoryStore
from smtpgate.abuse.redis import RedisStore
from smtpgate.abuse.store import Ban, Hit
from smtpgate.config.abuse import StoreSettings
from tests.fixtures.redis import keys_with_prefix, private_redis, redis_prefix  # noqa: F401


@pytest.fixture(params=["memory", "redis"])
async def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryStore(str(tmp_path / "bans.json"))
    else:
        prefix = request.getfixturevalue("redis_prefix")
        s = RedisStore(StoreSettings("r", "redis", ["redis://127.0.0.1:6379"], prefix=prefix))
    await s.start()
    yield s
    await s.close()


async def test_hit_counts_within_a_window_and_expires(store):
    (a,), _ = await store.hit([Hit("k", 0.3)])
    (b,), _ = await store.hit([Hit("k", 0.3)])
    assert a == (1, True) and b == (2, True)
    assert (await store.peek(["k", "other"]))[0] == [2, 0]
    await asyncio.sleep(0.45)
    (c,), _ = await store.hit([Hit("k", 0.3)])
    assert c == (1, True)                      # a new window


async def test_once_marks_count_the_same_thing_once_and_undo_clears_them(store):
    r1, _ = await store.hit([Hit("ip", 10, once="fp1")])
    r2, _ = await store.hit([Hit("ip", 10, once="fp1")])
    r3, _ = await store.hit([Hit("ip", 10, once="fp2")])
    assert [r1[0], r2[0], r3[0]] == [(1, True), (1, False), (2, True)]
    undo, _ = await store.hit([Hit("ip", 10, once="fp2", amount=-1)])
    assert undo[0][0] == 1
    again, _ = await store.hit([Hit("ip", 10, once="fp2")])
    assert again[0] == (2, True)               # the mark was cleared with the undo


async def test_marks_are_checked_before_being_set(store):
    _, checked = await store.hit([], set_marks=[("trust", 10)], check_marks=["trust"])
    assert checked == [False]
    _, checked = await store.hit([], check_marks=["trust", "nope"])
    assert checked == [True, False]
    await store.mark("m2", 0.2)
    assert (await store.peek([], ["m2"]))[1] == [True]
    await asyncio.sleep(0.35)
    assert (await store.peek([], ["m2"]))[1] == [False]


async def test_bans_are_listed_checked_and_lifted(store):
    now = time.time()
    await store.ban(Ban("192.0.2.7", now + 60, "auth", now, {"auth": 100}))
    await store.ban(Ban("192.0.2.8", now + 0.2, "scan", now, {"scan": 30}))
    assert store.banned("192.0.2.7", time.time()).reason == "auth"
    keys = {b.key: b for b in await store.bans()}
    assert set(keys) == {"192.0.2.7", "192.0.2.8"} and keys["192.0.2.7"].counts == {"auth": 100}
    await asyncio.sleep(0.3)
    assert store.banned("192.0.2.8", time.time()) is None
    assert {b.key for b in await store.bans()} == {"192.0.2.7"}
    lifted = await store.unban("192.0.2.7")
    assert lifted is not None and lifted.reason == "auth"
    assert store.banned("192.0.2.7", time.time()) is None
    assert await store.bans() == []
    assert await store.unban("192.0.2.7") is None


async def test_concurrency_slots_are_per_process(store):
    assert store.acquire("t0:1.2.3.4", 2) and store.acquire("t0:1.2.3.4", 2)
    assert not store.acquire("t0:1.2.3.4", 2)
    store.release("t0:1.2.3.4")
    assert store.acquire("t0:1.2.3.4", 2)


# -- Redis only ------------------------------------------------------------------------------------------
def _redis(prefix: str, url: str = "redis://127.0.0.1:6379", timeout: float = 0.5) -> RedisStore:
    return RedisStore(StoreSettings("r", "redis", [url], prefix=prefix, timeout=timeout))


async def test_every_redis_key_expires_and_carries_the_prefix(redis_prefix):
    s = _redis(redis_prefix)
    await s.start()
    await s.hit([Hit("a", 60, once="b")], set_marks=[("c", 60)])
    await s.ban(Ban("192.0.2.9", time.time() + 60, "auth", time.time(), {"auth": 3}))
    await s.unban("192.0.2.9")
    await s.ban(Ban("192.0.2.10", time.time() + 60, "abuse", time.time(), {}))
    await s.close()
    keys = keys_with_prefix(redis_prefix)
    assert len(keys) >= 6, keys
    assert all(ttl > 0 for ttl in keys.values()), keys   # -1 would be a key without expiry


async def test_concurrent_hits_are_atomic(redis_prefix):
    stores = [_redis(redis_prefix, timeout=10.0) for _ in range(4)]    # atomicity, not latency, is tested
    for s in stores:
        await s.start()
    await asyncio.gather(*(s.hit([Hit("n", 60)]) for s in stores for _ in range(50)))
    assert (await stores[0].peek(["n"]))[0] == [200]
    for s in stores:
        await s.close()


async def test_a_ban_through_one_node_is_seen_by_another_within_a_second(redis_prefix):
    a, b = _redis(redis_prefix), _redis(redis_prefix)
    await a.start()
    await b.start()
    await a.ban(Ban("198.51.100.1", time.time() + 60, "auth", time.time(), {"auth": 100}))
    changes = await b.refresh()          # the guard calls this every 0.5 s
    assert [x.key for x in changes.added] == ["198.51.100.1"]
    assert b.banned("198.51.100.1", time.time()) is not None
    await a.unban("198.51.100.1")
    changes = await b.refresh()
    assert [x.key for x in changes.removed] == ["198.51.100.1"]
    assert b.banned("198.51.100.1", time.time()) is None
    assert a.fingerprint_key == b.fingerprint_key       # one shared HMAC key: same creds count once
    await a.close()
    await b.close()


async def test_redis_outage_falls_back_per_process_logs_once_and_recovers(private_redis, caplog):
    caplog.set_level(logging.WARNING, logger="smtpgate.abuse")
    s = _redis("outage:", private_redis.url, timeout=0.3)
    await s.start()
    await s.ban(Ban("203.0.113.1", time.time() + 60, "auth", time.time(), {"auth": 100}))
    (r,), _ = await s.hit([Hit("k", 60)])
    assert r == (1, True) and not s.down

    private_redis.stop()
    t0 = time.monotonic()
    results = [await s.hit([Hit("k", 60)]) for _ in range(5)]
    assert time.monotonic() - t0 < 2.0                    # one failed try, then the fallback answers at once
    assert s.down
    assert [r[0][0][0] for r in results] == [1, 2, 3, 4, 5]  # limits still count (per process)
    assert s.banned("203.0.113.1", time.time()) is not None  # an outage never lifts a ban
    await s.ban(Ban("203.0.113.2", time.time() + 60, "scan", time.time(), {"scan": 30}))
    assert s.banned("203.0.113.2", time.time()) is not None
    assert s.banned("203.0.113.3", time.time()) is None      # and never refuses the others
    await s.hit([Hit("ip", 60, once="fp")], set_marks=[("trust", 60)])
    s.hit_soon([], set_marks=[("trust2", 60)])                # fire-and-forget while down: the fallback
    assert (await s.peek(["ip"], ["fp", "trust", "trust2"])) == ([1], [True, True, True])
    down_lines = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(down_lines) == 1

    private_redis.start()
    await s.refresh()
    assert not s.down
    assert any("limits are shared again" in r.getMessage() for r in caplog.records)
    other = _redis("outage:", private_redis.url)
    await other.start()
    assert {b.key for b in await other.bans()} == {"203.0.113.2"}   # the outage's ban was written back
    # so were its counters and marks (Redis restarted empty): what was counted meanwhile still counts
    assert await other.peek(["k", "ip"], ["fp", "trust", "trust2"]) == ([5, 1], [True, True, True])
    ttls = keys_with_prefix("outage:", private_redis.port)
    assert 0 < ttls[b"outage:c:k"] <= 60_000 and 0 < ttls[b"outage:m:trust"] <= 60_000
    (r,), _ = await s.hit([Hit("k", 60)])
    assert r == (6, True)                                 # shared counting again, on top of the outage's
    await other.close()
    await s.close()


async def test_commands_issued_together_share_one_write(private_redis):
    """One connection per process, pipelined: what many sessions ask in the same turn of the event loop
    goes to Redis in one write (the reason a Redis-backed AUTH is cheap under load), answers in order."""
    s = _redis("pipe:", private_redis.url, timeout=5.0)
    await s.start()
    writes = s._pipe.writes
    results = await asyncio.gather(*(s.hit([Hit(f"k{i % 7}", 60)]) for i in range(210)))
    assert s._pipe.writes - writes <= 3, s._pipe.writes - writes
    assert sorted(r[0][0][0] for r in results) == sorted(n for _ in range(7) for n in range(1, 31))
    assert (await s.peek([f"k{i}" for i in range(7)]))[0] == [30] * 7
    await s.close()


async def test_a_redis_that_stops_answering_times_out_into_the_fallback(private_redis, caplog):
    """Accepting but silent (SIGSTOP): each command in flight is answered by the fallback once the store's
    timeout passes, one line is logged, and a Redis that answers again is used again."""
    import os
    import signal
    caplog.set_level(logging.WARNING, logger="smtpgate.abuse")
    s = _redis("stop:", private_redis.url, timeout=0.3)
    await s.start()
    assert (await s.hit([Hit("k", 60)]))[0] == [(1, True)]
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        results = await asyncio.gather(*(s.hit([Hit("k", 60)]) for _ in range(3)))
        assert time.monotonic() - t0 < 1.5
        assert s.down and sorted(r[0][0][0] for r in results) == [1, 2, 3]      # per process meanwhile
        assert (await s.hit([Hit("k", 60)]))[0] == [(4, True)]                  # no waiting once known down
        assert await s.refresh() is not None and s.down                         # still silent: stays down
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    await s.refresh()
    assert not s.down
    assert [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()] == [
        "redis store 'r' unavailable (no answer): limits are per process until it answers again"]
    # Redis got the 3 hits that timed out (it was only slow) and the 4 from the outage: counted again, +1.
    assert (await s.hit([Hit("k", 60)]))[0][0][0] >= 6
    await s.close()


async def test_scripts_are_sent_again_after_a_script_flush(private_redis):
    """A restarted (or flushed) Redis no longer knows the scripts: the store sends their text once and
    carries on, without counting it as an outage -- also for a fire-and-forget update."""
    import redis
    s = _redis("flush:", private_redis.url)
    await s.start()
    await s.hit([Hit("k", 60)])
    admin = redis.Redis(port=private_redis.port)
    admin.script_flush()
    assert (await s.hit([Hit("k", 60)]))[0] == [(2, True)]
    admin.script_flush()
    s.hit_soon([Hit("k", 60, amount=-1)], set_marks=[("t", 60)])
    for _ in range(50):
        if admin.exists("flush:m:t"):
            break
        await asyncio.sleep(0.02)
    assert admin.get("flush:c:k") == b"1" and admin.exists("flush:m:t") and not s.down
    admin.close()
    await s.close()
