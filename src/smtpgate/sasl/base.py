"""The small sans-IO interface every SASL mechanism implements.

Theory of operation
-------------------
The AUTH stage (``session/auth.py``) owns the SMTP side of RFC 4954: it base64-decodes client lines,
handles ``*`` (cancel) and ``=`` (empty initial response), enforces line limits and ``errors.*``. A
mechanism only sees decoded bytes and answers with one *action* at a time:

* ``Challenge(data)``    -- send ``334 <base64(data)>`` (``334 `` when empty) and feed the next client
                            response to ``respond()``;
* ``Verify(creds)``      -- the stage asks the lookup to verify ``creds`` and feeds the
                            :class:`~smtpgate.lookup.base.AuthResult` to ``verified()``;
* ``NeedSecret(user)``   -- the stage fetches the stored secret (SCRAM, CRAM-MD5) and feeds the
                            :class:`~smtpgate.lookup.base.SecretRecord` (or ``None`` for an unknown user) to
                            ``secret()``;
* ``Success(...)``       -- authenticated;
* ``Failure(kind, ...)`` -- ``kind`` is ``"invalid"`` (535), ``"malformed"`` (501 5.5.2),
                            ``"unavailable"`` (454).

Mechanisms do no I/O, import no asyncio and no lookup implementation.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..lookup.base import AuthResult, Credentials, SecretRecord


@dataclass(slots=True, unsafe_hash=True)
class Challenge:
    data: bytes = b""


@dataclass(slots=True, unsafe_hash=True)
class Verify:
    creds: Credentials


@dataclass(slots=True, unsafe_hash=True)
class NeedSecret:
    username: str


@dataclass(slots=True, unsafe_hash=True)
class Success:
    account: str                      # canonical account name (from the lookup)
    authzid: str = ""                 # identity to act as ("" = same as account)
    addresses: frozenset[str] = frozenset()
    final_data: bytes | None = None   # SCRAM server-final; sent as ``235`` text is not allowed, so the
                                      # stage sends it as a 334 challenge and expects an empty reply


@dataclass(slots=True, unsafe_hash=True)
class Failure:
    kind: str                         # "invalid" | "malformed" | "unavailable"
    detail: str = ""                  # for logs / 501 text; never secrets
    username: str = ""                # what the client claimed, for logs


Action = Challenge | Verify | NeedSecret | Success | Failure


class Malformed(Exception):
    """Raised by the mechanisms' message parsers (e.g. ``plain.parse``); the message becomes the 501
    detail, so it must never contain secrets."""


@dataclass(slots=True, unsafe_hash=True)
class ChannelBinding:
    """TLS channel binding data for SCRAM -PLUS (RFC 5929 / RFC 9266)."""
    type: str      # "tls-unique" | "tls-exporter"
    data: bytes


class Mechanism:
    """One authentication exchange. A new instance per AUTH command."""

    name: str = ""
    #: True for mechanisms whose first message comes from the server (CRAM-MD5): an initial response
    #: on the AUTH line is then a protocol error (501 5.7.0).
    server_first: bool = False

    def start(self, initial: bytes | None) -> Action:
        """``initial`` is the decoded initial response (b"" for ``=``), or None when none was given."""
        raise NotImplementedError

    def respond(self, data: bytes) -> Action:
        """The client's decoded answer to the last Challenge."""
        raise NotImplementedError

    def verified(self, result: AuthResult) -> Action:
        """Result of the Verify action."""
        raise NotImplementedError

    def secret(self, record: SecretRecord | None) -> Action:
        """Result of the NeedSecret action (None: unknown user -- mechanism must fake its way on)."""
        raise NotImplementedError

    def secret_is_costly(self, record: SecretRecord | None) -> bool:
        """True when ``secret(record)`` would do CPU-heavy work (key derivation): the stage then runs it
        off the event loop. ``secret`` must be thread-safe for such records."""
        return False
