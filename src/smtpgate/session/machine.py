"""The SMTP session, sans-IO: its states, the one table of what may happen in each, and the pump.

Theory of operation
-------------------
A :class:`Session` is the whole protocol of one client connection, without sockets, clocks or asyncio.
The transport (``server/connection.py``) gives it bytes and performs what it asks for::

    session.receive_data(data, now)      # bytes from the socket (False: transfer limit hit, close)
    request = session.advance()          # run on what is buffered
    ...                                  # send ``session.out``; perform ``request`` if there is one
    request = session.resume(answer)     # ... and hand the answer back, until advance/resume give None
    session.deadline_reply(now)          # the sweeper: 421 if session.timeout/.duration has passed
    session.abandon()                    # the connection is gone

``advance``/``resume`` return ``None`` (wait for more input -- or the session is over: ``closing``),
:data:`~.requests.PAUSE` (a bounded batch of pipelined commands was answered: give the loop back and call
``advance`` again soon), or a request from :mod:`.requests` for the outside world (a lookup, a delay, a
TLS handshake, a delivery, CPU work). ``session.notices`` holds requests nobody waits for (the guard told
of a successful or tempfailed AUTH); the transport hands them on after each step and clears the list.

**State.** The session is always in one :class:`State`. :data:`TRANSITIONS` is the only place that says
which :class:`Event` moves it where; the stage modules report what happened through the session's
methods (``s.mail_accepted(...)``, ``s.data_started()``...), each one event of the table, and never assign
states. **Framing** follows from the state alone (:data:`FRAMING`): command lines in the
command states, SASL response lines in ``AUTH``, the message body in ``DATA``. The line reader
(``protocol.reader``) belongs to the session, so the transport never decides how input is cut.

**Commands.** :data:`COMMANDS` is the one table of what a command line may do: its handler, the states
it may run in (and the reply everywhere else), and the rules that depend on configuration --
``session.auth.require`` (530 before MAIL/RCPT/DATA/BDAT/VRFY/EXPN) and ``session.ehlo.require``
(503 before MAIL). :meth:`Session.handle` applies the table in a fixed order: unknown verb, line length,
NUL, encoding, auth required, EHLO required, the stage's own preconditions (``guard``), arguments
where none are allowed, state. Only then does the stage run.

**Stages.** One module each -- ``ehlo``, ``starttls``, ``auth``, ``mail``, ``rcpt``, ``data``,
``simple_commands`` -- doing the work of a command. A handler either answers at once (``s.reply``) and
returns None, or returns a generator that yields requests and is resumed with their answers. Tests drive
``handle`` and the generators with plain values (tests/unit/test_session_machine.py).

**Settings.** ``self.params`` (``session.params.SessionParams``) holds the connect-time settings, evaluated
when the session starts and again after STARTTLS; the stages evaluate the later ones themselves.

Hook points for what comes next: a cross-session guard (throttles, bans: issue 11) is one more request a
stage yields (like ``Authenticate``), answered by the transport; checks on the connection itself (banned
address, concurrency, PROXY header) belong in the transport before a ``Session`` exists; metrics and log
events are emitted at the edges -- where the transport performs a request, and where a stage decides.
"""
from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from ..protocol import replies as R
from ..protocol.commands import Address
from ..protocol.reader import (COMMAND_LINE_LIMIT, MAIL_LINE_LIMIT, SASL_LINE_LIMIT, SASL_RESPONSE_LIMIT, TOO_LONG,
                               LineReader)
from . import auth, data, ehlo, mail, rcpt, simple_commands, starttls
from .context import ListenerContext
from .params import SessionParams
from .requests import PAUSE, Authenticate, ReadData, ReadLine, StartTls, TlsInfo
from .variables import SessionVariables

#: Commands answered in one go before the session gives the event loop back (PAUSE): a client that
#: pipelines thousands of lines cannot hold the loop, and its replies are written in bounded slices.
COMMAND_BATCH = 32

#: DATA must arrive at this average rate (bytes/s) after a grace of ``session.timeout`` -- Postfix's
#: smtpd_min_data_rate: a client trickling a byte every few seconds cannot keep a session open.
MIN_DATA_RATE = 500


