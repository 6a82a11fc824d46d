"""A result cache in front of any lookup (``<section>.<id>.cache.*``).

* Keys are HMAC-SHA256 under a random per-process key over (credential kind, username, authzid, secret),
  each part length-prefixed so no two different inputs share a key. Neither the password nor a plain hash
  of it is ever kept (SPEC §5, §7).
* LRU bounded by ``cache.entries``; VALID answers live ``cache.ttl.positive``, INVALID answers
  ``cache.ttl.negative`` (each from its own key; 0 = don't cache that kind). UNAVAILABLE is never cached.
* When a user fails with a secret that is not cached, every positive entry of that user is dropped: once a
  password was changed or an account disabled, the first failed attempt ends the old password's cached
  success instead of letting it live out its TTL.

Only ``authenticate`` is cached; ``get_secret``/``contains`` and lifecycle calls pass through.
"""
from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, KeysView

from ..config.model import CacheSettings
from .base import AuthResult, Capability, Credentials, Lookup, Outcome, SecretRecord

log = logging.getLogger("smtpgate.lookup.cache")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass(slots=True)
class _Entry:
    result: AuthResult
    expires: float
    user: str


def _part(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    return len(raw).to_bytes(4, "big") + raw


class CachedLookup(Lookup):
    def __init__(self, inner: Lookup, settings: CacheSettings, *, clock: Callable[[], float] = time.monotonic):
        self.inner = inner
        self._max = max(0, int(settings.entries))
        self._ttl_pos = max(0.0, float(settings.ttl_positive))
        self._ttl_neg = max(0.0, float(settings.ttl_negative))
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_user: dict[str, set[bytes]] = {}   # user -> keys of its POSITIVE entries
        self.stats = CacheStats()

    # -- pass-through -------------------------------------------------------------------------------
    @property  # type: ignore[override]
    def name(self) -> str:
        return self.inner.name

    @name.setter
    def name(self, value: str) -> None:
        self.inner.name = value

    @property  # type: ignore[override]
    def capabilities(self) -> Capability:
        return self.inner.capabilities

    @property  # type: ignore[override]
    def scram_decoy(self) -> dict[str, tuple[int, int]]:
        return self.inner.scram_decoy

    async def get_secret(self, username: str) -> SecretRecord | None:
        return await self.inner.get_secret(username)

    async def contains(self, key: str) -> bool:
        return await self.inner.contains(key)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        self.clear()
        await self.inner.close()

    # -- the cache ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> KeysView[bytes]:
        """The cache keys, least recently used first (read-only view): 32-byte HMAC-SHA256 digests under
        this process's random key, so what can be inspected here is never a password or a plain hash."""
        return self._entries.keys()

    def holds_success(self, username: str, kind: str = "password") -> bool:
        """Whether a VALID answer for ``username`` (credential ``kind``: "password" or "token") is held --
        e.g. whether an old password's success is still cached. An expired one counts until it is next
        looked up or evicted."""
        return self._user(kind, username) in self._by_user

    def clear(self) -> None:
        self._entries.clear()
        self._by_user.clear()

    def _cache_key(self, creds: Credentials) -> bytes:
        msg = b"".join(_part(p) for p in (creds.kind, creds.username, creds.authzid, creds.secret))
        return hmac.digest(self._key, msg, "sha256")

    @staticmethod
    def _user(kind: str, username: str) -> str:
        # per kind: a rejected token must not evict the same user's cached password success
        return f"{kind}\0{username.lower()}"

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry.result.valid:
            keys = self._by_user.get(entry.user)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_user[entry.user]

    def _drop_positives(self, user: str) -> None:
        for key in list(self._by_user.get(user, ())):
            self._remove(key)

    def _store(self, key: bytes, user: str, result: AuthResult) -> None:
        ttl = self._ttl_pos if result.valid else self._ttl_neg
        if ttl <= 0 or self._max <= 0:
            return
        self._remove(key)
        self._entries[key] = _Entry(result, self._clock() + ttl, user)
        if result.valid:
            self._by_user.setdefault(user, set()).add(key)
        while len(self._entries) > self._max:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.stats.evictions += 1

    def authenticate_now(self, creds: Credentials) -> AuthResult | None:
        """A live cache entry, if any (counted as a hit); else None and authenticate() does the rest."""
        key = self._cache_key(creds)
        entry = self._entries.get(key)
        if entry is not None and entry.expires > self._clock():
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry.result
        return None

    def get_secret_now(self, username: str):
        return self.inner.get_secret_now(username)

    def contains_now(self, key: str):
        return self.inner.contains_now(key)

    async def authenticate(self, creds: Credentials) -> AuthResult:
        key = self._cache_key(creds)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires > self._clock():
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry.result
            self._remove(key)
        self.stats.misses += 1
        result = await self.inner.authenticate(creds)
        if result.outcome is Outcome.UNAVAILABLE:
            return result
        user = self._user(creds.kind, creds.username)
        if result.outcome is Outcome.INVALID:
            self._drop_positives(user)
        self._store(key, user, result)
        return result
