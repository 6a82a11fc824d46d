"""Connect stage: the settings evaluated once when a session starts (and again after STARTTLS, which
starts the session afresh with ``tls`` true): timeouts, limits, and which lookups AUTH / RCPT use.

When none of these settings depends on the session (the common case: plain values, or if-blocks only
elsewhere), one shared, read-only :class:`SessionParams` serves every session of the listener.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .machine import ListenerContext, Session

_SETTINGS = ("timeout", "duration", "transfer_limit", "ehlo_require", "auth_lookup", "auth_require",
             "auth_errors_total", "auth_errors_wait", "rcpt_domains", "rcpt_addresses", "data_max_messages")
_LOOKUPS = ("auth_lookup", "rcpt_domains", "rcpt_addresses")


class SessionParams:
    __slots__ = _SETTINGS

    def __init__(self, ctx: "ListenerContext", v: Any):
        cfg = ctx.settings.session
        for name in _SETTINGS:
            value = getattr(cfg, name).evaluate(v)
            if name in _LOOKUPS and value is not None:
                value = ctx.lookups[value]
            setattr(self, name, value)


def shared(ctx: "ListenerContext") -> SessionParams | None:
    """The listener-wide params when every connect-time setting is a constant, else None."""
    cfg = ctx.settings.session
    if all(getattr(cfg, name).constant for name in _SETTINGS):
        return SessionParams(ctx, None)
    return None


def evaluate(s: "Session") -> None:
    shared_params = s.ctx.shared_params
    s.params = shared_params if shared_params is not None else SessionParams(s.ctx, s.vars)
