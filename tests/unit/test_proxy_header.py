"""The PROXY protocol header parser (protocol/proxy.py): exact headers, every way of splitting them, and
fuzzing -- it never consumes a byte past the header and fails only with ProxyError."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpgate.protocol.proxy import V1_MAX, V2_SIGNATURE, ProxyError, ProxyHeader, ProxyParser


def v1(family: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str | None, dst: str | None, sport: int = 0, dport: int = 0, *, command: int = 1,
       tlvs: bytes = b"", family: int | None = None) -> bytes:
    if src is None:
        fam, block = 0x00, b""
    elif ipaddress.ip_address(src).version == 4:
        fam = 0x11
        block = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!HH", sport, dport)
    else:
        fam = 0x21
        block = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + struct.pack("!HH", sport, dport)
    if family is not None:
        fam = family
    body = block + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body


def parse_chunks(chunks: list[bytes]) -> tuple[ProxyParser, int]:
    """Feed chunks like a transport would; return the parser and the bytes used."""
    p = ProxyParser()
    used = 0
    for c in chunks:
        n = p.feed(c)
        assert 0 <= n <= len(c)
        used += n
        if p.done:
            break
        assert n == len(c), "an incomplete header uses every byte it is given"
    return p, used


# -- exact headers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,expect", [
    (v1("TCP4", "192.0.2.1", "198.51.100.7", 56324, 587), ProxyHeader(1, ("192.0.2.1", 56324), ("198.51.100.7", 587))),
    (v1("TCP6", "2001:db8::1", "2001:db8::2", 0, 65535), ProxyHeader(1, ("2001:db8::1", 0), ("2001:db8::2", 65535))),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None)),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", ProxyHeader(1, None, None)),
    (v2("203.0.113.9", "127.0.0.1", 40000, 25), ProxyHeader(2, ("203.0.113.9", 40000), ("127.0.0.1", 25))),
    (v2("2001:db8::9", "::1", 1, 2), ProxyHeader(2, ("2001:db8::9", 1), ("::1", 2))),
    (v2(None, None, command=0), ProxyHeader(2, None, None, local=True)),
    (v2(None, None), ProxyHeader(2, None, None)),
    (v2("10.1.2.3", "10.0.0.1", 5, 6, tlvs=b"\x04\x00\x04abcd\x20\x00\x01\x00"),   # TLVs skipped
     ProxyHeader(2, ("10.1.2.3", 5), ("10.0.0.1", 6))),
])
def test_valid_headers(raw: bytes, expect: ProxyHeader) -> None:
    p = ProxyParser()
    assert p.feed(raw + b"EHLO x\r\n") == len(raw)
    assert p.result == expect
    assert p.want() == 0 and p.feed(b"more") == 0


def test_v2_unix_addresses_keep_the_connection_addresses() -> None:
    raw = V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", 216) + b"/a".ljust(108, b"\0") * 2
    p = ProxyParser()
    assert p.feed(raw) == len(raw) and p.result == ProxyHeader(2, None, None)


@pytest.mark.parametrize("raw", [
    b"EHLO client\r\n",
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",                 # case matters
    b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",                # single spaces only
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",                   # CRLF required
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",                # no leading zero
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY TCP4 ::1 ::1 1 2\r\n",                         # family mismatch
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",                # no zone ids
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa3 2\r\n",          # non-ASCII digits
    b"PROXY UNKNOWN" + b"x" * 100 + b"\r\n",               # over 107 octets
    V2_SIGNATURE[:11] + b"X",
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),        # version 1 in a v2 header
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),        # command 2
    V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),        # DGRAM
    V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),        # family 4
    V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8),         # INET block too short
    V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),        # INET6 block too short
    V2_SIGNATURE + b"\x21\x11\xff\xff",                    # longer than the bound
])
def test_invalid_headers(raw: bytes) -> None:
    with pytest.raises(ProxyError):
        parse_chunks([raw + b"\r\n" * 60])


def test_v1_limit_is_107_octets_with_crlf() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(line) == V1_MAX
    assert ProxyParser().feed(line) == V1_MAX
    with pytest.raises(ProxyError):                 # 107 octets and still no LF: fails without waiting
        ProxyParser().feed(line[:-1] + b"x")


def test_v2_bound_is_configurable() -> None:
    raw = v2("1.2.3.4", "5.6.7.8", tlvs=b"\x00" * 600)
    ProxyParser().feed(raw)
    with pytest.raises(ProxyError):
        ProxyParser(max_v2_length=256).feed(raw)


# -- properties ----------------------------------------------------------------------------------------

ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
port = st.integers(0, 65535)
tlv = st.builds(lambda t, v: bytes([t]) + struct.pack("!H", len(v)) + v, st.integers(0, 255), st.binary(max_size=40))


@st.composite
def headers(draw) -> tuple[bytes, ProxyHeader]:
    fam = draw(st.sampled_from(["v1-4", "v1-6", "v2-4", "v2-6", "v2-local", "v1-unknown"]))
    if fam == "v2-local":
        return v2(None, None, command=0), ProxyHeader(2, None, None, local=True)
    if fam == "v1-unknown":
        return b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None)
    addr = ipv4 if fam.endswith("4") else ipv6
    src, dst, sp, dp = draw(addr), draw(addr), draw(port), draw(port)
    if fam.startswith("v1"):
        return v1("TCP4" if fam.endswith("4") else "TCP6", src, dst, sp, dp), ProxyHeader(1, (src, sp), (dst, dp))
    tlvs = b"".join(draw(st.lists(tlv, max_size=4)))
    return v2(src, dst, sp, dp, tlvs=tlvs), ProxyHeader(2, (src, sp), (dst, dp))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return [c for c in out if c] or [data]


@settings(max_examples=400, deadline=None)
@given(headers(), st.binary(max_size=64), st.lists(st.integers(0, 400), max_size=8))
def test_any_split_parses_and_never_eats_client_bytes(h, rest: bytes, cuts: list[int]) -> None:
    raw, expect = h
    p, used = parse_chunks(split(raw + rest, cuts))
    assert p.result == expect
    assert used == len(raw), "the header's bytes exactly, none of the client's"


@settings(max_examples=400, deadline=None)
@given(headers(), st.lists(st.integers(0, 400), max_size=8))
def test_peeking_want_bytes_is_always_safe(h, cuts: list[int]) -> None:
    """The transport peeks at want() bytes and consumes what feed() used: it never reads past the end."""
    raw, expect = h
    stream = raw + b"\x16\x03\x01 TLS hello follows"
    p, pos = ProxyParser(), 0
    for c in cuts + [10**6] * 200:
        if p.done:
            break
        chunk = stream[pos:pos + min(p.want(), max(1, c))]
        assert chunk, "want() never asks for bytes beyond the header"
        pos += p.feed(chunk)
    assert p.result == expect and pos == len(raw)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_garbage_fails_cleanly(data: bytes, cuts: list[int]) -> None:
    try:
        p, used = parse_chunks(split(data, cuts))
    except ProxyError:
        return
    assert used <= len(data)
    if p.done:
        assert used <= V1_MAX or data.startswith(V2_SIGNATURE)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(max_size=200))
def test_garbage_after_a_valid_prefix_fails_cleanly(prefix: bytes, data: bytes) -> None:
    p = ProxyParser()
    try:
        used = p.feed(prefix + data)
    except ProxyError:
        return
    assert used <= len(prefix + data)
    if p.result is not None and p.result.source is not None:
        ipaddress.ip_address(p.result.source[0])
        assert 0 <= p.result.source[1] <= 65535