# IntEnum rather than Enum: states and events are dict keys and set members on every command, and an
# IntEnum hashes in C (Enum.__hash__ is Python code, measurable per session).
class State(enum.IntEnum):
    CONNECTED = 1             # greeting sent; no EHLO/HELO yet (again after STARTTLS)
    GREETED = 2               # EHLO/HELO/LHLO accepted (or a transaction ended); no mail transaction
    MAIL = 3                  # MAIL FROM accepted
    RCPT = 4                  # at least one RCPT TO accepted
    AUTH = 5                  # inside a SASL exchange: input is SASL response lines
    DATA = 6                  # receiving a message body: input is DATA up to CRLF.CRLF
    CLOSED = 7                # QUIT, a fatal error, EOF: nothing more is read


class Event(enum.IntEnum):
    HELLO = 1                 # EHLO/HELO/LHLO accepted
    MAIL = 2                  # MAIL FROM accepted
    RCPT = 3                  # a recipient accepted
    DATA = 4                  # 354 sent: the body follows
    RESET = 5                 # the transaction is over (RSET, EHLO, message done or refused)
    AUTH = 6                  # an AUTH exchange starts
    AUTH_DONE = 7             # ... and ended (success or not)
    TLS = 8                   # STARTTLS handshake done: start afresh (RFC 3207 §4.2)
    CLOSE = 9                 # QUIT, error limit, EOF, failed handshake


class Framing(enum.IntEnum):
    COMMAND = 1               # command lines (limits by verb, checked in handle)
    SASL = 2                  # SASL responses, up to SASL_RESPONSE_LIMIT
    DATA = 3                  # a message body


_COMMAND_STATES = (State.CONNECTED, State.GREETED, State.MAIL, State.RCPT)

#: (state, event) -> next state. Anything not listed is a bug in a stage, not a client error.
TRANSITIONS: dict[tuple[State, Event], State] = {
    # A new greeting also ends any transaction (RFC 5321 §4.1.4).
    (State.CONNECTED, Event.HELLO): State.GREETED,
    (State.GREETED, Event.HELLO): State.GREETED,
    (State.MAIL, Event.HELLO): State.GREETED,
    (State.RCPT, Event.HELLO): State.GREETED,
    # MAIL without HELO only where session.ehlo.require is false (the table below still lets it run).
    (State.CONNECTED, Event.MAIL): State.MAIL,
    (State.GREETED, Event.MAIL): State.MAIL,
    (State.MAIL, Event.RCPT): State.RCPT,
    (State.RCPT, Event.RCPT): State.RCPT,
    (State.RCPT, Event.DATA): State.DATA,
    (State.CONNECTED, Event.RESET): State.CONNECTED,
    (State.GREETED, Event.RESET): State.GREETED,
    (State.MAIL, Event.RESET): State.GREETED,
    (State.RCPT, Event.RESET): State.GREETED,
    (State.DATA, Event.RESET): State.GREETED,
    (State.GREETED, Event.AUTH): State.AUTH,
    (State.AUTH, Event.AUTH_DONE): State.GREETED,
    **{(s, Event.TLS): State.CONNECTED for s in _COMMAND_STATES},
    **{(s, Event.CLOSE): State.CLOSED for s in State},
}

#: How the next input is cut, by state.
FRAMING: dict[State, Framing] = {
    **{s: Framing.COMMAND for s in _COMMAND_STATES},
    State.AUTH: Framing.SASL,
    State.DATA: Framing.DATA,
    State.CLOSED: Framing.COMMAND,
}


_ANYWHERE = frozenset(_COMMAND_STATES)


@dataclass(frozen=True, slots=True)
class Command:
    handler: Callable[["Session", str], Generator | None]
    states: frozenset[State]                        # where it runs
    elsewhere: dict[State, bytes] = field(default_factory=dict)  # the reply in the other command states
    requires_auth: bool = False                     # session.auth.require applies (530 5.7.0)
    requires_hello: bool = False                    # session.ehlo.require applies (503 5.5.1); always on LMTP
    no_argument: bytes | None = None                # the reply when an argument is given
    guard: Callable[["Session"], bytes | None] | None = None  # the stage's own refusals that come first
    checked: bool = field(init=False)               # anything to check before the handler (hot path)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checked", bool(
            self.requires_auth or self.requires_hello or self.guard or self.no_argument
            or self.states != _ANYWHERE))


