"""The asyncio server: listeners, TLS contexts, lookups, delivery, the sweeper, graceful stop.

Embedding::

    async with smtpgate.Server(settings) as server:
        port = server.ports("submission")[0]
        ...

``Server(settings, delivery=..., lookups=...)`` lets an application supply its own delivery (any
:class:`~smtpgate.delivery.base.Delivery`, or an async callable via ``smtpgate.CallableDelivery``) and
its own lookups (Python objects implementing :class:`~smtpgate.lookup.base.Lookup`), named as in the
configuration.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
import time
from typing import Any

from ..abuse import build as abuse_build
from ..config.model import Settings
from ..protocol import replies as R
from ..delivery.base import Delivery, RcptResult
from ..delivery.nexthop import NextHop
from ..delivery.spool import Spool
from ..lookup import registry
from ..lookup.base import Lookup
from ..observe.observer import Observer
from ..session.context import ListenerContext
from ..session.requests import Deliver
from .clock import Clock
from .connection import SmtpConnection
from .tarpit import Tarpit
from .tls_listener import TlsListener
from .tls import server_context

log = logging.getLogger("smtpgate.server")

SWEEP_INTERVAL = 1.0        # seconds between checks of session.timeout / session.duration


class Server:
    def __init__(self, settings: Settings, *, delivery: Delivery | None = None,
                 lookups: dict[str, Lookup] | None = None, clock: Clock | None = None):
        self.settings = settings
        self.clock = clock or Clock()
        self._custom_delivery = delivery
        self._custom_lookups = lookups or {}
        self.lookups: dict[str, Lookup] = {}
        self.delivery: Delivery | None = None
        self._next_hops: dict[str, Delivery] = {}
        self._servers: dict[str, list[asyncio.AbstractServer]] = {}
        self._ssl_contexts: dict[str, ssl.SSLContext] = {}
        self._contexts: dict[str, ListenerContext] = {}   # current per listener; swapped by reload.py
        self._connections: set[SmtpConnection] = set()
        self._per_listener: dict[str, int] = {}
        self._sweeper: Any = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._connection_budget = 1 << 30     # set from RLIMIT_NOFILE at start()
        self._verdicts: set[asyncio.Task] = set()   # lookups judging credentials of clients gone
        self._budget_warned = False
        self.guard = None               # abuse.guard.Guard: throttles, bans (config/abuse.py)
        self.tarpit = Tarpit()          # banned addresses refused after a random pause (server/tarpit.py)
        self.observer = Observer(self)          # metrics, log events, the management (http) listener

    # -- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> "Server":
        s = self.settings
        nofile, nofile_note = raise_nofile_limit()
        self._connection_budget = _connection_budget(nofile)
        self.lookups = registry.build(s)
        self.lookups.update(self._custom_lookups)
        for lk in registry.unique(self.lookups):
            await lk.start()
        if self._custom_delivery is not None:
            self.delivery = self._custom_delivery
        else:
            self.delivery = Spool(s.queue_path)
        await self.delivery.start()
        self.guard = abuse_build.guard(s)
        if self.guard is not None:
            await self.guard.start()
        for ident, remote in s.remotes.items():
            if remote.protocol in ("smtp", "lmtp") and self._custom_delivery is None:
                self._next_hops[f"remote/{ident}"] = NextHop(remote, s.hostname)
        for ident, listener in s.listeners.items():
            if listener.protocol == "http":
                continue                        # the management listener: observe/, started below
            ssl_ctx = None
            if listener.tls.enable:
                ssl_ctx = server_context(s.certificates[listener.tls.certificate], listener.tls)
                self._ssl_contexts[ident] = ssl_ctx
            ctx = self._contexts[ident] = self._context(s, listener, self.lookups, ssl_ctx)
            servers = []
            for host, port in listener.binds:
                servers.append(await self._listen(ctx, ssl_ctx, host, port))
            self._servers[ident] = servers
            socks = [sock for srv in servers for sock in srv.sockets]
            if len(socks) == 1:
                host, port = socks[0].getsockname()[:2]
                if host not in ("0.0.0.0", "::"):
                    ctx.local_addr = (host, port)
        self._servers.update(await self.observer.start())
        self._sweeper = self.clock.call_later(SWEEP_INTERVAL, self._sweep)
        # Logged once serving: a start that fails ends with its own error line, not this one.
        log.info("file descriptors: %s; up to %d connections at once", nofile_note, self._connection_budget)
        return self

    def _context(self, settings: Settings, listener: Any, lookups: dict[str, Lookup],
                 ssl_ctx: ssl.SSLContext | None) -> ListenerContext:
        """What every session of a listener shares (also built by reload.py for a new configuration)."""
        ctx = ListenerContext(settings, listener, lookups, starttls_available=ssl_ctx is not None)
        ctx.events = self.observer.listener(listener.id)     # log lines and metrics (observe/)
        return ctx

    async def _listen(self, ctx: ListenerContext, ssl_ctx: ssl.SSLContext | None, host: str, port: int) -> Any:
        """One listening socket of a listener (also used by reload.py for added addresses)."""
        listener = ctx.listener
        # the listener's context current at accept time (a reload swaps it: reload.py)
        make = lambda ident=listener.id: SmtpConnection(self, self._contexts.get(ident, ctx))  # noqa: E731
        srv: Any
        if listener.proxy is not None:      # PROXY header first (then TLS): server/proxy.py
            from .proxy import ProxyServer
            srv = await ProxyServer.create(self, ctx, host, port, ssl_ctx if listener.tls.implicit else None)
        elif listener.tls.implicit:
            # Counted from accept, while it handshakes: see tls_listener.py.
            srv = TlsListener(self, make, host, port, ssl_ctx, listener.tls.timeout)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            srv = await asyncio.get_running_loop().create_server(make, host, port, family=family,
                                                                 reuse_address=True, backlog=1024)
        for sock in srv.sockets:
            log.info("listener %s on %s (%s%s)", listener.id, _fmt(sock.getsockname()), listener.protocol,
                     ", implicit TLS" if listener.tls.implicit else ", STARTTLS" if ssl_ctx else "")
        return srv

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let sessions finish for ``grace`` seconds, then close the rest."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.shutdown_grace if grace is None else grace
        for servers in self._servers.values():
            for srv in servers:
                srv.close()
        deadline = time.monotonic() + grace
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self._connections):
            conn.shutdown()
        # Verdicts of abandoned AUTH attempts still being judged: a moment to be recorded, then dropped.
        if self._verdicts:
            await asyncio.wait(list(self._verdicts), timeout=max(0.1, deadline - time.monotonic()))
            late = list(self._verdicts)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)   # done before the lookups close
        await self.observer.stop()
        for servers in self._servers.values():
            for srv in servers:
                try:
                    await asyncio.wait_for(srv.wait_closed(), 1.0)
                except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                    pass
        if self._sweeper is not None:
            self._sweeper.cancel()
        for hop in self._next_hops.values():
            await hop.close()
        if self.delivery is not None:
            await self.delivery.close()
        if self.guard is not None:
            await self.guard.close()
        for lk in registry.unique(self.lookups):
            try:
                await lk.close()
            except Exception:  # noqa: BLE001
                log.exception("closing lookup %s", lk.name)
        self._stopped.set()

    async def __aenter__(self) -> "Server":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop(grace=1.0)

    async def reload(self, path: str) -> bool:
        """Re-read ``path`` and serve new sessions with it (see ``smtpgate.reload``)."""
        from ..reload import reload
        return await reload(self, path)

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    def ports(self, listener_id: str) -> list[int]:
        return [sock.getsockname()[1] for srv in self._servers[listener_id] for sock in srv.sockets]

    def addresses(self, listener_id: str) -> list[tuple]:
        """The socket addresses a listener is bound to (``getsockname()`` of each)."""
        return [sock.getsockname() for srv in self._servers[listener_id] for sock in srv.sockets]

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def sessions(self) -> list:
        """The sessions being served now (connections still in their TLS handshake have none yet)."""
        return [conn.session for conn in list(self._connections) if conn.session is not None]

    # -- used by connections -------------------------------------------------------------------------
    def _register(self, conn: SmtpConnection) -> bool:
        ident = conn.ctx.listener.id
        count = self._per_listener.get(ident, 0)
        if self._stopping or count >= conn.ctx.listener.max_connections:
            return False
        if len(self._connections) >= self._connection_budget:
            # Out of file descriptors soon: refuse at once rather than let accept() fail (asyncio then
            # stops accepting for a second) or a served session's lookup or spool file find none left.
            if not self._budget_warned:
                self._budget_warned = True
                log.warning("connection refused: %d connections use the file descriptors left "
                            "(RLIMIT_NOFILE); raise `ulimit -n`", len(self._connections))
            return False
        self._per_listener[ident] = count + 1
        self._connections.add(conn)
        return True

    def _await_verdict(self, task: asyncio.Task) -> None:
        """A lookup that goes on after its client left (SmtpConnection.connection_lost) -- not while
        stopping: then it is cancelled like any other request, before the lookups close."""
        if self._stopping:
            task.cancel()
            return
        self._verdicts.add(task)
        task.add_done_callback(self._verdicts.discard)

    def _unregister(self, conn: SmtpConnection) -> None:
        if conn.ticket is not None:                 # the abuse guard's concurrency slots
            self.guard.release(conn.ticket)
            conn.ticket = None
        if conn in self._connections:
            self._connections.discard(conn)
            ident = conn.ctx.listener.id
            self._per_listener[ident] = self._per_listener.get(ident, 1) - 1

    async def _deliver(self, req: Deliver) -> list[RcptResult]:
        target = self.delivery
        if req.next_hop is not None and self._custom_delivery is None:
            target = self._next_hops[req.next_hop]
        try:
            return await target.deliver(req.envelope)
        except Exception:  # noqa: BLE001 - a broken delivery must never lose a message silently
            log.exception("delivery failed")
            return [RcptResult.from_reply(R.DELIVERY_FAILED)] * len(req.envelope.rcpt_to)

    def _sweep(self) -> None:
        now = self.clock.now()
        for conn in list(self._connections):
            conn.expire(now)
        if not self._stopped.is_set():
            self._sweeper = self.clock.call_later(SWEEP_INTERVAL, self._sweep)


#: File descriptors kept out of the connection budget: listeners, lookups' and next hops' connections,
#: spool files, logs -- what served sessions need to finish.
FD_RESERVE_MIN = 64


def raise_nofile_limit() -> tuple[int, str]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (each connection is a descriptor). Returns the
    limit now in force and a note for the log."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - no such limit here
        return 1 << 20, "RLIMIT_NOFILE unknown"
    if soft == resource.RLIM_INFINITY:
        return 1 << 20, "RLIMIT_NOFILE unlimited"
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, f"RLIMIT_NOFILE is {soft}"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        return soft, f"RLIMIT_NOFILE stays {soft} (cannot raise it to {hard}: {exc})"
    return hard, f"RLIMIT_NOFILE raised from {soft} to {hard}"


def _connection_budget(nofile: int) -> int:
    return max(8, nofile - max(FD_RESERVE_MIN, nofile // 10))


def _fmt(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
