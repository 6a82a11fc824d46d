"""The SMTP session state machine, sans-IO.

Theory of operation
-------------------
A :class:`Session` receives complete command lines (framing is ``protocol.reader``'s job) and answers by
appending reply bytes to ``session.out``. It never touches sockets, clocks or asyncio. When a command
needs something from the outside world -- the next client line of a SASL exchange, a message body, a
lookup, a delay, a TLS handshake, a delivery -- its handler is a *generator* that yields a request
object (below) and is resumed with the answer. The transport (``server/connection.py``) performs the
request and sends the result back in; tests can drive the same generators with plain values.

    handler = session.handle(line)       # None (done) or a generator
    request = handler.send(None)         # e.g. Authenticate(lookup, creds)
    request = handler.send(result)       # ... until StopIteration

All state and the rules about which command is allowed when live here (``COMMANDS`` and ``handle``);
the work of each stage lives in its own module: ``connect``, ``ehlo``, ``starttls``, ``auth``, ``mail``,
``rcpt``, ``data``.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Generator

from ..config.model import ListenerSettings, Settings
from ..delivery.base import Envelope
from ..lookup.base import Credentials, Lookup
from ..protocol import replies as R
from ..protocol.commands import Address
from ..protocol.reader import COMMAND_LINE_LIMIT, MAIL_LINE_LIMIT, SASL_LINE_LIMIT, TOO_LONG


# --- requests a handler may yield ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReadLine:
    limit: int = SASL_LINE_LIMIT        # answer: bytes, or protocol.reader.TOO_LONG, or None (EOF)


@dataclass(frozen=True, slots=True)
class ReadData:
    max_size: int                       # answer: protocol.reader.DataResult, or None (EOF)


@dataclass(frozen=True, slots=True)
class Authenticate:
    lookup: Lookup
    creds: Credentials                  # answer: lookup.base.AuthResult (UNAVAILABLE on error/timeout)


@dataclass(frozen=True, slots=True)
class GetSecret:
    lookup: Lookup
    username: str                       # answer: SecretRecord | None, or UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Contains:
    lookup: Lookup
    key: str                            # answer: bool, or UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float                      # answer: None


@dataclass(frozen=True, slots=True)
class StartTls:
    pass                                # answer: TlsInfo | None (handshake failed: close)


@dataclass(frozen=True, slots=True)
class Deliver:
    envelope: Envelope                  # answer: list[RcptResult]
    next_hop: str | None = None         # queue.outbound.next-hop: "remote/<id>", or None for the spool


@dataclass(frozen=True, slots=True)
class Compute:
    fn: Any                             # CPU-heavy, thread-safe callable (SCRAM key derivation)
    args: tuple                         # answer: fn(*args), run in the hash executor; None if it raised


UNAVAILABLE = object()                  # a lookup could not answer (GetSecret / Contains)


@dataclass(frozen=True, slots=True)
class TlsInfo:
    version: str                        # "TLSv1.3"
    cipher: str
    channel_binding: Any = None         # sasl.base.ChannelBinding | None


class Vars:
    """The variables if-blocks test (config.ifblock.VARIABLES), kept current by the stages."""
    __slots__ = ("listener", "remote_ip", "local_ip", "local_port", "tls", "helo_domain",
                 "authenticated_as", "sender", "sender_domain", "rcpt", "rcpt_domain")

    def __init__(self, listener: str, remote_ip: Any, local_ip: Any, local_port: int, tls: bool):
        self.listener = listener
        self.remote_ip = remote_ip
        self.local_ip = local_ip
        self.local_port = local_port
        self.tls = tls
        self.helo_domain = None
        self.authenticated_as = None
        self.sender = None
        self.sender_domain = None
        self.rcpt = None
        self.rcpt_domain = None


class ListenerContext:
    """Everything a session of one listener shares; built once by the server."""

    def __init__(self, settings: Settings, listener: ListenerSettings, lookups: dict[str, Lookup],
                 starttls_available: bool):
        self.settings = settings
        self.listener = listener
        self.lookups = lookups
        self.starttls_available = starttls_available and not listener.tls.implicit
        self.hostname = listener.hostname or settings.hostname
        self.greeting = R.reply(220, f"{self.hostname} {listener.greeting or settings.greeting}")
        self.lmtp = listener.protocol == "lmtp"
        self.local_addr: tuple[str, int] | None = None  # set by the server when the listener has one address
        self.ehlo_cache: dict[tuple, bytes] = {}       # see ehlo.capabilities
        from . import connect
        self.shared_params = connect.shared(self)
        from ..observe.events import default_listener_events
        self.events = default_listener_events(listener.id)   # the server replaces it with a counting one


class Session:
    __slots__ = ("ctx", "out", "vars", "params", "remote_port", "closing", "tls", "helo", "esmtp",
                 "auth_account", "auth_addresses", "auth_failures", "auth_mechanism", "mail_from",
                 "mail_params", "auth_param", "rcpts", "messages", "events", "__weakref__")

    def __init__(self, ctx: ListenerContext, remote_ip: str, remote_port: int, local_ip: str, local_port: int,
                 tls: TlsInfo | None = None):
        self.ctx = ctx
        self.out: list[bytes] = []
        ip = _ip(remote_ip)
        self.vars = Vars(ctx.listener.id, ip, _ip(local_ip), local_port, tls is not None)
        self.remote_port = remote_port
        self.closing = False
        self.tls = tls
        self.auth_failures = 0
        self.messages = 0
        self.events = ctx.events.open(ip if ip is not None else remote_ip, remote_port, tls)   # observe.events.SessionEvents
        self._reset_state()
        from . import connect
        connect.evaluate(self)

    # -- small helpers the stages use ---------------------------------------------------------------
    def reply(self, data: bytes) -> None:
        self.out.append(data)

    def close(self, data: bytes | None = None) -> None:
        if data:
            self.out.append(data)
        self.closing = True

    def _reset_state(self) -> None:
        self.helo: str | None = None
        self.esmtp = False
        self.auth_account: str | None = None
        self.auth_addresses: frozenset[str] = frozenset()
        self.auth_mechanism: str | None = None
        self.vars.helo_domain = None
        self.vars.authenticated_as = None
        self.reset_transaction()

    def reset_transaction(self) -> None:
        self.mail_from: Address | None = None
        self.mail_params: dict[str, str | None] = {}
        self.auth_param: str | None = None
        self.rcpts: list[Address] = []
        v = self.vars
        v.sender = v.sender_domain = v.rcpt = v.rcpt_domain = None

    def tls_established(self, info: TlsInfo) -> None:
        """RFC 3207 §4.2: after the handshake the session starts afresh (the failure count survives)."""
        self.tls = info
        self.vars.tls = True
        self._reset_state()
        from . import connect
        connect.evaluate(self)

    @property
    def greeting(self) -> bytes:
        return self.ctx.greeting

    # -- the dispatcher: which command may run when --------------------------------------------------
    def handle(self, line: bytes | object, too_long_head: bytes = b"") -> Generator | None:
        """Dispatch one command line. ``TOO_LONG`` stands for a line the reader discarded; its first
        bytes (``too_long_head``) tell whether it was an AUTH with an over-long initial response, which
        RFC 4954 §4 makes a counted authentication failure."""
        if line is TOO_LONG:
            if too_long_head[:5].upper() == b"AUTH ":
                from . import auth
                mech = too_long_head[5:].split(b" ", 1)[0].decode("ascii", "replace")
                return auth.too_long(self, mech)
            self.reply(R.LINE_TOO_LONG)
            return None
        assert isinstance(line, bytes)
        verb_b, _, arg_b = line.partition(b" ")
        try:
            verb = verb_b.decode("ascii").upper()
        except UnicodeDecodeError:
            self.reply(R.SYNTAX)
            return None
        limit = SASL_LINE_LIMIT if verb == "AUTH" else MAIL_LINE_LIMIT if verb in ("MAIL", "RCPT") else COMMAND_LINE_LIMIT
        if len(line) > limit - 2:
            self.reply(R.LINE_TOO_LONG)
            return None
        entry = COMMANDS.get(verb)
        if entry is None:
            self.reply(R.SYNTAX)
            return None
        handler, flags = entry
        if b"\x00" in line:
            self.reply(R.NUL_BYTE)
            return None
        try:
            arg = arg_b.decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            self.reply(R.NON_ASCII)
            return None
        if flags & NEEDS_AUTH and self.params.auth_require and self.auth_account is None:
            self.reply(R.AUTH_REQUIRED)
            return None
        if flags & NEEDS_HELO and self.helo is None and (self.params.ehlo_require or self.ctx.lmtp):
            self.reply(R.BAD_SEQUENCE_EHLO)
            return None
        return handler(self, arg)


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> Any:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


NEEDS_AUTH = 1      # session.auth.require applies (530 5.7.0)
NEEDS_HELO = 2      # session.ehlo.require applies (503 5.5.1)


def _build_commands() -> dict[str, tuple[Callable[..., Any], int]]:
    from . import auth, data, ehlo, mail, misc, rcpt, starttls
    return {
        "EHLO": (ehlo.ehlo, 0),
        "HELO": (ehlo.helo, 0),
        "LHLO": (ehlo.lhlo, 0),
        "STARTTLS": (starttls.starttls, 0),
        "AUTH": (auth.auth, 0),
        "MAIL": (mail.mail, NEEDS_HELO | NEEDS_AUTH),
        "RCPT": (rcpt.rcpt, NEEDS_AUTH),
        "DATA": (data.data, NEEDS_AUTH),
        "BDAT": (misc.bdat, NEEDS_AUTH),
        "VRFY": (misc.vrfy, NEEDS_AUTH),
        "EXPN": (misc.vrfy, NEEDS_AUTH),
        "RSET": (misc.rset, 0),
        "NOOP": (misc.noop, 0),
        "QUIT": (misc.quit, 0),
        "HELP": (misc.help, 0),
    }


COMMANDS: dict[str, tuple[Callable[..., Any], int]] = {}


def _init() -> None:
    COMMANDS.update(_build_commands())