_NO_MAIL = {State.CONNECTED: R.BAD_SEQUENCE_MAIL, State.GREETED: R.BAD_SEQUENCE_MAIL}

#: The one table of commands (RFC 5321 §4.1.4 sequencing, RFC 4954 for AUTH, SPEC §3-§4).
COMMANDS: dict[str, Command] = {
    "EHLO": Command(ehlo.ehlo, _ANYWHERE),
    "HELO": Command(ehlo.helo, _ANYWHERE),
    "LHLO": Command(ehlo.lhlo, _ANYWHERE),
    "STARTTLS": Command(starttls.starttls, _ANYWHERE, no_argument=R.STARTTLS_SYNTAX),
    "AUTH": Command(auth.auth, frozenset({State.GREETED}), guard=auth.refusal,
                    elsewhere={State.CONNECTED: R.BAD_SEQUENCE_EHLO, State.MAIL: R.AUTH_IN_TRANSACTION,
                               State.RCPT: R.AUTH_IN_TRANSACTION}),
    "MAIL": Command(mail.mail, frozenset({State.CONNECTED, State.GREETED}), requires_auth=True, requires_hello=True,
                    elsewhere={State.MAIL: R.NESTED_MAIL, State.RCPT: R.NESTED_MAIL}),
    "RCPT": Command(rcpt.rcpt, frozenset({State.MAIL, State.RCPT}), requires_auth=True, elsewhere=_NO_MAIL),
    "DATA": Command(data.data, frozenset({State.RCPT}), requires_auth=True, no_argument=R.DATA_SYNTAX,
                    elsewhere={**_NO_MAIL, State.MAIL: R.DATA_NO_RCPT}),
    "BDAT": Command(simple_commands.bdat, _ANYWHERE, requires_auth=True),
    "VRFY": Command(simple_commands.vrfy, _ANYWHERE, requires_auth=True),
    "EXPN": Command(simple_commands.vrfy, _ANYWHERE, requires_auth=True),
    "RSET": Command(simple_commands.rset, _ANYWHERE),
    "NOOP": Command(simple_commands.noop, _ANYWHERE),
    "QUIT": Command(simple_commands.quit, _ANYWHERE),
    "HELP": Command(simple_commands.help, _ANYWHERE),
}

_LINE_LIMITS = {"AUTH": SASL_LINE_LIMIT, "MAIL": MAIL_LINE_LIMIT, "RCPT": MAIL_LINE_LIMIT}
_NOTHING = object()             # no framed input available yet; advance() without an answer
NO_ANSWER = _NOTHING


