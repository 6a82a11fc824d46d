"""Abuse resistance settings: ``[[session.throttle]]``, ``server.auto-ban.*``, ``server.allowed-ip`` /
``server.blocked-ip``, the progressive AUTH wait and where the shared state lives (``storage.lookup`` +
``[store.<id>]``). Parsed here, used by ``smtpgate.abuse``; nothing here runs anything.

Every key of this family has its home in this file::

    [[session.throttle]]                      -> ThrottleSettings (one per array entry)
    server.auto-ban.<kind>.rate / .period     -> AutoBanSettings (kind: auth, abuse, loiter, scan)
    server.auto-ban.auth.trust                -> AbuseSettings.auth_trust
    server.auto-ban.ipv6-prefix               -> AbuseSettings.ipv6_prefix
    server.auto-ban.tarpit                    -> AbuseSettings.tarpit (used by server/tarpit.py)
    server.allowed-ip / server.blocked-ip     -> AbuseSettings.allowed / .blocked
    session.auth.errors.wait-growth / -max    -> AbuseSettings.wait_growth / .wait_max
    storage.lookup, [store.<id>]              -> AbuseSettings.store (StoreSettings or None = in memory)
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import values
from .errors import ConfigError
from .ifblock import CONNECT, MAIL, RCPT, VARIABLES, Scope, compile_setting
from .model import Expr

#: Throttle key names (Stalwart's) -> the stage at which their value exists.
THROTTLE_KEYS = {
    "remote-ip": "connect", "local-ip": "connect", "listener": "connect",
    "helo-domain": "mail", "authenticated-as": "mail", "sender": "mail", "sender-domain": "mail",
    "rcpt": "rcpt", "rcpt-domain": "rcpt",
}
_STAGE_ORDER = {"connect": 0, "mail": 1, "rcpt": 2}
_STAGE_VARS = {"connect": CONNECT, "mail": MAIL, "rcpt": RCPT}

#: Stalwart 0.10's defaults for server.auto-ban.<kind>.rate; the ban period defaults to one day.
AUTOBAN_DEFAULTS = {"auth": "100/1d", "abuse": "35/1d", "loiter": "150/1d", "scan": "30/1d"}
DEFAULT_BAN_PERIOD = 86400.0

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(.+)$")


@dataclass(frozen=True, slots=True)
class Rate:
    count: int              # at most this many ...
    period: float           # ... per this many seconds (a fixed window that starts at the first hit)

    def __str__(self) -> str:
        return f"{self.count}/{_fmt_duration(self.period)}"


@dataclass(slots=True)
class ThrottleSettings:     # one [[session.throttle]] entry
    index: int              # position in the array (part of its counter keys and its key path)
    keys: tuple[str, ...]   # .key
    stage: str              # "connect" | "mail" | "rcpt": when it is checked (from key and match)
    concurrency: int | None = None   # .concurrency (connect stage only)
    rate: Rate | None = None         # .rate
    match: Expr | None = None        # .match (None = always)
    enable: bool = True              # .enable

    @property
    def path(self) -> str:
        return f"session.throttle[{self.index}]"


@dataclass(frozen=True, slots=True)
class AutoBanSettings:      # server.auto-ban.<kind>.*
    rate: Rate | None       # .rate (None = this kind never bans)
    period: float           # .period: how long a ban lasts (seconds)


@dataclass(slots=True)
class StoreSettings:        # [store."<id>"] type = "redis"
    id: str
    type: str
    urls: list[str]         # .urls (the first one is used; Stalwart's shape)
    prefix: str = "smtpgate:"   # .prefix: every key smtpgate writes starts with it
    timeout: float = 1.0    # .timeout: each Redis operation; past it the per-process fallback answers


@dataclass(slots=True)
class AbuseSettings:
    throttles: list[ThrottleSettings] = field(default_factory=list)
    autoban: dict[str, AutoBanSettings] = field(default_factory=dict)
    auth_trust: float = 30 * 86400.0     # server.auto-ban.auth.trust: a successful login trusts (ip, login) this long
    ipv6_prefix: int = 64                # server.auto-ban.ipv6-prefix: IPv6 clients counted per network of this size
    tarpit: float = 0.25                 # server.auto-ban.tarpit: a banned address is refused after a random part of this
    allowed: tuple[Any, ...] = ()        # server.allowed-ip: networks never counted, banned or login-locked
    blocked: tuple[Any, ...] = ()        # server.blocked-ip: networks always refused
    wait_growth: float = 0.0             # session.auth.errors.wait-growth: added per recent failure of the IP
    wait_max: float = 60.0               # session.auth.errors.wait-max: cap of the grown wait
    store: StoreSettings | None = None   # storage.lookup -> [store.<id>]; None = in this process
    ban_file: str = ""                   # persisted bans of the in-memory store (next to queue.path)
    # What the session asks the guard about (set by build(), read on the hot path):
    has_mail_rates: bool = False         # a [[session.throttle]] rate checked at MAIL
    has_rcpt_rates: bool = False         # ... at RCPT
    counts_abuse: bool = False           # server.auto-ban.abuse.rate is on
    counts_auth: bool = False            # failed logins are counted (tracks_auth)

    def stage_throttles(self, stage: str) -> list[ThrottleSettings]:
        return [t for t in self.throttles if t.enable and t.stage == stage]

    @property
    def tracks_auth(self) -> bool:
        """Failed logins are counted across sessions (for bans, login locks or the progressive wait)."""
        auth = self.autoban.get("auth")
        return (auth is not None and auth.rate is not None) or self.wait_growth > 0

    @property
    def auth_window(self) -> float:
        """Over how long an IP's failed logins are counted: auth.rate's period (one hour without it)."""
        auth = self.autoban.get("auth")
        return auth.rate.period if auth is not None and auth.rate is not None else 3600.0


def rate(key: str, raw: Any) -> Rate:
    if not isinstance(raw, str):
        raise ConfigError(key, f"expected a rate such as \"5/1s\", got {values._show(raw)}")
    m = _RATE.match(raw)
    if not m:
        raise ConfigError(key, f"invalid rate {raw!r} (use <count>/<duration>, e.g. \"5/1s\" or \"100/1d\")")
    count = int(m.group(1))
    if count <= 0:
        raise ConfigError(key, "the count of a rate must be greater than 0")
    return Rate(count, values.duration(key, m.group(2).strip()))


def _rate_or_false(key: str, raw: Any) -> Rate | None:
    return None if raw is False else rate(key, raw)


def _networks(key: str, raw: Any) -> tuple[Any, ...]:
    """An array of addresses/CIDRs, or Stalwart's table shape ``[server.blocked-ip] "10.0.0.0/8" = ""``."""
    items = values.string_list(key, raw)
    out = []
    for item in items:
        try:
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ConfigError(key, f"invalid IP address or network {item!r}") from None
        out.append(_unmap(net))
    return tuple(out)


