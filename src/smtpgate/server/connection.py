"""The asyncio transport for one SMTP session: bytes in, replies out, requests served.

An ``asyncio.Protocol`` rather than a stream coroutine per client: an idle session then costs only
this object, its ``Session`` and its buffers -- no task, no timer (a server-wide sweeper enforces
``session.timeout`` / ``session.duration``). Async work is started only when a stage asks for it; an
``errors.wait`` delay is a ``call_later`` that resumes this session alone.

``want`` says what the session's current handler is waiting for:
  None     -- nothing: complete lines are dispatched as commands;
  LINE     -- the next line of a SASL exchange (with its own length limit);
  DATA     -- the end of a message body;
  BUSY     -- an async request (lookup, delay, TLS handshake, delivery) is in flight; input is buffered.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..lookup.base import AuthResult, LookupUnavailable, Outcome
from ..lookup.secrets import run_sync
from ..protocol import replies as R
from ..protocol.reader import TOO_LONG, LineReader
from ..session.machine import (UNAVAILABLE, Authenticate, Compute, Contains, Deliver, GetSecret, ListenerContext,
                               ReadData, ReadLine, Session, Sleep, StartTls)
from .tls import tls_info

if TYPE_CHECKING:
    from . import Server

log = logging.getLogger("smtpgate.server")

LINE, DATA, BUSY = 1, 2, 3
MAX_BUFFERED = 1 << 20          # stop reading from a client that pipelines faster than we answer


class SmtpConnection(asyncio.Protocol):
    __slots__ = ("server", "ctx", "transport", "session", "reader", "gen", "want", "line_limit", "last_active",
                 "started", "write_paused", "handle", "closed", "reading_paused", "eof")

    def __init__(self, server: "Server", ctx: ListenerContext):
        self.server = server
        self.ctx = ctx
        self.transport: Any = None
        self.session: Session | None = None
        self.reader = LineReader()
        self.gen: Any = None
        self.want: int | None = None
        self.line_limit = 0
        self.write_paused = False
        self.reading_paused = False
        self.handle: Any = None
        self.closed = False
        self.eof = False

    # -- asyncio callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.started = self.last_active = time.monotonic()
        peer = transport.get_extra_info("peername") or ("", 0)
        # A listener bound to one address knows its local end without a getsockname() per connection.
        sock = self.ctx.local_addr or transport.get_extra_info("sockname") or ("", 0)
        info = tls_info(transport.get_extra_info("ssl_object")) if self.ctx.listener.tls.implicit else None
        if not self.server._register(self):
            self.ctx.events.connection_refused("max-connections", peer[0], peer[1])
            transport.write(R.TOO_MANY_CONNECTIONS)
            transport.close()
            self.closed = True
            return
        try:
            self.session = Session(self.ctx, peer[0], peer[1], sock[0], sock[1], info)
        except Exception:
            log.exception("session setup failed")
            transport.write(R.INTERNAL)
            transport.close()
            return
        transport.write(self.session.greeting)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.session is None:
            return
        self.last_active = time.monotonic()
        reader = self.reader
        reader.feed(data)
        if reader.total > self.session.params.transfer_limit:
            self._abort(R.TRANSFER)
            return
        want = self.want
        if want is None:
            self._advance(None)
        elif want == LINE:
            line = reader.next_line(self.line_limit)
            if line is not None:
                self.want = None
                self._advance(line)
        elif want == DATA:
            result = reader.read_data()
            if result is not None:
                self.want = None
                self._advance(result)
        if not self.closed and reader.buffered > MAX_BUFFERED and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """The client half-closed. Commands it already sent are still answered (``printf ... | nc -N``);
        then the connection closes. TLS cannot stay half-open, so there the transport closes at once."""
        self.eof = True
        if self.closed or self.session is None:
            return False
        if self.want == BUSY:
            # Work in flight: its answer and the replies to what is still buffered come first.
            return self.transport.get_extra_info("ssl_object") is None
        if self.want in (LINE, DATA):
            self.want = None
            self._advance(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.gen is not None:
            self.gen.close()
            self.gen = None
        if self.session is not None:
            self.session.events.closed()
        self.server._unregister(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.want is None and not self.closed:
            self._advance(None)

    # -- the pump ------------------------------------------------------------------------------------
    def _advance(self, value: Any) -> None:
        """Run handlers until one must wait (for input or async work) or input runs out."""
        s = self.session
        reader = self.reader
        try:
            while not self.closed:
                gen = self.gen
                if gen is None:
                    if s.closing:
                        self._flush()
                        self._close()
                        return
                    if self.write_paused:
                        self._flush()
                        return
                    line = reader.next_line()
                    if line is None:
                        self._flush()
                        if self.eof:
                            self._close()
                            return
                        if self.reading_paused:
                            self.reading_paused = False
                            self.transport.resume_reading()
                        return
                    ev = s.events
                    ev.command(line)
                    self.gen = s.handle(line, reader.too_long_head if line is TOO_LONG else b"")
                    if self.gen is None:
                        ev.answered(s.out)
                    value = None
                    continue
                try:
                    req = gen.send(value)
                except StopIteration:
                    self.gen = None
                    s.events.answered(s.out)
                    continue
                value = None
                kind = type(req)
                if kind is ReadLine:
                    line = reader.next_line(req.limit)
                    if line is None and not self.eof:      # after EOF the handler gets None
                        self.want = LINE
                        self.line_limit = req.limit
                        self._flush()
                        return
                    value = line
                elif kind is ReadData:
                    reader.start_data(req.max_size)
                    result = reader.read_data()
                    if result is None and not self.eof:
                        self.want = DATA
                        self._flush()
                        return
                    value = result
                elif kind is StartTls:
                    # RFC 3207: nothing the client pipelined behind STARTTLS in cleartext may be executed.
                    # Drop what is buffered and stop reading the raw socket now, synchronously: from here
                    # on only the TLS layer reads it, and what our data_received then gets is decrypted.
                    self._flush()
                    reader.clear()
                    self.transport.pause_reading()
                    self.want = BUSY
                    self.handle = asyncio.get_running_loop().create_task(self._serve(req))
                    return
                elif kind is Sleep:
                    self._flush()
                    self.want = BUSY
                    self.handle = asyncio.get_running_loop().call_later(req.seconds, self._resume, None)
                    return
                else:
                    now = _answer_now(req, self.server.observer)
                    if now is not _LATER:
                        value = now
                        continue
                    self._flush()
                    self.want = BUSY
                    self.handle = asyncio.get_running_loop().create_task(self._serve(req))
                    return
        except Exception:
            log.exception("internal error in session")
            self._abort(R.INTERNAL)

    def _resume(self, value: Any) -> None:
        self.handle = None
        self.want = None
        if not self.closed:
            self._advance(value)

    async def _serve(self, req: Any) -> None:
        """Perform one async request and resume the session with its answer."""
        try:
            value = await self._perform(req)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request %s failed", type(req).__name__)
            value = None
        self._resume(value)

    async def _perform(self, req: Any) -> Any:
        kind = type(req)
        if kind is Authenticate or kind is GetSecret or kind is Contains:
            observer = self.server.observer
            started = time.monotonic() if observer.enabled else 0.0
            answer = await self._lookup(req, kind)
            if observer.enabled:
                observer.lookup_answered(req.lookup.name, _outcome(answer), time.monotonic() - started)
            return answer
        if kind is Compute:
            return await run_sync(req.fn, *req.args)
        if kind is StartTls:
            return await self._starttls()
        if kind is Deliver:
            results = await self.server._deliver(req)
            self.session.events.delivered(req.envelope, req.next_hop, results)
            return results
        raise TypeError(f"unknown request {req!r}")

    async def _lookup(self, req: Any, kind: type) -> Any:
        if kind is Authenticate:
            try:
                async with asyncio.timeout(_bound(req.lookup)):
                    return await req.lookup.authenticate(req.creds)
            except (TimeoutError, Exception) as exc:  # noqa: BLE001 - any store failure is a tempfail
                reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                log.warning("lookup %s failed: %s", req.lookup.name, reason)
                return AuthResult(Outcome.UNAVAILABLE, reason=reason)
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

    async def _starttls(self) -> Any:
        ctxt = self.server._ssl_contexts.get(self.ctx.listener.id)
        if ctxt is None:
            return None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, ctxt, server_side=True,
                                             ssl_handshake_timeout=self.ctx.listener.tls.timeout)
        except (OSError, asyncio.TimeoutError, ConnectionError, Exception) as exc:  # noqa: BLE001
            log.info("STARTTLS handshake failed from %s: %s", self.session.vars.remote_ip, type(exc).__name__)
            self.session.events.starttls(None)
            self.closed = True
            try:
                self.transport.abort()
            except Exception:  # noqa: BLE001
                pass
            return None
        # No clear() here: the client may already have sent its first commands inside TLS, and the TLS
        # layer may have handed them to data_received before this coroutine resumed.
        self.transport = transport
        self.reading_paused = False
        info = tls_info(transport.get_extra_info("ssl_object"))
        self.session.events.starttls(info)
        return info

    # -- output --------------------------------------------------------------------------------------
    def _flush(self) -> None:
        out = self.session.out
        if out:
            if self.session.events.debug:
                self.session.events.sent(out)
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    def _abort(self, reply: bytes) -> None:
        if self.closed:
            return
        if self.session is not None:
            self._flush()
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
        """Called by the server's sweeper: enforce session.timeout and session.duration."""
        if self.closed or self.session is None:
            return
        params = self.session.params
        if now - self.started > params.duration:
            self._abort(R.DURATION)
        elif self.want != BUSY and now - self.last_active > params.timeout:
            self._abort(R.TIMEOUT)

    def shutdown(self) -> None:
        """Grace time is over: tell the client and close."""
        if not self.closed:
            self._abort(R.SHUTDOWN)


