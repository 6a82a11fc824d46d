"""The management API's view of bans: list, add, lift -- an adapter over the abuse package's store.

The API speaks in plain dicts (``{"ip": ..., "reason": ..., "expires": <unix time> | None}``); whatever
store the server runs (in memory, persisted, Redis) answers through :func:`adapter`. ``None`` means this
build has no ban store, and the routes answer 501.
"""
from __future__ import annotations

from typing import Any


def adapter(server: Any) -> Any:
    """An object with ``async list()``, ``async add(ip, duration, reason)`` and ``async lift(ip) -> bool``,
    or None when the server has no ban store."""
    return None
