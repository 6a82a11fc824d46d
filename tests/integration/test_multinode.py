"""Several smtpgate nodes as one server (issue 11 item 7), with real processes everywhere:

    clients (127.0.0.x) -> HAProxy (send-proxy-v2, health checks) -> node A, node B (``smtpgate serve``)
                                                                       |-> PostgreSQL (internal user store)
                                                                       |-> Redis (bans, throttles, counters)

Shown here: a user added through one node logs in on the other; a ban earned through node A holds on node B
within a second; a rate throttle counts across both; a Redis outage degrades to per-process limits (logged
once) and recovers; SIGKILL of a node in the middle of a stream of messages loses none that got a 250.
The nodes see the real clients (PROXY v2), so every per-IP limit applies to them, not to HAProxy.
"""
from __future__ import annotations

import asyncio
import base64
import secrets
import smtplib
import socket
import threading
import time
import urllib.parse
from email.message import EmailMessage
from pathlib import Path

import asyncpg
import pytest

from tests.fixtures.haproxy import run_haproxy
from tests.fixtures.nodes import Node, start_node, user_cmd
from tests.fixtures.postgres import ADMIN_DSN, _admin
from tests.fixtures.redis import PrivateRedis
from tests.support import missing

pytestmark = pytest.mark.service("haproxy")

AUTH_BAN_COUNT = 4          # failed logins per IP before a ban (server.auto-ban.auth.rate)
THROTTLE_COUNT = 6          # messages per IP and period, across nodes ([[session.throttle]])

NODE_CONFIG = """
[server]
hostname = "node-{name}.test"

[server.listener.submission]
bind = ["127.0.0.1:{port}"]
proxy.trusted-networks = ["127.0.0.1/32"]

[session.auth]
mechanisms = ["plain", "login"]
lookup = "users/main"
allow-plain-text = true
require = true
errors.total = 3
errors.wait = "1ms"

[directory.main]
type = "internal"
store = "{pg}"

[queue]
path = "{tmp}/spool-{name}"
"""

ABUSE_CONFIG = """
[server.auto-ban.auth]
rate = "%d/1h"
period = "1h"

[[session.throttle]]
key = ["remote-ip"]
rate = "%d/1h"
match = { if = "remote-ip", eq = "127.0.3.0/24" }

[store.shared]
type = "redis"
urls = ["{redis}"]

[storage]
lookup = "shared"
""" % (AUTH_BAN_COUNT, THROTTLE_COUNT)


# -- the cluster ----------------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, tmp: Path, pg: str, redis, abuse: bool):
        self.tmp, self.pg, self.redis = tmp, pg, redis
        self.config = NODE_CONFIG + (ABUSE_CONFIG if abuse else "")
        self.nodes: dict[str, Node] = {}
        for name in ("a", "b"):
            self.start(name)
        self.hap_cm = run_haproxy(tmp / "haproxy", {"all": [self.nodes["a"].port, self.nodes["b"].port],
                                                    "a": [self.nodes["a"].port], "b": [self.nodes["b"].port]})
        self.hap = self.hap_cm.__enter__()

    def start(self, name: str) -> Node:
        text = self.config.replace("{name}", name).replace("{pg}", self.pg)
        if self.redis is not None:
            text = text.replace("{redis}", self.redis.url)
        self.nodes[name] = start_node(name, text, self.tmp)
        return self.nodes[name]

    def port(self, frontend: str) -> int:
        return self.hap.port(frontend)

    def spool(self, name: str) -> Path:
        return self.tmp / f"spool-{name}" / "new"

    def close(self) -> None:
        self.hap_cm.__exit__(None, None, None)
        for node in self.nodes.values():
            node.stop()


def _create_db() -> str:
    name = f"smtpgate_multinode_{secrets.token_hex(6)}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        missing(f"PostgreSQL not reachable: {type(exc).__name__}")
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(ADMIN_DSN)._replace(path=f"/{name}"))


def _cluster(tmp_path_factory, abuse: bool):
    tmp = tmp_path_factory.mktemp("multinode")
    pg = _create_db()
    redis = PrivateRedis() if abuse else None
    if redis is not None:
        redis.start()
    cluster = None
    try:
        cluster = Cluster(tmp, pg, redis, abuse)
        r = user_cmd(cluster.nodes["a"].config, "add", "alice@example.test", password="alice-pw")
        assert r.returncode == 0, r.stderr
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        if redis is not None:
            redis.stop()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{urllib.parse.urlsplit(pg).path[1:]}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from _cluster(tmp_path_factory, abuse=True)


# -- clients --------------------------------------------------------------------------------------------------