class Session:
    __slots__ = ("ctx", "out", "vars", "params", "remote_port", "state", "tls", "helo", "esmtp",
                 "auth_account", "auth_addresses", "auth_failures", "errors", "auth_mechanism", "mail_from",
                 "mail_params", "auth_param", "rcpts", "messages", "reader", "eof", "_handler", "_awaiting_input", "closing",
                 "gone", "_request", "started", "_last_input", "_line_started", "_consumed_mark", "_data_started", "_data_mark",
                 "events", "remote_text", "local_text", "notices", "__weakref__")

    def __init__(self, ctx: ListenerContext, remote_ip: str, remote_port: int, local_ip: str, local_port: int,
                 tls: TlsInfo | None = None, now: float = 0.0):
        self.ctx = ctx
        self.out: list[bytes] = []
        self.notices: list[Any] = []               # requests nobody waits for; the transport hands them on
        self.vars = SessionVariables(ctx.listener.id, _ip(remote_ip), _ip(local_ip), local_port, tls is not None)
        # The addresses as text (canonical: an IPv4-mapped IPv6 address is its IPv4 address), for log
        # lines, the guard's keys and the lookup's Origin: formatting an ipaddress object costs microseconds.
        self.remote_text = _ip_text(remote_ip)
        self.local_text = _ip_text(local_ip)
        self.remote_port = remote_port
        self.state = State.CONNECTED
        self.closing = False                       # state is CLOSED (a plain attribute: read per command)
        self.tls = tls
        # observe.events.SessionEvents: log lines and metrics, emitted where commands are answered
        self.events = ctx.events.open(self.remote_text, remote_port, tls)
        self.auth_failures = 0
        self.errors = 0                            # bad commands so far (session.errors.total)
        self.messages = 0
        self.reader = LineReader()
        self.eof = False
        self._handler: Generator | None = None     # the stage generator in progress
        self._awaiting_input = False               # ... waiting for a SASL line or the message body
        self._request: Any = None                  # the request out with the transport
        self.gone = False                          # the client left (abandon)
        # Deadlines (see deadline_reply); times are the transport's clock, passed in.
        self.started = self._last_input = now
        self._line_started: float | None = None    # first byte of the incomplete line now buffered
        self._consumed_mark = 0
        self._data_started = 0.0                   # when DATA's 354 went out ...
        self._data_mark = 0                        # ... and how many bytes had arrived by then
        self._reset_state()
        self.params = self._evaluate_params()

    # -- small helpers the stages use ---------------------------------------------------------------
    def reply(self, data: bytes) -> None:
        self.out.append(data)
        if data[0] == 53 and (data[1] == 48 or data[1] == 53):     # 50x, 55x: counts toward errors.total
            if data[1] == 48 or data[:3] == b"555":
                self.errors += 1

    def close(self, data: bytes | None = None) -> None:
        if data:
            self.out.append(data)
        self.state = TRANSITIONS[(self.state, Event.CLOSE)]
        self.closing = True

    @property
    def framing(self) -> Framing:
        return FRAMING[self.state]

    def transition(self, event: Event) -> None:
        """Move along :data:`TRANSITIONS`; a missing pair is a bug in a stage (KeyError)."""
        self.state = TRANSITIONS[(self.state, event)]

    def _evaluate_params(self) -> SessionParams:
        shared = self.ctx.shared_params
        return shared if shared is not None else SessionParams(self.ctx.settings.session, self.ctx.lookups, self.vars)

    def _reset_state(self) -> None:
        self.helo: str | None = None
        self.esmtp = False
        self.auth_account: str | None = None
        self.auth_addresses: frozenset[str] = frozenset()
        self.auth_mechanism: str | None = None
        self.vars.helo_domain = None
        self.vars.authenticated_as = None
        self._clear_transaction()

    def _clear_transaction(self) -> None:
        self.mail_from: Address | None = None
        self.mail_params: dict[str, str | None] = {}
        self.auth_param: str | None = None
        self.rcpts: list[Address] = []
        v = self.vars
        v.sender = v.sender_domain = v.rcpt = v.rcpt_domain = None

    def reset_transaction(self) -> None:
        self._clear_transaction()
        if self.state is not State.CLOSED:
            self.transition(Event.RESET)

    # -- what the stages report (each one event of TRANSITIONS) ------------------------------------------
    def greeted(self, domain: str, esmtp: bool) -> None:
        """EHLO/HELO/LHLO accepted: a new greeting also ends any transaction (RFC 5321 §4.1.4)."""
        self._clear_transaction()
        self.helo = domain
        self.esmtp = esmtp
        self.vars.helo_domain = domain.lower()
        self.state = TRANSITIONS[(self.state, Event.HELLO)]

    def mail_accepted(self, sender: Address, params: dict[str, str | None], auth_param: str | None) -> None:
        self.mail_from = sender
        self.mail_params = params
        self.auth_param = auth_param
        self.transition(Event.MAIL)

    def rcpt_accepted(self, rcpt: Address) -> None:
        self.rcpts.append(rcpt)
        self.transition(Event.RCPT)

    def data_started(self) -> None:
        """354 sent: from here the input is the message body."""
        self.transition(Event.DATA)
        self._data_started = self._last_input
        self._data_mark = self.reader.total

    def auth_started(self) -> None:
        """An AUTH exchange begins: from here the input is SASL response lines."""
        self.state = TRANSITIONS[(self.state, Event.AUTH)]

    def auth_ended(self) -> None:
        if self.state is State.AUTH:          # not when the exchange closed the session
            self.state = TRANSITIONS[(State.AUTH, Event.AUTH_DONE)]

    def tls_established(self, info: TlsInfo) -> None:
        """RFC 3207 §4.2: after the handshake the session starts afresh (the failure count survives)."""
        self.tls = info
        self.vars.tls = True
        self._reset_state()
        self.transition(Event.TLS)
        self.params = self._evaluate_params()

    @property
    def greeting(self) -> bytes:
        return self.ctx.greeting

    # -- input ----------------------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float = 0.0) -> bool:
        """Buffer bytes from the client (received at ``now``). False once ``session.transfer-limit`` is
        exceeded: the session is closed with its 421 in ``out``."""
        self._last_input = now
        reader = self.reader
        reader.feed(data)
        if reader.total > self.params.transfer_limit:
            self.close(R.TRANSFER)
            return False
        return True

    def receive_eof(self) -> None:
        """The client half-closed: what it already sent is still answered, then the session ends."""
        self.eof = True

    def deadline_reply(self, now: float) -> bytes | None:
        """The 421 to close with if a deadline has passed at ``now``, else None:
        ``session.duration`` since the start; while waiting for the client (not for a request in flight),
        ``session.timeout`` since its last byte, and since the first byte of a line still incomplete (a
        client sending a byte every few seconds does not keep a session); in DATA, MIN_DATA_RATE."""
        p = self.params
        if now - self.started > p.duration:
            return R.DURATION
        if self.busy or self.state is State.CLOSED:
            return None
        if now - self._last_input > p.timeout:
            return R.TIMEOUT
        if self.state is State.DATA:
            received = self.reader.total - self._data_mark
            if now - self._data_started > p.timeout + received / MIN_DATA_RATE:
                return R.TIMEOUT
        elif self._line_started is not None and now - self._line_started > p.timeout:
            return R.TIMEOUT
        return None

    def _note_partial_line(self) -> None:
        """Waiting for input: remember since when an incomplete line is buffered. It began in the latest
        input if any line was completed since the last look (or nothing was buffered before)."""
        reader = self.reader
        if not reader.buffered:                 # the common case: every line taken
            self._line_started = None
            return
        consumed = reader.total - reader.buffered
        if self._line_started is None or consumed != self._consumed_mark:
            self._line_started = self._last_input
        self._consumed_mark = consumed

    @property
    def buffered(self) -> int:
        """Input bytes received and not yet consumed (the transport's back-pressure signal)."""
        return self.reader.buffered

    @property
    def busy(self) -> bool:
        """A request is out with the transport (not an idle wait for the client's input)."""
        return self._handler is not None and not self._awaiting_input

    # -- the pump ------------------------------------------------------------------------------------
    def advance(self, answer: Any = _NOTHING) -> Any:
        """Run on the input buffered so far -- or, given ``answer``, first hand it to the stage whose
        request it answers (what :meth:`resume` does). See the theory of operation for what comes back.
        One method, because it runs for every chunk a client sends."""
        gen = self._handler
        if answer is _NOTHING:
            if gen is not None:
                if not self._awaiting_input:
                    return None                     # a request is in flight; its answer resumes us
                answer = self._read_framed()
                if answer is _NOTHING:
                    self._note_partial_line()
                    return None
                self._awaiting_input = False
            else:
                answer = None
        else:
            self._request = None
            if self.gone:
                self._handler = None
                if gen is not None:
                    try:
                        gen.send(answer)            # the stage records the outcome; nothing more is done
                    except StopIteration:
                        pass
                    gen.close()
                return None
        reader = self.reader
        budget = COMMAND_BATCH
        while True:
            if gen is None:
                self._handler = None
                if self.closing:
                    return None
                if self.errors >= self.params.errors_total:
                    self.events.refused("too-many-errors", R.TOO_MANY_ERRORS)   # the reject line, counted
                    self.close(R.TOO_MANY_ERRORS)   # like Postfix's hard error limit: no more parsing
                    return None
                if budget == 0:
                    return PAUSE
                line = reader.next_line()
                if line is None:
                    if self.eof:
                        self.close()
                    self._note_partial_line()
                    return None
                budget -= 1
                self.events.command(line)
                gen = self.handle(line)
                if gen is None:
                    self.events.answered(self.out)
                    continue
                answer = None
            try:
                req = gen.send(answer)
            except StopIteration:
                gen = None
                self.events.answered(self.out)
                continue
            kind = type(req)
            if kind is ReadLine or kind is ReadData:
                if kind is ReadData:
                    reader.start_data(req.max_size)
                answer = self._read_framed()
                if answer is _NOTHING:
                    self._handler = gen
                    self._awaiting_input = True
                    self._note_partial_line()
                    return None
                continue
            if kind is StartTls:
                # RFC 3207: nothing the client pipelined behind STARTTLS in cleartext may be executed.
                reader.clear()
            self._handler = gen
            self._request = req
            return req

    def resume(self, answer: Any) -> Any:
        """Hand back the answer to the request ``advance``/``resume`` returned, and run on."""
        return self.advance(answer)

    @property
    def verdict_pending(self) -> bool:
        """The client's credentials are with a lookup: its verdict must still be heard (abandon)."""
        return type(self._request) is Authenticate

    def abandon(self) -> None:
        """The connection is gone. The stage in progress is dropped (its ``finally`` blocks run) -- unless
        a lookup is judging credentials the client sent: then the transport lets it finish and hands its
        verdict to :meth:`resume` once more, so the attempt is recorded (``result=abandoned``)."""
        self.gone = True
        if self.verdict_pending:
            return
        gen, self._handler = self._handler, None
        if gen is not None:
            gen.close()

    def _read_framed(self) -> Any:
        """The input a stage waits for, cut as the state says; None at EOF, _NOTHING if incomplete."""
        framing = FRAMING[self.state]
        if framing is Framing.SASL:
            value = self.reader.next_line(SASL_RESPONSE_LIMIT)
        elif framing is Framing.DATA:
            value = self.reader.read_data()
        else:  # pragma: no cover - a stage asked for input outside AUTH/DATA
            raise RuntimeError(f"no input framing in state {self.state}")
        if value is None:
            return None if self.eof else _NOTHING
        return value

    # -- the dispatcher: which command may run when --------------------------------------------------
    def handle(self, line: bytes | object) -> Generator | None:
        """Dispatch one command line through :data:`COMMANDS`. ``TOO_LONG`` stands for a line the reader
        discarded; its first bytes tell whether it was an AUTH with an over-long initial response, which
        RFC 4954 §4 makes a counted authentication failure."""
        if line is TOO_LONG:
            head = self.reader.too_long_head
            if head[:5].upper() == b"AUTH ":
                return auth.too_long(self, head[5:].split(b" ", 1)[0].decode("ascii", "replace"))
            self.reply(R.LINE_TOO_LONG)
            return None
        assert isinstance(line, bytes)
        verb_b, _, arg_b = line.partition(b" ")
        try:
            verb = verb_b.decode("ascii").upper()
        except UnicodeDecodeError:
            self.reply(R.SYNTAX)
            return None
        if len(line) > _LINE_LIMITS.get(verb, COMMAND_LINE_LIMIT) - 2:
            self.reply(R.LINE_TOO_LONG)
            return None
        command = COMMANDS.get(verb)
        if command is None:
            self.reply(R.SYNTAX)
            return None
        if b"\x00" in line:
            self.reply(R.NUL_BYTE)
            return None
        try:
            arg = arg_b.decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            self.reply(R.NON_ASCII)
            return None
        if command.checked:
            refusal = self._refusal(command, arg)
            if refusal is not None:
                self.reply(refusal)
                return None
        return command.handler(self, arg)

    def _refusal(self, command: Command, arg: str) -> bytes | None:
        if command.requires_auth and self.params.auth_require and self.auth_account is None:
            return R.AUTH_REQUIRED
        if command.requires_hello and self.helo is None and (self.params.ehlo_require or self.ctx.lmtp):
            return R.BAD_SEQUENCE_EHLO
        if command.guard is not None:
            refusal = command.guard(self)
            if refusal is not None:
                return refusal
        if arg and command.no_argument is not None:
            return command.no_argument
        if self.state not in command.states:
            return command.elsewhere[self.state]
        return None


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> Any:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)
def _ip_text(text: str) -> str:
    ip = _ip(text)
    return text if ip is None else str(ip)
