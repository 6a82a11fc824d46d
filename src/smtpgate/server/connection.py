"""The asyncio transport for one SMTP session: bytes in, replies out, requests performed.

An ``asyncio.Protocol`` rather than a stream coroutine per client: an idle session then costs only
this object, its ``Session`` and its buffers -- no task, no timer (a server-wide sweeper enforces
``session.timeout`` / ``session.duration``). The protocol itself -- states, framing, which command may
run -- is the session's (``session/machine.py``); this class only

* feeds received bytes to ``Session.receive_data`` and runs ``Session.advance``;
* writes ``session.out``;
* performs the request the session returns (a lookup, a delay, a TLS handshake, a delivery, CPU work)
  and resumes it with ``Session.resume(answer)``; at most one is in flight (``self.pending``);
* applies back-pressure: it stops reading from a client that pipelines faster than it reads its replies,
  and gives the loop back between batches of commands (``PAUSE``).

An ``errors.wait`` delay is a ``call_later`` on the server's clock that resumes this session alone.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..executor import run_sync
from ..lookup.base import AuthResult, LookupUnavailable, Outcome
from ..protocol import replies as R
from ..session.context import ListenerContext
from ..session.machine import NO_ANSWER, Session
from ..session.requests import (PAUSE, UNAVAILABLE, Authenticate, Compute, Contains, Deliver, GetSecret, Sleep,
                                StartTls)
from ..abuse.replies import NOT_SMTP
from ..abuse.requests import AuthDone, AuthGate, Offence, RateCheck
from .tls import tls_info

if TYPE_CHECKING:
    from . import Server

log = logging.getLogger("smtpgate.server")

#: Unsent replies beyond which no more input is parsed (pause_writing) until the client reads them, and
#: unparsed input beyond which the socket is not read: what a client that never reads can make us hold.
OUTPUT_HIGH_WATER = 64 * 1024
MAX_BUFFERED = 64 * 1024
GUARD_REQUESTS = frozenset({AuthGate, AuthDone, Offence, RateCheck})   # served by server.guard (abuse/)


class SmtpConnection(asyncio.Protocol):
    __slots__ = ("server", "ctx", "transport", "session", "pending", "write_paused", "closed", "reading_paused",
                 "registered", "ticket")

    def __init__(self, server: "Server", ctx: ListenerContext):
        self.server = server
        self.ctx = ctx
        self.transport: Any = None
        self.session: Session | None = None
        self.pending: Any = None          # the in-flight request's task or timer, or the next batch's callback
        self.write_paused = False
        self.reading_paused = False
        self.closed = False
        self.registered = False                 # counted in the server's connections
        self.ticket: Any = None                 # the abuse guard's admission (concurrency slots to give back)

    # -- asyncio callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        """Plain listeners: at accept. Implicit TLS: after the handshake (the connection was counted at
        accept by server/tls_listener.py)."""
        self.transport = transport
        addresses = self._addresses()           # once: the guard and the session both need the peer
        if not self.registered:
            guard = self.server.guard
            if guard is not None and self.ticket is None and not self._admit(guard, addresses[0]):
                return
            if not self.server._register(self):
                self.closed = True
                peer = transport.get_extra_info("peername") or ("", 0)
                self.ctx.events.connection_refused("max-connections", peer[0], peer[1])
                transport.write(R.TOO_MANY_CONNECTIONS)
                transport.close()
                return
            self.registered = True
        self.pending = None                     # the handshake (implicit TLS) is over
        transport.set_write_buffer_limits(high=OUTPUT_HIGH_WATER)
        info = tls_info(transport.get_extra_info("ssl_object")) if self.ctx.listener.tls.implicit else None
        self._start_session(info, addresses)

    def _admit(self, guard: Any, peer: Any) -> bool:
        """The abuse guard's word at accept, before a session exists (plain listeners; implicit TLS asks
        in tls_listener.py, before the handshake): a banned or blocked address or a concurrency throttle
        is refused with one short line; a connect-rate throttle on a shared store is awaited first."""
        transport = self.transport
        ticket = self.ticket = guard.admit(peer[0], self.ctx.listener.id, *self.local_end(guard))
        if ticket.refusal is not None:
            self.ctx.events.refused_by_reply(ticket.refusal, peer[0], peer[1])
            self.closed = True
            transport.pause_reading()           # nothing of the client is read, now or during a tarpit pause
            self.server.tarpit.refuse(guard, ticket.refusal, _write_and_close, transport, ticket.refusal)
            return False
        if ticket.pending is not None:
            self.pending = asyncio.get_running_loop().create_task(self._admit_later(guard))
            return False
        return True

    async def _admit_later(self, guard: Any) -> None:
        refusal = await guard.connect_rate(self.ticket)
        self.pending = None
        if self.closed:
            return
        if refusal is not None:
            peer = self._addresses(local=False)[0]
            self.ctx.events.refused_by_reply(refusal, peer[0], peer[1])
            self.closed = True
            self.transport.write(refusal)
            self.transport.close()
            return
        self.connection_made(self.transport)

    def local_end(self, guard: Any, sock: Any = None) -> tuple[str, int, bool]:
        """(local ip, local port, tls) for connect throttles; no getsockname() when none needs them."""
        if not guard.needs_local:
            return "", 0, self.ctx.listener.tls.implicit
        if sock is not None:
            local = self.ctx.local_addr or sock.getsockname()
        else:
            local = self.ctx.local_addr or self.transport.get_extra_info("sockname") or ("", 0)
        return local[0], local[1], self.ctx.listener.tls.implicit

    def _addresses(self, local: bool = True) -> tuple[Any, Any]:
        """(client, local) address of the session (the local one only if ``local``). A PROXY listener's
        connection overrides this with the addresses its header named (server/proxy.py)."""
        peer = self.transport.get_extra_info("peername") or ("", 0)
        if not local:
            return peer, ("", 0)
        # A listener bound to one address knows its local end without a getsockname() per connection.
        sock = self.ctx.local_addr or self.transport.get_extra_info("sockname") or ("", 0)
        return peer, sock

    def _start_session(self, info: Any, addresses: tuple[Any, Any]) -> None:
        transport = self.transport
        peer, sock = addresses      # behind a PROXY header: the real client
        try:
            self.session = Session(self.ctx, peer[0], peer[1], sock[0], sock[1], info, now=self.server.clock.now())
        except Exception:
            log.exception("session setup failed")
            transport.write(R.INTERNAL)
            self._close()
            return
        transport.write(self.session.greeting)

    def data_received(self, data: bytes) -> None:
        s = self.session
        if self.closed or s is None:
            return
        if s.reader.total == 0 and self.server.guard is not None and self._not_smtp(data):
            return
        if not s.receive_data(data, self.server.clock.now()):
            self._abort()
            return
        if self.pending is None and not self.write_paused:
            if self._pump():
                return                              # all input taken (the common case)
        if not self.closed and not self.reading_paused and s.buffered > MAX_BUFFERED:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """The client half-closed. Commands it already sent are still answered (``printf ... | nc -N``);
        then the connection closes. TLS cannot stay half-open, so there the transport closes at once."""
        s = self.session
        if self.closed or s is None:
            return False
        s.receive_eof()
        if self.pending is None and not self.write_paused:
            self._pump()
        if self.closed:
            return False
        # Work in flight: its answer and the replies to what is still buffered come first.
        return self.transport.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        s = self.session
        if self.pending is not None:
            if s is not None and s.verdict_pending:
                # The lookup runs to its verdict (bounded by its timeout and concurrency): _resume.
                self.server._await_verdict(self.pending)
            else:
                self.pending.cancel()
            self.pending = None
        if s is not None:
            s.abandon()
            s.events.closed()
        self.server._unregister(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.pending is None and not self.closed:
            self._pump()

    # -- the pump ------------------------------------------------------------------------------------
    def _pump(self, answer: Any = NO_ANSWER) -> bool:
        """Run the session until it waits for input, asks for async work, or pauses. True when it waits
        for input (everything received was taken in)."""
        s = self.session
        try:
            while True:
                req = s.advance(answer)
                if req is None or req is PAUSE:
                    break
                answer = _answer_now(req, self.server.observer) if type(req) not in GUARD_REQUESTS else \
                    self.server.guard.answer_now(req, _LATER)
                if answer is _LATER:
                    break
        except Exception:
            log.exception("internal error in session")
            s.out.append(R.INTERNAL)
            self._abort()
            return True
        if s.notices:
            self._hand_on(s)
        self._flush()
        if req is None:
            if s.closing:
                self._close()
            elif self.reading_paused and s.buffered <= MAX_BUFFERED:
                self.reading_paused = False
                self.transport.resume_reading()
            return True
        if req is PAUSE:
            # Give the loop back; carry on unless the client is not reading its replies (resume_writing).
            if not self.write_paused:
                self.pending = asyncio.get_running_loop().call_soon(self._continue)
        elif type(req) is Sleep:
            self.pending = self.server.clock.call_later(req.seconds, self._resume, None)
        else:
            if type(req) is StartTls:
                # Stop reading the raw socket now, synchronously: from here on only the TLS layer reads
                # it, and what data_received then gets is decrypted (the session dropped the cleartext).
                self.transport.pause_reading()
            self.pending = asyncio.get_running_loop().create_task(self._serve(req))
        return False

    def _continue(self) -> None:
        self.pending = None
        if not self.closed and not self.write_paused:
            self._pump()

    def _resume(self, value: Any) -> None:
        self.pending = None
        if not self.closed:
            self._pump(value)
        elif self.session is not None and self.session.gone:
            try:
                self.session.resume(value)         # the abandoned attempt's verdict, to be recorded
            except Exception:  # noqa: BLE001
                log.exception("recording an abandoned attempt failed")
            if self.session.notices:
                self._hand_on(self.session)

    def _hand_on(self, s: Session) -> None:
        """The session's notices (requests nobody waits for) to the guard that serves them."""
        notices, s.notices = s.notices, []
        guard = self.server.guard
        if guard is None:
            return
        for req in notices:
            try:
                guard.notify(req)
            except Exception:  # noqa: BLE001 - the guard's failure never fails the client
                log.exception("abuse guard notice %s failed", type(req).__name__)

    async def _serve(self, req: Any) -> None:
        """Perform one async request and resume the session with its answer."""
        observer = self.server.observer
        timed = observer.enabled and type(req) in _LOOKUPS
        started = time.monotonic() if timed else 0.0
        try:
            value = await self._perform(req)
            if timed:
                observer.lookup_answered(req.lookup.name, _outcome(value), time.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request %s failed", type(req).__name__)
            value = None
        self._resume(value)

    async def _perform(self, req: Any) -> Any:
        kind = type(req)
        if kind is Authenticate:
            try:
                async with asyncio.timeout(_bound(req.lookup)):
                    return await req.lookup.authenticate(req.creds)
            except (TimeoutError, Exception) as exc:  # noqa: BLE001 - any store failure is a tempfail
                reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                log.warning("lookup %s failed: %s", req.lookup.name, reason)
                return AuthResult(Outcome.UNAVAILABLE, reason=reason)
        if kind is GetSecret or kind is Contains:
            try:
                async with asyncio.timeout(_bound(req.lookup)):
                    if kind is GetSecret:
                        return await req.lookup.get_secret(req.username)
                    return await req.lookup.contains(req.key)
            except LookupUnavailable as exc:
                log.warning("lookup %s unavailable: %s", req.lookup.name, exc)
                return UNAVAILABLE
            except (TimeoutError, Exception) as exc:  # noqa: BLE001
                log.warning("lookup %s failed: %s", req.lookup.name, type(exc).__name__)
                return UNAVAILABLE
        if kind is Compute:
            return await run_sync(req.fn, *req.args)
        if kind is StartTls:
            return await self._handshake()
        if kind is Deliver:
            results = await self.server._deliver(req)
            self.session.events.delivered(req.envelope, req.next_hop, results)
            return results
        if kind in GUARD_REQUESTS:
            return await self.server.guard.perform(req)
        raise TypeError(f"unknown request {req!r}")

    async def _handshake(self) -> Any:
        """The server side of STARTTLS on this connection, bounded by the listener's ``tls.timeout``.
        TlsInfo, or None after closing the connection."""
        ctxt = self.server._ssl_contexts.get(self.ctx.listener.id)
        if ctxt is None:
            return None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, ctxt, server_side=True,
                                             ssl_handshake_timeout=self.ctx.listener.tls.timeout)
        except (OSError, asyncio.TimeoutError, ConnectionError, Exception) as exc:  # noqa: BLE001
            log.info("STARTTLS handshake failed from %s: %s", self._addresses(local=False)[0][0] or "?",
                     type(exc).__name__)
            self.session.events.starttls(None)
            self.closed = True
            try:
                self.transport.abort()
            except Exception:  # noqa: BLE001
                pass
            self.server._unregister(self)
            return None
        self.transport = transport
        transport.set_write_buffer_limits(high=OUTPUT_HIGH_WATER)
        self.reading_paused = False
        info = tls_info(transport.get_extra_info("ssl_object"))
        self.session.events.starttls(info)
        return info

    def _not_smtp(self, first: bytes) -> bool:
        """A first input that is HTTP or a TLS hello (server.auto-ban.scan.*): counted, answered, closed."""
        guard = self.server.guard
        kind = guard.not_smtp(first)
        if kind is None:
            return False
        log.info("not SMTP from %s (%s): closing", self.session.vars.remote_ip, kind)
        guard.offence_soon("scan", self.session.vars.remote_ip)
        self.session.events.refused("not-smtp", detail=kind)
        self._abort(None if kind == "tls" else NOT_SMTP)
        return True

    # -- output --------------------------------------------------------------------------------------
    def _flush(self) -> None:
        out = self.session.out
        if out:
            if self.session.events.debug:
                self.session.events.sent(out)
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    def _abort(self, reply: bytes | None = None) -> None:
        """Send what the session has to say (and ``reply``), then close whatever is in flight."""
        if self.closed:
            return
        if self.session is not None:
            self._flush()
        if reply is not None:
            self.transport.write(reply)
        self._close()

    def _close(self) -> None:
        self.transport.close()
        self.closed = True
        if self.session is not None:
            self.session.events.closed()
        # The session is over now. A TLS transport may linger until the peer answers close_notify (or
        # the shutdown timeout passes); that must neither hold a max-connections slot nor delay a stop.
        self.server._unregister(self)

    def expire(self, now: float) -> None:
        """Called by the server's sweeper: the session's deadlines (session.timeout, .duration)."""
        s = self.session
        if self.closed or s is None:
            return
        reply = s.deadline_reply(now)
        if reply is not None:
            if reply is R.TIMEOUT and s.messages == 0 and s.mail_from is None and self.server.guard is not None:
                self.server.guard.offence_soon("loiter", s.vars.remote_ip)     # server.auto-ban.loiter
            self._abort(reply)

    def shutdown(self) -> None:
        """Grace time is over: tell the client and close."""
        if self.closed:
            return
        if self.session is None:           # still in its TLS handshake: nothing to say in cleartext
            if self.pending is not None:
                self.pending.cancel()
            if self.transport is not None:
                self.transport.abort()
            self.closed = True
            self.server._unregister(self)
            return
        self._abort(R.SHUTDOWN)


