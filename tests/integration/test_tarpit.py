"""``server.auto-ban.tarpit``: in a storm of refusals (past ``STORM`` a second), a banned or blocked
address is refused after a random pause, unread and uncounted; a few are refused at once, other
addresses are not slowed, and the pause can be turned off."""
from __future__ import annotations

import asyncio
import time

from smtpgate.server.tarpit import STORM
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


def test_a_few_banned_connections_are_refused_at_once(tmp_path):
    config = BASE + BLOCKED + '[server.auto-ban]\ntarpit = "600ms"\n'
    with run_server(config, tmp_path) as srv:
        results = asyncio.run(_refusal_times(srv.port("smtp"), 20))
        assert {reply for _, reply in results} == {(BANNED + "\r\n").encode()}
        assert max(t for t, _ in results) < 0.25, results


def test_a_storm_of_banned_connections_is_refused_after_a_random_pause(tmp_path):
    config = BASE + BLOCKED + '[server.auto-ban]\ntarpit = "600ms"\n'
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        results = asyncio.run(_refusal_times(port, STORM + 100))
        assert {reply for _, reply in results} == {(BANNED + "\r\n").encode()}
        times = sorted(t for t, _ in results)
        held = times[STORM:]
        # Past the first STORM, uniform over [0, 600 ms): 100 draws span most of it; none waits longer
        # than the pause (+ slack).
        assert held[-1] - held[0] > 0.2, held
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
            await _refusal_times(port, STORM)                      # a storm: what comes next is held
            held = []
            for _ in range(10):                                    # more than max-connections, all held
                held.append(await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.90", 0)))
            await asyncio.sleep(0.1)
            try:
                return await asyncio.to_thread(greeting, port, "127.0.0.91")
            finally:
                for _, writer in held:
                    writer.close()
        assert asyncio.run(scenario()).startswith("220 ")


def test_tarpit_false_refuses_at_once(tmp_path):
    config = BASE + BLOCKED + '[server.auto-ban]\ntarpit = false\n'
    with run_server(config, tmp_path) as srv:
        results = asyncio.run(_refusal_times(srv.port("smtp"), STORM + 50))
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
            banned = await asyncio.gather(*(one("192.0.2.66") for _ in range(STORM + 60)))
            return banned, await one("192.0.2.67")
        banned, other = asyncio.run(scenario())
        assert {r for _, r in banned} == {(BANNED + "\r\n").encode()}
        held = sorted(t for t, _ in banned)[STORM:]
        assert held[-1] - held[0] > 0.15 and held[-1] < 1.1, held
        assert other[1].startswith(b"220 ") and other[0] < 0.3
