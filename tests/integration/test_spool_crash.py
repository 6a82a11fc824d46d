"""Spool durability (SPEC §6, issue 5): ``250`` after DATA means the message is on disk for good.

The real server runs as a subprocess (``smtpgate serve --config ...``) while several clients stream
messages of varied sizes into it; it is killed with SIGKILL at a random moment, several rounds in a row on
the same spool. After each kill:

* every message a client saw ``250`` for has its complete file in ``spool/new`` (parsed back with
  ``delivery.spool.read_message``, content compared byte for byte);
* nothing in ``spool/new`` is partial or was never fully sent by a client;
* leftovers in ``spool/tmp`` are never counted as messages, and the restarted server clears them.
"""
from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from smtpgate.delivery.spool import read_message
from tests.fixtures.process import SmtpgateProcess
from tests.support import free_port, port_open

CONFIG = """
[server]
hostname = "crash.test"

[server.listener.smtp]
bind = ["127.0.0.1:{port}"]

[session.rcpt.lookup]
domains = "list/domains"

[session.data.limits]
messages = 100000

[list]
domains = ["local.test"]

[queue]
path = "{spool}"
"""


def _reply(sock: socket.socket, buf: bytearray) -> str:
    while True:
        idx = buf.find(b"\r\n")
        while idx >= 0:
            line = bytes(buf[:idx])
            del buf[:idx + 2]
            if len(line) < 4 or line[3:4] != b"-":
                return line.decode("utf-8", "replace")
            idx = buf.find(b"\r\n")
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk


def make_body(token: str, rng: random.Random) -> tuple[bytes, bytes]:
    """(bytes on the wire, bytes expected in the spool after unstuffing)."""
    size = rng.choice((200, 2_000, 20_000, 150_000))
    line = (token.encode() + b" " + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2)[:76] + b"\r\n"
    filler = line * (size // len(line))
    head = f"Subject: {token}\r\nMessage-ID: <{token}@crash.test>\r\n\r\n".encode()
    wire = head + b"..stuffed " + token.encode() + b"\r\n" + filler
    stored = head + b".stuffed " + token.encode() + b"\r\n" + filler
    return wire, stored


@dataclass
class Ledger:
    expected: dict[str, bytes] = field(default_factory=dict)    # token -> message as it must be stored
    fully_sent: set[str] = field(default_factory=set)           # the final dot left the client
    acked: set[str] = field(default_factory=set)                # "250" received
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(port: int, ident: str, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            return                               # the server is gone
        buf = bytearray()
        try:
            _reply(sock, buf)
            sock.sendall(b"EHLO client.test\r\n")
            _reply(sock, buf)
            for _ in range(rng.randint(1, 6)):   # several messages per session, then a new one
                token = f"{ident}-{n}-{rng.getrandbits(32):08x}"
                n += 1
                wire, stored = make_body(token, rng)
                with ledger.lock:
                    ledger.expected[token] = stored
                sock.sendall(f"MAIL FROM:<{ident}@remote.test>\r\nRCPT TO:<{ident}@local.test>\r\nDATA\r\n".encode())
                if not (_reply(sock, buf).startswith("250") and _reply(sock, buf).startswith("250")
                        and _reply(sock, buf).startswith("354")):
                    return
                sock.sendall(wire + b".\r\n")
                with ledger.lock:
                    ledger.fully_sent.add(token)
                reply = _reply(sock, buf)
                if reply.startswith("250 "):
                    with ledger.lock:
                        ledger.acked.add(token)
                if stop.is_set():
                    return
            sock.sendall(b"QUIT\r\n")
        except (OSError, EOFError):
            return
        finally:
            sock.close()


def check_spool(spool: Path, ledger: Ledger) -> tuple[int, int]:
    """Assert the invariants; return (messages in new/, leftovers in tmp/)."""
    assert {p.name for p in spool.iterdir()} <= {"new", "tmp"}
    found: dict[str, bytes] = {}
    for path in (spool / "new").iterdir():
        env, msg = read_message(str(path))       # raises on a truncated or garbled file
        token = msg.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        assert token not in found, f"{token} stored twice"
        found[token] = msg
        assert token in ledger.fully_sent, f"{path.name}: message {token} was never completely sent"
        assert msg.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby crash.test (smtpgate)")
        assert msg.endswith(ledger.expected[token]), f"{path.name}: content differs"
        ident = token.split("-", 1)[0]
        assert env["mail_from"] == f"{ident}@remote.test" and env["rcpt_to"] == [f"{ident}@local.test"]
    missing = ledger.acked - found.keys()
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:3]}"
    return len(found), len(list((spool / "tmp").iterdir()))


def test_spool_survives_kill_9(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    server = SmtpgateProcess(CONFIG.replace("{port}", str(port)).replace("{spool}", str(spool)), tmp_path, port)
    ledger = Ledger()
    rng = random.Random()
    seed = rng.getrandbits(32)
    rng.seed(seed)
    stats: list[tuple[int, int]] = []
    names: list[str] = []
    try:
        for rnd in range(5):
            server.start()
            # A restarted server clears tmp/ (never-acknowledged writes) and leaves new/ alone.
            if rnd:
                assert list((spool / "tmp").iterdir()) == [], "tmp/ leftovers survived a restart"
                assert sorted(p.name for p in (spool / "new").iterdir()) == names
            stop = threading.Event()
            threads = [threading.Thread(target=client, args=(port, f"c{rnd}x{i}", ledger, stop, rng.getrandbits(32)))
                       for i in range(6)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.2, 0.8))
            server.kill()                        # SIGKILL: no cleanup, no flush, mid-whatever
            stop.set()
            for t in threads:
                t.join(15)
                assert not t.is_alive()
            stats.append(check_spool(spool, ledger))
            names = sorted(p.name for p in (spool / "new").iterdir())
        server.start()                           # and once more: the final restart clears tmp/ too
        assert list((spool / "tmp").iterdir()) == []
        server.stop()
    finally:
        server.kill()
    stored, _ = check_spool(spool, ledger)
    # Not a tautology: every round must have acknowledged something, or the kill came too early to test.
    assert len(ledger.acked) >= 5 and stored >= len(ledger.acked)
    print(f"seed={seed} acked={len(ledger.acked)} stored={stored} sent={len(ledger.fully_sent)} "
          f"rounds(new,tmp)={stats}")
