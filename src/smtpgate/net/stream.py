"""A line-oriented client connection (IMAP, SMTP, LMTP): bounded reads, a STARTTLS upgrade that
refuses injected cleartext, and a close that really closes."""
from __future__ import annotations

import asyncio
import ssl

#: A remote that sends a longer line without a newline is broken or hostile; StreamReader refuses it.
STREAM_LIMIT = 64 * 1024


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
