"""Client side of TLS for everything smtpgate connects to (remote IMAP/SMTP/LMTP, LDAP, next hop).

One place decides how certificates are checked: verified against ``tls.ca-file`` (or the system store)
with hostname/IP matching, unless ``tls.allow-invalid-certs`` turns off both the chain and the name check.
TLS 1.2 is the floor, as on the server side.

Also holds what the line-based remote lookups (IMAP, SMTP/LMTP) share: :class:`LineStream` (bounded
reads, STARTTLS upgrade that refuses injected cleartext, a close that really closes),
:func:`describe_error` (connection/TLS exceptions as a one-line reason for logs) and
:class:`RemoteAuthLookup` (slots, deadline, connection lifecycle).
"""
from __future__ import annotations

import asyncio
import logging
import re
import ssl

from smtpgate.config.model import RemoteSettings, TlsClientSettings
from smtpgate.lookup.base import AuthResult, Capability, Credentials, Lookup, Outcome, unavailable

#: A remote that sends a longer line without a newline is broken or hostile; StreamReader refuses it.
STREAM_LIMIT = 64 * 1024


def client_context(settings: TlsClientSettings) -> ssl.SSLContext:
    """An SSLContext for connecting to a remote described by ``settings``.

    Raises ``ValueError`` (no secrets involved, safe to show) when ``ca_file`` cannot be loaded, so a
    broken path is reported at startup rather than as every lookup being "unavailable".
    """
    try:
        ctx = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load CA file {settings.ca_file!r}: {exc.strerror or exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.allow_invalid_certs:
        ctx.check_hostname = False        # must be switched off before verify_mode
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RemoteProtocolError(Exception):
    """The remote said something we cannot work with. The message is safe to log (no secrets)."""


class LineStream:
    """A line-oriented connection to a remote server (IMAP, SMTP, LMTP).

    Reads are bounded (:data:`STREAM_LIMIT`); every read/write is meant to run under the caller's
    overall timeout (``asyncio.timeout``), so nothing here sets its own.
    """

    __slots__ = ("reader", "writer", "host", "tls")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, tls: bool):
        self.reader, self.writer, self.host, self.tls = reader, writer, host, tls

    @classmethod
    async def connect(cls, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> "LineStream":
        """TCP connection, or implicit TLS when ``ssl_context`` is given (handshake included)."""
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=host if ssl_context else None, limit=STREAM_LIMIT)
        return cls(reader, writer, host, ssl_context is not None)

    async def read_line(self) -> bytes:
        """One line without its CRLF (a bare LF is tolerated)."""
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise RemoteProtocolError("remote closed the connection") from None
        except asyncio.LimitOverrunError:
            raise RemoteProtocolError("remote sent an over-long line") from None
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    async def read_exactly(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise RemoteProtocolError("remote closed the connection") from None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def start_tls(self, ssl_context: ssl.SSLContext) -> None:
        """Upgrade in place after the server's "go ahead" to STARTTLS.

        Anything the server sent after that reply arrived in cleartext and could be an injected
        response (the STARTTLS command-injection attacks, CVE-2011-0411 and kin); it would otherwise be
        read as if it came through TLS. asyncio has no public accessor for the reader's buffer, hence the
        private attribute; failing closed is the point.
        """
        if len(self.reader._buffer):  # noqa: SLF001 -- see docstring
            raise RemoteProtocolError("remote sent data after its STARTTLS reply (possible injection)")
        await self.writer.start_tls(ssl_context, server_hostname=self.host)
        self.tls = True

    async def close(self, graceful: bool = True, timeout: float = 1.0) -> None:
        """Close the connection and return only once the socket is closed, so a caller holding a
        concurrency slot never has more sockets open than slots. A peer that does not complete a TLS
        close within ``timeout`` (or any non-graceful close) is aborted."""
        if graceful:
            self.writer.close()
            try:
                async with asyncio.timeout(timeout):
                    await self.writer.wait_closed()
                return
            except (TimeoutError, OSError, ssl.SSLError):
                pass
        self.writer.transport.abort()
        try:
            async with asyncio.timeout(0.5):
                await self.writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            pass


def describe_error(exc: BaseException) -> str:
    """One line for logs and ``AuthResult.reason``: what went wrong talking to the remote."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "connection reset by remote"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "remote closed the connection"
    if isinstance(exc, RemoteProtocolError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or exc.__class__.__name__}"
    return f"{exc.__class__.__name__}"


# --------------------------------------------------------------------------------------------------
# The part every "log in to the remote with the client's own credentials" lookup shares.

log = logging.getLogger("smtpgate.lookup.remote")

_TOKEN_RE = re.compile(r"[\x21-\x7e]+")   # RFC 6750 b64token is narrower; this keeps SASL framing safe


class RemoteAuthLookup(Lookup):
    """Base for ``remote/<id>`` lookups: one fresh connection per authentication (a logged-in IMAP or
    SMTP session cannot be reset to "not authenticated"), at most ``concurrency`` at a time, the whole
    operation -- waiting for a slot included -- bounded by ``timeout`` so the SMTP client always gets an
    answer in time. Subclasses implement :meth:`_converse` on an open :class:`LineStream`.

    PLAIN authzids are not forwarded: to a remote server an authzid means "master user" login, whose
    policy smtpgate cannot see, so the remote only ever verifies the authcid and ``may_act_for`` stays
    empty (the AUTH stage then refuses authzid != authcid).
    """

    capabilities = Capability.PASSWORD | Capability.TOKEN
    protocols: tuple[str, ...] = ()

    def __init__(self, settings: RemoteSettings, *, name: str | None = None) -> None:
        if settings.protocol not in self.protocols:
            raise ValueError(f"remote.{settings.id}.protocol: {type(self).__name__} cannot speak "
                             f"{settings.protocol!r}")
        self.settings = settings
        self.name = name or f"remote/{settings.id}"
        tls = settings.tls
        self._ssl = client_context(tls) if (tls.implicit or tls.starttls) else None
        self._slots = asyncio.Semaphore(max(1, settings.concurrency))
        self.where = f"{settings.protocol} {settings.address}:{settings.port}"

    async def authenticate(self, creds: Credentials) -> AuthResult:
        bad = _malformed(creds)
        if bad:
            return AuthResult(Outcome.INVALID, reason=f"{self.where}: {bad}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            result = unavailable(f"{self.where}: all {self.settings.concurrency} connections busy for "
                                 f"{self.settings.timeout:g}s")
        else:
            try:
                result = await self._attempt(creds, deadline)
            finally:
                self._slots.release()
        log.debug("%s: %s for %r via %s in %.0f ms%s", self.name, result.outcome.value, creds.username,
                  creds.mechanism, (loop.time() - started) * 1000, f" ({result.reason})" if result.reason else "")
        return result

    async def _attempt(self, creds: Credentials, deadline: float) -> AuthResult:
        s = self.settings
        stream: LineStream | None = None
        clean = False
        try:
            async with asyncio.timeout_at(deadline):
                stream = await LineStream.connect(s.address, s.port, self._ssl if s.tls.implicit else None)
                result = await self._converse(stream, creds)
                clean = True
        except TimeoutError:     # before OSError: TimeoutError is one
            result = unavailable(f"{self.where}: no answer within {s.timeout:g}s")
        except (RemoteProtocolError, OSError) as exc:   # ssl.SSLError is an OSError
            result = unavailable(f"{self.where}: {describe_error(exc)}")
        except Exception as exc:  # a bug here must not become a traceback for the SMTP client
            log.error("%s: unexpected %s while talking to %s", self.name, type(exc).__name__, self.where)
            log.debug("%s: details", self.name, exc_info=True)
            result = unavailable(f"{self.where}: internal error ({type(exc).__name__})")
        finally:
            # Outside the deadline on purpose: an answer already obtained must not be lost to a slow
            # close, and the slot is held until the socket is really gone. Bounded by close() itself.
            if stream is not None:
                await stream.close(graceful=clean)
        return result

    async def _converse(self, stream: LineStream, creds: Credentials) -> AuthResult:
        raise NotImplementedError

    async def _upgrade(self, stream: LineStream) -> None:
        assert self._ssl is not None
        await stream.start_tls(self._ssl)


def _malformed(creds: Credentials) -> str:
    """Credentials no remote could accept, or that would break the framing we send them in."""
    if "\0" in creds.username or "\0" in creds.secret:
        return "NUL in credentials"
    if creds.kind == "token":
        if not creds.username:
            # The remote would accept the token for whoever it belongs to, but would not tell us who:
            # without a claimed user there is no account to authenticate as.
            return "bearer token without a user name cannot be checked against a remote server"
        if "\x01" in creds.username or not _TOKEN_RE.fullmatch(creds.secret):
            return "malformed bearer token or user name"
    elif not creds.username:
        return "empty user name"
    return ""


def oauth_initial_response(mechanism: str, creds: Credentials, host: str, port: int) -> bytes:
    """The client's first SASL message for OAUTHBEARER (RFC 7628) or XOAUTH2 carrying ``creds``."""
    user, token = creds.username, creds.secret
    if mechanism == "OAUTHBEARER":
        saslname = user.replace("=", "=3D").replace(",", "=2C")   # RFC 5801 gs2 escaping
        return (f"n,a={saslname},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01").encode()
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
