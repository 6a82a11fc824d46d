"""Where accepted mail goes (SPEC §6, issue 5): the next hop over LMTP (a real Dovecot delivering into a
Maildir) and SMTP (aiosmtpd, an independent server), failures of the next hop, and the library hand-off."""
from __future__ import annotations

import asyncio
import base64
import threading
import time
import uuid
from pathlib import Path

import pytest

import smtpgate
from smtpgate.delivery.spool import read_message
from tests.fixtures.dovecot import DovecotServer, black_hole, dovecot, dovecot_session  # noqa: F401
from tests.fixtures.server import SERVER_HEAD, listeners, run_server
from tests.support import free_port
from tests.smtpclient import Raw, client_tls
from tests.support import free_port

NEXT_HOP_DOWN = "451 4.4.1 Next hop unavailable, try again later"

BASE = SERVER_HEAD + listeners("smtp", "submission", "lmtp", options={"lmtp": 'protocol = "lmtp"'}) + """
[session.auth]
mechanisms = [ { if = "listener", eq = "submission", then = ["plain"] }, { else = [] } ]
lookup = "list/users"
[session.auth.errors]
wait = "1ms"

[session.rcpt.lookup]
domains = "list/domains"

[list]
users = ["john@local.test:secret"]
domains = ["local.test", "example.test"]
"""


def lmtp_config(lmtp_port: int, down_port: int = 0, hole_port: int = 0) -> str:
    # The next hop is an if-block on the sender's domain, so one server covers up, down and hanging.
    return BASE + f"""
[remote.dovecot]
address = "127.0.0.1"
port = {lmtp_port}
protocol = "lmtp"
timeout = "5s"

[remote.down]
address = "127.0.0.1"
port = {down_port or free_port()}
protocol = "lmtp"
timeout = "2s"

[remote.hole]
address = "127.0.0.1"
port = {hole_port or free_port()}
protocol = "lmtp"
timeout = "1s"

[queue.outbound]
next-hop = [ {{ if = "sender-domain", eq = "down.test", then = "remote/down" }},
             {{ if = "sender-domain", eq = "hole.test", then = "remote/hole" }},
             {{ else = "remote/dovecot" }} ]
"""


def maildir_messages(dovecot: DovecotServer, user: str) -> list[bytes]:
    root = dovecot.maildir_root / user
    return [p.read_bytes() for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()]


def delivered(dovecot: DovecotServer, user: str, token: str) -> list[bytes]:
    return [m for m in maildir_messages(dovecot, user) if token.encode() in m]


def message(token: str) -> bytes:
    return (f"From: John <john@local.test>\r\nSubject: {token}\r\nMessage-ID: <{token}@local.test>\r\n\r\n"
            f"Hello {token}\r\n..line starting with a dot\r\n.\r\n").encode()  # dot-stuffed on the wire


def transaction(c: Raw, sender: str, rcpts: list[str], body: bytes) -> str:
    assert c.cmd(f"MAIL FROM:<{sender}>").startswith("250")
    for r in rcpts:
        assert c.cmd(f"RCPT TO:<{r}>").startswith("250"), r
    assert c.cmd("DATA").startswith("354")
    return c.cmd(body)


def submission_session(srv) -> Raw:
    c = Raw(srv.port("submission"))
    assert c.cmd("EHLO client.test").startswith("250")
    assert c.cmd("STARTTLS").startswith("220")
    c.starttls(client_tls(srv.ca_file))
    assert c.cmd("EHLO client.test").startswith("250")
    ir = base64.b64encode(b"\0john@local.test\0secret").decode()
    assert c.cmd(f"AUTH PLAIN {ir}").startswith("235")
    return c


