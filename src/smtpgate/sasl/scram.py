"""SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS variants (RFC 5802, RFC 7677; channel binding RFC 5929).

State machine::

    start(None) ─► Challenge(b"") ─► respond(client-first) ─┐
    start(client-first) ─────────────────────────────────────┴► NeedSecret(username)
        ─► secret(record | None) ─► Challenge(server-first)
        ─► respond(client-final) ─► Success(final_data=server-final) | Failure

The stage sends ``final_data`` as a 334 challenge and waits for the client's empty line (RFC 4954 §4).

Why scramp, and how
-------------------
scramp does the message grammar, SASLprep, nonce and channel-binding checks and the proof maths; we do
not re-implement any of that. Its server calls a synchronous ``auth_fn(username)`` *inside*
``set_client_first``, but a sans-IO mechanism must hand the lookup back to the stage (``NeedSecret``)
between client-first and server-first. So client-first is fed to scramp twice: once with a probe
``auth_fn`` that only captures the prepared username (and validates the whole message), and once, after
``secret()``, with the real (or fake) keys. Parsing is cheap; only public scramp API is used.

scramp's channel-binding types are ``tls-unique`` and ``tls-server-end-point``; it refuses
``tls-exporter`` (RFC 9266), which Python's ``ssl`` module cannot produce anyway. A -PLUS mechanism is
therefore only usable with one of :data:`CHANNEL_BINDING_TYPES` (checked when the mechanism is created).

Not revealing who exists
------------------------
An unknown user, or a record with neither usable keys nor a plaintext secret, gets a salt and keys derived
from the username under a per-process random key: repeated attempts see the same salt, the exchange
looks like a real one, and it ends with Failure("invalid"). The fake iteration count and salt length are
the lookup's ``scram_decoy`` (the shape most of its stored keys have, fixed when it starts -- never taken
from earlier exchanges), so a store of e.g. gsasl-made keys (65536 iterations, 12-octet salts) does not
stand out against fakes. A plaintext secret is turned into keys with a salt made the same
way, so plaintext users and unknown users are indistinguishable too.

CPU: ``secret()`` runs PBKDF2 (``iterations`` rounds, ~1-2 ms at 4096) for a plaintext record the first
time a given user/password is seen in this process (results are cached under an HMAC key, never the
password). Fakes and stored keys cost only a few HMACs. The stage may call ``secret()`` in its executor.

Channel-binding flags: the non-PLUS variants reject ``p=`` (malformed) and, when the server advertised a
-PLUS variant, fail ``y`` as a downgrade attack (RFC 5802 §6) with "invalid". The -PLUS variants accept
only ``p=<our type>``. A GS2 authzid (``a=``) is not supported by scramp and fails as "invalid".
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict

from scramp import ScramException, ScramMechanism

from ..lookup.base import ScramKeys, SecretRecord
from ._common import Malformed, StatefulMechanism, keyed, utf8
from .base import Action, Challenge, ChannelBinding, Failure, NeedSecret, Success

log = logging.getLogger("smtpgate.sasl.scram")

#: SASL base name → (key in SecretRecord.scram, hashlib name)
HASHES = {"SCRAM-SHA-1": ("SHA-1", "sha1"), "SCRAM-SHA-256": ("SHA-256", "sha256")}
CHANNEL_BINDING_TYPES = frozenset({"tls-unique", "tls-server-end-point"})
DEFAULT_ITERATIONS = 4096
SALT_LEN = 16
# scramp's own bounds (a DoS guard above, RFC 7677's minimum below) and its minimum salt length
MIN_ITERATIONS, MAX_ITERATIONS, MIN_SALT = 4096, 10_000_000, 12

_DERIVED_MAX = 1024
_derived: OrderedDict[bytes, tuple[bytes, bytes, bytes, int]] = OrderedDict()
_derived_lock = threading.Lock()  # secret() may run in executor threads

_KeyTuple = tuple[bytes, bytes, bytes, int]  # salt, stored key, server key, iterations (scramp's order)


def _error_code(exc: ScramException) -> str:
    err = getattr(exc, "server_error", None)
    return str(getattr(err, "value", err) or "")


class Scram(StatefulMechanism):
    server_first = False

    def __init__(self, name: str, *, channel_binding: ChannelBinding | None = None,
                 plus_advertised: bool = False, iterations: int = DEFAULT_ITERATIONS,
                 fake_shape: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.name = name.upper()
        base = self.name.removesuffix("-PLUS")
        if base not in HASHES:
            raise KeyError(name)
        self._plus = base != self.name
        self._hash, hashlib_name = HASHES[base]
        self._digest_size = hashlib.new(hashlib_name).digest_size
        if self._plus:
            if channel_binding is None or channel_binding.type not in CHANNEL_BINDING_TYPES \
                    or not channel_binding.data:
                raise ValueError(f"{self.name} needs channel binding data of type "
                                 f"{' or '.join(sorted(CHANNEL_BINDING_TYPES))}")
            self._cb: tuple[str, bytes] | None = (channel_binding.type, channel_binding.data)
        else:
            self._cb = None  # the y/p flags are judged here, not by scramp (see _check_gs2)
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"SCRAM iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}")
        self._plus_advertised = plus_advertised
        self._iterations = iterations
        self._fake_shape = fake_shape or {}
        self._mech = ScramMechanism(self.name)
        self._client_first = ""
        self._username = ""
        self._record: SecretRecord | None = None
        self._server = None

    # -- client-first -------------------------------------------------------------------------------
    def start(self, initial: bytes | None) -> Action:
        self._expect("start", "start")
        if initial is None:
            self._state = "client-first"
            return Challenge(b"")
        return self._got_client_first(initial)

    def _check_gs2(self, text: str) -> Failure | None:
        flag, sep1, rest = text.partition(",")
        authz, sep2, _ = rest.partition(",")
        if not sep1 or not sep2:
            return Failure("malformed", "bad GS2 header")
        if self._plus:
            if not flag.startswith("p="):
                return Failure("malformed", f"{self.name} requires channel binding (p=)")
        elif flag.startswith("p="):
            return Failure("malformed", f"channel binding requested with {self.name}")
        elif flag == "y" and self._plus_advertised:
            return Failure("invalid", "channel-binding downgrade: client saw no -PLUS but it was offered")
        elif flag not in ("n", "y"):
            return Failure("malformed", "bad GS2 channel-binding flag")
        if authz:
            return Failure("invalid", "SCRAM authorization identity (a=) not supported")
        return None

    def _got_client_first(self, data: bytes) -> Action:
        try:
            text = utf8(data, "client-first")
        except Malformed as exc:
            return self._end(Failure("malformed", str(exc)))
        failure = self._check_gs2(text)
        if failure is not None:
            return self._end(failure)
        captured: list[str] = []

        def probe(username: str) -> _KeyTuple:
            captured.append(username)
            return (b"\0" * MIN_SALT, b"\0" * self._digest_size, b"\0" * self._digest_size, MIN_ITERATIONS)

        try:
            self._mech.make_server(probe, channel_binding=self._cb).set_client_first(text)
        except ScramException as exc:
            return self._end(Failure("malformed", f"client-first: {exc}", captured[0] if captured else ""))
        self._client_first, self._username = text, captured[0]
        self._state = "secret"
        return NeedSecret(self._username)

    # -- server-first -------------------------------------------------------------------------------
    def secret(self, record: SecretRecord | None) -> Action:
        self._expect("secret", "secret")
        keys, self._record = self._keys_for(record), record
        if keys is None:
            keys, self._record = self._fake_keys(), None
        server = self._mech.make_server(lambda _user: keys, channel_binding=self._cb)
        try:
            server.set_client_first(self._client_first)
            server_first = server.get_server_first()
        except ScramException as exc:  # client-first was validated and keys pre-checked: a scramp change
            log.warning("SCRAM exchange for %r could not start: %s", self._username, exc)
            return self._end(Failure("invalid", "SCRAM server could not start", self._username))
        self._server = server
        self._state = "client-final"
        return Challenge(server_first.encode())

    def secret_is_costly(self, record: SecretRecord | None) -> bool:
        """A plaintext secret without stored keys means PBKDF2 -- unless it was derived before."""
        if record is None or record.plaintext is None or self._hash in record.scram:
            return False
        with _derived_lock:
            return self._derived_key(record.plaintext) not in _derived

    def _derived_key(self, plaintext: str) -> bytes:
        return keyed("scram-derived", self._hash, self._username, str(self._iterations), plaintext)

    def _keys_for(self, record: SecretRecord | None) -> _KeyTuple | None:
        if record is None:
            return None
        stored: ScramKeys | None = record.scram.get(self._hash)
        if stored is not None:
            if (len(stored.salt) >= MIN_SALT and MIN_ITERATIONS <= stored.iterations <= MAX_ITERATIONS
                    and len(stored.stored_key) == len(stored.server_key) == self._digest_size):
                return stored.salt, stored.stored_key, stored.server_key, stored.iterations
            log.warning("stored %s keys for %r are unusable (salt >= %d octets and %d..%d iterations needed)",
                        self._hash, record.account, MIN_SALT, MIN_ITERATIONS, MAX_ITERATIONS)
        if record.plaintext is not None:
            return self._derive(record.plaintext)
        log.debug("no %s secret for %r; faking the exchange", self._hash, record.account)
        return None

    def _derive(self, plaintext: str) -> _KeyTuple | None:
        cache_key = self._derived_key(plaintext)
        with _derived_lock:
            hit = _derived.get(cache_key)
            if hit is not None:
                _derived.move_to_end(cache_key)
        if hit is None:
            salt = keyed("scram-salt", self._hash, self._username, size=SALT_LEN)
            try:
                salt, stored_key, server_key, i = self._mech.make_auth_info(
                    plaintext, iteration_count=self._iterations, salt=salt)
            except ScramException:  # password SASLprep rejects (e.g. control characters)
                log.warning("plaintext secret of %r is not usable for SCRAM (SASLprep)", self._username)
                return None
            hit = (bytes(salt), stored_key, server_key, int(i))
            with _derived_lock:
                _derived[cache_key] = hit
                while len(_derived) > _DERIVED_MAX:
                    _derived.popitem(last=False)
        return hit

    def _fake_keys(self) -> _KeyTuple:
        salt_len, iterations = self._fake_shape.get(self._hash, (SALT_LEN, self._iterations))
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            iterations = self._iterations
        salt = keyed("scram-salt", self._hash, self._username, size=min(max(salt_len, MIN_SALT), 64))
        return (salt,
                keyed("scram-fake-stored", self._hash, self._username, size=self._digest_size),
                keyed("scram-fake-server", self._hash, self._username, size=self._digest_size),
                iterations)

    # -- client-final -------------------------------------------------------------------------------
    def respond(self, data: bytes) -> Action:
        if self._state == "client-first":
            return self._got_client_first(data)
        self._expect("client-final", "respond")
        try:
            text = utf8(data, "client-final")
            self._server.set_client_final(text)  # type: ignore[union-attr]
            server_final = self._server.get_server_final()  # type: ignore[union-attr]
        except Malformed as exc:
            return self._end(Failure("malformed", str(exc), self._username))
        except ScramException as exc:
            kind = "invalid" if _error_code(exc) in ("invalid-proof", "channel-bindings-dont-match") \
                else "malformed"
            return self._end(Failure(kind, f"client-final: {exc}", self._username))
        if self._record is None:  # a fake exchange never succeeds, whatever the proof
            return self._end(Failure("invalid", "unknown user or no usable SCRAM secret", self._username))
        return self._end(Success(account=self._record.account or self._username,
                                 addresses=self._record.addresses, final_data=server_final.encode()))


__all__ = ["Scram", "HASHES", "CHANNEL_BINDING_TYPES", "DEFAULT_ITERATIONS"]
