"""The session's own pump, without sockets: bounded batches and the bad-command limit (issue 9 item 1)."""
from __future__ import annotations

from smtpgate.config.load import load_text
from smtpgate.session import ListenerContext, Session
from smtpgate.session.machine import COMMAND_BATCH, State
from smtpgate.session.requests import PAUSE

CONFIG = """
[server.listener.smtp]
bind = "127.0.0.1:0"
"""


def session(config: str = CONFIG) -> Session:
    settings = load_text(config)
    return Session(ListenerContext(settings, settings.listeners["smtp"], {}, False), "192.0.2.1", 1, "127.0.0.1", 25)


def take(s: Session) -> list[bytes]:
    out = b"".join(s.out).split(b"\r\n")[:-1]
    s.out.clear()
    return out


def test_pipelined_commands_are_answered_in_bounded_batches():
    s = session()
    s.receive_data(b"NOOP\r\n" * 100)
    sizes = []
    while (req := s.advance()) is PAUSE:
        sizes.append(len(take(s)))
    assert req is None
    sizes.append(len(take(s)))
    assert sizes == [COMMAND_BATCH] * 3 + [100 - 3 * COMMAND_BATCH]


def test_bad_commands_end_the_session_at_the_limit():
    s = session()
    s.receive_data(b"\n" * 1000)
    while s.advance() is PAUSE:
        pass
    replies = take(s)
    assert replies == [b"500 5.5.2 Syntax error, command unrecognized"] * 20 + [
        b"421 4.7.0 Too many errors, closing connection."]
    assert s.state is State.CLOSED
    assert s.buffered == 1000 - 20                          # nothing parsed after the limit


def test_error_limit_is_configurable_and_good_commands_do_not_count():
    s = session(CONFIG + "[session.errors]\ntotal = 3\n")
    s.receive_data(b"X\r\nNOOP\r\nMAIL\r\nNOOP\r\nRCPT\r\nNOOP\r\n")
    assert s.advance() is None
    assert [r[:3] for r in take(s)] == [b"500", b"250", b"503", b"250", b"503", b"421"]
    assert s.closing
