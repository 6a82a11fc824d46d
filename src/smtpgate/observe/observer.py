"""The server's observer: metrics registry, per-listener events, lookup timings, the management listeners.

The :class:`~smtpgate.server.Server` makes one and asks it for a listener's events
(:class:`~smtpgate.observe.events.ListenerEvents`) when it builds that listener. Metrics are always
counted, with or without a ``protocol = "http"`` listener: a reload may add one, and what it exposes
(active sessions above all) must be right from its first scrape; counting costs a few attribute updates
per session (``bench/metrics_overhead.py``). The management app (aiohttp) is only loaded and set up when
the first ``http`` listener appears, at startup or by a reload (``reload.py`` binds, keeps and drops its
sockets through :meth:`Observer.listen` and :meth:`Observer.closed`, as it does for SMTP listeners).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from . import metrics as M
from .events import ListenerEvents

log = logging.getLogger("smtpgate.management")

POSITIVE, NEGATIVE, UNAVAILABLE = "positive", "negative", "unavailable"
CLOSE_GRACE = 15.0      # seconds a request on a management socket a reload dropped may still take


class _LookupMetrics:
    __slots__ = ("positive", "negative", "unavailable", "duration")

    def __init__(self, metrics: Any, name: str):
        self.positive = metrics.lookup_requests.labels_(name, POSITIVE)
        self.negative = metrics.lookup_requests.labels_(name, NEGATIVE)
        self.unavailable = metrics.lookup_requests.labels_(name, UNAVAILABLE)
        self.duration = metrics.lookup_duration.labels_(name)


class Observer:
    def __init__(self, server: Any):
        self.server = server
        self.metrics: Any = M.Metrics()
        self.enabled: bool = self.metrics.enabled      # read on the hot path: a plain attribute
        self._listeners: dict[str, ListenerEvents] = {}
        self._lookups: dict[str, _LookupMetrics] = {}
        self.management: Any = None
        self._lag: LagMonitor | None = None
        # The connections each management socket accepted: closed when a reload drops that socket (aiohttp
        # would otherwise keep an idle keep-alive connection of a removed listener for an hour).
        self._http: dict[Any, set[Any]] = {}
        self.metrics.add_callback(M.executor_queue_depth)
        self.metrics.add_callback(M.cache_collector(lambda: self.server.lookups))   # the current generation's

    def listener(self, ident: str) -> ListenerEvents:
        ev = self._listeners.get(ident)
        if ev is None:
            ev = self._listeners[ident] = ListenerEvents(ident, self.metrics)
        return ev

    def lookup(self, name: str) -> _LookupMetrics | None:
        """Pre-bound children of one lookup (None when metrics are off)."""
        if not self.metrics.enabled:
            return None
        lm = self._lookups.get(name)
        if lm is None:
            lm = self._lookups[name] = _LookupMetrics(self.metrics, name)
        return lm

    def lookup_answered(self, name: str, outcome: str, seconds: float | None = None) -> None:
        lm = self.lookup(name)
        if lm is None:
            return
        getattr(lm, outcome).inc()
        if seconds is not None:
            lm.duration.observe(seconds)

    def reloaded(self) -> None:
        """A new configuration serves: its lookups appear in /metrics before their first request."""
        for name in self.server.lookups:
            self.lookup(name)

    async def start(self) -> dict[str, list[asyncio.AbstractServer]]:
        """Start the lag monitor and the management listeners (if any); returns their asyncio servers by
        listener id (their TLS contexts go to ``server._ssl_contexts``, where a reload finds them)."""
        self.reloaded()                 # every lookup appears in /metrics from the start
        self._lag = LagMonitor(self.metrics)
        self._lag.start()
        settings = self.server.settings
        out: dict[str, list[asyncio.AbstractServer]] = {}
        for ident, listener in settings.listeners.items():
            if listener.protocol != "http":
                continue
            ssl_ctx = None
            if listener.tls.implicit:
                from ..server.tls import server_context
                ssl_ctx = self.server._ssl_contexts[ident] = server_context(
                    settings.certificates[listener.tls.certificate], listener.tls)
            out[ident] = [await self.listen(listener, ssl_ctx, host, port) for host, port in listener.binds]
        return out

    async def listen(self, listener: Any, ssl_ctx: Any, host: str, port: int) -> asyncio.AbstractServer:
        """One listening socket of management listener ``listener`` (also used by reload.py)."""
        if self.management is None:
            from .management import Management
            management = Management(self.server, self.metrics)
            await management.start()
            self.management = management
        handlers = self.management.protocol_factory()
        conns: set[Any] = set()

        def make() -> Any:
            if len(conns) >= 64:        # forget the connections that have ended (few: scrapers, admins)
                conns.difference_update([h for h in conns if h.transport is None])
            handler = handlers()
            conns.add(handler)
            return handler
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        srv = await asyncio.get_running_loop().create_server(make, host, port, family=family, ssl=ssl_ctx,
                                                             reuse_address=True)
        self._http[srv] = conns
        for sock in srv.sockets:
            addr = sock.getsockname()
            log.info("listener %s on %s (http%s: /metrics /healthz /readyz /api)", listener.id,
                     f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}",
                     "s" if ssl_ctx else "")
        return srv

    def closed(self, srv: Any) -> None:
        """``srv`` no longer listens (a reload dropped it): each connection it accepted closes once the
        request in progress on it is answered (at most :data:`CLOSE_GRACE` seconds), idle keep-alive ones
        at once. Not a management socket: nothing to do."""
        handlers = [h for h in self._http.pop(srv, ()) if h.transport is not None]
        if not handlers:
            return
        for handler in handlers:
            # Idle between two requests, as aiohttp's own keep-alive timer tells it (a future waiting
            # for the next request): nothing to finish. Else close() lets the answer go out first.
            waiter = getattr(handler, "_waiter", None)
            if waiter is not None and not waiter.done():
                handler.force_close()
            else:
                handler.close()

        def late() -> None:             # a request that takes longer than the grace, or an aiohttp
            for handler in handlers:    # whose idle state is no longer visible as above
                if handler.transport is not None:
                    handler.force_close()
        asyncio.get_running_loop().call_later(CLOSE_GRACE, late)

    async def stop(self) -> None:
        if self._lag is not None:
            self._lag.stop()
        if self.management is not None:
            await self.management.stop()


class LagMonitor:
    """Event-loop lag: how late a timer due every :attr:`interval` seconds actually ran."""

    interval = 0.5

    def __init__(self, metrics: Any):
        self.lag = metrics.loop_lag.labels_()
        self.lag_max = metrics.loop_lag_max.labels_()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - due)
            self.lag.set(lag)
            if lag > self.lag_max.value:
                self.lag_max.set(lag)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
