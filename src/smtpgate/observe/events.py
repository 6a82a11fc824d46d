"""What an MTA admin reads and what Prometheus counts, emitted from one place.

The transport and the stage that decides call a :class:`SessionEvents` (one per session) at the moment
a request is answered; each call updates pre-bound metric children and, when its logger's level is on,
logs one line. A line is an :class:`Event` -- a name and ordered fields -- rendered to text (or JSON, see
``observe.logsetup``) by the log writer thread, never on the event loop: when a level is off, nothing is
built at all.

Lines (every one carries ``session=<id>``; text form shown)::

  smtpgate.session  connect session=… listener=submission remote=192.0.2.7 port=51234 tls=no
  smtpgate.auth     auth listener=… remote=… port=… mechanism=PLAIN user="john" result=invalid failures=1 session=…
  smtpgate.session  reject session=… listener=… remote=… port=… command=RCPT reason=relay-denied reply="550 5.7.1 …"
  smtpgate.message  message session=… queue_id=… listener=… remote=… from="<a@b>" rcpts=1 size=2048 user="john"
                    tls=TLSv1.3 next_hop=spool result=accepted reply="250 2.0.0 Ok: queued as …"
  smtpgate.session  disconnect session=… listener=… remote=… port=… ehlo=1 auth=1/2 mail=1 rcpt=1 data=1 quit=1
                    commands=6/7 duration=0.041
  smtpgate.dialogue (DEBUG) smtp session=… dir=in line="AUTH PLAIN ***"
                            smtp session=… dir=out line="235 2.7.0 Authentication succeeded."

The ``auth`` line keeps the format fail2ban filters were written for (``session=`` is appended last).
Strings a client chose (user names, addresses) are quoted and escaped, so they cannot forge fields or
lines. Secrets never reach a line: AUTH arguments, SASL responses and 334 challenges are masked in the
dialogue, message bodies are not logged.

The command tally is taken from each command's final reply (2xx/3xx counts as ok, Postfix's
convention): ``auth=1/2`` is one success out of two AUTH commands.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any, Callable

from . import metrics as M

log_session = logging.getLogger("smtpgate.session")
log_auth = logging.getLogger("smtpgate.auth")
log_message = logging.getLogger("smtpgate.message")
log_dialogue = logging.getLogger("smtpgate.dialogue")
INFO, DEBUG, WARNING = logging.INFO, logging.DEBUG, logging.WARNING


def _via_logging(name: str, level: int, event: "Event") -> None:
    logging.getLogger(name).log(level, event)


#: Where an event line goes once its logger's level said yes: ``(logger name, level, Event)``. Through the
#: logging module by default (tests' caplog, embedders' handlers); ``smtpgate serve`` points it straight
#: at its log writer (:func:`emit_directly`): three lines per session otherwise cost a ``LogRecord`` each
#: plus the handler chain, a large share of a session's CPU.
_emit: Callable[[str, int, "Event"], None] = _via_logging


def emit_directly(submit: Callable[[str, int, "Event"], None] | None) -> None:
    """Send event lines to ``submit`` (the log writer's own queue), or back through logging (None).
    Only valid while that writer is the one handler of the root logger: levels are still checked on the
    named loggers before a line is built."""
    global _emit
    _emit = submit if submit is not None else _via_logging


_MECHANISMS = frozenset(("PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256",
                         "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"))

# Session ids: a per-process prefix (several nodes, restarts) and a counter; cheap and unique enough to
# grep one session out of a busy log.
_PREFIX = os.urandom(2).hex().upper()
_counter = itertools.count(1)


def new_session_id() -> str:
    return f"{_PREFIX}{next(_counter):08X}"


class Quoted(str):
    """A field value a client chose: quoted and escaped in text lines, a plain string in JSON."""
    __slots__ = ()


class Event:
    """One log line: ``name k=v k=v ...``. ``str()`` is the text form; ``fields`` feed the JSON form."""
    __slots__ = ("name", "fields")

    def __init__(self, name: str, fields: list[tuple[str, Any]]):
        self.name = name
        self.fields = fields

    def __str__(self) -> str:
        # Runs in the log writer thread for every line: exact type checks, most common first.
        parts = [self.name]
        for key, value in self.fields:
            t = type(value)
            if t is str or t is int:
                parts.append(f"{key}={value}")
            elif t is Quoted:
                parts.append(f"{key}={quote(value)}")
            elif value is None:
                parts.append(f"{key}=-")
            elif t is float:
                parts.append(f"{key}={value:.3f}")
            else:
                parts.append(f"{key}={value}")
        return " ".join(parts)


_PLAIN_TEXT = re.compile(r'[ !#-\[\]-~]{0,256}')    # printable ASCII without '"' and '\\'


def quote(text: str) -> str:
    """Quoted, escaped and bounded, so a hostile value cannot forge log fields or lines."""
    if _PLAIN_TEXT.fullmatch(text):
        return f'"{text}"'
    text = text[:256]
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
    out.append('"')
    return "".join(out)


class _Connect(Event):
    """The per-session lines are the hot ones (three per session): each renders with one f-string, and
    builds its field list only for JSON output."""
    __slots__ = ("sid", "listener", "remote", "port", "tls")

    def __init__(self, sid: str, listener: str, remote: str, port: int, tls: str):
        self.name = "connect"
        self.sid, self.listener, self.remote, self.port, self.tls = sid, listener, remote, port, tls

    @property
    def fields(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return [("session", self.sid), ("listener", self.listener), ("remote", self.remote),
                ("port", self.port), ("tls", self.tls)]

    def __str__(self) -> str:
        return f"connect session={self.sid} listener={self.listener} remote={self.remote} port={self.port} tls={self.tls}"


class _Auth(Event):
    __slots__ = ("sid", "listener", "remote", "port", "mechanism", "user", "result", "failures", "reason")

    def __init__(self, sid: str, listener: str, remote: str, port: int, mechanism: str, user: str, result: str,
                 failures: int, reason: str):
        self.name = "auth"
        self.sid, self.listener, self.remote, self.port = sid, listener, remote, port
        self.mechanism, self.user, self.result, self.failures, self.reason = mechanism, user, result, failures, reason

    @property
    def fields(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        fields: list[tuple[str, Any]] = [
            ("listener", self.listener), ("remote", self.remote), ("port", self.port), ("mechanism", self.mechanism),
            ("user", Quoted(self.user)), ("result", self.result), ("failures", self.failures)]
        if self.reason:
            fields.append(("reason", Quoted(self.reason)))
        fields.append(("session", self.sid))
        return fields

    def __str__(self) -> str:
        reason = f" reason={quote(self.reason)}" if self.reason else ""
        return (f"auth listener={self.listener} remote={self.remote} port={self.port} mechanism={self.mechanism} "
                f"user={quote(self.user)} result={self.result} failures={self.failures}{reason} session={self.sid}")


class _Disconnect(Event):
    __slots__ = ("sid", "listener", "remote", "port", "tally", "duration")

    def __init__(self, sid: str, listener: str, remote: str, port: int, tally: list[tuple[str, str]],
                 duration: float):
        self.name = "disconnect"
        self.sid, self.listener, self.remote, self.port = sid, listener, remote, port
        self.tally, self.duration = tally, duration     # [(verb, "ok" or "ok/total")], "commands" last

    @property
    def fields(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return [("session", self.sid), ("listener", self.listener), ("remote", self.remote), ("port", self.port),
                *self.tally, ("duration", self.duration)]

    def __str__(self) -> str:
        tally = " ".join([f"{verb}={count}" for verb, count in self.tally])
        return (f"disconnect session={self.sid} listener={self.listener} remote={self.remote} port={self.port} "
                f"{tally} duration={self.duration:.3f}")


# Refusals recognised by the reply a command ended with (the reply constants are the protocol's one
# table of texts, so the reply identifies the decision). Other components (throttles, bans) add theirs
# with register_refusal().
_REFUSALS: dict[bytes, str] = {}
_CONNECTION_REFUSALS: dict[bytes, tuple[str, str]] = {}     # reply -> (reason, throttle kind)


def register_refusal(reply: bytes, reason: str) -> None:
    _REFUSALS[reply] = reason


def _register_protocol_refusals() -> None:
    from ..protocol import replies as R
    for name, reason in (("RCPT_RELAY_DENIED", "relay-denied"), ("AUTH_REQUIRED", "auth-required"),
                         ("AUTH_ENCRYPTION_REQUIRED", "encryption-required"),
                         ("MAIL_NOT_OWNED", "sender-not-owned"), ("MAIL_TOO_BIG", "size"),
                         ("DATA_TOO_BIG", "size"), ("TOO_MANY_MESSAGES", "too-many-messages"),
                         ("RCPT_TOO_MANY", "too-many-recipients"), ("RCPT_UNKNOWN", "unknown-recipient"),
                         ("AUTH_TOO_MANY", "too-many-auth-errors"), ("TRANSFER", "transfer-limit")):
        reply = getattr(R, name, None)
        if reply is not None:
            register_refusal(reply, reason)
    try:                                    # throttles and bans (issue 11), when this build has them
        from ..abuse import replies as A
    except ImportError:
        return
    for name, reason, kind in (("BANNED", "banned", ""), ("TOO_MANY_CONCURRENT", "throttled", "concurrency"),
                               ("RATE_LIMITED", "throttled", "rate"), ("RATE_LIMITED_CLOSE", "throttled", "rate"),
                               ("NOT_SMTP", "not-smtp", "")):
        reply = getattr(A, name, None)
        if reply is not None:
            register_refusal(reply, reason)
            _CONNECTION_REFUSALS[reply] = (reason, kind)


_register_protocol_refusals()

# Verbs for the tally, keyed by the first four bytes of a command line upper-cased (all SMTP verbs have
# four letters except STARTTLS).
_VERBS = {v.encode()[:4]: v.lower() for v in ("EHLO", "HELO", "LHLO", "STARTTLS", "AUTH", "MAIL", "RCPT",
                                                "DATA", "BDAT", "VRFY", "EXPN", "RSET", "NOOP", "QUIT", "HELP")}
_TALLY_ORDER = ("ehlo", "helo", "lhlo", "starttls", "auth", "mail", "rcpt", "data", "bdat", "vrfy",
                "expn", "rset", "noop", "help", "quit", "unknown")
_TALLY_RANK = {verb: rank for rank, verb in enumerate(_TALLY_ORDER)}
_OK_FIRST = (50, 51)     # b"2", b"3"


class ListenerEvents:
    """Everything the sessions of one listener share: its id and its pre-bound metric children."""

    def __init__(self, listener_id: str, metrics: Any = M.NULL):
        self.id = listener_id
        self.metrics = metrics
        m = metrics
        self.m_connections = m.connections.labels_(listener_id)
        self.m_active = m.sessions_active.labels_(listener_id)
        self.m_messages = m.messages.labels_(listener_id)
        self.m_bytes = m.message_bytes.labels_(listener_id)
        self.m_banned = m.banned.labels_(listener_id)
        self.m_auth_ok = m.auth_duration.labels_(listener_id, "success")
        self.m_auth_failed = m.auth_duration.labels_(listener_id, "failure")
        self.m_tls = {(kind, result): m.tls_handshakes.labels_(listener_id, kind, result)
                      for kind in ("implicit", "starttls") for result in ("ok", "failed")}
        self._auth: dict[tuple[str, str], Any] = {}
        self._refusals: dict[str, Any] = {}
        self._throttled: dict[str, Any] = {}
        self._deliveries: dict[tuple[str, str], Any] = {}

    # -- the session's start ---------------------------------------------------------------------------
    def open(self, remote_ip: Any, remote_port: int, tls: Any = None) -> "SessionEvents":
        """A session begins (its greeting is about to be sent). ``tls``: TlsInfo of implicit TLS."""
        ev = SessionEvents(self, str(remote_ip), remote_port)
        self.m_connections.inc()
        self.m_active.inc()
        if tls is not None:
            self.m_tls[("implicit", "ok")].inc()
        if log_session.isEnabledFor(INFO):
            _emit("smtpgate.session", INFO, _Connect(ev.sid, self.id, ev.remote, remote_port,
                                                     tls.version if tls is not None else "no"))
        return ev

    def connection_refused(self, reason: str, remote_ip: Any = None, remote_port: int = 0,
                           kind: str = "concurrency") -> None:
        """Refused before a session exists: max-connections, banned, throttled (``kind``: concurrency or
        rate), not-smtp ..."""
        self.metrics.connections_refused.labels_(self.id, reason).inc()
        if reason == "banned":
            self.banned()
        elif reason == "throttled":
            self.throttled(kind)
        if log_session.isEnabledFor(INFO):
            _emit("smtpgate.session", INFO, Event("reject", [("session", "-"), ("listener", self.id), ("remote", str(remote_ip)),
                                              ("port", remote_port), ("command", "CONNECT"), ("reason", reason)]))

    def refused_by_reply(self, reply: bytes, remote_ip: Any = None, remote_port: int = 0) -> None:
        """A connection refused with ``reply`` before a session exists (the abuse guard's admission)."""
        reason, kind = _CONNECTION_REFUSALS.get(reply, ("refused", ""))
        self.connection_refused(reason, remote_ip, remote_port, kind)

    def tls_failed(self, kind: str = "implicit") -> None:
        """A TLS handshake that failed before a session existed (implicit TLS)."""
        self.m_tls[(kind, "failed")].inc()

    # -- counters other components increment (throttles, bans) -----------------------------------------
    def throttled(self, kind: str) -> None:
        child = self._throttled.get(kind)
        if child is None:
            child = self._throttled[kind] = self.metrics.throttled.labels_(self.id, kind)
        child.inc()

    def banned(self) -> None:
        self.m_banned.inc()

    # -- bound lazily (small, known label sets) ------------------------------------------------------
    def _auth_child(self, mech: str, result: str) -> Any:
        key = (mech, result)
        child = self._auth.get(key)
        if child is None:
            child = self._auth[key] = self.metrics.auth_attempts.labels_(
                self.id, mech if mech in _MECHANISMS else "other", result)
        return child

    def _refusal_child(self, reason: str) -> Any:
        child = self._refusals.get(reason)
        if child is None:
            child = self._refusals[reason] = self.metrics.refusals.labels_(self.id, reason)
        return child

    def _delivery_child(self, next_hop: str, outcome: str) -> Any:
        key = (next_hop, outcome)
        child = self._deliveries.get(key)
        if child is None:
            child = self._deliveries[key] = self.metrics.deliveries.labels_(next_hop, outcome)
        return child


class SessionEvents:
    """One session's observer: its id, its command tally, and the calls the transport and stages make."""
    __slots__ = ("le", "sid", "started", "remote", "port", "tally", "verb", "verb_started", "debug", "done", "tls_ok")

    def __init__(self, le: ListenerEvents, remote: str, port: int):
        self.le = le
        self.sid = new_session_id()
        self.started = time.monotonic()
        self.remote = remote
        self.port = port
        self.tally: dict[str, list[int]] = {}
        self.verb = "unknown"
        self.verb_started = 0.0
        self.debug = log_dialogue.isEnabledFor(DEBUG)
        self.done = False
        self.tls_ok = False

    # -- commands (transport) --------------------------------------------------------------------------
    def command(self, line: Any) -> None:
        """A command line is about to be dispatched (``line`` may be a too-long marker object)."""
        verb = _VERBS.get(line[:4].upper(), "unknown") if type(line) is bytes else "unknown"
        self.verb = verb
        if verb == "auth":
            self.verb_started = time.monotonic()
        if self.debug:
            self._dialogue("in", _mask(line) if type(line) is bytes else "(line too long, discarded)")

    def answered(self, out: list[bytes]) -> None:
        """The command dispatched last has finished; ``out`` ends with its final reply (if any)."""
        last = out[-1] if out else b""
        verb = self.verb
        # STARTTLS's 220 went out before the handshake; what counts is whether the handshake worked.
        ok = last[0] in _OK_FIRST if last else (verb == "starttls" and self.tls_ok)
        counts = self.tally.get(verb)
        if counts is None:
            counts = self.tally[verb] = [0, 0]
        counts[1] += 1
        if ok:
            counts[0] += 1
            if verb == "auth":
                self.le.m_auth_ok.observe(time.monotonic() - self.verb_started)
            return
        if verb == "auth":
            self.le.m_auth_failed.observe(time.monotonic() - self.verb_started)
        reason = _REFUSALS.get(last)
        if reason is not None:
            self.refused(reason, last)

    def refused(self, reason: str, reply: bytes | None = None, **detail: Any) -> None:
        """A refusal the stage decided (relay denied, 530, 538, sender not owned, size, throttle, ban...)."""
        self.le._refusal_child(reason).inc()
        if reason == "throttled":
            self.le.throttled("rate")
        elif reason == "banned":
            self.le.banned()
        if log_session.isEnabledFor(INFO):
            fields: list[tuple[str, Any]] = [
                ("session", self.sid), ("listener", self.le.id), ("remote", self.remote), ("port", self.port),
                ("command", self.verb.upper()), ("reason", reason)]
            if reply:
                fields.append(("reply", Quoted(reply.split(b"\r\n", 1)[0].decode("utf-8", "replace"))))
            for key, value in detail.items():
                fields.append((key, Quoted(str(value)) if isinstance(value, str) else value))
            _emit("smtpgate.session", INFO, Event("reject", fields))

    # -- AUTH (the AUTH stage) ------------------------------------------------------------------------
    def auth(self, mechanism: str, user: str, result: str, failures: int, reason: str = "") -> None:
        self.le._auth_child(mechanism, result).inc()
        if log_auth.isEnabledFor(INFO):
            _emit("smtpgate.auth", INFO, _Auth(self.sid, self.le.id, self.remote, self.port, mechanism, user, result,
                                               failures, reason))

    # -- TLS, delivery (transport) ---------------------------------------------------------------------
    def starttls(self, info: Any) -> None:
        """A STARTTLS handshake finished: ``info`` is its TlsInfo, or None when it failed."""
        self.le.m_tls[("starttls", "ok" if info is not None else "failed")].inc()
        self.tls_ok = info is not None
        if self.debug:
            self._dialogue("tls", f"TLS {'established: ' + info.version + ' ' + info.cipher if info else 'failed'}")

    def delivered(self, envelope: Any, next_hop: str | None, results: list[Any]) -> None:
        """A message was handed to the spool or a next hop; ``results`` are its per-recipient answers."""
        hop = next_hop or "spool"
        failed = next((r for r in results if not r.ok), None)
        accepted = any(r.ok for r in results)
        outcome = "accepted" if failed is None else "tempfail" if 400 <= failed.code < 500 else "rejected"
        self.le._delivery_child(hop, outcome).inc()
        size = len(envelope.data)
        if accepted:
            self.le.m_messages.inc()
            self.le.m_bytes.inc(size)
        level = INFO if failed is None else WARNING
        if log_message.isEnabledFor(level):
            shown = failed or (results[0] if results else None)
            _emit("smtpgate.message", level, Event("message", [
                ("session", self.sid), ("queue_id", envelope.queue_id), ("listener", self.le.id),
                ("remote", self.remote), ("from", Quoted(f"<{envelope.mail_from}>")),
                ("rcpts", len(envelope.rcpt_to)), ("size", size),
                ("user", Quoted(envelope.authenticated_as) if envelope.authenticated_as else None),
                ("tls", envelope.tls or "no"), ("next_hop", hop), ("result", outcome),
                ("reply", Quoted(f"{shown.code} {shown.text}") if shown is not None else None)]))

    # -- the end ----------------------------------------------------------------------------------------
    def closed(self) -> None:
        """The session is over (any cause). Idempotent: transports may learn it twice."""
        if self.done:
            return
        self.done = True
        self.le.m_active.dec()
        if log_session.isEnabledFor(INFO):
            fields: list[tuple[str, str]] = []
            ok_all = total_all = 0
            tally = self.tally
            for verb in sorted(tally, key=_TALLY_RANK.__getitem__) if len(tally) > 1 else tally:
                ok, total = tally[verb]
                ok_all += ok
                total_all += total
                fields.append((verb, str(ok) if ok == total else f"{ok}/{total}"))
            fields.append(("commands", str(ok_all) if ok_all == total_all else f"{ok_all}/{total_all}"))
            _emit("smtpgate.session", INFO, _Disconnect(self.sid, self.le.id, self.remote, self.port, fields,
                                                        time.monotonic() - self.started))

    # -- debug: the dialogue --------------------------------------------------------------------------
    def sent(self, out: list[bytes]) -> None:
        """Replies about to be written (call only when ``self.debug``)."""
        for chunk in out:
            for line in chunk.split(b"\r\n"):
                if line:
                    self._dialogue("out", "334 ***" if line[:4] == b"334 " and len(line) > 4
                                   else line.decode("utf-8", "replace"))

    def _dialogue(self, direction: str, text: str) -> None:
        _emit("smtpgate.dialogue", DEBUG, Event("smtp", [("session", self.sid), ("dir", direction), ("line", Quoted(text))]))


def _mask(line: bytes) -> str:
    """A client line for the debug log with secrets removed: AUTH keeps only its mechanism."""
    if line[:5].upper() == b"AUTH ":
        mech = line[5:].split(b" ", 1)
        text = "AUTH " + mech[0].decode("ascii", "replace")[:40]
        return text + " ***" if len(mech) > 1 else text
    return line.decode("utf-8", "replace")


#: Sessions built without a server (sans-IO tests, embedders driving Session directly) log but count nothing.
def default_listener_events(listener_id: str) -> ListenerEvents:
    return ListenerEvents(listener_id, M.NULL)
