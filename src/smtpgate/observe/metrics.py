"""The Prometheus metrics of one server: what is counted, and how it is exposed on ``/metrics``.

Why not ``prometheus_client.Counter`` children directly: every ``inc()`` there takes a threading lock
(about 0.6 µs; a histogram ``observe()`` 1.2 µs), and a session updates several metrics. All our updates
happen on the server's one event loop, so a child here is a slotted object holding plain numbers (an
``inc()`` costs what an attribute add costs), bound once per label set and kept by its user -- the
listener's events object binds its children when the server starts. ``prometheus_client`` still does
what it is good at: the metric types, the exposition format and the registry. :class:`Metrics` is one
custom collector on a registry of its own (never the process-global one: tests and embedders run
several servers in one process), read when ``/metrics`` is scraped.

Values read only at scrape time (hash-executor queue depth, lookup cache hits/misses) are callbacks,
so they cost nothing between scrapes.

:data:`NULL` stands in where no server counts (sessions driven without a server, in tests or by an
embedder): same interface, nothing counted. A server always counts, with or without a management listener.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Callable, Iterable

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

#: Seconds. AUTH includes hashing and a lookup round trip; failures include ``errors.wait``.
AUTH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int | float = 1) -> None:
        self.value += amount


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int | float = 1) -> None:
        self.value += amount

    def dec(self, amount: int | float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)     # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal")
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    def __init__(self, name: str, doc: str, labels: tuple[str, ...], kind: str,
                 buckets: tuple[float, ...] = ()) -> None:
        self.name, self.doc, self.labels, self.kind, self.buckets = name, doc, labels, kind, buckets
        self.children: dict[tuple[str, ...], Any] = {}

    def labels_(self, *values: str) -> Any:
        """The child for these label values, created once; callers keep it (pre-bound)."""
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labels):
                raise ValueError(f"{self.name}: expected labels {self.labels}, got {values}")
            child = (HistogramChild(self.buckets) if self.kind == "histogram" else
                     GaugeChild() if self.kind == "gauge" else CounterChild())
            self.children[values] = child
        return child

    def collect(self) -> Any:
        if self.kind == "counter":
            fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
            for values, child in self.children.items():
                fam.add_metric(values, child.value)
        elif self.kind == "gauge":
            fam = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
            for values, child in self.children.items():
                fam.add_metric(values, child.value)
        else:
            fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
            for values, child in self.children.items():
                cumulative, buckets = 0, []
                for bound, count in zip((*child.bounds, math.inf), child.counts):
                    cumulative += count
                    buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
                fam.add_metric(values, buckets, child.sum)
        return fam


class Metrics:
    """Every metric family smtpgate exposes. Names are part of the product (dashboards query them):
    change one only with the Grafana dashboard in ``contrib/grafana/`` and the README table."""

    enabled = True

    def __init__(self) -> None:
        self._families: list[_Family] = []
        self._callbacks: list[Callable[[], Iterable[Any]]] = []
        f = self._family
        self.connections = f("smtpgate_connections", "Connections accepted, by listener", ("listener",))
        self.connections_refused = f("smtpgate_connections_refused", "Connections refused before a session "
                                     "started (max-connections, shutting down)", ("listener", "reason"))
        self.sessions_active = f("smtpgate_sessions_active", "Sessions in progress, by listener", ("listener",),
                                 "gauge")
        self.auth_attempts = f("smtpgate_auth_attempts", "AUTH attempts by listener, mechanism and result "
                               "(success, invalid, malformed, cancelled, tempfail)",
                               ("listener", "mechanism", "result"))
        self.auth_duration = f("smtpgate_auth_duration_seconds", "Time from an AUTH command to its final reply "
                               "(failures include session.auth.errors.wait)", ("listener", "result"),
                               "histogram", AUTH_BUCKETS)
        self.lookup_requests = f("smtpgate_lookup_requests", "Lookup requests by lookup and outcome "
                                 "(positive, negative, unavailable)", ("lookup", "outcome"))
        self.lookup_duration = f("smtpgate_lookup_duration_seconds", "Lookup latency of requests that went to "
                                 "the store (answers at hand, such as cache hits, are not timed)", ("lookup",),
                                 "histogram", LOOKUP_BUCKETS)
        self.refusals = f("smtpgate_refusals", "Commands refused, by listener and reason (relay-denied, "
                          "auth-required, encryption-required, sender-not-owned, size, throttled, banned, ...)",
                          ("listener", "reason"))
        self.throttled = f("smtpgate_throttled", "Connections or commands refused by a throttle, by listener "
                           "and throttle kind (concurrency, rate)", ("listener", "kind"))
        self.banned = f("smtpgate_banned_connections", "Connections refused because the client is banned",
                        ("listener",))
        self.bans_active = f("smtpgate_bans_active", "Bans in force, by reason (auth, abuse, loiter, scan, "
                             "manual...); read from the ban store at each scrape", ("reason",), "gauge")
        self.messages = f("smtpgate_messages_accepted", "Messages accepted (durable), by listener", ("listener",))
        self.message_bytes = f("smtpgate_message_bytes_accepted", "Bytes of accepted messages, by listener",
                               ("listener",))
        self.deliveries = f("smtpgate_deliveries", "Delivery attempts by next hop (spool or remote/<id>) and "
                            "outcome (accepted, tempfail, rejected)", ("next_hop", "outcome"))
        self.tls_handshakes = f("smtpgate_tls_handshakes", "TLS handshakes by listener, kind (implicit, starttls) "
                                "and result (ok, failed)", ("listener", "kind", "result"))
        self.loop_lag = f("smtpgate_event_loop_lag_seconds", "How late the event loop ran a timer at the last "
                          "check (every 0.5 s)", (), "gauge")
        self.loop_lag_max = f("smtpgate_event_loop_lag_max_seconds", "Largest event-loop lag seen since the "
                              "previous scrape", (), "gauge")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def _family(self, name: str, doc: str, labels: tuple[str, ...], kind: str = "counter",
                buckets: tuple[float, ...] = ()) -> _Family:
        fam = _Family(name, doc, labels, kind, buckets)
        self._families.append(fam)
        return fam

    def add_callback(self, fn: Callable[[], Iterable[Any]]) -> None:
        """``fn()`` yields metric families at scrape time (values that cost nothing in between)."""
        self._callbacks.append(fn)

    # -- prometheus_client collector protocol --------------------------------------------------------
    def collect(self) -> Iterable[Any]:
        for fam in self._families:
            yield fam.collect()
        for fn in self._callbacks:
            yield from fn()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body and content type for a scrape; ``accept`` (the request's Accept header) chooses
        between the Prometheus text format and OpenMetrics, as prometheus_client negotiates it."""
        encoder, content_type = choose_encoder(accept)
        out = encoder(self.registry)
        self.loop_lag_max.labels_().set(0.0)     # "since the previous scrape"
        return out, content_type


