"""MAIL FROM (RFC 5321 §4.1.1.2, RFC 4954 §5, RFC 1870): sender syntax, SIZE, AUTH=, sender ownership
(``session.auth.must-match-sender``) and the per-session message limit."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import replies as R
from ..protocol.commands import ParseError, parse_path, parse_path_and_params, xtext_decode

if TYPE_CHECKING:
    from .machine import Session


def mail(s: "Session", arg: str) -> None:
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
            if value is None or not value.isdigit():
                s.reply(R.MAIL_SYNTAX)
                return _undo(s)
            if int(value) > cfg.data_max_size.evaluate(v):
                s.reply(R.MAIL_TOO_BIG)
                return _undo(s)
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
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
    if s.auth_account is not None and addr.domain and cfg.auth_must_match_sender.evaluate(v):
        if not owns(s, addr.lower):
            s.reply(R.MAIL_NOT_OWNED)
            return _undo(s)
    # RFC 4954 §5: keep AUTH= only when this session authenticated as that identity; otherwise <>.
    if auth_param is not None:
        auth_param = auth_param if (s.auth_account is not None and auth_param != "<>" and
                                    owns(s, auth_param.lower())) else "<>"
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
    account = (s.auth_account or "").lower()
    if address == account or address in s.auth_addresses:
        return True
    # Login "john" on a store that knows no addresses owns nothing with a domain, on purpose.
    return False


def _undo(s: "Session") -> None:
    s.vars.sender = s.vars.sender_domain = None