# --- LMTP next hop: a real Dovecot ------------------------------------------------------------------
def test_lmtp_next_hop_delivers_into_maildir(tmp_path: Path, dovecot: DovecotServer) -> None:
    token = uuid.uuid4().hex
    with run_server(lmtp_config(dovecot.lmtp_port), tmp_path) as srv:
        c = submission_session(srv)
        reply = transaction(c, "john@local.test", ["alice@example.test", "Bob@Example.Test"], message(token))
        assert reply.startswith("250 2.0.0"), reply
        c.close()
        assert srv.spool_files() == []            # handed on, not spooled
    for user in ("alice@example.test", "bob@example.test"):
        (msg,) = delivered(dovecot, user, token)
        ours = msg[msg.index(b"Received: from client.test"):]
        received = ours[:ours.index(b";")].decode()
        assert "by mx.test (smtpgate)" in received and "TLSv1.3" in received
        assert "with ESMTPSA id" in received and "(authenticated as john@local.test)" in received
        # Dovecot's own trace header sits above ours; the body arrived intact (dot-stuffing undone twice).
        assert msg.index(b"by dovecot.example.test") < msg.index(b"by mx.test")
        assert msg.endswith(f"Hello {token}\r\n.line starting with a dot\r\n".encode()) or \
            msg.endswith(f"Hello {token}\n.line starting with a dot\n".encode())


def test_lmtp_next_hop_reflects_each_recipient(tmp_path: Path, dovecot: DovecotServer) -> None:
    token = uuid.uuid4().hex
    with run_server(lmtp_config(dovecot.lmtp_port), tmp_path) as srv:
        # LMTP listener: one reply per recipient, Dovecot's own verdict for the unknown one.
        c = Raw(srv.port("lmtp"))
        assert c.cmd("LHLO client.test").startswith("250")
        assert c.cmd("MAIL FROM:<sender@remote.test>").startswith("250")
        for r in ("alice@example.test", "nobody@example.test", "carol@example.test"):
            assert c.cmd(f"RCPT TO:<{r}>") == "250 2.1.5 Recipient OK"
        assert c.cmd("DATA").startswith("354")
        c.send(message(token))
        replies = [c.reply() for _ in range(3)]
        assert replies[0].startswith("250 2.0.0") and replies[2].startswith("250 2.0.0"), replies
        assert replies[1].startswith("550 5.1.1") and "nobody@example.test" in replies[1], replies
        assert c.cmd("NOOP") == "250 2.0.0 OK"
        c.close()
        assert len(delivered(dovecot, "alice@example.test", token)) == 1
        assert len(delivered(dovecot, "carol@example.test", token)) == 1

        # SMTP listener: the message is one unit. The failure is reported and nobody got a copy, so a
        # sender who fixes the address and resends causes no duplicate.
        token2 = uuid.uuid4().hex
        c = Raw(srv.port("smtp"))
        assert c.cmd("EHLO client.test").startswith("250")
        reply = transaction(c, "sender@remote.test", ["alice@example.test", "nobody@example.test"], message(token2))
        assert reply.startswith("550 5.1.1") and "nobody@example.test" in reply, reply
        assert delivered(dovecot, "alice@example.test", token2) == []
        reply = transaction(c, "sender@remote.test", ["alice@example.test"], message(token2))
        assert reply.startswith("250 2.0.0"), reply
        c.close()
        assert len(delivered(dovecot, "alice@example.test", token2)) == 1
        assert srv.spool_files() == []


def test_next_hop_down_gives_451_and_loses_nothing(tmp_path: Path, dovecot: DovecotServer) -> None:
    token = uuid.uuid4().hex
    with run_server(lmtp_config(dovecot.lmtp_port), tmp_path) as srv:
        c = Raw(srv.port("smtp"))
        assert c.cmd("EHLO client.test").startswith("250")
        # A port nothing listens on.
        assert transaction(c, "x@down.test", ["alice@example.test"], message(token)) == NEXT_HOP_DOWN
        # Dovecot itself stopped: the client is told to retry; nothing was acknowledged or stored.
        dovecot.stop()
        try:
            assert transaction(c, "x@remote.test", ["alice@example.test"], message(token)) == NEXT_HOP_DOWN
        finally:
            dovecot.start()
        assert srv.spool_files() == []
        assert delivered(dovecot, "alice@example.test", token) == []
        # The client's retry succeeds once the next hop is back.
        assert transaction(c, "x@remote.test", ["alice@example.test"], message(token)).startswith("250 2.0.0")
        c.close()
        assert len(delivered(dovecot, "alice@example.test", token)) == 1


