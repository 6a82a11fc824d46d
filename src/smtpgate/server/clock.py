"""The server's sense of time, injectable: the sweeper (``session.timeout``, ``session.duration``) and
every delay a session asks for (``errors.wait``) go through one :class:`Clock`, so a test can move time
forward by hand instead of sleeping (tests/fixtures/clock.py)."""
from __future__ import annotations

import asyncio
from typing import Any, Callable


class Clock:
    """The event loop's monotonic clock (the default)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        """Run ``callback(*args)`` after ``delay`` seconds; returns a handle with ``cancel()``."""
        return asyncio.get_running_loop().call_later(delay, callback, *args)
