"""Compiled settings: what the rest of smtpgate receives from ``config``.

Everything here is plain data plus :class:`Expr` evaluators (compiled if-blocks). Runtime modules read
these objects; they never see TOML. The key path each field comes from is noted beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .directory import LdapSettings, OAuthSettings, UserStoreSettings
from .observe import ObserveSettings


class Expr:
    """A compiled setting: either a constant or an if-block (first matching rule wins).

    ``evaluate(ctx)`` takes any object with the variable attributes (see ``config.ifblock.VARIABLES``).
    ``constant`` is True when the value never depends on the session, so callers may read ``value``.
    """

    __slots__ = ("key", "value", "constant", "_rules", "_default")

    def __init__(self, key: str, value: Any = None, rules: list[tuple[Callable[[Any], bool], Any]] | None = None,
                 default: Any = None):
        self.key = key
        self.value = value
        self._rules = rules or []
        self._default = default
        self.constant = rules is None

    def evaluate(self, ctx: Any) -> Any:
        if self.constant:
            return self.value
        for cond, val in self._rules:
            if cond(ctx):
                return val
        return self._default

    def __repr__(self) -> str:
        return f"Expr({self.key}, constant={self.constant}, value={self.value!r})"


@dataclass(slots=True)
class CacheSettings:            # <section>.<id>.cache.*
    entries: int = 0            # .cache.entries (0 = no cache)
    ttl_positive: float = 0.0   # .cache.ttl.positive (seconds)
    ttl_negative: float = 0.0   # .cache.ttl.negative (seconds)


@dataclass(slots=True)
class TlsClientSettings:        # remote.<id>.tls.*, directory.<id>.tls.*
    implicit: bool = False      # .tls.implicit
    starttls: bool = False      # .tls.starttls (use STARTTLS on a plain connection)
    allow_invalid_certs: bool = False  # .tls.allow-invalid-certs
    ca_file: str | None = None  # .tls.ca-file (PEM bundle; default: system store)


@dataclass(slots=True)
class RemoteSettings:           # [remote."<id>"]
    id: str
    address: str                # .address
    port: int                   # .port
    protocol: str               # .protocol: imap | smtp | lmtp
    lookup: bool = False        # .lookup (may be used as an auth lookup)
    concurrency: int = 10       # .concurrency
    timeout: float = 10.0       # .timeout
    tls: TlsClientSettings = field(default_factory=TlsClientSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)


@dataclass(slots=True)
class DatabaseSettings:         # [database."<id>"]
    id: str
    address: str                # .address  sqlite://<path>[?mode=rwc] | postgres://user@host:port/db
    lookups: dict[str, str] = field(default_factory=dict)  # .lookup.<name> = "SELECT ... ?"
    concurrency: int = 10       # .concurrency (pool size)
    timeout: float = 5.0        # .timeout
    cache: CacheSettings = field(default_factory=CacheSettings)
    decoy_scheme: str = "ARGON2ID"  # .decoy-scheme: what unknown users are checked against (issue 9 item 8)


@dataclass(slots=True)
class ListSettings:             # [list] <id> = [...] | "file:///path"
    id: str
    entries: list[str]


@dataclass(slots=True)
class DirectorySettings:        # [directory."<id>"] type = "internal" | "ldap" | "oauth"
    id: str
    type: str
    options: UserStoreSettings | LdapSettings | OAuthSettings  # the type's own keys (config/directory.py)
    timeout: float = 5.0        # .timeout
    concurrency: int = 10       # .concurrency
    cache: CacheSettings = field(default_factory=CacheSettings)


@dataclass(slots=True)
class CertificateSettings:      # [certificate."<id>"]
    id: str
    cert_pem: str               # .cert (inline PEM or file:///path, already read)
    key_pem: str                # .private-key


@dataclass(slots=True)
class ListenerTls:              # server.tls.* overridden by server.listener.<id>.tls.*
    enable: bool = False        # .tls.enable
    implicit: bool = False      # .tls.implicit
    certificate: str | None = None  # .tls.certificate (id of [certificate."<id>"])
    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")  # .tls.protocols
    timeout: float = 10.0       # .tls.timeout (handshake; a silent client holds a slot that long)
    ignore_client_order: bool = True  # .tls.ignore-client-order


@dataclass(slots=True)
class ListenerSettings:         # [server.listener."<id>"]
    id: str
    binds: list[tuple[str, int]]  # .bind
    protocol: str = "smtp"      # .protocol: smtp | lmtp
    tls: ListenerTls = field(default_factory=ListenerTls)
    hostname: str | None = None # .hostname (overrides server.hostname)
    greeting: str | None = None # .greeting
    max_connections: int = 8192 # .max-connections
    proxy: Any = None           # .proxy.trusted-networks -> config.proxy.ProxySettings (None: no PROXY)


@dataclass(slots=True)
class SessionSettings:
    """``session.*``, compiled: one named :class:`Expr` per row of ``config.schema`` (same name, upper-case
    there). Connect-time ones are evaluated into ``session.params.SessionParams`` when a session starts;
    the others are evaluated by the stage that uses them, when their variables exist."""
    timeout: Expr                   # session.timeout
    duration: Expr                  # session.duration
    transfer_limit: Expr            # session.transfer-limit
    ehlo_require: Expr              # session.ehlo.require
    errors_total: Expr              # session.errors.total
    auth_mechanisms: Expr           # session.auth.mechanisms (at every EHLO and AUTH)
    auth_lookup: Expr               # session.auth.lookup (alias .directory): lookup name or None
    auth_require: Expr              # session.auth.require
    auth_errors_total: Expr         # session.auth.errors.total (alias .max)
    auth_errors_wait: Expr          # session.auth.errors.wait (seconds)
    auth_errors_wait_spread: Expr   # session.auth.errors.wait-spread (share of the wait added at random)
    auth_allow_plain_text: Expr     # session.auth.allow-plain-text
    auth_must_match_sender: Expr    # session.auth.must-match-sender
    rcpt_relay: Expr                # session.rcpt.relay
    rcpt_domains: Expr              # session.rcpt.lookup.domains: lookup name or None
    rcpt_addresses: Expr            # session.rcpt.lookup.addresses: lookup name or None
    rcpt_max_recipients: Expr       # session.rcpt.max-recipients
    data_max_size: Expr             # session.data.limits.size
    data_max_messages: Expr         # session.data.limits.messages


@dataclass(slots=True)
class Settings:
    hostname: str                                   # server.hostname
    greeting: str                                   # server.greeting
    listeners: dict[str, ListenerSettings]
    certificates: dict[str, CertificateSettings]
    session: SessionSettings
    lists: dict[str, ListSettings]
    databases: dict[str, DatabaseSettings]
    remotes: dict[str, RemoteSettings]
    directories: dict[str, DirectorySettings]
    queue_path: str                                 # queue.path
    next_hop: Expr                                  # queue.outbound.next-hop (lookup name or None)
    shutdown_grace: float = 30.0                    # server.shutdown-grace
    source: str = ""                                # where the config came from (for logs)
    abuse: Any = None                               # config.abuse.AbuseSettings: throttles, auto-ban, store
    run_as: Any = None                              # server.run-as.* (config.runas.RunAs | None)
    observe: ObserveSettings = field(default_factory=ObserveSettings)  # server.management.*, server.log.*
