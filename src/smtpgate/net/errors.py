"""Connection and TLS exceptions as one line for logs and ``AuthResult.reason``."""
from __future__ import annotations

import asyncio
import ssl

from .stream import RemoteProtocolError


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
