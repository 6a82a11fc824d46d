"""What every session of one listener shares, built once by the server."""
from __future__ import annotations

import random

from ..config.model import ListenerSettings, Settings
from ..lookup.base import Lookup
from ..protocol import replies as R
from .params import SessionParams, connect_time_constant


class ListenerContext:
    def __init__(self, settings: Settings, listener: ListenerSettings, lookups: dict[str, Lookup],
                 starttls_available: bool):
        self.settings = settings
        self.listener = listener
        self.lookups = lookups
        self.starttls_available = starttls_available and not listener.tls.implicit
        self.hostname = listener.hostname or settings.hostname
        self.greeting = R.reply(220, f"{self.hostname} {listener.greeting or settings.greeting}")
        self.lmtp = listener.protocol == "lmtp"
        self.local_addr: tuple[str, int] | None = None  # set by the server when the listener has one address
        self.ehlo_cache: dict[tuple, bytes] = {}       # see ehlo.capabilities
        self.random = random.random     # [0, 1): session.auth.errors.wait-spread (tests may pin it)
        #: the listener-wide params when every connect-time setting is a constant, else None
        self.shared_params = (SessionParams(settings.session, lookups, None)
                              if connect_time_constant(settings.session) else None)
        from ..observe.events import default_listener_events
        self.events = default_listener_events(listener.id)   # the server sets a counting one (observe/)