class _NullChild:
    __slots__ = ()

    def inc(self, amount: int | float = 1) -> None:
        pass

    def dec(self, amount: int | float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


class _NullFamily:
    __slots__ = ()

    def labels_(self, *values: str) -> _NullChild:
        return NULL_CHILD


class _NullMetrics:
    """No server to expose them: nothing is counted."""
    enabled = False

    def __getattr__(self, name: str) -> _NullFamily:
        return NULL_FAMILY

    def add_callback(self, fn: Callable[[], Iterable[Any]]) -> None:
        pass


NULL_CHILD = _NullChild()
NULL_FAMILY = _NullFamily()
NULL = _NullMetrics()


# -- scrape-time values ---------------------------------------------------------------------------
def executor_queue_depth() -> Iterable[Any]:
    """Jobs waiting for a hashing thread (not yet started). The pool lives in ``smtpgate.executor``
    (or, in older trees, ``smtpgate.lookup.secrets``); a pool not created yet has an empty queue."""
    depth = 0
    for modname in ("smtpgate.executor", "smtpgate.lookup.secrets"):
        try:
            module = __import__(modname, fromlist=["_executor"])
        except ImportError:
            continue
        pool = getattr(module, "_executor", None)
        queue = getattr(pool, "_work_queue", None)
        if queue is not None:
            depth = queue.qsize()
            break
    fam = GaugeMetricFamily("smtpgate_hash_queue_depth", "Password-hashing jobs waiting for a thread of the "
                            "bounded hash executor")
    fam.add_metric((), depth)
    yield fam


def cache_collector(current: Callable[[], dict[str, Any]]) -> Callable[[], Iterable[Any]]:
    """Hits and misses of every lookup with a result cache (``cache.entries``), read from its stats.
    ``current()`` gives the lookups serving now: a reload builds new ones (their counts start at zero,
    which Prometheus' rate() reads as a counter reset)."""

    def collect() -> Iterable[Any]:
        cached: dict[str, Any] = {}
        seen: set[int] = set()
        for name, lk in current().items():
            stats = getattr(lk, "stats", None)
            if stats is not None and hasattr(stats, "hits") and id(lk) not in seen:   # aliases: once
                seen.add(id(lk))
                cached[name] = lk
        hits = CounterMetricFamily("smtpgate_lookup_cache_hits", "Lookup answers served from the result cache",
                                   labels=("lookup",))
        misses = CounterMetricFamily("smtpgate_lookup_cache_misses", "Lookup requests the result cache could not "
                                     "answer", labels=("lookup",))
        for name, lk in cached.items():
            hits.add_metric((name,), lk.stats.hits)
            misses.add_metric((name,), lk.stats.misses)
        yield hits
        yield misses
    return collect
