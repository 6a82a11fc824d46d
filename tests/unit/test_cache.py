"""CachedLookup: the cache is the unit under test, so the inner lookup is a tiny scripted one."""
from __future__ import annotations

from smtpgate.config.model import CacheSettings
from smtpgate.lookup.base import (INVALID, AuthResult, Capability, Credentials, Lookup, Outcome, SecretRecord,
                                  unavailable)
from smtpgate.lookup.cache import CachedLookup


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted(Lookup):
    """Passwords in a dict; ``down`` makes it answer UNAVAILABLE. Counts calls."""
    capabilities = Capability.PASSWORD | Capability.CRAM

    def __init__(self, passwords: dict[str, str]):
        self.passwords = dict(passwords)
        self.down = False
        self.calls = 0
        self.started = self.closed = False

    async def authenticate(self, creds: Credentials) -> AuthResult:
        self.calls += 1
        if self.down:
            return unavailable("down")
        if self.passwords.get(creds.username) == creds.secret:
            return AuthResult(Outcome.VALID, account=creds.username)
        return INVALID

    async def get_secret(self, username: str) -> SecretRecord | None:
        return SecretRecord(account=username, plaintext=self.passwords.get(username))

    async def contains(self, key: str) -> bool:
        return key in self.passwords

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True


def creds(user: str, secret: str, kind: str = "password") -> Credentials:
    return Credentials(mechanism="PLAIN", username=user, secret=secret, kind=kind)


def make(entries: int = 100, pos: float = 60, neg: float = 10, **pw: str) -> tuple[CachedLookup, Scripted, Clock]:
    inner = Scripted(pw or {"alice": "right", "bob": "bobpw"})
    clock = Clock()
    return CachedLookup(inner, CacheSettings(entries=entries, ttl_positive=pos, ttl_negative=neg), clock=clock), inner, clock


async def test_positive_hit_and_expiry() -> None:
    cache, inner, clock = make()
    assert (await cache.authenticate(creds("alice", "right"))).valid
    assert (await cache.authenticate(creds("alice", "right"))).valid
    assert inner.calls == 1 and cache.stats.hits == 1 and cache.stats.misses == 1
    clock.now += 59.9
    await cache.authenticate(creds("alice", "right"))
    assert inner.calls == 1
    clock.now += 0.2
    await cache.authenticate(creds("alice", "right"))
    assert inner.calls == 2 and cache.stats.misses == 2


async def test_negative_ttl_is_its_own() -> None:
    cache, inner, clock = make(pos=60, neg=5)
    for _ in range(3):
        assert (await cache.authenticate(creds("alice", "wrong"))).outcome is Outcome.INVALID
    assert inner.calls == 1
    clock.now += 5.1                       # negative expires long before the positive TTL would
    await cache.authenticate(creds("alice", "wrong"))
    assert inner.calls == 2


async def test_zero_ttl_disables_that_kind() -> None:
    cache, inner, _ = make(pos=60, neg=0)
    await cache.authenticate(creds("alice", "wrong"))
    await cache.authenticate(creds("alice", "wrong"))
    assert inner.calls == 2
    await cache.authenticate(creds("alice", "right"))
    await cache.authenticate(creds("alice", "right"))
    assert inner.calls == 3


async def test_unavailable_never_cached() -> None:
    cache, inner, _ = make()
    inner.down = True
    for _ in range(3):
        assert (await cache.authenticate(creds("alice", "right"))).outcome is Outcome.UNAVAILABLE
    assert inner.calls == 3 and len(cache) == 0
    inner.down = False
    assert (await cache.authenticate(creds("alice", "right"))).valid


async def test_failure_with_other_secret_drops_positive() -> None:
    cache, inner, _ = make()
    assert (await cache.authenticate(creds("alice", "right"))).valid
    inner.passwords["alice"] = "changed"      # password changed in the store
    assert (await cache.authenticate(creds("alice", "right"))).valid   # still cached...
    assert not (await cache.authenticate(creds("Alice", "changed-typo"))).valid
    assert not (await cache.authenticate(creds("alice", "right"))).valid  # ...until the first failure
    assert (await cache.authenticate(creds("alice", "changed"))).valid
    # another user's failure does not touch alice's entry
    calls = inner.calls
    await cache.authenticate(creds("bob", "nope"))
    await cache.authenticate(creds("alice", "changed"))
    assert inner.calls == calls + 1


async def test_token_failure_keeps_password_success() -> None:
    cache, inner, _ = make()
    await cache.authenticate(creds("alice", "right"))
    await cache.authenticate(creds("alice", "bad-token", kind="token"))
    calls = inner.calls
    await cache.authenticate(creds("alice", "right"))
    assert inner.calls == calls


async def test_keys_depend_on_every_part_and_hold_no_password() -> None:
    cache, inner, _ = make(alice="right")
    await cache.authenticate(creds("alice", "right"))
    await cache.authenticate(creds("alice", "right", kind="token"))
    await cache.authenticate(creds("alice\x00r", "ight"))    # same concatenation, different split
    await cache.authenticate(Credentials("PLAIN", "alice", "right", authzid="bob"))
    assert inner.calls == 4 and len(cache) == 4
    for key in cache.keys():
        assert isinstance(key, bytes) and len(key) == 32 and b"right" not in key
    other, _, _ = make(alice="right")
    await other.authenticate(creds("alice", "right"))
    assert set(other.keys()).isdisjoint(cache.keys())   # per-process (here: per-instance) random key


async def test_lru_bound() -> None:
    cache, inner, _ = make(entries=3)
    for i in range(3):
        await cache.authenticate(creds(f"u{i}", "x"))
    await cache.authenticate(creds("u0", "x"))        # touch u0: u1 is now the oldest
    await cache.authenticate(creds("u3", "x"))
    assert len(cache) == 3 and cache.stats.evictions == 1
    calls = inner.calls
    await cache.authenticate(creds("u0", "x"))
    assert inner.calls == calls
    await cache.authenticate(creds("u1", "x"))
    assert inner.calls == calls + 1


async def test_eviction_keeps_user_index_consistent() -> None:
    cache, inner, _ = make(entries=1)
    await cache.authenticate(creds("alice", "right"))
    await cache.authenticate(creds("bob", "bobpw"))   # evicts alice's positive entry
    assert not cache.holds_success("alice", "password")
    await cache.authenticate(creds("alice", "wrong"))
    assert len(cache) == 1


async def test_pass_through() -> None:
    cache, inner, _ = make()
    cache.name = "list/users"
    assert inner.name == "list/users" and cache.name == "list/users"
    assert cache.capabilities == Capability.PASSWORD | Capability.CRAM
    assert (await cache.get_secret("alice")).plaintext == "right"
    assert await cache.contains("bob") and not await cache.contains("carol")
    await cache.start()
    await cache.authenticate(creds("alice", "right"))
    await cache.close()
    assert inner.started and inner.closed and len(cache) == 0


async def test_disabled_cache_passes_everything() -> None:
    cache, inner, _ = make(entries=0)
    for _ in range(3):
        await cache.authenticate(creds("alice", "right"))
    assert inner.calls == 3 and len(cache) == 0
