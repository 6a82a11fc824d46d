"""The one interface every credential / membership store implements.

A lookup answers three ways and never raises for an ordinary answer:

* ``Outcome.VALID``       -- credentials verified (``account`` is the canonical name, ``addresses``
                             the mail addresses the store says the account owns, if it knows them);
* ``Outcome.INVALID``     -- wrong credentials, unknown user, disabled account: all the same to the caller;
* ``Outcome.UNAVAILABLE`` -- the store could not answer (down, slow, garbage). The AUTH stage turns this
                             into ``454 4.7.0`` and neither counts it as a failure nor caches it.

Each lookup declares what it can do in ``capabilities``; the AUTH stage offers only mechanisms the
configured lookup can verify (SPEC §4.1). Implementations must be fully asynchronous, bound every
operation by their own ``timeout`` and limit parallel operations to ``concurrency``.

Lookups never import the session: they receive :class:`Credentials` and return :class:`AuthResult`.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    VALID = "valid"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"


class Capability(enum.Flag):
    NONE = 0
    PASSWORD = enum.auto()   # verifies username + password (PLAIN, LOGIN)
    TOKEN = enum.auto()      # verifies a bearer token (OAUTHBEARER, XOAUTH2)
    SCRAM = enum.auto()      # supplies SCRAM keys (salt, iterations, StoredKey, ServerKey) or a plaintext secret
    CRAM = enum.auto()       # supplies a plaintext secret (CRAM-MD5)
    MEMBERSHIP = enum.auto() # answers "is KEY in this set" (local domains, in-list)


@dataclass(slots=True, unsafe_hash=True)
class Origin:
    """Where an attempt comes from: the SMTP client's address and port, and the local address and port
    it connected to. A remote store may be told (IMAP ``ID``) so that its own per-IP protections (Dovecot's
    auth penalty) apply to the client, not to smtpgate."""
    client_ip: str
    client_port: int
    local_ip: str
    local_port: int


@dataclass(slots=True, unsafe_hash=True)
class Credentials:
    """What a SASL mechanism extracted from the client. ``secret`` is a password or a bearer token
    (``kind`` says which). Never log ``secret``. ``origin`` is added by the AUTH stage (mechanisms do
    not know the connection); it is not part of what is verified or cached."""
    mechanism: str           # upper-case SASL name, e.g. "PLAIN"
    username: str            # authcid (for tokens: the user the client claims, may be "")
    secret: str
    kind: str = "password"   # "password" | "token"
    authzid: str = ""
    origin: Origin | None = None

    def __repr__(self) -> str:  # keeps secrets out of tracebacks and debug logs
        return f"Credentials(mechanism={self.mechanism!r}, username={self.username!r}, kind={self.kind!r})"


@dataclass(slots=True, unsafe_hash=True)
class AuthResult:
    outcome: Outcome
    account: str = ""                                # canonical account name when VALID
    addresses: frozenset[str] = frozenset()          # lower-cased addresses the account owns
    may_act_for: frozenset[str] = frozenset()        # authzids this account may use (PLAIN authzid)
    reason: str = ""                                 # for logs only (never contains secrets)

    @property
    def valid(self) -> bool:
        return self.outcome is Outcome.VALID


INVALID = AuthResult(Outcome.INVALID)


def unavailable(reason: str) -> AuthResult:
    return AuthResult(Outcome.UNAVAILABLE, reason=reason)


@dataclass(slots=True, unsafe_hash=True)
class ScramKeys:
    """Stored SCRAM credentials for one hash (RFC 5802 §3)."""
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@dataclass(slots=True, unsafe_hash=True)
class SecretRecord:
    """What a store holds for one user, for mechanisms that need the secret itself (SCRAM, CRAM-MD5).

    ``plaintext`` is set only when the store holds the password in the clear (or ``{PLAIN}``).
    ``scram`` maps "SHA-256"/"SHA-1" to stored keys when the store has them.
    """
    account: str
    plaintext: str | None = None
    scram: dict[str, ScramKeys] = field(default_factory=dict)
    addresses: frozenset[str] = frozenset()
    may_act_for: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"SecretRecord(account={self.account!r}, has_plaintext={self.plaintext is not None}, scram={sorted(self.scram)})"


def common_scram_shape(keys: Iterable[dict[str, ScramKeys]]) -> dict[str, tuple[int, int]]:
    """Per hash, the (salt length, iterations) most stored keys have (the first of equals)."""
    counts: dict[str, dict[tuple[int, int], int]] = {}
    for per_hash in keys:
        for name, k in per_hash.items():
            shape = (len(k.salt), k.iterations)
            counts.setdefault(name, {})[shape] = counts.get(name, {}).get(shape, 0) + 1
    return {name: max(shapes, key=shapes.__getitem__) for name, shapes in counts.items()}


class LookupUnavailable(Exception):
    """Raised by ``get_secret``/``contains`` when the store cannot answer. The message is logged."""


class Lookup:
    """Base class. Subclasses override what their ``capabilities`` promise."""

    #: "list/users", "db/sql/auth", "remote/imap", "directory/ldap" ... -- set by the registry
    name: str = ""
    capabilities: Capability = Capability.NONE
    #: SCRAM hash ("SHA-256", "SHA-1") -> (salt length, iterations) that unknown users' fake exchanges show,
    #: fixed when the lookup starts from what it stores (so fakes look like its real users); {} = defaults.
    scram_decoy: dict[str, tuple[int, int]] = {}

    async def authenticate(self, creds: Credentials) -> AuthResult:
        """Verify a password or token. Must not raise for ordinary failures; return INVALID/UNAVAILABLE."""
        raise NotImplementedError

    async def get_secret(self, username: str) -> SecretRecord | None:
        """For SCRAM/CRAM: the stored secret, or None for an unknown user. Raises LookupUnavailable."""
        raise NotImplementedError

    async def contains(self, key: str) -> bool:
        """For MEMBERSHIP lookups (local domains). Raises LookupUnavailable."""
        raise NotImplementedError

    # Fast paths. An answer that is already at hand (an in-memory list with a cheap secret scheme, a cache
    # hit) is returned directly, sparing the transport a task and a timer per request; None means "ask
    # the async method". They must never block and never do I/O.
    def authenticate_now(self, creds: Credentials) -> AuthResult | None:
        return None

    def get_secret_now(self, username: str) -> tuple[SecretRecord | None] | None:
        """``(record_or_None,)`` when known now, else None."""
        return None

    def contains_now(self, key: str) -> bool | None:
        return None

    async def start(self) -> None:
        """Open pools / connections. Called once by the server before it accepts sessions."""

    async def close(self) -> None:
        """Release pools / connections."""
