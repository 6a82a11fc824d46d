"""Connect stage: the settings evaluated once when a session starts (and again after STARTTLS, which
starts the session afresh with ``tls`` true): timeouts, limits, and which lookups AUTH / RCPT use."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .machine import Session


class SessionParams:
    __slots__ = ("timeout", "duration", "transfer_limit", "ehlo_require", "auth_lookup", "auth_require",
                 "auth_errors_total", "auth_errors_wait", "rcpt_domains", "rcpt_addresses", "data_max_messages")

    def __init__(self, s: "Session"):
        cfg = s.ctx.settings.session
        v = s.vars
        lookups = s.ctx.lookups
        self.timeout: float = cfg.timeout.evaluate(v)
        self.duration: float = cfg.duration.evaluate(v)
        self.transfer_limit: int = cfg.transfer_limit.evaluate(v)
        self.ehlo_require: bool = cfg.ehlo_require.evaluate(v)
        self.auth_lookup: Any = _lookup(lookups, cfg.auth_lookup.evaluate(v))
        self.auth_require: bool = cfg.auth_require.evaluate(v)
        self.auth_errors_total: int = cfg.auth_errors_total.evaluate(v)
        self.auth_errors_wait: float = cfg.auth_errors_wait.evaluate(v)
        self.rcpt_domains: Any = _lookup(lookups, cfg.rcpt_domains.evaluate(v))
        self.rcpt_addresses: Any = _lookup(lookups, cfg.rcpt_addresses.evaluate(v))
        self.data_max_messages: int = cfg.data_max_messages.evaluate(v)


def _lookup(lookups: dict, name: str | None) -> Any:
    return None if name is None else lookups[name]


def evaluate(s: "Session") -> None:
    s.params = SessionParams(s)
