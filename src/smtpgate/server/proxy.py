"""The PROXY protocol at accept time, before a session exists (and before TLS on implicit-TLS listeners).

A listener with ``proxy.trusted-networks`` is served by a :class:`ProxyServer` instead of
``loop.create_server``. For each accepted socket it decides, from the peer address alone:

* peer outside the trusted networks: an ordinary client. The socket goes straight to the SMTP transport;
  a PROXY header it sends is a bad command like any other, never believed.
* trusted peer (the load balancer): the socket must start with a valid v1 or v2 header within
  ``HEADER_TIMEOUT``; otherwise it is closed without a word (whatever we said would reach the proxy's
  client, who did nothing wrong; a proxy that sends no header is misconfigured). The header's addresses
  become the session's remote and local address (for the abuse guard's admission too); then TLS
  (implicit listeners, counted from here as in ``tls_listener.py``) and SMTP start.

Why the header is read from the bare socket, before any asyncio transport exists: a transport reads
whatever has arrived, so it would also take the client's first bytes -- on an implicit-TLS listener its
TLS ClientHello, which a TLS layer started afterwards cannot be given back -- and uvloop starts reading
right after ``connection_made`` even when the protocol paused. Here the socket is peeked at (``MSG_PEEK``, at most
``parser.want()`` bytes) and exactly the header's bytes are consumed, so ``connect_accepted_socket`` then
hands the transport a socket positioned at the client's first byte. Public APIs only; asyncio and uvloop.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import TYPE_CHECKING, Any, Callable

from ..config import proxy as proxy_config
from ..protocol.proxy import V1_MAX, ProxyError, ProxyParser
from .connection import SmtpConnection

if TYPE_CHECKING:
    import ssl

    from ..session.context import ListenerContext
    from . import Server

log = logging.getLogger("smtpgate.server")

Address = tuple[str, int]
_ACCEPT_BATCH = 128                     # accepts per readiness event (like asyncio's own servers)


class _Silent(EOFError):
    """The peer closed before sending a single byte: a load balancer's TCP probe, not worth a log line."""


class ProxiedConnection(SmtpConnection):
    """An SMTP connection whose addresses come from a PROXY header (``None``: the socket's own)."""

    __slots__ = ("proxy_peer", "proxy_sock")

    def __init__(self, server: "Server", ctx: "ListenerContext", peer: Address | None, sock: Address | None):
        super().__init__(server, ctx)
        self.proxy_peer = peer
        self.proxy_sock = sock

    def _addresses(self, local: bool = True) -> tuple[Any, Any]:
        peer, sock = super()._addresses(local)
        return self.proxy_peer or peer, (self.proxy_sock or sock) if local else sock

    def local_end(self, guard: Any, sock: Any = None) -> tuple[str, int, bool]:
        if self.proxy_sock is not None and guard.needs_local:
            return self.proxy_sock[0], self.proxy_sock[1], self.ctx.listener.tls.implicit
        return super().local_end(guard, sock)


class ProxyServer:
    """One listening socket of a PROXY listener; quacks like the ``asyncio.Server`` the rest expects."""

    def __init__(self, server: "Server", ctx: "ListenerContext", sock: socket.socket,
                 ssl_ctx: "ssl.SSLContext | None"):
        self.server = server
        self.ctx = ctx
        self.trusts: Callable[[str], bool] = ctx.listener.proxy.trusts
        self.ssl_ctx = ssl_ctx                  # implicit TLS: the handshake follows the header
        self.sockets = [sock]
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task] = set()
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._accept)

    @classmethod
    async def create(cls, server: "Server", ctx: "ListenerContext", host: str, port: int,
                     ssl_ctx: "ssl.SSLContext | None") -> "ProxyServer":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return cls(server, ctx, sock, ssl_ctx)

    # -- accepting -----------------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a moment rather than spin on the event.
                    log.warning("accept failed on %s: %s; pausing accepts for 1s", self.ctx.listener.id, exc)
                    self._loop.remove_reader(self._sock.fileno())
                    self._loop.call_later(1.0, self._resume_accepting)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._serve(conn, addr))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _resume_accepting(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _serve(self, conn: socket.socket, addr: Any) -> None:
        src = dst = None
        try:
            if self.trusts(addr[0]):
                try:
                    header = await asyncio.wait_for(read_header(self._loop, conn), proxy_config.HEADER_TIMEOUT)
                except (ProxyError, TimeoutError, asyncio.TimeoutError, OSError, EOFError) as exc:
                    _log_refusal(addr[0], exc)
                    conn.close()
                    return
                src, dst = header.source, header.dest   # None (LOCAL, UNKNOWN): the socket's own addresses
            smtp = ProxiedConnection(self.server, self.ctx, src, dst)
            if self.ssl_ctx is None:
                # A plain listener's connection is admitted (guard, max-connections) in connection_made.
                await self._loop.connect_accepted_socket(lambda: smtp, conn)
            else:
                await self._tls(smtp, conn, src or addr)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as exc:  # noqa: BLE001 - a failed setup ends this connection only
            log.info("connection from %s on %s failed before the session: %s", (src or addr)[0],
                     self.ctx.listener.id, type(exc).__name__)
            conn.close()

    async def _tls(self, smtp: ProxiedConnection, conn: socket.socket, client: Any) -> None:
        """Implicit TLS after the header, admitted and counted before the handshake as on any implicit
        listener (server/tls_listener.py), but for the client the header named."""
        server, guard = self.server, self.server.guard
        if guard is not None:
            smtp.ticket = guard.admit(client[0], self.ctx.listener.id, *smtp.local_end(guard, conn))
            if smtp.ticket.refusal is not None:
                server._unregister(smtp)                # gives the guard's slots back
                conn.close()
                return
        if not server._register(smtp):
            server._unregister(smtp)
            conn.close()
            return
        smtp.registered = True
        smtp.pending = asyncio.current_task()
        try:
            if smtp.ticket is not None and smtp.ticket.pending is not None:
                if await guard.connect_rate(smtp.ticket) is not None:
                    conn.close()
                    server._unregister(smtp)
                    return
            await self._loop.connect_accepted_socket(lambda: smtp, conn, ssl=self.ssl_ctx,
                                                     ssl_handshake_timeout=self.ctx.listener.tls.timeout)
        except asyncio.CancelledError:
            server._unregister(smtp)
            raise
        except Exception as exc:  # noqa: BLE001 - a client that cannot or will not handshake
            log.info("TLS handshake failed from %s: %s", client[0], type(exc).__name__)
            conn.close()
            server._unregister(smtp)
        finally:
            if smtp.pending is asyncio.current_task():
                smtp.pending = None

    # -- the asyncio.Server surface the Server uses ----------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in list(self._pending):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=1.0)


def _log_refusal(ip: str, exc: BaseException) -> None:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        reason = "no header in time"
    else:
        reason = str(exc) or type(exc).__name__
    # HAProxy closes its health checks with a reset; probes that close at once are routine too.
    quiet = isinstance(exc, (_Silent, ConnectionResetError))
    log.log(logging.DEBUG if quiet else logging.INFO, "PROXY header from %s refused: %s", ip, reason)


async def read_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Any:
    """Consume exactly the PROXY header from the non-blocking ``sock``; return the parsed header."""
    parser = ProxyParser()
    while parser.result is None:
        try:
            data = sock.recv(parser.want(), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)
            continue
        if not data:
            raise (_Silent if parser.want() == V1_MAX else EOFError)("connection closed before the PROXY header")
        used = parser.feed(data)
        while used:                                 # those bytes are in the socket buffer: no wait
            used -= len(sock.recv(used))
    return parser.result


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(fd)