def _unmap(net: Any) -> Any:
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
        return ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net


def _condition_vars(raw: Any) -> set[str]:
    """Every variable an if-block condition tests (to know when it can be evaluated)."""
    found: set[str] = set()
    if isinstance(raw, dict):
        if isinstance(raw.get("if"), str):
            found.add(raw["if"])
        for value in raw.values():
            if isinstance(value, (list, dict)):
                found |= _condition_vars(value)
    elif isinstance(raw, list):
        for item in raw:
            found |= _condition_vars(item)
    return found


def build(take: Callable[[str, Any], Any], has: Callable[[str], bool], flat: dict[str, Any], scope: Scope,
          queue_path: str) -> AbuseSettings:
    """Take this family's keys out of the loader's flattened map (see ``config/load.py``)."""
    import os
    a = AbuseSettings()
    a.throttles = _throttles(take("session.throttle", None), scope)

    for kind, default in AUTOBAN_DEFAULTS.items():
        base = f"server.auto-ban.{kind}"
        r = _rate_or_false(f"{base}.rate", take(f"{base}.rate", default))
        period = values.duration(f"{base}.period", take(f"{base}.period", DEFAULT_BAN_PERIOD * 1000))
        a.autoban[kind] = AutoBanSettings(r, period)
    if has("server.auto-ban.auth.trust"):
        a.auth_trust = values.duration("server.auto-ban.auth.trust", take("server.auto-ban.auth.trust", None))
    if has("server.auto-ban.ipv6-prefix"):
        key = "server.auto-ban.ipv6-prefix"
        prefix = values.integer(key, take(key, None))
        if not 1 <= prefix <= 128:
            raise ConfigError(key, "expected a prefix length between 1 and 128")
        a.ipv6_prefix = prefix

    if has("server.auto-ban.tarpit"):
        raw = take("server.auto-ban.tarpit", None)
        a.tarpit = 0.0 if raw is False else values.duration("server.auto-ban.tarpit", raw)

    for attr, key in (("allowed", "server.allowed-ip"), ("blocked", "server.blocked-ip")):
        items: list[Any] = []
        if has(key):
            raw = take(key, None)
            if raw != {}:
                items.extend(_networks(key, raw))
        for sub in [k for k in flat if k.startswith(key + ".")]:
            # Stalwart's shape: [server.allowed-ip] "192.0.2.0/24" = "" (the flattener split the dots)
            take(sub, None)
            items.extend(_networks(sub, sub[len(key) + 1:]))
        setattr(a, attr, tuple(items))

    if has("session.auth.errors.wait-growth"):
        a.wait_growth = values.duration("session.auth.errors.wait-growth", take("session.auth.errors.wait-growth", None))
    if has("session.auth.errors.wait-max"):
        a.wait_max = values.duration("session.auth.errors.wait-max", take("session.auth.errors.wait-max", None))

    a.store = _store(take, has, flat)
    for key in [k for k in flat if flat[k] == {} and (k.split(".")[0] in ("store", "storage")
                                                      or k.startswith("server.auto-ban"))]:
        take(key, None)     # an empty table of this family (its keys commented out) is harmless
    a.ban_file = os.path.join(os.path.dirname(os.path.abspath(queue_path)), "bans.json")
    a.has_mail_rates = any(t.rate is not None for t in a.stage_throttles("mail"))
    a.has_rcpt_rates = any(t.rate is not None for t in a.stage_throttles("rcpt"))
    a.counts_abuse = a.autoban["abuse"].rate is not None
    a.counts_auth = a.tracks_auth
    return a


