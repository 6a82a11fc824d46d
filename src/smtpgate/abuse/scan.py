"""Is a connection's first input something other than SMTP? (``server.auto-ban.scan.*``)

Scanners and misdirected clients open the mail port and speak HTTP, or start a TLS handshake on a
plaintext port. Both are recognisable from the first bytes, before any SMTP parsing; an SMTP client's
first line is a command (EHLO, HELO, ...) which none of these patterns match.
"""
from __future__ import annotations

_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"CONNECT ", b"DELETE ", b"PATCH ",
                 b"TRACE ", b"PRI * HTTP/2")


def not_smtp(first: bytes) -> str | None:
    """``"tls"`` for a TLS ClientHello record, ``"http"`` for an HTTP request line, else None."""
    if len(first) >= 3 and first[0] == 0x16 and first[1] == 0x03 and first[2] <= 0x04:
        return "tls"
    if len(first) >= 3 and first[0] & 0x80 and first[2] == 0x01:
        return "tls"      # SSLv2-style ClientHello (old scanners still send one)
    head = first[:16].upper()
    if head.startswith(_HTTP_METHODS):
        line = first.split(b"\n", 1)[0]
        if b" HTTP/" in line.upper() or head.startswith(b"PRI * HTTP/2"):
            return "http"
    return None
