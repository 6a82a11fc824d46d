"""The PROXY protocol at accept time, before a session exists (and before TLS on implicit-TLS listeners).

A listener with ``proxy.trusted-networks`` is served by a :class:`ProxyServer` instead of
``loop.create_server``. For each accepted socket it decides, from the peer address alone:

* peer outside the trusted networks: an ordinary client. The socket goes straight to the SMTP transport;
  a PROXY header it sends is a bad command like any other, never believed.
* trusted peer (the load balancer): the socket must start with a valid v1 or v2 header within
  ``HEADER_TIMEOUT``; otherwise it is closed without a word (whatever we said would reach the proxy's
  client, who did nothing wrong; a proxy that sends no header is misconfigured). The header's addresses
  become the session's remote and local address (for the abuse guard's admission too); then TLS
  (implicit listeners) and SMTP start.

Every accepted connection counts toward ``max-connections`` from ``accept()`` on, also while its header
is awaited (a peer that sends none holds a slot for ``HEADER_TIMEOUT``, never an uncounted descriptor).

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
import functools
import logging
import socket
from typing import TYPE_CHECKING, Any, Callable

from ..config import proxy as proxy_config
from ..protocol import replies as R
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
    """One listening socket of a PROXY listener; quacks like the ``asyncio.Server`` the rest expects.

    The accept path does as much as it can synchronously, because a banned client behind the load
    balancer reconnects as fast as it is refused: the header normally arrives with the connection, so
    it is read right after ``accept()``, the guard is asked, and a refused connection is answered and
    closed there and then -- no task, no transport, no connection object (about a third of the CPU of
    the task-based path it replaces). Every accepted connection is counted toward ``max-connections``
    from ``accept()`` on, also while its header is still awaited.
    """

    def __init__(self, server: "Server", ctx: "ListenerContext", sock: socket.socket,
                 ssl_ctx: "ssl.SSLContext | None"):
        self.server = server
        self.ctx = ctx
        self.trusts = ctx.listener.proxy.trusts
        self.ssl_ctx = ssl_ctx                  # implicit TLS: the handshake follows the header
        self.sockets = [sock]
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task] = set()
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._accept)

    @property
    def trusts(self) -> Callable[[str], bool]:
        return self._trusts

    @trusts.setter
    def trusts(self, check: Callable[[str], bool]) -> None:
        # Per accepted connection, and the answer only depends on the peer address (set again by a reload).
        self._trusts = functools.lru_cache(maxsize=1024)(check)

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
            try:
                self._take(conn, addr)
            except Exception:  # noqa: BLE001 - one connection's failure must not stop the accept loop
                log.exception("connection from %s on %s failed at accept", addr[0], self.ctx.listener.id)
                conn.close()

    def _resume_accepting(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _take(self, conn: socket.socket, addr: Any) -> None:
        """One accepted socket: header (if it is there), guard, max-connections -- then a task only for
        what has to wait (the rest of the header, a shared connect-rate check, the transport)."""
        smtp = ProxiedConnection(self.server, self.ctx, None, None)
        parser = None
        if self.trusts(addr[0]):
            parser = ProxyParser()
            try:
                complete = feed_available(parser, conn)
            except (ProxyError, OSError, EOFError) as exc:
                _log_refusal(addr[0], exc)
                conn.close()
                return
            if complete:
                smtp.proxy_peer, smtp.proxy_sock = parser.result.source, parser.result.dest
                parser = None
        if parser is None and not self._admit(smtp, conn, smtp.proxy_peer or addr):
            return
        if not self.server._register(smtp):
            client = smtp.proxy_peer or addr
            self.ctx.events.connection_refused("max-connections", client[0], client[1])
            self.server._unregister(smtp)           # gives the guard's slots back
            self._refuse(conn, R.TOO_MANY_CONNECTIONS)
            return
        smtp.registered = True
        task = self._loop.create_task(self._serve(smtp, conn, addr, parser))
        smtp.pending = task
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _admit(self, smtp: ProxiedConnection, conn: socket.socket, client: Any) -> bool:
        """The abuse guard's word on the client (the header's, else the socket's peer): False when the
        connection was refused (answered and closed here)."""
        guard = self.server.guard
        if guard is None:
            return True
        smtp.ticket = ticket = guard.admit(client[0], self.ctx.listener.id, *smtp.local_end(guard, conn))
        if ticket.refusal is None:
            return True
        self.ctx.events.refused_by_reply(ticket.refusal, client[0], client[1])
        self.server._unregister(smtp)               # gives the guard's slots back (and the count, if any)
        self.server.tarpit.refuse(guard, ticket.refusal, self._refuse, conn, ticket.refusal)
        return False

    def _refuse(self, conn: socket.socket, reply: bytes) -> None:
        """Say ``reply`` (plain listeners: implicit TLS gets nothing in cleartext) and close."""
        if self.ssl_ctx is None:
            try:
                conn.send(reply)                    # a fresh socket's buffer always takes one line
            except OSError:
                pass
        conn.close()

    async def _serve(self, smtp: ProxiedConnection, conn: socket.socket, addr: Any,
                     parser: ProxyParser | None) -> None:
        server = self.server
        try:
            if parser is not None:                  # the header had not (fully) arrived at accept
                try:
                    async with asyncio.timeout(proxy_config.HEADER_TIMEOUT):
                        header = await read_header(self._loop, conn, parser)
                except (ProxyError, TimeoutError, OSError, EOFError) as exc:
                    _log_refusal(addr[0], exc)
                    server._unregister(smtp)        # uncounted before the peer can see the close
                    conn.close()
                    return
                smtp.proxy_peer, smtp.proxy_sock = header.source, header.dest   # None: the socket's own
                if not self._admit(smtp, conn, smtp.proxy_peer or addr):
                    return
            ticket = smtp.ticket
            if ticket is not None and ticket.pending is not None:      # a connect-rate throttle, shared store
                refusal = await server.guard.connect_rate(ticket)
                if refusal is not None:
                    client = smtp.proxy_peer or addr
                    self.ctx.events.refused_by_reply(refusal, client[0], client[1])
                    server._unregister(smtp)
                    self._refuse(conn, refusal)
                    return
            if self.ssl_ctx is None:
                # Registered and admitted already: connection_made starts the session at once.
                await self._loop.connect_accepted_socket(lambda: smtp, conn)
            else:
                await self._loop.connect_accepted_socket(lambda: smtp, conn, ssl=self.ssl_ctx,
                                                         ssl_handshake_timeout=self.ctx.listener.tls.timeout)
        except asyncio.CancelledError:
            server._unregister(smtp)
            conn.close()
            raise
        except Exception as exc:  # noqa: BLE001 - a failed setup (a TLS handshake) ends this connection only
            client = smtp.proxy_peer or addr
            if self.ssl_ctx is not None:
                log.info("TLS handshake failed from %s: %s", client[0], type(exc).__name__)
                self.ctx.events.tls_failed("implicit")
            else:
                log.info("connection from %s on %s failed before the session: %s", client[0],
                         self.ctx.listener.id, type(exc).__name__)
            server._unregister(smtp)
            conn.close()
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


def feed_available(parser: ProxyParser, sock: socket.socket) -> bool:
    """Consume what has arrived of the PROXY header from the non-blocking ``sock`` -- exactly the
    header's bytes, never the client's -- into ``parser``; True once the header is complete."""
    while parser.result is None:
        try:
            data = sock.recv(parser.want(), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        if not data:
            raise (_Silent if parser.want() == V1_MAX else EOFError)("connection closed before the PROXY header")
        used = parser.feed(data)
        while used:                                 # those bytes are in the socket buffer: no wait
            used -= len(sock.recv(used))
    return True


async def read_header(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                      parser: ProxyParser | None = None) -> Any:
    """The whole PROXY header from ``sock`` (continuing ``parser``), waiting for it to arrive."""
    parser = parser or ProxyParser()
    while not feed_available(parser, sock):
        await _readable(loop, sock)
    return parser.result


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(fd)
