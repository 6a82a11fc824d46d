"""The server's sense of time, injectable: the sweeper (``session.timeout``, ``session.duration``) and
every delay a session asks for (``errors.wait``) go through one :class:`Clock`, so a test can move time
forward by hand instead of sleeping (tests/fixtures/clock.py)."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


class Clock:
    """The real clock (the default): monotonic seconds; timers on the running event loop."""

    #: Read on every chunk received: the C function itself, no Python frame in between.
    now = staticmethod(time.monotonic)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        """Run ``callback(*args)`` after ``delay`` seconds; returns a handle with ``cancel()``."""
        return asyncio.get_running_loop().call_later(delay, callback, *args)
