"""Session deadlines on the injected clock: no test here waits for a timeout in real time.

Also the slowloris defence (issue 9 item 6): a command line must be complete within ``session.timeout``
of its first byte, and DATA must keep a minimum average rate (500 bytes/s after a grace of
``session.timeout``), so a byte every few seconds no longer keeps a session open.
"""
from __future__ import annotations

import base64
import socket

import pytest

from tests.fixtures.clock import FakeClock
from tests.fixtures.server import run_server
from tests.smtpclient import Raw

CONFIG = """
[server]
hostname = "mx.test"
[server.listener.smtp]
bind = "127.0.0.1:0"
[session]
timeout = "30s"
duration = "10m"
[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
total = 3
wait = "5s"
wait-spread = 0                 # exactly errors.wait, so the clock can be advanced by it
[session.rcpt.lookup]
domains = "list/domains"
[list]
users = ["john@example.org:secret"]
domains = ["example.org"]
[queue]
path = "{tmp}/spool"
"""


@pytest.fixture(scope="module")
def clock():
    return FakeClock()


@pytest.fixture(scope="module")
def srv(tmp_path_factory, clock):
    with run_server(CONFIG, tmp_path_factory.mktemp("timeouts"), clock=clock) as running:
        yield running


def send(srv, clock: FakeClock, data: bytes, c: Raw) -> None:
    """Send and wait until the server has taken the bytes in (it reads the clock when it does)."""
    reads = clock.reads
    c.send(data)
    clock.wait_read(reads)


def quiet(c: Raw) -> bool:
    """Nothing from the server (yet): no reply, no close. Peeks, so a reply stays readable."""
    if c.buf:
        return False
    c.sock.settimeout(0.2)
    try:
        c.sock.recv(1, socket.MSG_PEEK)                       # a reply, or b"" for a close
        return False
    except TimeoutError:
        return True
    finally:
        c.sock.settimeout(10)


def test_idle_timeout(srv, clock):
    c = Raw(srv.port("smtp"))
    assert c.cmd("EHLO client.test").startswith("250-")
    clock.advance(srv.loop, 29)
    assert quiet(c)
    clock.advance(srv.loop, 2)
    assert c.reply() == "421 4.4.2 Idle timeout, closing connection"
    assert c.closed()


def test_activity_defers_the_idle_timeout(srv, clock):
    c = Raw(srv.port("smtp"))
    for _ in range(6):
        clock.advance(srv.loop, 20)
        assert c.cmd("NOOP") == "250 2.0.0 OK"
    c.close()


def test_slowloris_command_line(srv, clock):
    """One byte every 5 s: the line is never complete, so the session ends 30 s after its first byte."""
    c = Raw(srv.port("smtp"))
    for byte in b"NOOP N":                                   # 6 bytes, 30 s
        send(srv, clock, bytes([byte]), c)
        clock.advance(srv.loop, 5)
    assert quiet(c)                                          # the last byte came 5 s ago: not idle
    clock.advance(srv.loop, 2)
    assert c.reply() == "421 4.4.2 Idle timeout, closing connection"
    assert c.closed()


def test_complete_lines_in_between_restart_the_line_clock(srv, clock):
    c = Raw(srv.port("smtp"))
    for _ in range(4):
        send(srv, clock, b"NO", c)
        clock.advance(srv.loop, 20)
        assert c.cmd("OP") == "250 2.0.0 OK"                 # each line took 20 s: fine
    c.close()


def test_slow_data_is_cut_off(srv, clock):
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@remote.test>")
    c.cmd("RCPT TO:<john@example.org>")
    assert c.cmd("DATA").startswith("354")
    start = clock.time
    for _ in range(10):                                      # 10 bytes every 10 s: far below 500 bytes/s
        if not quiet(c):
            break
        send(srv, clock, b"x" * 10, c)
        clock.advance(srv.loop, 10)
    assert clock.time - start < 50
    assert c.reply() == "421 4.4.2 Idle timeout, closing connection"


def test_data_at_a_decent_rate_is_not_cut_off(srv, clock):
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@remote.test>")
    c.cmd("RCPT TO:<john@example.org>")
    assert c.cmd("DATA").startswith("354")
    for _ in range(8):                                       # 8 KiB every 10 s: 800 bytes/s
        send(srv, clock, b"x" * 78 + b"\r\n", c)
        send(srv, clock, (b"y" * 78 + b"\r\n") * 100, c)
        clock.advance(srv.loop, 10)
    assert c.cmd(b".\r\n").startswith("250 ")
    c.close()


def test_session_duration(srv, clock):
    c = Raw(srv.port("smtp"))
    for _ in range(30):
        clock.advance(srv.loop, 25)
        c.send(b"NOOP\r\n")
        reply = c.reply()
        if not reply.startswith("250"):
            break
    assert reply == "421 4.4.2 Session too long, closing connection"
    assert 600 <= clock.time - 1000


def test_errors_wait_is_a_timer_on_the_clock(srv, clock):
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO client.test")
    c.send(b"AUTH PLAIN " + base64.b64encode(b"\0john@example.org\0wrong") + b"\r\n")
    c.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        c.reply()                                            # nothing before errors.wait has passed
    c.sock.settimeout(5)
    clock.advance(srv.loop, 5)
    assert c.reply() == "535 5.7.8 Authentication credentials invalid."
    c.close()
