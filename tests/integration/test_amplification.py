"""Reply amplification and long pipelined bursts over real sockets (issue 9 items 1 and 3).

A client that writes garbage and never reads must not make the server answer without end, hold the
event loop, or buffer without bound: after ``session.errors.total`` bad commands (default 20, like
Postfix's hard error limit) it gets ``421 4.7.0`` and is disconnected; commands are answered in bounded
batches, so other clients are served in between. Memory growth and others' latency under the full attack
are measured by ``bench/amplification.py``.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.fixtures.server import run_server
from tests.smtpclient import Raw

CONFIG = """
[server]
hostname = "mx.test"
[server.listener.smtp]
bind = "127.0.0.1:0"
[server.listener.lenient]
bind = "127.0.0.1:0"
[session.errors]
total = [ { if = "listener", eq = "lenient", then = 100000 }, { else = 20 } ]
[session.rcpt.lookup]
domains = "list/domains"
[list]
domains = ["example.org"]
[queue]
path = "{tmp}/spool"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with run_server(CONFIG, tmp_path_factory.mktemp("amplification")) as running:
        yield running


def test_error_limit_disconnects_with_421(srv):
    c = Raw(srv.port("smtp"))
    c.send(b"BOGUS\r\n" * 19)
    for _ in range(19):
        assert c.reply() == "500 5.5.2 Syntax error, command unrecognized"
    assert c.cmd("NOOP") == "250 2.0.0 OK"                 # good commands do not reset or count
    assert c.cmd("EHLO a").startswith("250-")
    assert c.cmd("MAIL FROM:<a@example.org>") == "250 2.1.0 Sender OK"
    assert c.cmd("MAIL FROM:<a@example.org>") == "503 5.5.1 Sender already specified"   # the 20th error
    assert c.reply() == "421 4.7.0 Too many errors, closing connection."
    assert c.closed()


def test_bare_newline_flood_is_cut_off_and_others_are_served(srv):
    """256 KiB of bare LF, never reading: 20 replies, the 421, the end -- not 262,144 replies."""
    attacker = socket.create_connection(("127.0.0.1", srv.port("smtp")))
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    attacker.settimeout(10)
    try:
        attacker.sendall(b"\n" * 262_144)
    except OSError:
        pass                                                 # the server may close before we finish
    other = Raw(srv.port("smtp"))
    started = time.monotonic()
    assert other.cmd("NOOP") == "250 2.0.0 OK"
    assert time.monotonic() - started < 2.0
    other.close()
    received = b""
    try:
        while chunk := attacker.recv(65536):
            received += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    attacker.close()
    lines = received.split(b"\r\n")
    assert lines[0].startswith(b"220 ")
    assert lines[1:21] == [b"500 5.5.2 Syntax error, command unrecognized"] * 20
    assert lines[21] == b"421 4.7.0 Too many errors, closing connection."
    assert len(received) < 4096


def test_long_pipelined_burst_in_one_write(srv):
    """10,921 NOOPs between EHLO and MAIL/RCPT in one write: every command runs once, in order."""
    c = Raw(srv.port("lenient"))
    burst = (b"EHLO a\r\n" + b"NOOP\r\n" * 10_921 + b"MAIL FROM:<a@example.org>\r\n"
             b"RCPT TO:<bob@example.org>\r\nQUIT\r\n")
    sender = threading.Thread(target=c.send, args=(burst,))
    sender.start()
    assert c.reply().startswith("250-mx.test says hello")
    for _ in range(10_921):
        assert c.reply() == "250 2.0.0 OK"
    assert c.reply() == "250 2.1.0 Sender OK"
    assert c.reply() == "250 2.1.5 Recipient OK"
    assert c.reply() == "221 2.0.0 Bye"
    sender.join(10)
    c.close()


def test_over_long_line_in_one_write(srv):
    c = Raw(srv.port("lenient"))
    c.send(b"NOOP " + b"a" * 100_000 + b"\r\nNOOP\r\n")
    assert c.reply() == "500 5.5.6 Line too long"
    assert c.reply() == "250 2.0.0 OK"
    c.close()
    assert not [line for line in srv.logs if line.startswith(("ERROR", "CRITICAL"))], srv.logs
