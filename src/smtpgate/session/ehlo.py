"""EHLO / HELO / LHLO: identify the client and list the extensions usable *now* (SPEC §3, §4.1)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import replies as R
from . import auth

if TYPE_CHECKING:
    from .machine import Session


def _greet(s: "Session", arg: str, esmtp: bool, syntax: bytes) -> bool:
    domain = arg.strip()
    if not domain or " " in domain:
        s.reply(syntax)
        return False
    s.greeted(domain, esmtp)
    return True


def ehlo(s: "Session", arg: str) -> None:
    if s.ctx.lmtp:
        s.reply(R.LHLO_REQUIRED)
        return
    if _greet(s, arg, True, R.EHLO_SYNTAX):
        s.reply(capabilities(s))


def lhlo(s: "Session", arg: str) -> None:
    if not s.ctx.lmtp:
        s.reply(R.SYNTAX)
        return
    if _greet(s, arg, True, R.EHLO_SYNTAX):
        s.reply(capabilities(s))


def helo(s: "Session", arg: str) -> None:
    if s.ctx.lmtp:
        s.reply(R.LHLO_REQUIRED)
        return
    if _greet(s, arg, False, R.HELO_SYNTAX):
        s.reply(R.reply(250, f"{s.ctx.hostname} says hello"))


def capabilities(s: "Session") -> bytes:
    """The EHLO reply. When the settings it reads are constants it depends only on the session's TLS,
    authentication and lookup state, so it is built once per state and reused."""
    cfg = s.ctx.settings.session
    if cfg.data_max_size.constant and cfg.auth_mechanisms.constant and cfg.auth_allow_plain_text.constant:
        key = (s.tls is None, s.tls is not None and s.tls.channel_binding is not None,
               s.auth_account is None, id(s.params.auth_lookup))
        cached = s.ctx.ehlo_cache.get(key)
        if cached is None:
            cached = s.ctx.ehlo_cache[key] = _build(s)
        return cached
    return _build(s)


def _build(s: "Session") -> bytes:
    lines = [f"{s.ctx.hostname} says hello", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
    size = s.ctx.settings.session.data_max_size.evaluate(s.vars)
    lines.append(f"SIZE {size}")
    if s.ctx.starttls_available and s.tls is None:
        lines.append("STARTTLS")
    mechs = auth.advertised(s)
    if mechs:
        lines.append("AUTH " + " ".join(mechs))
    lines.append("HELP")
    return R.multiline(250, lines)