_LATER = object()


def _answer_now(req: Any, observer: Any) -> Any:
    """A lookup's synchronous answer when it has one (in-memory list, cache hit), else _LATER."""
    kind = type(req)
    try:
        if kind is Authenticate:
            result = req.lookup.authenticate_now(req.creds)
            if result is None:
                return _LATER
            _count_now(observer, req, result)
            return result
        if kind is Contains:
            result = req.lookup.contains_now(req.key)
            if result is None:
                return _LATER
            _count_now(observer, req, result)
            return result
        if kind is GetSecret:
            result = req.lookup.get_secret_now(req.username)
            if result is None:
                return _LATER
            _count_now(observer, req, result[0])
            return result[0]
    except Exception:  # noqa: BLE001 - a failing fast path falls back to the ordinary one
        log.exception("fast path of %s failed", getattr(req.lookup, "name", "?"))
    return _LATER


def _bound(lookup: Any) -> float:
    # Each lookup bounds its own operations; this outer bound only guards against one that forgets.
    return float(getattr(lookup, "timeout", 30.0)) + 5.0


def _outcome(answer: Any) -> str:
    """A lookup answer as a metric outcome: positive (valid / found / member), negative, unavailable."""
    if answer is UNAVAILABLE:
        return "unavailable"
    if isinstance(answer, AuthResult):
        return "positive" if answer.outcome is Outcome.VALID else \
            "unavailable" if answer.outcome is Outcome.UNAVAILABLE else "negative"
    return "positive" if answer else "negative"


def _count_now(observer: Any, req: Any, answer: Any) -> None:
    """Answers at hand (in-memory lists, cache hits) are counted, not timed."""
    if observer.enabled:
        observer.lookup_answered(req.lookup.name, _outcome(answer))
