"""The server's observer: metrics registry, per-listener events, lookup timings, the management listener.

The :class:`~smtpgate.server.Server` makes one and asks it for a listener's events
(:class:`~smtpgate.observe.events.ListenerEvents`) when it builds that listener. Metrics are collected only
when a ``protocol = "http"`` listener exists (nobody could read them otherwise); log lines do not depend
on it.
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
        self.http_listeners = {ident: lst for ident, lst in server.settings.listeners.items()
                               if lst.protocol == "http"}
        self.metrics: Any = M.Metrics() if self.http_listeners else M.NULL
        self.enabled: bool = self.metrics.enabled      # read on the hot path: a plain attribute
        self._listeners: dict[str, ListenerEvents] = {}
        self._lookups: dict[str, _LookupMetrics] = {}
        self.management: Any = None
        self._lag: Any = None

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

    async def start(self) -> dict[str, list[asyncio.AbstractServer]]:
        """Start the management listeners (if any); returns their asyncio servers by listener id."""
        if not self.http_listeners:
            return {}
        self.metrics.add_callback(M.executor_queue_depth)
        self.metrics.add_callback(M.cache_collector(self.server.lookups))
        for name in self.server.lookups:
            self.lookup(name)           # every lookup appears in /metrics from the start
        from .management import LagMonitor, Management
        self.management = Management(self.server, self.metrics)
        await self.management.start()
        self._lag = LagMonitor(self.metrics)
        self._lag.start()
        loop = asyncio.get_running_loop()
        out: dict[str, list[asyncio.AbstractServer]] = {}
        for ident, listener in self.http_listeners.items():
            ssl_ctx = None
            if listener.tls.implicit:
                from ..server.tls import server_context
                ssl_ctx = server_context(self.server.settings.certificates[listener.tls.certificate], listener.tls)
            servers = []
            for host, port in listener.binds:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                srv = await loop.create_server(self.management.protocol_factory(), host, port, family=family,
                                               ssl=ssl_ctx, reuse_address=True)
                servers.append(srv)
                for sock in srv.sockets:
                    addr = sock.getsockname()
                    log.info("listener %s on %s (http%s: /metrics /healthz /readyz /api)", ident,
                             f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}",
                             "s" if ssl_ctx else "")
            out[ident] = servers
        return out

    async def stop(self) -> None:
        if self._lag is not None:
            self._lag.stop()
        if self.management is not None:
            await self.management.stop()
