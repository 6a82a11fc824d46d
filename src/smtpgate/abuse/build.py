"""Settings -> the store and the guard the server uses (``storage.lookup`` picks the store)."""
from __future__ import annotations

from typing import Any

from .guard import Guard
from .store import Store


def store(settings: Any) -> Store:
    a = settings.abuse
    if a.store is not None:
        from .redis import RedisStore
        return RedisStore(a.store)
    from .memory import MemoryStore
    return MemoryStore(a.ban_file)


def guard(settings: Any) -> Guard | None:
    """None when the settings carry no abuse section (a hand-built ``Settings``)."""
    if getattr(settings, "abuse", None) is None:
        return None
    return Guard(settings.abuse, store(settings))
