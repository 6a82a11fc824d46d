"""``server.auto-ban.tarpit``: during a reconnect storm, a banned or blocked address is refused after a
random pause.

The refusal itself stays what the guard decided at accept (the reply of ``abuse/replies.py``, or for
implicit TLS a bare close), before a byte of the client is read. Only *when* it happens changes: the
socket is held, unread and unregistered, for a random time in ``[0, tarpit)``, then answered and closed.

Why: a banned client that reconnects the moment it is refused costs the machine a whole connection's
work (the proxy's, the kernel's, ours) per reconnect, and a botnet whose sessions are refused together
comes back together, as a burst that a real user's login arrives in the middle of. The pause lowers the
rate of a client that waits for the refusal, and the random part breaks the bursts up.

When: only in a burst or a flood -- the second and later ban refusals made in the same turn of the
event loop (a batch of accepts, or connections that arrived while the loop was busy), and every ban
refusal past the first ``FLOOD`` in a second (per process). So a few banned clients here and there, or
one connecting again and again, one connection at a time, at up to ``FLOOD`` a second, are refused at
once, as without a tarpit (there is no burst to break up, and holding their connections would only keep
descriptors open and wake the loop twice per refusal); a storm is spread out and slowed down.

What it costs: one descriptor per held connection, nothing read, no session. Release times are rounded
up to a ``GRAIN`` (3 ms) so the refusals due together are made in one turn of the event loop instead of
one wake-up each (a wake-up per refusal cost up to twice the CPU per refusal under a reconnect storm in
bench/abuse.py). The grain stays small: the clients refused in one turn come back together, and a
10 ms grain made those groups large enough to delay other clients' logins again. At most ``HELD_MAX``
are held per process (beyond that a refusal is immediate), so an attacker cannot turn the pause into a
descriptor exhaustion. Held connections do not count toward ``max-connections``.
"""
from __future__ import annotations

import asyncio
import math
import random
from typing import Any, Callable

from ..abuse import replies

HELD_MAX = 1024
GRAIN = 0.003
FLOOD = 1000            # ban refusals a second (per process) past which every one is held


class Tarpit:
    __slots__ = ("held", "random", "_in_turn", "_window", "_count")

    def __init__(self, rnd: Callable[[], float] = random.random):
        self.held = 0           # connections waiting for their refusal now
        self.random = rnd
        self._in_turn = False   # a ban refusal was made in this turn of the event loop already
        self._window = 0.0      # start of the current one-second window
        self._count = 0         # ban refusals in it

    def refuse(self, guard: Any, refusal: bytes | None, refuse: Callable[..., None], *args: Any) -> None:
        """Call ``refuse(*args)`` now, or after the pause when ``refusal`` is the ban reply, the guard's
        settings ask for a tarpit, and this refusal is part of a burst or a flood."""
        delay = guard.settings.tarpit if refusal is replies.BANNED and guard is not None else 0.0
        if delay <= 0 or self.held >= HELD_MAX:
            refuse(*args)
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._window >= 1.0:
            self._window, self._count = now, 0
        self._count += 1
        if not self._in_turn and self._count <= FLOOD:
            self._in_turn = True
            loop.call_soon(self._turn_over)         # runs after this turn's callbacks
            refuse(*args)
            return
        self.held += 1
        when = math.ceil((now + delay * self.random()) / GRAIN) * GRAIN
        loop.call_at(when, self._release, refuse, args)

    def _turn_over(self) -> None:
        self._in_turn = False

    def _release(self, refuse: Callable[..., None], args: tuple) -> None:
        self.held -= 1
        refuse(*args)
