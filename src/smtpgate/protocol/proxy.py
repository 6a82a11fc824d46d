"""Sans-IO parser of the PROXY protocol header, versions 1 (text) and 2 (binary).

A load balancer such as HAProxy (``send-proxy`` / ``send-proxy-v2``) sends this header first on every
connection it opens to us, naming the real client and the address it connected to (the format is
haproxy's ``doc/proxy-protocol.txt``).

Why our own parser: the maintained PyPI package (``proxy-protocol``) reads from asyncio streams and
accepts more than the specification allows (unbounded v1 lines, ports such as ``+25``); the transport
here must never consume a byte beyond the header (on implicit-TLS listeners the TLS handshake follows
it), so it needs a parser that says exactly how many bytes the header used. That is ~150 lines.

    parser = ProxyParser()
    used = parser.feed(data)      # bytes of ``data`` that belong to the header (the rest is the client's)
    if parser.result is not None: ...

``feed`` raises :class:`ProxyError` as soon as the input cannot be a valid header. ``want()`` is how many
more bytes the header may still need at most (a safe size to peek at). Strict on purpose:

* v1: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or ``PROXY UNKNOWN...\\r\\n``, at most 107
  octets with the CRLF; single spaces; addresses of the named family (no IPv6 zone); ports decimal
  0..65535 without sign or leading zero.
* v2: the 12-octet signature, version 2, command LOCAL or PROXY, families UNSPEC/INET/INET6/UNIX over
  UNSPEC/STREAM, an address block no shorter than its family needs; TLVs are skipped unread; the whole
  header is bounded by ``max_v2_length`` (a proxy does not need kilobytes of TLVs to talk to us).

A LOCAL command (a proxy's own health check), UNKNOWN / UNSPEC and UNIX addresses give a result whose
``source`` is ``None``: the connection's own addresses then stand.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107                           # the specification's bound, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16                          # signature, ver/cmd, family/transport, 2-octet length
DEFAULT_MAX_V2 = 16 + 2048             # address block (≤ 216 for UNIX) plus generous room for TLVs

_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V2_ADDR_LEN = {0x1: 12, 0x2: 36, 0x3: 216}   # INET, INET6, UNIX


class ProxyError(ValueError):
    """The input is not a valid PROXY header; the message is a short reason for the log."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int                                # 1 or 2
    source: tuple[str, int] | None              # the real client; None: keep the connection's own
    dest: tuple[str, int] | None                # where the client connected (the proxy's front end)
    local: bool = False                         # v2 LOCAL: the proxy speaks for itself (health check)


_DETECT, _V1, _V2 = 0, 1, 2


