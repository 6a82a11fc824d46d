"""``list/<id>``: an in-memory list (``[list] users = ["john@example.org:secret", "example.org"]``).

Entries are ``user:secret`` split on the FIRST colon (secrets may contain colons); an entry without a
colon is a plain member (a local domain, an address) answered by :meth:`contains` only.

Names are compared case-insensitively, for logins and for membership. Stalwart compares exactly, but mail
admins expect ``John@Example.ORG`` to be ``john@example.org`` (domains are case-insensitive by RFC 5321,
and nobody runs two accounts whose local parts differ only in case); two entries that differ only in case
are a configuration mistake: the first wins and a warning is logged. The account name reported is the
entry as written.
"""
from __future__ import annotations

import logging

from ..config.model import ListSettings
from . import secrets
from .base import INVALID, AuthResult, Capability, Credentials, Lookup, Outcome, SecretRecord, common_scram_shape

log = logging.getLogger("smtpgate.lookup.list")


class ListLookup(Lookup):
    def __init__(self, settings: ListSettings):
        self.name = f"list/{settings.id}"
        self._users: dict[str, tuple[str, str]] = {}   # lower-cased name -> (name as written, stored)
        self._members: set[str] = set()
        self._valid: dict[str, AuthResult] = {}        # name as written -> its VALID answer (see _granted)
        for entry in settings.entries:
            user, colon, stored = entry.partition(":")
            user = user.strip()
            if not user:
                continue
            self._members.add(user.lower())
            if not colon:
                continue
            key = user.lower()
            if key in self._users:
                log.warning("%s: duplicate entry for %s ignored (names are case-insensitive)", self.name, user)
                continue
            self._users[key] = (user, stored)
        # Unknown users are checked against the list's costliest stored secret, fixed here: they cost what
        # its slowest users cost (a plaintext list does not make unknown users slower), and no login can
        # change it.
        self._decoy = secrets.slowest(stored for _, stored in self._users.values())
        self.scram_decoy = common_scram_shape(secrets.scram_of(s) for _, s in self._users.values())
        caps = Capability.PASSWORD | Capability.MEMBERSHIP
        if any(secrets.plaintext_of(s) is not None for _, s in self._users.values()):
            caps |= Capability.SCRAM | Capability.CRAM
        elif any(secrets.scram_of(s) for _, s in self._users.values()):
            caps |= Capability.SCRAM
        # Only what some entry can actually answer: a list of hashes must not make CRAM-MD5 look usable.
        self.capabilities = caps

    @staticmethod
    def _addresses(name: str) -> frozenset[str]:
        return frozenset({name.lower()}) if "@" in name else frozenset()

    async def authenticate(self, creds: Credentials) -> AuthResult:
        if creds.kind != "password":
            return INVALID
        found = self._users.get(creds.username.lower())
        if found is None:
            await secrets.verify(None, creds.secret, decoy=self._decoy)
            return INVALID
        name, stored = found
        if await secrets.verify(stored, creds.secret):
            return self._granted(name)
        return INVALID

    def authenticate_now(self, creds: Credentials) -> AuthResult | None:
        if creds.kind != "password":
            return INVALID
        found = self._users.get(creds.username.lower())
        if found is None:
            if secrets.verify_now(None, creds.secret, decoy=self._decoy) is None:
                return None
            return INVALID
        name, stored = found
        ok = secrets.verify_now(stored, creds.secret)
        if ok is None:
            return None
        return self._granted(name) if ok else INVALID

    def _granted(self, name: str) -> AuthResult:
        """An entry's VALID answer never changes (and AuthResult is frozen): built at its first login, not
        at every one -- this is the hot path of a plaintext list (bench (a))."""
        result = self._valid.get(name)
        if result is None:
            result = self._valid[name] = AuthResult(Outcome.VALID, account=name, addresses=self._addresses(name))
        return result

    def get_secret_now(self, username: str) -> tuple[SecretRecord | None]:
        return (self._record(username),)

    def contains_now(self, key: str) -> bool:
        return key.strip().lower() in self._members

    def _record(self, username: str) -> SecretRecord | None:
        found = self._users.get(username.lower())
        if found is None:
            return None
        name, stored = found
        return SecretRecord(account=name, plaintext=secrets.plaintext_of(stored), scram=secrets.scram_of(stored),
                            addresses=self._addresses(name))

    async def get_secret(self, username: str) -> SecretRecord | None:
        found = self._users.get(username.lower())
        if found is None:
            return None
        name, stored = found
        return SecretRecord(account=name, plaintext=secrets.plaintext_of(stored), scram=secrets.scram_of(stored),
                            addresses=self._addresses(name))

    async def contains(self, key: str) -> bool:
        return key.strip().lower() in self._members
