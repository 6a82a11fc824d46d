"""Sans-IO input framing: command lines and DATA, with explicit limits.

``LineReader.feed(bytes)`` appends input; ``next_line()`` returns one command line without its line
ending, ``TOO_LONG`` for a line that exceeded the limit (its bytes are discarded, never buffered), or
``None`` when no complete line is buffered yet. Bare LF ends a command line (lenient, like most MTAs);
a trailing CR is stripped.

DATA is read by ``read_data(max_size)``: the message ends only at ``CRLF . CRLF`` -- never at ``LF . LF``
or ``CR . CR`` (SMTP smuggling) -- and is dot-unstuffed (RFC 5321 §4.5.2). Beyond ``max_size`` the body is
no longer kept, only scanned for its end, so an oversized message costs no memory.
"""
from __future__ import annotations

import re

TOO_LONG = object()

#: RFC 4954 §4: SASL lines (and AUTH with an initial response) up to 12 288 octets.
SASL_LINE_LIMIT = 12288
COMMAND_LINE_LIMIT = 512            # RFC 5321 §4.5.3.1.4, including CRLF
MAIL_LINE_LIMIT = 512 + 500         # RFC 4954 §5: room for AUTH= on MAIL FROM
#: RFC 4954 §4 sizes the authentication buffer at 12 288 octets of response (the base64 text, as
#: Postfix's smtpd_sasl_response_limit counts it); the reader's limits include the CRLF, hence the + 2.
SASL_RESPONSE_LIMIT = SASL_LINE_LIMIT + 2

_EOD = b"\r\n.\r\n"
_UNSTUFF = re.compile(rb"\r\n\.(?![\r\n])")


class DataResult:
    __slots__ = ("body", "size", "too_big")

    def __init__(self, body: bytes, size: int, too_big: bool):
        self.body = body
        self.size = size
        self.too_big = too_big


class LineReader:
    __slots__ = ("_buf", "_pos", "_discarding", "_data", "_data_max", "_data_size", "_data_big", "total",
                 "too_long_head")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._discarding = False
        self._data: bytearray | None = None
        self._data_max = 0
        self._data_size = 0
        self._data_big = False
        self.total = 0               # bytes received, for session.transfer-limit
        self.too_long_head = b""     # first bytes of the last TOO_LONG line (is it an AUTH?)

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def clear(self) -> None:
        """Drop everything buffered (RFC 3207: nothing pipelined after STARTTLS may be executed)."""
        self._buf = bytearray()
        self._pos = 0
        self._discarding = False

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def held(self) -> int:
        """Bytes this reader keeps in memory: unread input, input read but not yet compacted away, and
        the message body so far."""
        return len(self._buf) + (len(self._data) if self._data is not None else 0)

    def next_line(self, limit: int = SASL_LINE_LIMIT) -> bytes | object | None:
        buf = self._buf
        start = self._pos
        idx = buf.find(b"\n", start)
        if idx < 0:
            if len(buf) - start > limit:
                # Keep nothing of an over-long line (but its first bytes): discard until its end arrives.
                if not self._discarding:
                    self.too_long_head = bytes(buf[start:start + 32])
                self._discarding = True
                del buf[:]
                self._pos = 0
            return None
        self._pos = idx + 1
        if self._discarding:
            self._discarding = False
            line: bytes | object = TOO_LONG
        else:
            end = idx
            if end > start and buf[end - 1] == 13:
                end -= 1
            if end - start > limit - 2:
                self.too_long_head = bytes(buf[start:start + 32])
                line = TOO_LONG
            else:
                line = bytes(buf[start:end])
        # Consumed lines are dropped from the front now and then (not per line: that would copy the rest
        # of the buffer every time) -- only once the line has been taken out of it.
        if self._pos > 65536:
            del buf[:self._pos]
            self._pos = 0
        return line

    # -- DATA -------------------------------------------------------------------------------------
    def start_data(self, max_size: int) -> None:
        # A leading CRLF lets one search find an end marker on the very first line.
        self._data = bytearray(b"\r\n")
        self._data_max = max_size
        self._data_size = 0
        self._data_big = False

    def read_data(self) -> DataResult | None:
        """Consume buffered bytes into the message; return the message once CRLF.CRLF is seen."""
        data = self._data
        assert data is not None, "start_data() first"
        chunk = self._buf[self._pos:] if self._pos else self._buf
        self._buf = bytearray()
        self._pos = 0
        scan_from = max(0, len(data) - 4)
        data += chunk
        idx = data.find(_EOD, scan_from)
        if idx < 0:
            # Beyond the leading CRLF, up to ".\r" of an end marker split across reads is not body yet.
            if self._data_big or len(data) - 4 > self._data_max:
                # Over the limit: stop keeping the body, keep only a tail long enough to spot the marker.
                self._data_big = True
                self._data_size += len(data) - 4
                del data[:-4]
            return None
        self._buf = bytearray(data[idx + 5:])
        size = self._data_size + idx
        body_len = idx + 2            # up to and including the CRLF before "."
        if self._data_big or size > self._data_max:
            self._data = None
            return DataResult(b"", size, True)
        # RFC 5321 §4.5.2: a line's leading period is removed. Every CRLF "." left in the body starts such a
        # line (the first CRLF "." CRLF was the end), including the first line thanks to the leading CRLF.
        # A "." followed by a bare LF or CR is not unstuffed: "\r\n.\n" is no stuffed line but a line "."
        # from a client ending lines with LF, and must reach the next hop as it was sent.
        body = _UNSTUFF.sub(b"\r\n", bytes(data[:body_len]))[2:]
        self._data = None
        return DataResult(body, size, False)