def test_next_hop_black_hole_times_out(tmp_path: Path, dovecot: DovecotServer, black_hole) -> None:
    with run_server(lmtp_config(dovecot.lmtp_port, hole_port=black_hole.port), tmp_path) as srv:
        c = Raw(srv.port("smtp"), timeout=15)
        assert c.cmd("EHLO client.test").startswith("250")
        # Another session stays responsive while this one waits on the next hop.
        other = Raw(srv.port("smtp"))
        start = time.monotonic()
        assert c.cmd("MAIL FROM:<x@hole.test>").startswith("250")
        assert c.cmd("RCPT TO:<alice@example.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        c.send(message("hole"))
        t0 = time.monotonic()
        assert other.cmd("NOOP") == "250 2.0.0 OK"
        assert time.monotonic() - t0 < 0.5
        reply = c.reply()
        elapsed = time.monotonic() - start
        assert reply == NEXT_HOP_DOWN
        assert 0.9 <= elapsed < 4.0, elapsed          # remote.hole.timeout = 1s
        assert black_hole.accepted >= 1
        assert c.cmd("NOOP") == "250 2.0.0 OK"
        c.close()
        other.close()
        assert srv.spool_files() == []


# --- SMTP next hop: an independent server (aiosmtpd) ---------------------------------------------
class HopHandler:
    """aiosmtpd handler: the hop knows two mailboxes and keeps what it accepts."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address not in ("alice@example.test", "bob@example.test"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((session.host_name, envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Ok: queued"


@pytest.fixture()
def aiosmtpd_hop():
    from aiosmtpd.controller import Controller
    handler = HopHandler()
    port = free_port()              # aiosmtpd's readiness check cannot follow port 0
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def test_smtp_next_hop(tmp_path: Path, aiosmtpd_hop) -> None:
    hop, port = aiosmtpd_hop
    config = BASE + f"""
[remote.hop]
address = "127.0.0.1"
port = {port}
protocol = "smtp"
timeout = "5s"

[queue.outbound]
next-hop = "remote/hop"
"""
    with run_server(config, tmp_path / "front") as srv:
        c = submission_session(srv)
        assert transaction(c, "john@local.test", ["alice@example.test", "bob@example.test"],
                           message("one")).startswith("250 ")
        # The hop refuses one recipient at RCPT: nothing is sent, the refusal is passed back.
        reply = transaction(c, "john@local.test", ["alice@example.test", "nobody@example.test"],
                            message("two"))
        assert reply.startswith("550 5.1.1"), reply
        c.close()
        assert srv.spool_files() == []
    assert len(hop.messages) == 1
    helo, mail_from, rcpts, msg = hop.messages[0]
    assert (helo, mail_from, rcpts) == ("mx.test", "john@local.test", ["alice@example.test", "bob@example.test"])
    # Our Received header records the authenticated submission; the body arrives dot-unstuffed.
    assert msg.startswith(b"Received: from ") and b"by mx.test (smtpgate)" in msg
    assert b"with ESMTPSA id" in msg and b"(authenticated as john@local.test)" in msg
    assert msg.endswith(b"Hello one\r\n.line starting with a dot\r\n")


# --- library hand-off --------------------------------------------------------------------------------
class App:
    """What an embedding application might do: decide per message, from its content."""

    def __init__(self) -> None:
        self.seen: list[smtpgate.Envelope] = []
        self.release = threading.Event()

    async def __call__(self, env: smtpgate.Envelope):
        self.seen.append(env)
        subject = env.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
        if subject == b"accept":
            return None
        if subject == b"per-rcpt":
            return [smtpgate.RcptResult(250, "2.0.0 stored"), smtpgate.RcptResult(550, "5.1.1 no such user"),
                    smtpgate.RcptResult(452, "4.2.2 mailbox full")]
        if subject == b"policy":
            return smtpgate.RcptResult(554, "5.7.1 rejected by policy")
        if subject == b"short":
            return [smtpgate.RcptResult(250, "2.0.0 only one")]
        if subject == b"bogus":
            return ["250 ok"] * len(env.rcpt_to)
        if subject == b"inject":
            return smtpgate.RcptResult(250, "2.0.0 ok\r\n250 2.0.0 forged")
        if subject == b"slow":
            while not self.release.is_set():
                await asyncio.sleep(0.01)
            return None
        raise RuntimeError("application bug: secret-token-123")


def test_callable_delivery_decides_the_reply(tmp_path: Path) -> None:
    app = App()
    with run_server(BASE, tmp_path, delivery=smtpgate.CallableDelivery(app)) as srv:
        c = submission_session(srv)
        rcpts = ["a@local.test", "b@remote.test", "c@local.test"]

        def send(subject: str) -> str:
            return transaction(c, "john@local.test", rcpts, f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())

        reply = send("accept")
        assert reply.startswith("250 2.0.0 Ok: accepted as ") and reply.endswith(app.seen[-1].queue_id)
        assert send("per-rcpt") == "550 5.1.1 no such user"      # SMTP: the first refusal
        assert send("policy") == "554 5.7.1 rejected by policy"
        assert send("short") == "451 4.3.0 Delivery failed, try again later"
        assert send("crash") == "451 4.3.0 Delivery failed, try again later"
        assert send("bogus") == "451 4.3.0 Delivery failed, try again later"
        assert send("inject") == "250 2.0.0 ok  250 2.0.0 forged"      # one reply line, whatever the text
        assert c.cmd("NOOP") == "250 2.0.0 OK"
        c.close()

        # LMTP: each recipient gets the application's own answer, in order.
        c = Raw(srv.port("lmtp"))
        assert c.cmd("LHLO client.test").startswith("250")
        assert c.cmd("MAIL FROM:<x@remote.test>").startswith("250")
        for r in ("a@local.test", "b@local.test", "c@local.test"):
            assert c.cmd(f"RCPT TO:<{r}>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: per-rcpt\r\n\r\nbody\r\n.\r\n")
        assert [c.reply() for _ in range(3)] == ["250 2.0.0 stored", "550 5.1.1 no such user",
                                                 "452 4.2.2 mailbox full"]
        c.close()

        # A slow application blocks only its own session.
        c = submission_session(srv)
        assert c.cmd("MAIL FROM:<john@local.test>").startswith("250")
        assert c.cmd("RCPT TO:<a@local.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: slow\r\n\r\nbody\r\n.\r\n")
        other = Raw(srv.port("smtp"))
        assert other.cmd("EHLO other.test").startswith("250") and other.cmd("NOOP") == "250 2.0.0 OK"
        other.close()
        app.release.set()
        assert c.reply().startswith("250 2.0.0")
        c.close()

        assert not srv.spool.exists() or srv.spool_files() == []
        env = app.seen[0]
        assert env.mail_from == "john@local.test" and env.rcpt_to == rcpts
        assert env.authenticated_as == "john@local.test" and env.listener == "submission"
        assert env.tls == "TLSv1.3" and env.helo == "client.test" and env.remote_ip == "127.0.0.1"
        assert env.data.startswith(b"Received: from client.test") and b"with ESMTPSA" in env.data
        assert env.data.endswith(b"Subject: accept\r\n\r\nbody\r\n")
        assert not env.per_recipient
        lmtp = app.seen[7]
        assert lmtp.listener == "lmtp" and lmtp.per_recipient and b"with LMTP" in lmtp.data