class ProxyParser:
    __slots__ = ("_buf", "_state", "_need", "max_v2_length", "result")

    def __init__(self, max_v2_length: int = DEFAULT_MAX_V2):
        self._buf = bytearray()
        self._state = _DETECT
        self._need = V2_FIXED                  # v2: total header length once known
        self.max_v2_length = max_v2_length
        self.result: ProxyHeader | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def want(self) -> int:
        """At most how many more bytes the header can use (0 once complete)."""
        if self.result is not None:
            return 0
        if self._state == _V2:
            return self._need - len(self._buf)
        return V1_MAX - len(self._buf)

    def feed(self, data: bytes) -> int:
        """Take the header's bytes from the start of ``data``; return how many were used."""
        if self.result is not None or not data:
            return 0
        if self._state == _DETECT:
            # The first octet decides: 'P' can only start v1, CR only v2.
            if data[0] == V1_PREFIX[0]:
                self._state = _V1
            elif data[0] == V2_SIGNATURE[0]:
                self._state = _V2
            else:
                raise ProxyError("not a PROXY protocol header")
        if self._state == _V1:
            return self._feed_v1(data)
        return self._feed_v2(data)

    # -- version 1 -----------------------------------------------------------------------------------
    def _feed_v1(self, data: bytes) -> int:
        start = len(self._buf)
        end = data.find(b"\n")
        used = len(data) if end < 0 else end + 1
        if start + used > V1_MAX or (end < 0 and start + used == V1_MAX):
            raise ProxyError("PROXY v1 line longer than 107 octets")
        self._buf += data[:used]
        head = bytes(self._buf[:len(V1_PREFIX)])
        if not V1_PREFIX.startswith(head):
            raise ProxyError("not a PROXY protocol header")
        if end >= 0:
            self.result = _parse_v1(bytes(self._buf))
        return used

    # -- version 2 -----------------------------------------------------------------------------------
    def _feed_v2(self, data: bytes) -> int:
        used = 0
        if len(self._buf) < V2_FIXED:
            used = min(V2_FIXED - len(self._buf), len(data))
            self._buf += data[:used]
            sig = bytes(self._buf[:len(V2_SIGNATURE)])
            if not V2_SIGNATURE.startswith(sig):
                raise ProxyError("bad PROXY v2 signature")
            if len(self._buf) < V2_FIXED:
                return used
            ver_cmd, fam = self._buf[12], self._buf[13]
            if ver_cmd >> 4 != 2:
                raise ProxyError(f"unsupported PROXY version {ver_cmd >> 4}")
            if ver_cmd & 0xF not in (0, 1):
                raise ProxyError(f"unknown PROXY v2 command {ver_cmd & 0xF}")
            if fam >> 4 not in (0, 1, 2, 3) or fam & 0xF not in (0, 1):
                raise ProxyError("unsupported PROXY v2 address family or transport")
            length = int.from_bytes(self._buf[14:16], "big")
            if V2_FIXED + length > self.max_v2_length:
                raise ProxyError(f"PROXY v2 header of {V2_FIXED + length} octets is too long")
            if ver_cmd & 0xF == 1 and length < _V2_ADDR_LEN.get(fam >> 4, 0):
                raise ProxyError("PROXY v2 address block too short for its family")
            self._need = V2_FIXED + length
        more = min(self._need - len(self._buf), len(data) - used)
        self._buf += data[used:used + more]
        used += more
        if len(self._buf) == self._need:
            self.result = _parse_v2(bytes(self._buf))
        return used


def _parse_v1(line: bytes) -> ProxyHeader:
    if not line.endswith(b"\r\n"):
        raise ProxyError("PROXY v1 line does not end with CRLF")
    parts = line[:-2].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, None, None)      # the specification: ignore the rest of the line
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyError("malformed PROXY v1 line")
    cls = ipaddress.IPv4Address if parts[1] == b"TCP4" else ipaddress.IPv6Address
    src, dst = _v1_addr(parts[2], cls), _v1_addr(parts[3], cls)
    return ProxyHeader(1, (src, _v1_port(parts[4])), (dst, _v1_port(parts[5])))


def _v1_addr(raw: bytes, cls: type) -> str:
    try:
        text = raw.decode("ascii")
        if "%" in text:                        # an IPv6 zone names an interface of the proxy, not ours
            raise ValueError
        return str(cls(text))
    except ValueError:
        raise ProxyError("bad address in PROXY v1 line") from None


def _v1_port(raw: bytes) -> int:
    if not _PORT.fullmatch(raw) or int(raw) > 65535:
        raise ProxyError("bad port in PROXY v1 line")
    return int(raw)


def _parse_v2(header: bytes) -> ProxyHeader:
    if header[12] & 0xF == 0:
        return ProxyHeader(2, None, None, local=True)
    fam = header[13] >> 4
    if fam == 0x1:
        a = header[16:28]
        src, dst = ipaddress.IPv4Address(a[0:4]), ipaddress.IPv4Address(a[4:8])
        sport, dport = int.from_bytes(a[8:10], "big"), int.from_bytes(a[10:12], "big")
    elif fam == 0x2:
        a = header[16:52]
        src, dst = ipaddress.IPv6Address(a[0:16]), ipaddress.IPv6Address(a[16:32])
        sport, dport = int.from_bytes(a[32:34], "big"), int.from_bytes(a[34:36], "big")
    else:                                      # UNSPEC or UNIX: nothing we can use as an IP
        return ProxyHeader(2, None, None)
    return ProxyHeader(2, (str(src), sport), (str(dst), dport))
