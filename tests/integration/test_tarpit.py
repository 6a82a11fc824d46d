"""``server.auto-ban.tarpit``: a burst of connections from banned or blocked addresses is refused after
random pauses, unread and uncounted; one at a time they are refused at once, other addresses are not
slowed, and the pause can be turned off."""
from __future__ import annotations

import asyncio
import time

from tests.fixtures.abuse_client import BANNED, BASE, greeting
from tests.fixtures.server import listeners, run_server

BLOCKED = '[server.blocked-ip]\n"127.0.0.90" = ""\n'


async def _refusal_times(port: int, n: int) -> list[tuple[float, bytes]]:
    async def one() -> tuple[float, bytes]:
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.90", 0))
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            rest = await asyncio.wait_for(reader.read(), 10)         # then the server closes
            return time.monotonic() - start, line + rest
        finally:
            writer.close()
    return await asyncio.gather(*(one() for _ in range(n)))


def test_banned_connections_one_at_a_time_are_refused_at_once(tmp_path):
    config = BASE + BLOCKED + '[server.auto-ban]\ntarpit = "600ms"\n'
    with run_server(config, tmp_path) as srv:
        async def one_by_one() -> list[tuple[float, bytes]]:
            return [(await _refusal_times(srv.port("smtp"), 1))[0] for _ in range(100)]
        results = asyncio.run(one_by_one())
        assert {reply for _, reply in results} == {(BANNED + "\r\n").encode()}
        assert sum(t for t, _ in results) < 3, results       # held ones would take 0.3 s each on average


def test_a_storm_of_banned_connections_is_refused_after_a_random_pause(tmp_path):
    config = BASE + BLOCKED + '[server.auto-ban]\ntarpit = "600ms"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        results = asyncio.run(_refusal_times(port, 150))
        assert {reply for _, reply in results} == {(BANNED + "\r\n").encode()}
        times = sorted(t for t, _ in results)
        # 150 connections at once reach the server in a few loop turns: most are held, for a random part
        # of 600 ms, so the refusals spread over most of it; none waits longer than the pause (+ slack).
        assert times[-1] - times[0] > 0.2, times
        assert times[-1] < 0.6 + 0.5, times
        # Everybody else is greeted at once.
        start = time.monotonic()
        assert greeting(port, "127.0.0.91").startswith("220 ")
        assert time.monotonic() - start < 0.3


def test_held_connections_do_not_count_toward_max_connections(tmp_path):
    config = BASE.replace(listeners("smtp"), listeners("smtp", options={"smtp": "max-connections = 3"})) \
        + BLOCKED + '[server.auto-ban]\ntarpit = "3s"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")

        async def scenario() -> str:
            # A burst of 30 from the banned address (more than max-connections): most of it is held.
            held = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.90", 0))
                                          for _ in range(30)))
            await asyncio.sleep(0.1)
            assert srv.server.tarpit.held > 3                      # more held than max-connections
            try:
                return await asyncio.to_thread(greeting, port, "127.0.0.91")
            finally:
                for _, writer in held:
                    writer.close()
        assert asyncio.run(scenario()).startswith("220 ")


def test_tarpit_false_refuses_at_once(tmp_path):
    config = BASE + BLOCKED + '[server.auto-ban]\ntarpit = false\n'
    with run_server(config, tmp_path) as srv:
        results = asyncio.run(_refusal_times(srv.port("smtp"), 150))
        assert {reply for _, reply in results} == {(BANNED + "\r\n").encode()}
        assert max(t for t, _ in results) < 0.5, results


def test_the_proxy_listener_holds_a_banned_client_too(tmp_path):
    """Behind a load balancer (PROXY protocol) the address is the header's, and the pause applies to it."""
    config = BASE.replace(listeners("smtp"), listeners(
        "smtp", options={"smtp": 'proxy.trusted-networks = ["127.0.0.1/32"]'})) \
        + '[server.blocked-ip]\n"192.0.2.66" = ""\n[server.auto-ban]\ntarpit = "600ms"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")

        async def one(client: str) -> tuple[float, bytes]:
            start = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n".encode())   # v1: one line
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                return time.monotonic() - start, line
            finally:
                writer.close()

        async def scenario() -> tuple[list, tuple]:
            banned = await asyncio.gather(*(one("192.0.2.66") for _ in range(100)))
            return banned, await one("192.0.2.67")
        banned, other = asyncio.run(scenario())
        assert {r for _, r in banned} == {(BANNED + "\r\n").encode()}
        times = sorted(t for t, _ in banned)
        assert times[-1] - times[0] > 0.15 and times[-1] < 1.1, times
        assert other[1].startswith(b"220 ") and other[0] < 0.3
