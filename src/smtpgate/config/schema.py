"""Every session setting smtpgate understands: its key path, value type, default, and the variables its
if-blocks may use (i.e. *when* it is evaluated).

This table is the one place to look up a ``session.*`` key. Example: ``session.auth.errors.wait`` is the
row ``Setting("auth_errors_wait", "session.auth.errors.wait", values.duration, CONNECT, 5.0)``; the
session reads it as ``params.auth_errors_wait`` (see ``session/connect.py``) and the AUTH stage applies
it in ``session/auth.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from . import values
from .errors import ConfigError
from .ifblock import AUTHENTICATED, CONNECT, EHLO, MAIL, RCPT

#: SASL mechanisms smtpgate implements (upper-case). Kept here because config must not import sasl/.
KNOWN_MECHANISMS = ("PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2", "SCRAM-SHA-256", "SCRAM-SHA-1",
                    "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "CRAM-MD5")


def mechanism_list(key: str, raw: Any) -> tuple[str, ...]:
    names = values.string_list(key, raw)
    out: list[str] = []
    for name in names:
        upper = name.upper()
        if upper not in KNOWN_MECHANISMS:
            raise ConfigError(key, f"unknown SASL mechanism {name!r} (known: {', '.join(KNOWN_MECHANISMS)})")
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
    attr: str                                  # attribute name on SessionSettings / SessionParams
    key: str                                   # canonical key path
    parse: Callable[[str, Any], Any]
    variables: frozenset[str]                  # what its if-blocks may test
    default: Any
    aliases: tuple[str, ...] = ()
    is_list: bool = False
    lookup: str | None = None                  # "auth" / "membership": the value names a lookup
    rules: dict = field(default_factory=dict)


# Evaluation time, by variables: CONNECT = at session start (and again after STARTTLS),
# EHLO = at every EHLO/AUTH, AUTHENTICATED/MAIL/RCPT = when the command that gives them arrives.
SESSION_SETTINGS: tuple[Setting, ...] = (
    Setting("timeout", "session.timeout", values.duration, CONNECT, 300.0),
    Setting("duration", "session.duration", values.duration, CONNECT, 600.0),
    Setting("transfer_limit", "session.transfer-limit", values.size, CONNECT, 262_144_000),
    Setting("ehlo_require", "session.ehlo.require", values.boolean, CONNECT, True),

    Setting("auth_mechanisms", "session.auth.mechanisms", mechanism_list, EHLO, ("PLAIN", "LOGIN"), is_list=True),
    Setting("auth_lookup", "session.auth.lookup", lookup_ref, CONNECT, None,
            aliases=("session.auth.directory",), lookup="auth"),
    Setting("auth_require", "session.auth.require", values.boolean, CONNECT, False),
    Setting("auth_errors_total", "session.auth.errors.total", values.positive_int, CONNECT, 3,
            aliases=("session.auth.errors.max",)),
    Setting("auth_errors_wait", "session.auth.errors.wait", values.duration, CONNECT, 5.0),
    Setting("auth_allow_plain_text", "session.auth.allow-plain-text", values.boolean, EHLO, False),
    Setting("auth_must_match_sender", "session.auth.must-match-sender", values.boolean, AUTHENTICATED, True),

    Setting("rcpt_relay", "session.rcpt.relay", values.boolean, RCPT, None),
    Setting("rcpt_domains", "session.rcpt.lookup.domains", lookup_ref, CONNECT, None, lookup="membership"),
    Setting("rcpt_addresses", "session.rcpt.lookup.addresses", lookup_ref, CONNECT, None, lookup="membership"),
    Setting("rcpt_max_recipients", "session.rcpt.max-recipients", values.positive_int, MAIL, 100),

    Setting("data_max_size", "session.data.limits.size", values.size, MAIL, 26_214_400),
    Setting("data_max_messages", "session.data.limits.messages", values.positive_int, CONNECT, 10),
)

SESSION_KEYS = {s.key: s for s in SESSION_SETTINGS} | {a: s for s in SESSION_SETTINGS for a in s.aliases}

#: queue.outbound.next-hop: chosen per message, before delivery (recipients may differ, so no rcpt vars)
NEXT_HOP_VARIABLES = MAIL

# Options of [directory."<id>"] per type: option key -> parser. "type", "timeout", "concurrency" and
# "cache.*" are common to all and handled by the loader.
DIRECTORY_OPTIONS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "internal": {
        "store": values.nonempty_string,
    },
    "ldap": {
        "url": values.nonempty_string,
        "tls.starttls": values.boolean,
        "tls.allow-invalid-certs": values.boolean,
        "tls.ca-file": values.nonempty_string,
        "bind.dn-template": values.nonempty_string,
        "search.base-dn": values.nonempty_string,
        "search.filter": values.nonempty_string,
        "search.bind-dn": values.nonempty_string,
        "search.bind-secret": values.string,
        "attributes.address": values.string_list,
        "attributes.name": values.nonempty_string,
    },
    "oauth": {
        "jwks-url": values.nonempty_string,
        "jwks-refresh-min": values.duration,
        "issuer": values.nonempty_string,
        "audience": values.nonempty_string,
        "username-claim": values.nonempty_string,
        "algorithms": values.string_list,
        "leeway": values.duration,
        "introspection.url": values.nonempty_string,
        "introspection.client-id": values.nonempty_string,
        "introspection.client-secret": values.string,
        "tls.allow-invalid-certs": values.boolean,
        "tls.ca-file": values.nonempty_string,
    },
}
DIRECTORY_REQUIRED = {
    "internal": ("store",),
    "ldap": ("url",),
    "oauth": (),
}
#: lookup name prefixes accepted for directories besides the generic "directory/<id>"
DIRECTORY_PREFIXES = {"internal": "users", "ldap": "ldap", "oauth": "oauth"}

TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
