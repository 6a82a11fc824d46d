"""Per-session parameters: the ``session.*`` settings evaluated once when a session starts (and again
after STARTTLS, which starts the session afresh with ``tls`` true), as named, typed fields -- the shape
of Stalwart's ``params.rs``. A grep for a field name finds its definition here, its evaluation here,
and its use in the stage that needs it.

Settings that depend on later variables (``mechanisms`` on ``helo-domain``, ``relay`` on ``rcpt``...)
are not here: the stage that uses them evaluates them when their variables exist.
"""
from __future__ import annotations

from typing import Any

from ..config.model import SessionSettings
from ..lookup.base import Lookup


class SessionParams:
    __slots__ = ("timeout", "duration", "transfer_limit", "ehlo_require", "errors_total", "auth_lookup", "auth_require",
                 "auth_errors_total", "auth_errors_wait", "auth_errors_wait_spread", "rcpt_domains", "rcpt_addresses", "data_max_messages")

    def __init__(self, cfg: SessionSettings, lookups: dict[str, Lookup], v: Any):
        self.timeout: float = cfg.timeout.evaluate(v)                          # idle seconds
        self.duration: float = cfg.duration.evaluate(v)                        # max session seconds
        self.transfer_limit: int = cfg.transfer_limit.evaluate(v)              # max bytes received
        self.ehlo_require: bool = cfg.ehlo_require.evaluate(v)
        self.errors_total: int = cfg.errors_total.evaluate(v)                  # bad commands before 421
        self.auth_lookup: Lookup | None = _lookup(lookups, cfg.auth_lookup.evaluate(v))
        self.auth_require: bool = cfg.auth_require.evaluate(v)
        self.auth_errors_total: int = cfg.auth_errors_total.evaluate(v)
        self.auth_errors_wait: float = cfg.auth_errors_wait.evaluate(v)        # seconds before a failure reply
        self.auth_errors_wait_spread: float = cfg.auth_errors_wait_spread.evaluate(v)   # share added at random
        self.rcpt_domains: Lookup | None = _lookup(lookups, cfg.rcpt_domains.evaluate(v))
        self.rcpt_addresses: Lookup | None = _lookup(lookups, cfg.rcpt_addresses.evaluate(v))
        self.data_max_messages: int = cfg.data_max_messages.evaluate(v)


def connect_time_constant(cfg: SessionSettings) -> bool:
    """True when no connect-time setting depends on the session: then one shared, read-only
    :class:`SessionParams` serves every session of a listener (the common case, and the fast one)."""
    return all(e.constant for e in (
        cfg.timeout, cfg.duration, cfg.transfer_limit, cfg.ehlo_require, cfg.errors_total, cfg.auth_lookup, cfg.auth_require,
        cfg.auth_errors_total, cfg.auth_errors_wait, cfg.auth_errors_wait_spread, cfg.rcpt_domains, cfg.rcpt_addresses, cfg.data_max_messages))


def _lookup(lookups: dict[str, Lookup], name: str | None) -> Lookup | None:
    return None if name is None else lookups[name]
