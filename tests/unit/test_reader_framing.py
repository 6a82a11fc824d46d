"""Line framing does not depend on how the input is cut (issue 9 item 3).

The reader once compacted its buffer *before* taking the current line out of it, so past 64 KiB of
buffered input it lost framing: an over-long line raised (451 and a traceback instead of 500 5.5.6) and
a long pipelined burst ran the wrong commands. Here the same stream is fed whole and cut at random
points and sizes (hypothesis), to the reader alone and to a whole session, and must give the same result.
"""
from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpgate.config.load import load_text
from smtpgate.lookup import registry
from smtpgate.protocol.reader import COMMAND_LINE_LIMIT, SASL_LINE_LIMIT, SASL_RESPONSE_LIMIT, TOO_LONG, LineReader
from smtpgate.session import ListenerContext, Session
from smtpgate.session.requests import PAUSE, Authenticate, Contains, Sleep


def lines_of(reader: LineReader, limit: int) -> list:
    out = []
    while (line := reader.next_line(limit)) is not None:
        out.append(line)
    return out


def fed(chunks: list[bytes], limit: int = SASL_LINE_LIMIT) -> list:
    reader = LineReader()
    out = []
    for chunk in chunks:
        reader.feed(chunk)
        out += lines_of(reader, limit)
    return out


def model(stream: bytes, limit: int) -> list:
    """What framing means: split at LF, drop one CR before it, too long beyond ``limit`` with CRLF."""
    out = []
    for raw in stream.split(b"\n")[:-1]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        out.append(TOO_LONG if len(line) > limit - 2 else line)
    return out


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(stream) + 1) for p in points} | {0, len(stream)})
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


# --- the two reproductions of the issue ------------------------------------------------------------
def test_over_long_line_in_one_write_is_too_long():
    assert fed([b"NOOP " + b"a" * 100_000 + b"\r\n", b"NOOP\r\n"]) == [TOO_LONG, b"NOOP"]


def test_long_pipelined_burst_keeps_every_command():
    stream = b"EHLO a\r\n" + b"NOOP\r\n" * 10_921 + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
    got = fed([stream])
    assert got[0] == b"EHLO a" and got[-2:] == [b"MAIL FROM:<a@example.org>", b"RCPT TO:<bob@example.org>"]
    assert len(got) == 10_924 and got.count(b"NOOP") == 10_921


# --- properties ------------------------------------------------------------------------------------
_line = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.integers(0, 70_000).map(lambda n: b"x" * n),                 # up to past the compaction point
    st.sampled_from([b"NOOP", b"EHLO a.test", b"", b"\r", b"AUTH PLAIN"]),
)
_ending = st.sampled_from([b"\r\n", b"\n"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(_line, _ending), max_size=12), st.lists(st.integers(0, 10**6), max_size=20),
       st.sampled_from([COMMAND_LINE_LIMIT, SASL_RESPONSE_LIMIT]))
def test_reader_framing_is_independent_of_chunking(pairs, points, limit):
    stream = b"".join(line + end for line, end in pairs)
    expected = model(stream, limit)
    assert fed([stream], limit) == expected
    assert fed(cut(stream, points), limit) == expected


CONFIG = """
[server.listener.smtp]
bind = "127.0.0.1:0"
[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
total = 1000
[session.errors]
total = 100000
[session.rcpt.lookup]
domains = "list/domains"
[list]
users = ["john@example.org:secret"]
domains = ["example.org"]
[server.auto-ban]                   # no cross-session counting: the guard's requests are not framing
auth.rate = false
abuse.rate = false
"""
_SETTINGS = load_text(CONFIG)
_LOOKUPS = registry.build(_SETTINGS)


def converse(chunks: list[bytes]) -> bytes:
    """Everything a session answers to ``chunks``, with requests answered the way the transport would."""
    s = Session(ListenerContext(_SETTINGS, _SETTINGS.listeners["smtp"], _LOOKUPS, False), "192.0.2.1", 1, "127.0.0.1", 25)
    for chunk in chunks:
        s.receive_data(chunk)
        req = s.advance()
        while req is not None:
            if req is PAUSE:
                req = s.advance()
            elif isinstance(req, Authenticate):
                req = s.resume(req.lookup.authenticate_now(req.creds))
            elif isinstance(req, Contains):
                req = s.resume(req.lookup.contains_now(req.key))
            elif isinstance(req, Sleep):
                req = s.resume(None)
            else:  # pragma: no cover
                raise AssertionError(req)
    return b"".join(s.out)


_PLAIN_OK = base64.b64encode(b"\0john@example.org\0secret")
_command = st.sampled_from([
    b"EHLO client.test", b"NOOP", b"RSET", b"MAIL FROM:<a@example.org>", b"RCPT TO:<john@example.org>",
    b"AUTH PLAIN", _PLAIN_OK, b"AUTH PLAIN " + _PLAIN_OK, b"*", b"bogus", b"HELP", b"x" * 600, b"y" * 13_000,
    b"NOOP " + b"a" * 70_000,
])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(_command, _ending), max_size=15), st.lists(st.integers(0, 10**6), max_size=20))
def test_session_answers_the_same_whatever_the_chunking(pairs, points):
    stream = b"".join(line + end for line, end in pairs)
    assert converse(cut(stream, points)) == converse([stream])
