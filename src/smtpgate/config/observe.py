"""``server.management.*`` and ``server.log.*``: the management listener's rules and how logs are written.

Keys (defaults in brackets):

  server.management.token         bearer token of the JSON API, stored hashed inline ("{SHA256}…",
                                  "{SSHA512}…", "$argon2id$…", any scheme ``smtpgate user`` stores) or in a
                                  file ("file:///etc/smtpgate/api-token", plaintext or hashed). Unset: the
                                  API answers 403, /metrics and the health endpoints still work.
  server.management.allow-remote  [false] bind ``protocol = "http"`` listeners to non-loopback addresses.
                                  Off by default: /metrics and /readyz tell a stranger which stores you
                                  use and how busy you are, and the API manages users and bans.
  server.log.format               ["text"] | "json" (one JSON object per line, for log shippers)
  server.log.output               ["stderr"] (what systemd's journal collects) | "syslog"
  server.log.level                ["info"] | "debug" (adds the SMTP dialogue, secrets masked) | "warning"
                                  | "error"; ``smtpgate serve --log-level`` overrides it
  server.log.syslog.socket        ["/dev/log"] unix datagram socket of the syslog daemon
  server.log.syslog.facility      ["mail"] syslog facility

The management listener itself is ``[server.listener.<id>] protocol = "http"`` with its ``bind``; it
speaks HTTPS when its ``tls.implicit = true`` (there is no STARTTLS in HTTP, so an inherited
``server.tls.enable`` alone does not turn it on).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from . import values
from .errors import ConfigError

_HASHED = re.compile(r"^(\{[A-Za-z0-9._-]+\}|\$[A-Za-z0-9]+\$)")
LOG_LEVELS = ("debug", "info", "warning", "error")
SYSLOG_FACILITIES = ("mail", "daemon", "user", "local0", "local1", "local2", "local3", "local4", "local5",
                     "local6", "local7")


@dataclass(slots=True)
class ManagementSettings:           # server.management.*
    token: str | None = None        # .token: a stored secret (hash, or plaintext read from a file)
    allow_remote: bool = False      # .allow-remote


@dataclass(slots=True)
class LogSettings:                  # server.log.*
    format: str = "text"            # .format: text | json
    output: str = "stderr"          # .output: stderr | syslog
    level: str | None = None        # .level (None: the command line's --log-level, default info)
    syslog_socket: str = "/dev/log" # .syslog.socket
    syslog_facility: str = "mail"   # .syslog.facility


@dataclass(slots=True)
class ObserveSettings:
    management: ManagementSettings = field(default_factory=ManagementSettings)
    log: LogSettings = field(default_factory=LogSettings)


def parse(b: Any, listeners: dict[str, Any]) -> ObserveSettings:
    """``b`` is config.load's builder (take/has/optional/read_file_value); ``listeners`` the parsed ones."""
    for table in ("server.management", "server.log", "server.log.syslog"):
        if b.has(table) and b.flat[table] == {}:
            b.take(table)                   # an empty table is harmless
    mgmt = ManagementSettings()
    key = "server.management.token"
    if b.has(key):
        raw = values.nonempty_string(key, b.take(key))
        if raw.startswith("file://"):
            secret = b.read_file_value(key, raw).strip()
            if not secret:
                raise ConfigError(key, "the token file is empty")
        elif _HASHED.match(raw):
            secret = raw
        else:
            raise ConfigError(key, "store the token hashed (e.g. \"{SHA256}<base64>\" or an argon2 hash) or in a "
                                   "file (\"file:///etc/smtpgate/api-token\"), never in plaintext here")
        mgmt.token = secret
    mgmt.allow_remote = b.optional("server.management.allow-remote", values.boolean, False)

    log = LogSettings()
    log.format = _choice(b, "server.log.format", ("text", "json"), log.format)
    log.output = _choice(b, "server.log.output", ("stderr", "syslog"), log.output)
    log.level = _choice(b, "server.log.level", LOG_LEVELS, None)
    log.syslog_socket = b.optional("server.log.syslog.socket", values.nonempty_string, log.syslog_socket)
    log.syslog_facility = _choice(b, "server.log.syslog.facility", SYSLOG_FACILITIES, log.syslog_facility)

    for ident, listener in listeners.items():
        if listener.protocol != "http" or mgmt.allow_remote:
            continue
        for host, port in listener.binds:
            if not ipaddress.ip_address(host).is_loopback:
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise ConfigError(f"server.listener.{ident}.bind",
                                  f"{shown} is not a loopback address; the management listener serves "
                                  "metrics and an admin API: bind it to 127.0.0.1/[::1], or set "
                                  "server.management.allow-remote = true (and a token)")
    return ObserveSettings(mgmt, log)


def _choice(b: Any, key: str, allowed: tuple[str, ...], default: Any) -> Any:
    if not b.has(key):
        return default
    value = values.string(key, b.take(key)).lower()
    if value not in allowed:
        raise ConfigError(key, f"expected one of {', '.join(allowed)}, got {value!r}")
    return value
