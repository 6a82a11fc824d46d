"""The PROXY protocol at accept time, before a session exists (and before TLS on implicit-TLS listeners).

A listener with ``proxy.trusted-networks`` gets a :class:`ProxyAccept` as the first protocol of each
connection. It decides, from the peer address alone:

* peer outside the trusted networks: an ordinary client. The connection goes straight to the SMTP
  transport (after the TLS handshake on an implicit-TLS listener); a PROXY header it sends is a bad
  command like any other, never believed.
* trusted peer (the load balancer): the connection must start with a valid v1 or v2 header within
  ``HEADER_TIMEOUT``; otherwise it is closed without a word (whatever we would say would go to the proxy's
  client, who did nothing wrong, and a proxy that does not send headers is misconfigured). The header's
  addresses become the session's remote and local address; then TLS (implicit listeners) and SMTP start.

Why the header is read from a duplicate of the socket with ``MSG_PEEK`` instead of through
``data_received``: asyncio reads whatever is there, so the first read would also take the client's first
bytes -- on an implicit-TLS listener its TLS ClientHello, which ``loop.start_tls`` cannot be given back.
Peeking at most ``parser.want()`` bytes and then consuming exactly the ones the header used keeps the
socket positioned at the client's first byte, with public APIs only (asyncio and uvloop alike). The
transport is paused meanwhile, so nothing else reads the socket.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any, Callable

from ..config.proxy import HEADER_TIMEOUT
from ..protocol.proxy import ProxyError, ProxyParser

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("smtpgate.server")

Address = tuple[str, int]


class ProxyAccept(asyncio.Protocol):
    """First protocol of a connection on a PROXY listener; hands the connection to ``make_conn()``."""

    __slots__ = ("make_conn", "trusts", "ssl_ctx", "handshake_timeout", "transport", "task", "closed")

    def __init__(self, make_conn: Callable[[], Any], trusts: Callable[[str], bool],
                 ssl_ctx: "ssl.SSLContext | None", handshake_timeout: float):
        self.make_conn = make_conn
        self.trusts = trusts
        self.ssl_ctx = ssl_ctx                 # implicit TLS: started here, after the header
        self.handshake_timeout = handshake_timeout
        self.transport: Any = None
        self.task: asyncio.Task | None = None
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        if self.trusts(peer[0]):
            transport.pause_reading()
            self.task = asyncio.get_running_loop().create_task(self._proxied(peer))
        elif self.ssl_ctx is None:
            self._hand_over(transport, None, None)
        else:
            transport.pause_reading()
            self.task = asyncio.get_running_loop().create_task(self._tls_then_hand_over(None, None))

    def data_received(self, data: bytes) -> None:   # pragma: no cover - reading is paused until hand-over
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # -- trusted peer: header first ------------------------------------------------------------------
    async def _proxied(self, peer: Address) -> None:
        try:
            header = await asyncio.wait_for(_read_header(self.transport), HEADER_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except (ProxyError, TimeoutError, asyncio.TimeoutError, OSError, EOFError) as exc:
            reason = "timeout" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) else str(exc) or type(exc).__name__
            log.info("PROXY header from %s refused: %s", peer[0], reason)
            self.transport.abort()
            return
        src, dst = header.source, header.dest      # None (LOCAL, UNKNOWN): the connection's own addresses
        if self.ssl_ctx is None:
            self._hand_over(self.transport, src, dst)
            if not self.transport.is_closing():
                self.transport.resume_reading()
        else:
            await self._tls_then_hand_over(src, dst)

    # -- hand-over -----------------------------------------------------------------------------------
    async def _tls_then_hand_over(self, src: Address | None, dst: Address | None) -> None:
        conn = self.make_conn()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(self.transport, conn, self.ssl_ctx, server_side=True,
                                       ssl_handshake_timeout=self.handshake_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any handshake failure ends only this connection
            log.info("TLS handshake failed from %s: %s", (src or ("?",))[0], type(exc).__name__)
            self.transport.abort()
            return
        if tls is None:        # the peer went away during the handshake
            return
        conn.connection_made(tls, peer=src, sock=dst)

    def _hand_over(self, transport: Any, src: Address | None, dst: Address | None) -> None:
        conn = self.make_conn()
        transport.set_protocol(conn)
        conn.connection_made(transport, peer=src, sock=dst)


async def _read_header(transport: Any) -> Any:
    """Read exactly the PROXY header from the (paused) transport's socket; return the parsed header."""
    loop = asyncio.get_running_loop()
    sock = transport.get_extra_info("socket").dup()   # same connection, own descriptor for add_reader
    try:
        sock.setblocking(False)
        parser = ProxyParser()
        while parser.result is None:
            try:
                data = sock.recv(parser.want(), socket.MSG_PEEK)
            except BlockingIOError:
                await _readable(loop, sock)
                continue
            if not data:
                raise EOFError("connection closed before the PROXY header")
            used = parser.feed(data)
            while used:                                 # those bytes are in the socket buffer: no wait
                used -= len(sock.recv(used))
        return parser.result
    finally:
        sock.close()


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(fd)
