"""MAIL FROM (RFC 5321 §4.1.1.2, RFC 4954 §5, RFC 1870): sender syntax, SIZE, AUTH=, sender ownership
(``session.auth.must-match-sender``) and the per-session message limit."""
from __future__ import annotations

from typing import TYPE_CHECKING, Generator

from ..protocol import replies as R
from ..protocol.commands import ParseError, ascii_number, parse_path, parse_path_and_params, xtext_decode
from . import abuse
from .requests import UNAVAILABLE, Contains

if TYPE_CHECKING:
    from .machine import Session


def mail(s: "Session", arg: str) -> Generator | None:
    try:
        addr, params = parse_path_and_params(arg, "FROM:")
    except ParseError as exc:
        s.reply(R.MAIL_BAD_ADDRESS if str(exc) == "address" else
                R.MAIL_BAD_PARAM if str(exc) == "param" else R.MAIL_SYNTAX)
        return
    if s.messages >= s.params.data_max_messages:
        s.reply(R.TOO_MANY_MESSAGES)
        return
    cfg = s.ctx.settings.session
    v = s.vars
    v.sender = addr.lower
    v.sender_domain = addr.domain
    auth_param = None
    for key, value in params.items():
        if key == "SIZE":
            size = ascii_number(value)
            if size is None:
                s.reply(R.MAIL_SYNTAX)
                return _undo(s)
            if size > cfg.data_max_size.evaluate(v):
                s.reply(R.MAIL_TOO_BIG)
                return _undo(s)
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                s.reply(R.MAIL_BAD_PARAM)
                return _undo(s)
        elif key == "SMTPUTF8":  # RFC 6531 §3.4: no value
            if value is not None:
                s.reply(R.MAIL_BAD_PARAM)
                return _undo(s)
        elif key == "AUTH":
            auth_param = _auth_param(value)
            if auth_param is None:
                s.reply(R.MAIL_BAD_AUTH_PARAM)
                return _undo(s)
        else:
            s.reply(R.MAIL_BAD_PARAM)
            return _undo(s)
    if not addr.text.isascii() and "SMTPUTF8" not in params:
        s.reply(R.MAIL_NEEDS_SMTPUTF8)
        return _undo(s)
    return _only_if_waiting(_sender(s, addr, params, auth_param, s.auth_account is not None and bool(addr.domain)
                                    and cfg.auth_must_match_sender.evaluate(v)))


def _only_if_waiting(gen: Generator) -> Generator | None:
    """Run ``gen`` as far as it goes now: None when it finished without asking for anything (most MAIL
    commands), else a generator that goes on from its first request."""
    try:
        first = gen.send(None)
    except StopIteration:
        return None

    def rest() -> Generator:
        request = first
        while True:
            answer = yield request
            try:
                request = gen.send(answer)
            except StopIteration:
                return
    return rest()


def _sender(s: "Session", addr, params: dict[str, str | None], auth_param: str | None,
            must_match: bool) -> Generator:
    if must_match:
        owned = yield from _owned(s, addr.lower)
        if owned is UNAVAILABLE:
            s.reply(R.MAIL_TEMPFAIL)
            return _undo(s)
        if not owned:
            s.reply(R.MAIL_NOT_OWNED)
            return _undo(s)
    # RFC 4954 §5: keep AUTH= only when this session authenticated as that identity; otherwise <>.
    if auth_param is not None:
        owned = s.auth_account is not None and auth_param != "<>" and (yield from _owned(s, auth_param.lower()))
        auth_param = auth_param if owned is True else "<>"
    if not (yield from abuse.rate(s, "mail")):     # [[session.throttle]] rates keyed on sender values
        return _undo(s)
    s.mail_accepted(addr, params, auth_param)
    s.reply(R.MAIL_OK)


def _auth_param(value: str | None) -> str | None:
    """RFC 4954 §5: ``AUTH=`` xtext of an addr-spec or ``<>``; None when malformed."""
    if not value:
        return None
    try:
        decoded = xtext_decode(value)
        if decoded != "<>":
            addr = parse_path(decoded)
            if not addr.domain:
                return None
    except ParseError:
        return None
    return decoded


def owns(s: "Session", address: str) -> bool:
    """The login itself and the addresses the store lists for it (``address`` lower-cased)."""
    account = (s.auth_account or "").lower()
    return address == account or address in s.auth_addresses


def _owned(s: "Session", address: str) -> Generator:
    """:func:`owns`, and for a login without ``@`` (``john``) also ``john@d`` for each local domain ``d``
    (``session.rcpt.lookup.domains``): True, False or UNAVAILABLE."""
    if owns(s, address):
        return True
    account = (s.auth_account or "").lower()
    local, at, domain = address.rpartition("@")
    if not at or "@" in account or local != account or s.params.rcpt_domains is None or domain.startswith("["):
        return False
    answer = yield Contains(s.params.rcpt_domains, domain)
    return answer if answer is UNAVAILABLE else bool(answer)


def _undo(s: "Session") -> None:
    s.vars.sender = s.vars.sender_domain = None
