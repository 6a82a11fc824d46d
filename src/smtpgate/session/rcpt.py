"""RCPT TO: relay protection (SPEC §6) and recipient limits.

smtpgate is never an open relay. A recipient is accepted when its domain is local
(``session.rcpt.lookup.domains``) or when ``session.rcpt.relay`` allows relaying for this session (by
default: only once authenticated). Local parts that ask someone downstream to route again -- ``%``,
``!``, or a quoted ``@`` -- are refused unless relaying is allowed anyway, so a local domain cannot be
used as a springboard. Source routes are stripped by the parser (RFC 5321 §4.1.2), so
``<@a:b@c>`` is judged by ``c``. The relay decision comes before the parameters are looked at, so a
relay attempt is answered as one whatever it carries.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Generator

from ..protocol import replies as R
from ..protocol.commands import ParseError, parse_params, split_path
from . import abuse
from .requests import UNAVAILABLE, Contains

if TYPE_CHECKING:
    from .machine import Session


def rcpt(s: "Session", arg: str) -> Generator | None:
    try:
        addr, params_text = split_path(arg, "TO:")
    except ParseError as exc:
        s.reply(R.RCPT_BAD_ADDRESS if str(exc) == "address" else R.RCPT_SYNTAX)
        return None
    if not addr.domain:
        s.reply(R.RCPT_BAD_ADDRESS)  # <> is not a recipient (RFC 5321 allows only <postmaster>)
        return None
    if not addr.text.isascii() and "SMTPUTF8" not in s.mail_params:
        s.reply(R.RCPT_NEEDS_SMTPUTF8)  # RFC 6531 §3.5
        return None
    if len(s.rcpts) >= s.ctx.settings.session.rcpt_max_recipients.evaluate(s.vars):
        s.reply(R.RCPT_TOO_MANY)
        return None
    return _check(s, addr, params_text)


def _check(s: "Session", addr, params_text: str) -> Generator:
    v = s.vars
    v.rcpt = addr.lower
    v.rcpt_domain = addr.domain
    local = False
    if s.params.rcpt_domains is not None and not addr.domain.startswith("["):
        answer = yield Contains(s.params.rcpt_domains, addr.domain)
        if answer is UNAVAILABLE:
            s.reply(R.RCPT_TEMPFAIL)
            return
        local = bool(answer)
    relay = bool(s.ctx.settings.session.rcpt_relay.evaluate(v))
    if not relay:
        if not local or _reroutes(addr.local):
            s.reply(R.RCPT_RELAY_DENIED)
            yield from abuse.offence(s, "abuse")
            return
    try:
        unsupported = bool(parse_params(params_text))   # no RCPT parameter is advertised (no DSN)
    except ParseError:
        unsupported = True
    if unsupported:
        s.reply(R.RCPT_BAD_PARAM)
        return
    if local and s.params.rcpt_addresses is not None:
        answer = yield Contains(s.params.rcpt_addresses, addr.lower)
        if answer is UNAVAILABLE:
            s.reply(R.RCPT_TEMPFAIL)
            return
        if not answer:
            s.reply(R.RCPT_UNKNOWN)
            yield from abuse.offence(s, "abuse")
            return
    if not (yield from abuse.rate(s, "rcpt")):
        return
    s.rcpt_accepted(addr)
    s.reply(R.RCPT_OK)


def _reroutes(local: str) -> bool:
    return "%" in local or "!" in local or "@" in local