def _throttles(raw: Any, scope: Scope) -> list[ThrottleSettings]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ConfigError("session.throttle", "expected an array of tables ([[session.throttle]])")
    out = []
    for index, entry in enumerate(raw):
        base = f"session.throttle[{index}]"
        entry = dict(entry)
        known = {"key", "concurrency", "rate", "match", "enable"}
        for name in entry:
            if name not in known:
                raise ConfigError(f"{base}.{name}", "unknown configuration key")
        keys = values.string_list(f"{base}.key", entry.get("key", []))
        stage = "connect"
        for name in keys:
            if name not in THROTTLE_KEYS:
                raise ConfigError(f"{base}.key", f"unknown throttle key {name!r} (use {', '.join(THROTTLE_KEYS)})")
            stage = max(stage, THROTTLE_KEYS[name], key=_STAGE_ORDER.__getitem__)
        match_raw = entry.get("match")
        if match_raw is not None:
            for var in _condition_vars(match_raw):
                if var in VARIABLES and var not in CONNECT:
                    later = "rcpt" if var in ("rcpt", "rcpt-domain") else "mail"
                    stage = max(stage, later, key=_STAGE_ORDER.__getitem__)
        t = ThrottleSettings(index, tuple(dict.fromkeys(keys)), stage)
        if "concurrency" in entry:
            t.concurrency = values.positive_int(f"{base}.concurrency", entry["concurrency"])
            if stage != "connect":
                raise ConfigError(f"{base}.concurrency", "concurrency limits connections: its key and match may "
                                                         "use only remote-ip, local-ip and listener (and tls, "
                                                         "local-port in match)")
        if "rate" in entry:
            t.rate = rate(f"{base}.rate", entry["rate"])
        if t.concurrency is None and t.rate is None:
            raise ConfigError(base, "a throttle needs concurrency or rate (or both)")
        if "enable" in entry:
            t.enable = values.boolean(f"{base}.enable", entry["enable"])
        if match_raw is not None:
            t.match = _match(f"{base}.match", match_raw, _STAGE_VARS[stage], scope)
        out.append(t)
    return out


def _match(key: str, raw: Any, allowed: frozenset[str], scope: Scope) -> Expr:
    """``match`` is one condition table (``{ if = "listener", eq = "smtp" }``) or a boolean if-block."""
    if isinstance(raw, dict):
        raw = [{**raw, "then": True}, {"else": False}]
    if not isinstance(raw, list):
        raise ConfigError(key, "expected a condition such as { if = \"listener\", eq = \"smtp\" } or an if-block")
    return compile_setting(key, raw, values.boolean, allowed, scope)


def _store(take: Callable[[str, Any], Any], has: Callable[[str], bool], flat: dict[str, Any]) -> StoreSettings | None:
    ids: list[str] = []
    for key in list(flat):
        if key.startswith("store."):
            ident = key[6:].split(".", 1)[0]
            if ident not in ids:
                ids.append(ident)
    stores: dict[str, StoreSettings] = {}
    for ident in ids:
        base = f"store.{ident}"
        if not has(f"{base}.type"):
            raise ConfigError(f"{base}.type", "missing (smtpgate supports type = \"redis\")")
        kind = values.string(f"{base}.type", take(f"{base}.type", None))
        if kind != "redis":
            raise ConfigError(f"{base}.type", f"unsupported store type {kind!r} (smtpgate supports \"redis\")")
        if not has(f"{base}.urls"):
            raise ConfigError(f"{base}.urls", "missing (e.g. [\"redis://127.0.0.1:6379\"])")
        urls = values.string_list(f"{base}.urls", take(f"{base}.urls", None))
        if not urls:
            raise ConfigError(f"{base}.urls", "at least one URL is required")
        for url in urls:
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(f"{base}.urls", f"expected redis://host:port, rediss:// or unix://, got {url!r}")
        s = StoreSettings(ident, kind, urls)
        if has(f"{base}.prefix"):
            s.prefix = values.string(f"{base}.prefix", take(f"{base}.prefix", None))
        if has(f"{base}.timeout"):
            s.timeout = values.duration(f"{base}.timeout", take(f"{base}.timeout", None))
        leftover = [k for k in flat if k.startswith(base + ".")]
        if leftover:
            raise ConfigError(leftover[0], "unknown option for a redis store")
        stores[ident] = s
    if not has("storage.lookup"):
        return None
    name = values.nonempty_string("storage.lookup", take("storage.lookup", None))
    if name not in stores:
        raise ConfigError("storage.lookup", f"unknown store {name!r} (define [store.\"{name}\"] type = \"redis\")")
    return stores[name]


def _fmt_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"
