"""An implicit-TLS listener that counts a connection from ``accept()``, before its handshake.

asyncio's ``create_server(ssl=...)`` hands a connection to the application only once its handshake is
done, so clients that connect and never handshake are invisible to ``max-connections`` and each holds a
descriptor for the whole handshake timeout (issue 9 item 5). Here the accept loop is ours: a connection
is counted (or refused by closing the socket -- no handshake, nothing said in cleartext) as soon as it
is accepted, and handed to ``loop.connect_accepted_socket(ssl=...)`` for a handshake bounded by the
listener's ``tls.timeout``; a failed handshake gives its slot back at once. (Taking over a plain
transport with ``loop.start_tls`` instead does not work on uvloop, which starts reading the socket after
``connection_made`` even when reading was paused there, and the ClientHello would be lost.)
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Server
    from .connection import SmtpConnection

log = logging.getLogger("smtpgate.server")

_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class TlsListener:
    """Quacks like the ``asyncio.Server`` the other listeners use: ``sockets``, ``close``, ``wait_closed``."""

    def __init__(self, server: "Server", make_connection: Any, host: str, port: int, ssl_ctx: ssl.SSLContext,
                 handshake_timeout: float):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)   # as create_server does
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sockets = [sock]
        self._server = server
        self._make_connection = make_connection
        self._ssl = ssl_ctx
        self._timeout = handshake_timeout
        self._handshakes: set[asyncio.Task] = set()
        self._task = asyncio.get_running_loop().create_task(self._accept(sock))

    async def _accept(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    log.warning("accept failed: %s; pausing accepts for 100 ms", exc.strerror)
                    await asyncio.sleep(0.1)
                continue
            conn: SmtpConnection = self._make_connection()
            guard = self._server.guard
            if guard is not None:
                # Banned/blocked address, concurrency throttle (abuse/guard.py): refused before any handshake.
                conn.ticket = guard.admit(addr[0], conn.ctx.listener.id, *conn.local_end(guard, sock))
                refusal = conn.ticket.refusal
                if refusal is not None:
                    conn.ctx.events.refused_by_reply(refusal, addr[0], addr[1])
                    self._server._unregister(conn)      # gives the guard's slots back
                    self._server.tarpit.refuse(guard, refusal, sock.close)   # no reply: no handshake
                    continue
            if not self._server._register(conn):
                conn.ctx.events.connection_refused("max-connections", addr[0], addr[1])
                self._server._unregister(conn)
                sock.close()                   # the cheapest refusal: no handshake, no reply
                continue
            conn.registered = True
            task = loop.create_task(self._handshake(conn, sock))
            conn.pending = task
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: "SmtpConnection", sock: socket.socket) -> None:
        try:
            if conn.ticket is not None and conn.ticket.pending is not None:
                if await self._server.guard.connect_rate(conn.ticket) is not None:   # connect-rate throttle
                    conn.ctx.events.connection_refused("throttled", *sock.getpeername()[:2], kind="rate")
                    sock.close()
                    self._server._unregister(conn)
                    return
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn, sock, ssl=self._ssl, ssl_handshake_timeout=self._timeout)
        except asyncio.CancelledError:
            sock.close()
            self._server._unregister(conn)
            raise
        except Exception as exc:  # noqa: BLE001 - a client that cannot or will not handshake
            log.info("TLS handshake failed: %s", type(exc).__name__)
            conn.ctx.events.tls_failed("implicit")
            sock.close()
            self._server._unregister(conn)
        finally:
            if conn.pending is asyncio.current_task():
                conn.pending = None

    def close(self) -> None:
        self._task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        return None
