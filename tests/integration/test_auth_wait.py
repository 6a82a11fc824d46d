"""``errors.wait`` delays only the failing session (1 000 of them waiting slow nobody down), and an
unknown user cannot be told from a wrong password, by reply or by timing."""
from __future__ import annotations

import asyncio
import resource
import statistics
import time

import pytest

from smtpgate.lookup.secrets import hash_password
from tests.fixtures.server import SERVER_HEAD, listeners, run_server
from tests.fixtures.auth_session import INVALID, OK, doveadm_pw, plain_ir
from tests.support import missing

BAD_CLIENTS = 1000
WAIT = 2.0


async def _bad_client(port: int, user: str, ready: asyncio.Event, results: list[tuple[float, bytes]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()                                       # greeting
        writer.write(f"EHLO bad.test\r\nAUTH PLAIN {plain_ir(user, 'wrong')}\r\n".encode())
        sent = time.monotonic()
        while not (await reader.readline()).startswith(b"250 "):      # EHLO reply
            pass
        ready.set()
        reply = await asyncio.wait_for(reader.readline(), WAIT + 30)
        results.append((time.monotonic() - sent, reply))
    finally:
        writer.close()


async def _good_client(port: int, user: str, password: str) -> float:
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        writer.write(b"EHLO good.test\r\n")
        while not (await reader.readline()).startswith(b"250 "):
            pass
        writer.write(f"AUTH PLAIN {plain_ir(user, password)}\r\n".encode())
        assert (await reader.readline()) == (OK + "\r\n").encode()
        writer.write(b"QUIT\r\n")
        assert (await reader.readline()).startswith(b"221 ")
        return time.monotonic() - start
    finally:
        writer.close()


@pytest.fixture
def enough_file_descriptors():
    """Both ends of 1 000 connections live in this process: raise a low soft limit (1 024 on some hosts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * BAD_CLIENTS + 512
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            missing(f"RLIMIT_NOFILE hard limit {hard} < {want} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_thousand_sessions_in_their_wait_do_not_delay_a_good_client(tmp_path, enough_file_descriptors):
    config = SERVER_HEAD + listeners("smtp") + f"""
[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
total = 3
wait = "{int(WAIT)}s"
[list]
users = ["good@example.org:good-pw", "bad@example.org:bad-pw"]
"""
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")

        def waiting() -> int:
            return sum(1 for line in list(srv.logs) if "result=invalid" in line)

        async def scenario() -> tuple[list[float], list[tuple[float, bytes]]]:
            results: list[tuple[float, bytes]] = []
            tasks = []
            for _ in range(0, BAD_CLIENTS, 100):                      # batches keep under the listen backlog
                events = [asyncio.Event() for _ in range(100)]
                tasks += [asyncio.create_task(_bad_client(port, "bad@example.org", e, results))
                          for e in events]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 20)
            # Every bad session has been judged (logged before its wait) and sits in errors.wait now.
            deadline = time.monotonic() + 10
            while waiting() < BAD_CLIENTS and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert waiting() == BAD_CLIENTS
            assert not results, "a failure reply came before errors.wait was over"
            good = [await _good_client(port, "good@example.org", "good-pw") for _ in range(3)]
            await asyncio.gather(*tasks)
            return good, results

        good, results = asyncio.run(scenario())
        delays = [d for d, _ in results]
        deadline = time.monotonic() + 5
        while srv.server.connection_count and time.monotonic() < deadline:   # all sessions wound down
            time.sleep(0.01)
        assert srv.server.connection_count == 0
    print(f"good sessions took {[round(g * 1000, 1) for g in good]} ms; bad waits "
          f"{min(delays):.3f}..{max(delays):.3f} s")
    assert max(good) < 0.5, good                                      # typically a few ms
    assert len(results) == BAD_CLIENTS
    assert all(reply == (INVALID + "\r\n").encode() for _, reply in results)
    assert min(delays) >= WAIT - 0.05, min(delays)                   # each waited its full errors.wait
    # ... concurrently: 1 000 sequential waits would take 2 000 s, not a few seconds.
    assert max(delays) < WAIT + 5, max(delays)


@pytest.mark.parametrize("scheme", ["argon2id", "SHA512-CRYPT"])
def test_unknown_user_and_wrong_password_look_the_same(tmp_path, scheme):
    def stored(password: str) -> str:
        return hash_password(password) if scheme == "argon2id" else doveadm_pw(scheme, password)

    config = SERVER_HEAD + listeners("smtp") + f"""
[session.auth]
mechanisms = ["plain", "login"]
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
total = 100
wait = "1ms"
[list]
users = ["a@example.org:{stored('a-pw')}", "b@example.org:{stored('b-pw')}"]
"""
    with run_server(config, tmp_path) as srv:
        async def attempt(user: str) -> tuple[float, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port("smtp"))
            try:
                await reader.readline()
                writer.write(b"EHLO t.test\r\n")
                while not (await reader.readline()).startswith(b"250 "):
                    pass
                start = time.perf_counter()
                writer.write(f"AUTH PLAIN {plain_ir(user, 'not-the-password')}\r\n".encode())
                reply = await reader.readline()
                return time.perf_counter() - start, reply
            finally:
                writer.close()

        async def measure() -> tuple[list[float], list[float], set[bytes]]:
            known, unknown, replies = [], [], set()
            await attempt("b@example.org")                           # warm-up (executor threads, caches)
            for _ in range(9):                                        # interleaved, one at a time
                for user, into in (("b@example.org", known), ("nobody@example.org", unknown)):
                    took, reply = await attempt(user)
                    into.append(took)
                    replies.add(reply)
            return known, unknown, replies

        known, unknown, replies = asyncio.run(measure())
    assert replies == {(INVALID + "\r\n").encode()}
    ratio = statistics.median(unknown) / statistics.median(known)
    print(f"{scheme}: median wrong password {statistics.median(known) * 1000:.1f} ms, "
          f"unknown user {statistics.median(unknown) * 1000:.1f} ms")
    # Generous bounds against a busy CI box; an unknown user skipping the hash would be ~100x faster.
    assert 0.5 < ratio < 2.0, (ratio, known, unknown)
