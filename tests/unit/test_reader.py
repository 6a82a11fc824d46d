"""Sans-IO framing: command lines with explicit limits, DATA with dot-unstuffing and no smuggling."""
from __future__ import annotations

import pytest

from smtpgate.protocol.reader import COMMAND_LINE_LIMIT, SASL_LINE_LIMIT, TOO_LONG, LineReader


def lines(reader: LineReader, limit: int = SASL_LINE_LIMIT) -> list:
    out = []
    while (line := reader.next_line(limit)) is not None:
        out.append(line)
    return out


def feed_data(reader: LineReader, data: bytes, max_size: int = 1 << 20, step: int | None = None):
    reader.start_data(max_size)
    result = None
    chunks = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        reader.feed(chunk)
        result = reader.read_data()
        if result is not None:
            break
    return result


# --- command lines ------------------------------------------------------------------------------
def test_crlf_lines():
    r = LineReader()
    r.feed(b"EHLO a\r\nNOOP\r\nQUIT\r\n")
    assert lines(r) == [b"EHLO a", b"NOOP", b"QUIT"]
    assert r.buffered == 0


def test_bare_lf_ends_a_command_line():
    r = LineReader()
    r.feed(b"NOOP\nRSET\r\n")
    assert lines(r) == [b"NOOP", b"RSET"]


def test_only_one_trailing_cr_is_stripped():
    r = LineReader()
    r.feed(b"NOOP\r\r\n")
    assert lines(r) == [b"NOOP\r"]


def test_partial_input_waits():
    r = LineReader()
    for byte in b"EHLO client.test\r":
        r.feed(bytes([byte]))
        assert r.next_line() is None
    r.feed(b"\n")
    assert r.next_line() == b"EHLO client.test"


def test_empty_line():
    r = LineReader()
    r.feed(b"\r\n")
    assert lines(r) == [b""]


def test_limit_includes_crlf():
    r = LineReader()
    ok, too_long = b"x" * (COMMAND_LINE_LIMIT - 2), b"x" * (COMMAND_LINE_LIMIT - 1)
    r.feed(ok + b"\r\n" + too_long + b"\r\nNOOP\r\n")
    assert lines(r, COMMAND_LINE_LIMIT) == [ok, TOO_LONG, b"NOOP"]


def test_long_line_without_lf_is_not_buffered():
    r = LineReader()
    chunk = b"A" * 65536
    peak = 0
    for _ in range(160):                # 10 MiB without a line end
        r.feed(chunk)
        assert r.next_line(COMMAND_LINE_LIMIT) is None
        peak = max(peak, r.buffered)
    assert peak <= len(chunk) + COMMAND_LINE_LIMIT
    r.feed(b"tail\r\nNOOP\r\n")
    assert lines(r, COMMAND_LINE_LIMIT) == [TOO_LONG, b"NOOP"]
    assert r.total == 160 * 65536 + 12


def test_long_line_fed_in_small_pieces():
    r = LineReader()
    for _ in range(2000):
        r.feed(b"B" * 100)
        assert r.next_line(COMMAND_LINE_LIMIT) is None
        assert r.buffered <= COMMAND_LINE_LIMIT + 100
    r.feed(b"\r\nQUIT\r\n")
    assert lines(r, COMMAND_LINE_LIMIT) == [TOO_LONG, b"QUIT"]


def test_sasl_limit_is_larger():
    r = LineReader()
    token = b"Q" * 12000
    r.feed(token + b"\r\n")
    assert r.next_line(COMMAND_LINE_LIMIT) is TOO_LONG
    r.feed(token + b"\r\n")
    assert r.next_line(SASL_LINE_LIMIT) == token
    r.feed(b"Q" * SASL_LINE_LIMIT + b"\r\n")
    assert r.next_line(SASL_LINE_LIMIT) is TOO_LONG


def test_many_lines_compact_the_buffer():
    r = LineReader()
    r.feed(b"NOOP\r\n" * 30000 + b"RSET")
    assert len(lines(r)) == 30000
    assert r.buffered == 4
    r.feed(b"\r\n")
    assert r.next_line() == b"RSET"


def test_clear_drops_pipelined_input():
    r = LineReader()
    r.feed(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<a@b>\r\n")
    assert r.next_line() == b"STARTTLS"
    r.clear()
    assert r.next_line() is None and r.buffered == 0


def test_nul_and_non_utf8_pass_through_framing():
    r = LineReader()
    r.feed(b"NO\x00OP\r\n\xff\xfe\r\n")
    assert lines(r) == [b"NO\x00OP", b"\xff\xfe"]


# --- DATA ---------------------------------------------------------------------------------------
def test_data_simple():
    res = feed_data(LineReader(), b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert res.body == b"Subject: x\r\n\r\nbody\r\n" and not res.too_big


def test_empty_message():
    res = feed_data(LineReader(), b".\r\n")
    assert res.body == b"" and res.size == 0


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7])
def test_data_split_anywhere(step):
    msg = b"a\r\n..b\r\n.\r\n"
    res = feed_data(LineReader(), msg, step=step)
    assert res is not None and res.body == b"a\r\n.b\r\n"


def test_dot_unstuffing():
    res = feed_data(LineReader(), b"..first\r\nmid\r\n...\r\n..\r\n.lone\r\n.\r\n")
    assert res.body == b".first\r\nmid\r\n..\r\n.\r\nlone\r\n"


@pytest.mark.parametrize("smuggle", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\r"])
def test_smuggling_markers_are_not_end_of_data(smuggle):
    r = LineReader()
    msg = b"Subject: x\r\n\r\nbody" + smuggle + b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n.\r\nNOOP\r\n"
    res = feed_data(r, msg)
    assert res is not None
    assert b"MAIL FROM:<evil@x>" in res.body       # still part of the message
    assert lines(r) == [b"NOOP"]                   # the real end was the CRLF.CRLF


def test_data_leaves_pipelined_commands():
    r = LineReader()
    res = feed_data(r, b"x\r\n.\r\nQUIT\r\n")
    assert res.body == b"x\r\n"
    assert lines(r) == [b"QUIT"]


def test_oversized_message_is_not_kept():
    r = LineReader()
    r.start_data(1000)
    chunk = b"y" * 60000 + b"\r\n"
    for _ in range(100):
        r.feed(chunk)
        assert r.read_data() is None
        assert r.held <= 8                     # only a tail long enough to spot the end marker
    r.feed(b".\r\nRSET\r\n")
    res = r.read_data()
    assert res.too_big and res.body == b"" and res.size >= 100 * 60000
    assert lines(r) == [b"RSET"]


def test_size_limit_boundary():
    assert not feed_data(LineReader(), b"12345678\r\n.\r\n", max_size=10).too_big
    assert feed_data(LineReader(), b"123456789\r\n.\r\n", max_size=10).too_big


def test_end_marker_split_across_big_mode():
    r = LineReader()
    r.start_data(10)
    r.feed(b"z" * 100 + b"\r\n.")
    assert r.read_data() is None
    r.feed(b"\r")
    assert r.read_data() is None
    r.feed(b"\n")
    res = r.read_data()
    assert res is not None and res.too_big
