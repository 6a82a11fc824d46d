"""What a stage may ask of the outside world, and what the answer is.

A stage handler is a generator; it yields one of these and is resumed with the answer. Two of them are
answered by the session itself from its own input (``ReadLine``, ``ReadData``: the next SASL line, the
message body); every other one goes out to the transport (``server/connection.py``), which performs it
and hands the answer back with ``Session.resume``. Tests answer them by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..delivery.base import Envelope
from ..lookup.base import Credentials, Lookup, Outcome
from ..protocol.reader import SASL_LINE_LIMIT

#: "The store could not answer" -- the one spelling, for every request whose answer may be unavailable
#: (an ``Authenticate`` answers with an ``AuthResult`` whose outcome is this same value).
UNAVAILABLE = Outcome.UNAVAILABLE


# Records built per command on the hot path are plain slotted dataclasses, immutable by convention
# (never assigned after construction), not frozen=True: a frozen dataclass's __init__ sets each
# field through object.__setattr__, about three times the cost. unsafe_hash keeps them hashable.

# --- answered by the session from its input ------------------------------------------------------
@dataclass(slots=True, unsafe_hash=True)
class ReadLine:
    limit: int = SASL_LINE_LIMIT        # answer: bytes, or protocol.reader.TOO_LONG, or None (EOF)


@dataclass(slots=True, unsafe_hash=True)
class ReadData:
    max_size: int                       # answer: protocol.reader.DataResult, or None (EOF)


# --- performed by the transport ------------------------------------------------------------------
@dataclass(slots=True, unsafe_hash=True)
class Authenticate:
    lookup: Lookup
    creds: Credentials                  # answer: lookup.base.AuthResult (UNAVAILABLE outcome on error/timeout)


@dataclass(slots=True, unsafe_hash=True)
class GetSecret:
    lookup: Lookup
    username: str                       # answer: SecretRecord | None, or UNAVAILABLE


@dataclass(slots=True, unsafe_hash=True)
class Contains:
    lookup: Lookup
    key: str                            # answer: bool, or UNAVAILABLE


@dataclass(slots=True, unsafe_hash=True)
class Sleep:
    seconds: float                      # answer: None (a timer of this session only, never a blocking sleep)


@dataclass(slots=True, unsafe_hash=True)
class StartTls:
    pass                                # answer: TlsInfo | None (handshake failed: close)


@dataclass(slots=True, unsafe_hash=True)
class Deliver:
    envelope: Envelope                  # answer: list[RcptResult]
    next_hop: str | None = None         # queue.outbound.next-hop: "remote/<id>", or None for the spool


@dataclass(slots=True, unsafe_hash=True)
class Compute:
    fn: Any                             # CPU-heavy, thread-safe callable (SCRAM key derivation)
    args: tuple                         # answer: fn(*args), run in the hash executor; None if it raised


class Pause:
    """Not a question: the session answered a bounded batch of pipelined commands (or has a lot of
    output unsent) and gives the event loop back. The transport calls ``Session.advance`` again soon."""
    __slots__ = ()


PAUSE = Pause()


@dataclass(slots=True, unsafe_hash=True)
class TlsInfo:
    """What a finished TLS handshake tells the session (the answer to ``StartTls``)."""
    version: str                        # "TLSv1.3"
    cipher: str
    channel_binding: Any = None         # sasl.base.ChannelBinding | None
