"""Every session setting smtpgate understands: its key path, value type, default, and the variables its
if-blocks may use (i.e. *when* it is evaluated).

This table is the one place to look up a ``session.*`` key. Example: ``session.auth.errors.wait`` is the
row ``AUTH_ERRORS_WAIT``; ``config/load.py`` compiles it into ``SessionSettings.auth_errors_wait``,
``session/params.py`` evaluates it into ``SessionParams.auth_errors_wait`` when a session starts, and
the AUTH stage waits for it in ``session/auth.py`` (``_count_failure``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..sasl_names import MECHANISM_NAMES
from . import values
from .errors import ConfigError
from .ifblock import AUTHENTICATED, CONNECT, EHLO, MAIL, RCPT

def mechanism_list(key: str, raw: Any) -> tuple[str, ...]:
    names = values.string_list(key, raw)
    out: list[str] = []
    for name in names:
        upper = name.upper()
        if upper not in MECHANISM_NAMES:
            raise ConfigError(key, f"unknown SASL mechanism {name!r} (known: {', '.join(MECHANISM_NAMES)})")
        if upper not in out:
            out.append(upper)
    return tuple(out)


def lookup_ref(key: str, raw: Any) -> str | None:
    """A lookup name such as "list/users", or false for none. Existence is checked by the loader."""
    if raw is False:
        return None
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    raise ConfigError(key, f"expected a lookup name such as \"list/users\" or false, got {values._show(raw)}")


@dataclass(frozen=True)
class Setting:
    key: str                                   # canonical key path
    parse: Callable[[str, Any], Any]
    variables: frozenset[str]                  # what its if-blocks may test (= when it is evaluated)
    default: Any
    aliases: tuple[str, ...] = ()
    is_list: bool = False
    lookup: str | None = None                  # "auth" / "membership": the value names a lookup


# One named row per key. Evaluation time, by variables: CONNECT = at session start (and again after
# STARTTLS), EHLO = at every EHLO/AUTH, AUTHENTICATED/MAIL/RCPT = when the command that gives them arrives.
# The loader compiles each row into the field of the same name on ``config.model.SessionSettings``;
# connect-time rows are evaluated into ``session.params.SessionParams``.
TIMEOUT = Setting("session.timeout", values.duration, CONNECT, 300.0)
DURATION = Setting("session.duration", values.duration, CONNECT, 600.0)
TRANSFER_LIMIT = Setting("session.transfer-limit", values.size, CONNECT, 262_144_000)
EHLO_REQUIRE = Setting("session.ehlo.require", values.boolean, CONNECT, True)
# Bad commands (500-504, 555 replies) before 421 and disconnect, like Postfix's smtpd_hard_error_limit.
ERRORS_TOTAL = Setting("session.errors.total", values.positive_int, CONNECT, 20)

AUTH_MECHANISMS = Setting("session.auth.mechanisms", mechanism_list, EHLO, ("PLAIN", "LOGIN"), is_list=True)
AUTH_LOOKUP = Setting("session.auth.lookup", lookup_ref, CONNECT, None, aliases=("session.auth.directory",),
                      lookup="auth")
AUTH_REQUIRE = Setting("session.auth.require", values.boolean, CONNECT, False)
AUTH_ERRORS_TOTAL = Setting("session.auth.errors.total", values.positive_int, CONNECT, 3,
                            aliases=("session.auth.errors.max",))
AUTH_ERRORS_WAIT = Setting("session.auth.errors.wait", values.duration, CONNECT, 5.0)
# Once an address has failed often lately (abuse/guard.py SPREAD_AFTER), each of its failures' waits is
# drawn from [wait, wait x (1 + spread)]: never shorter than errors.wait, and sessions that fail together
# (a scripted attack) do not get their replies, and send their next guess, in one burst every errors.wait.
AUTH_ERRORS_WAIT_SPREAD = Setting("session.auth.errors.wait-spread", values.fraction, CONNECT, 0.5)
AUTH_ALLOW_PLAIN_TEXT = Setting("session.auth.allow-plain-text", values.boolean, EHLO, False)
AUTH_MUST_MATCH_SENDER = Setting("session.auth.must-match-sender", values.boolean, AUTHENTICATED, True)

RCPT_RELAY = Setting("session.rcpt.relay", values.boolean, RCPT, None)
RCPT_DOMAINS = Setting("session.rcpt.lookup.domains", lookup_ref, CONNECT, None, lookup="membership")
RCPT_ADDRESSES = Setting("session.rcpt.lookup.addresses", lookup_ref, CONNECT, None, lookup="membership")
RCPT_MAX_RECIPIENTS = Setting("session.rcpt.max-recipients", values.positive_int, MAIL, 100)

DATA_MAX_SIZE = Setting("session.data.limits.size", values.size, MAIL, 26_214_400)
DATA_MAX_MESSAGES = Setting("session.data.limits.messages", values.positive_int, CONNECT, 10)

SESSION_SETTINGS: tuple[Setting, ...] = (
    TIMEOUT, DURATION, TRANSFER_LIMIT, EHLO_REQUIRE, ERRORS_TOTAL,
    AUTH_MECHANISMS, AUTH_LOOKUP, AUTH_REQUIRE, AUTH_ERRORS_TOTAL, AUTH_ERRORS_WAIT, AUTH_ERRORS_WAIT_SPREAD,
    AUTH_ALLOW_PLAIN_TEXT,
    AUTH_MUST_MATCH_SENDER,
    RCPT_RELAY, RCPT_DOMAINS, RCPT_ADDRESSES, RCPT_MAX_RECIPIENTS,
    DATA_MAX_SIZE, DATA_MAX_MESSAGES,
)

SESSION_KEYS = {s.key: s for s in SESSION_SETTINGS} | {a: s for s in SESSION_SETTINGS for a in s.aliases}

TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
