"""STARTTLS (RFC 3207). The transport performs the handshake; it also drops every byte the client
pipelined after the command in cleartext, so none of it is ever executed inside TLS."""
from __future__ import annotations

from typing import TYPE_CHECKING, Generator

from ..protocol import replies as R
from .requests import StartTls

if TYPE_CHECKING:
    from .machine import Session


def starttls(s: "Session", arg: str) -> Generator | None:
    if s.tls is not None:
        s.reply(R.STARTTLS_ACTIVE)
        return None
    if not s.ctx.starttls_available:
        s.reply(R.STARTTLS_UNAVAILABLE)
        return None
    return _handshake(s)


def _handshake(s: "Session") -> Generator:
    s.reply(R.STARTTLS_READY)
    info = yield StartTls()
    if info is None:
        s.close()
        return
    s.tls_established(info)