_LATER = object()


def _write_and_close(transport: Any, reply: bytes) -> None:
    if not transport.is_closing():
        transport.write(reply)
        transport.close()


def _answer_now(req: Any, observer: Any) -> Any:
    """A lookup's synchronous answer when it has one (in-memory list, cache hit), else _LATER."""
    kind = type(req)
    try:
        if kind is Authenticate:
            result = req.lookup.authenticate_now(req.creds)
        elif kind is Contains:
            result = req.lookup.contains_now(req.key)
        elif kind is GetSecret:
            result = req.lookup.get_secret_now(req.username)
            result = None if result is None else result[0] if result[0] is not None else _NONE
        else:
            return _LATER
        if result is None:
            return _LATER
        if observer.enabled:            # counted, not timed
            observer.lookup_answered(req.lookup.name, _outcome(result))
        return None if result is _NONE else result
    except Exception:  # noqa: BLE001 - a failing fast path falls back to the ordinary one
        log.exception("fast path of %s failed", getattr(req.lookup, "name", "?"))
    return _LATER


def _bound(lookup: Any) -> float:
    # Each lookup bounds its own operations; this outer bound only guards against one that forgets.
    return float(getattr(lookup, "timeout", 30.0)) + 5.0


_LOOKUPS = (Authenticate, GetSecret, Contains)
_NONE = object()                # get_secret_now's "(None,)": known now, and unknown user


def _outcome(answer: Any) -> str:
    """A lookup answer as a metric outcome: positive (valid / found / member), negative, unavailable."""
    if answer is UNAVAILABLE:
        return "unavailable"
    if isinstance(answer, AuthResult):
        return "positive" if answer.outcome is Outcome.VALID else \
            "unavailable" if answer.outcome is Outcome.UNAVAILABLE else "negative"
    return "positive" if answer and answer is not _NONE else "negative"
