"""Two servers sharing Redis (the machine's, under a unique key prefix): a ban earned through one holds on
the other within a second, a rate throttle counts across both; and a server whose Redis dies keeps
limiting (per process), refuses nobody else, and shares again once Redis is back -- with what it counted
meanwhile (bans, counters, trust marks) written to Redis."""
from __future__ import annotations

import time

from tests.fixtures.abuse_client import BANNED, BASE, INVALID, Client, greeting, login
from tests.fixtures.redis import keys_with_prefix, private_redis, redis_prefix  # noqa: F401
from tests.fixtures.server import run_server


def shared(url: str, prefix: str, extra: str = "") -> str:
    return BASE + f'''
[store.shared]
type = "redis"
urls = ["{url}"]
prefix = "{prefix}"
timeout = "300ms"

[storage]
lookup = "shared"
''' + extra


def test_a_ban_through_one_node_holds_on_the_other_within_a_second(tmp_path, redis_prefix):
    config = shared("redis://127.0.0.1:6379", redis_prefix, '[server.auto-ban]\nauth.rate = "2/1h"\n')
    with run_server(config, tmp_path / "a") as a, run_server(config, tmp_path / "b") as b:
        pa, pb = a.port("smtp"), b.port("smtp")
        assert login(pa, "127.0.0.70", "john@local.test", "x1") == INVALID
        assert login(pb, "127.0.0.70", "john@local.test", "x2") == INVALID     # counted across nodes: banned
        t0 = time.monotonic()
        while greeting(pa, "127.0.0.70") != BANNED:
            assert time.monotonic() - t0 < 1.0, "node A did not apply node B's ban within 1 s"
            time.sleep(0.05)
        assert greeting(pb, "127.0.0.70") == BANNED
        assert login(pa, "127.0.0.71", "mary@local.test", "hunter2").startswith("235 ")
        assert any("ban 127.0.0.70 reason=auth" in line and "made elsewhere" in line for line in a.logs)
    keys = keys_with_prefix(redis_prefix)
    assert keys and all(ttl > 0 for ttl in keys.values()), keys


def test_a_rate_throttle_counts_across_nodes(tmp_path, redis_prefix):
    config = shared("redis://127.0.0.1:6379", redis_prefix,
                    '[[session.throttle]]\nkey = ["sender"]\nrate = "3/1m"\n')
    with run_server(config, tmp_path / "a") as a, run_server(config, tmp_path / "b") as b:
        replies = []
        for port in (a.port("smtp"), b.port("smtp"), a.port("smtp"), b.port("smtp")):
            c = Client(port, "127.0.0.72")
            c.cmd("EHLO c.test")
            replies.append(c.cmd("MAIL FROM:<bulk@remote.test>")[:3])
            c.close()
        assert replies == ["250", "250", "250", "451"]


def test_redis_outage_degrades_to_per_process_limits_and_recovers(tmp_path, private_redis):
    config = shared(private_redis.url, "outage:", '[server.auto-ban]\nauth.rate = "2/1h"\n')
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        assert login(port, "127.0.0.80", "john@local.test", "x1") == INVALID
        assert login(port, "127.0.0.80", "john@local.test", "x2") == INVALID
        assert greeting(port, "127.0.0.80") == BANNED                   # banned while Redis was up
        private_redis.stop()
        # still banned, others still served, new attackers still limited (per process)
        assert greeting(port, "127.0.0.80") == BANNED
        assert login(port, "127.0.0.81", "john@local.test", "secret").startswith("235 ")
        assert login(port, "127.0.0.82", "john@local.test", "y1") == INVALID
        assert login(port, "127.0.0.82", "john@local.test", "y2") == INVALID
        assert greeting(port, "127.0.0.82") == BANNED
        assert sum("unavailable" in line for line in srv.logs) == 1     # logged once
        private_redis.start()
        t0 = time.monotonic()
        while not any("limits are shared again" in line for line in srv.logs):
            assert time.monotonic() - t0 < 3.0, srv.logs
            time.sleep(0.05)
        assert greeting(port, "127.0.0.82") == BANNED                   # the outage's ban, now in Redis
        assert login(port, "127.0.0.83", "mary@local.test", "hunter2").startswith("235 ")
        import redis
        client = redis.Redis(port=private_redis.port)
        assert client.zscore("outage:bans", "127.0.0.82") is not None
        # What the node counted meanwhile is shared now too (Redis restarted empty): the successful login
        # of the outage trusts its address on every node, the failures of 127.0.0.82 count toward its limit.
        assert list(client.scan_iter(match="outage:m:a:trust:127.0.0.81:*")), "trust mark not written back"
        assert client.get("outage:c:a:ip:127.0.0.82") == b"2"
        client.close()