class Client:
    """A raw SMTP client from a chosen loopback source address."""

    def __init__(self, port: int, source: str, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError(lines)
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    def cmd(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def auth(self, user: str, password: str) -> str:
        self.cmd("EHLO client.test")
        return self.cmd("AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def try_login(port: int, source: str, user: str, password: str) -> str:
    """The first reply code that decides: '220'... '235'/'535', or the refusal at connect ('421'/closed)."""
    try:
        c = Client(port, source)
    except (EOFError, ConnectionError) as exc:
        return f"closed ({type(exc).__name__})"
    try:
        if not c.greeting.startswith("220"):
            return c.greeting[:3]
        return c.auth(user, password)[:3]
    except (EOFError, ConnectionError):
        return "closed"
    finally:
        c.close()


def send_message(port: int, source: str, ident: str, user: str = "alice@example.test",
                 password: str = "alice-pw", body_lines: int = 20) -> str:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = user, "bob@remote.test", ident, f"<{ident}@t>"
    msg.set_content("\n".join(f"line {i} of {ident}" for i in range(body_lines)))
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as s:
        s.login(user, password)
        refused = s.sendmail(user, ["bob@remote.test"], msg.as_bytes())   # raises unless accepted
    assert not refused
    return "250"


def spooled_ids(*dirs: Path) -> set[str]:
    out = set()
    for d in dirs:
        if d.is_dir():
            for p in d.iterdir():
                data = p.read_bytes()
                i = data.find(b"\nMessage-ID: <")
                if i >= 0:
                    out.add(data[i + 14:data.index(b"@t>", i)].decode())
    return out


def wait_until(pred, timeout: float, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


# -- the tests --------------------------------------------------------------------------------------------------

def test_user_added_through_one_node_logs_in_on_the_other(cluster: Cluster) -> None:
    # alice was added with node A's configuration (the fixture); bob now through node B's.
    assert try_login(cluster.port("b"), "127.0.2.1", "alice@example.test", "alice-pw") == "235"
    r = user_cmd(cluster.nodes["b"].config, "add", "bob@example.test", password="bob-pw")
    assert r.returncode == 0, r.stderr
    assert try_login(cluster.port("a"), "127.0.2.1", "bob@example.test", "bob-pw") == "235"
    assert try_login(cluster.port("a"), "127.0.2.1", "bob@example.test", "wrong") == "535"
    r = user_cmd(cluster.nodes["a"].config, "passwd", "bob@example.test", password="bob-pw2")
    assert r.returncode == 0, r.stderr
    assert try_login(cluster.port("b"), "127.0.2.1", "bob@example.test", "bob-pw2") == "235"


def test_ban_earned_on_node_a_holds_on_node_b_within_a_second(cluster: Cluster) -> None:
    attacker = "127.0.1.1"
    for i in range(AUTH_BAN_COUNT):
        assert try_login(cluster.port("a"), attacker, f"victim{i}@example.test", "guess") == "535"
    t0 = time.monotonic()
    # At once, through the shared store: not even the right password logs in from the banned address ...
    assert try_login(cluster.port("b"), attacker, "alice@example.test", "alice-pw") != "235"
    # ... and within a second B refuses its connections before the greeting (its copy of the ban list).
    refused = wait_until(lambda: try_login(cluster.port("b"), attacker, "alice@example.test", "alice-pw")
                         not in ("235", "535"), timeout=1.0, step=0.05)
    assert refused, "the ban earned on A must hold on B"
    assert time.monotonic() - t0 <= 1.0
    assert try_login(cluster.port("a"), attacker, "alice@example.test", "alice-pw") != "235"
    # Another address is unaffected.
    assert try_login(cluster.port("all"), "127.0.1.2", "alice@example.test", "alice-pw") == "235"
    assert wait_until(lambda: any(attacker in line and "ban" in line.lower() for line in
                                  cluster.nodes["a"].log().splitlines()), 2), cluster.nodes["a"].log()[-3000:]


def test_throttle_counts_across_both_nodes(cluster: Cluster) -> None:
    source = "127.0.3.1"
    codes = []
    for i in range(THROTTLE_COUNT + 2):
        frontend = "a" if i % 2 == 0 else "b"
        try:
            codes.append(send_message(cluster.port(frontend), source, f"thr-{i}-{secrets.token_hex(4)}"))
        except smtplib.SMTPResponseException as exc:      # refused at connect, MAIL or DATA
            codes.append(f"{exc.smtp_code} {exc.smtp_error.decode()[:5]}")
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            codes.append(f"{code} {text.decode()[:5]}")
    assert codes[:THROTTLE_COUNT] == ["250"] * THROTTLE_COUNT, codes
    # Over the rate, whichever node is asked: 451 4.4.5 (421 4.4.5 when refused at connect).
    assert all(c in ("451 4.4.5", "421 4.4.5") for c in codes[THROTTLE_COUNT:]), codes
    # A different address has its own budget.
    assert send_message(cluster.port("all"), "127.0.3.2", f"thr-other-{secrets.token_hex(4)}") == "250"


def test_redis_outage_degrades_and_recovers(cluster: Cluster) -> None:
    redis = cluster.redis
    redis.stop()
    # Meanwhile: per-process limits. Each node counts on its own, so an attacker hitting only node A is
    # banned there after AUTH_BAN_COUNT failures -- never "no limits", never "refuse everyone".
    attacker = "127.0.4.1"
    for i in range(AUTH_BAN_COUNT):
        assert try_login(cluster.port("a"), attacker, f"v{i}@example.test", "guess") == "535"
    assert wait_until(lambda: try_login(cluster.port("a"), attacker, "alice@example.test", "alice-pw")
                      not in ("235", "535"), 2.0, 0.1), "per-process limit while Redis is down"
    assert try_login(cluster.port("all"), "127.0.4.2", "alice@example.test", "alice-pw") == "235"
    assert try_login(cluster.port("b"), "127.0.4.3", "alice@example.test", "alice-pw") == "235"
    for name in ("a", "b"):
        log = cluster.nodes[name].log().lower()
        assert log.count("redis") >= 1, log[-2000:]
    lines_down = {name: sum("redis" in line.lower() and ("down" in line.lower() or "unavailable" in line.lower()
                                                          or "fall" in line.lower())
                            for line in cluster.nodes[name].log().splitlines()) for name in ("a", "b")}
    assert all(n == 1 for n in lines_down.values()), lines_down          # logged once, not per request
    redis.start()
    # Shared again: a ban earned on B holds on A.
    attacker = "127.0.4.9"

    def earn_and_check() -> bool:
        for i in range(AUTH_BAN_COUNT):
            try_login(cluster.port("b"), attacker, f"w{i}@example.test", "guess")
        return try_login(cluster.port("a"), attacker, "alice@example.test", "alice-pw") not in ("235", "535")
    assert wait_until(earn_and_check, 10.0, 0.5), "shared limits after Redis returned"
    assert try_login(cluster.port("all"), "127.0.4.10", "alice@example.test", "alice-pw") == "235"


def test_sigkill_mid_stream_loses_no_acknowledged_message(cluster: Cluster) -> None:
    acked: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def sender(k: int) -> None:
        n = 0
        while not stop.is_set():
            ident = f"kill-{k}-{n}-{secrets.token_hex(3)}"
            n += 1
            try:
                code = send_message(cluster.port("all"), f"127.0.5.{k + 1}", ident, body_lines=400)
            except (smtplib.SMTPException, OSError):
                continue            # a session cut by the kill: not acknowledged, may be retried
            if code == "250":
                with lock:
                    acked.append(ident)

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(6)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(acked) >= 20, 60), "messages flow through both nodes"
    # One message certainly in the middle of its DATA on node A when it dies.
    half = Client(cluster.port("a"), "127.0.5.99")
    assert half.auth("alice@example.test", "alice-pw").startswith("235")
    assert half.cmd("MAIL FROM:<alice@example.test>").startswith("250")
    assert half.cmd("RCPT TO:<bob@remote.test>").startswith("250")
    assert half.cmd("DATA").startswith("354")
    half.sock.sendall(b"Message-ID: <kill-half@t>\r\nSubject: half\r\n\r\n" + b"x" * 5000 + b"\r\n")
    time.sleep(0.1)
    cluster.nodes["a"].kill()
    with pytest.raises((EOFError, ConnectionError)):
        half.sock.sendall(b"the rest\r\n.\r\n")
        half.reply()            # never a 250 for a message that died with its node
    half.close()
    killed_at = len(acked)
    assert wait_until(lambda: len(acked) >= killed_at + 20, 60), "node B carries on alone"
    stop.set()
    for t in threads:
        t.join(20)
    on_a, on_b = spooled_ids(cluster.spool("a")), spooled_ids(cluster.spool("b"))
    assert on_a and on_b, "both nodes took messages before the kill"
    lost = set(acked) - on_a - on_b
    assert not lost, f"{len(lost)} acknowledged messages lost: {sorted(lost)[:5]}"
    assert "kill-half" not in on_a | on_b, "an unacknowledged message is not a spooled one"
    cluster.start("a")      # leave the cluster whole for whatever runs after
