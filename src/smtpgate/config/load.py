"""TOML -> validated, compiled :class:`~smtpgate.config.model.Settings`.

Theory of operation: the TOML document is flattened into dotted key paths (arrays stay whole, so
if-blocks are single values). Each section builder *takes* the keys it understands from that map; whatever
is left at the end is an unknown key and an error. Every error is a :class:`ConfigError` naming the exact
key path. Nothing here opens sockets or starts anything.
"""
from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tempfile
import tomllib
from collections.abc import Callable
from typing import Any

from . import abuse as config_abuse
from . import observe as observe_config
from . import runas, values
from .errors import ConfigError
from .ifblock import MAIL, Scope, compile_setting
from .model import (CacheSettings, CertificateSettings, DatabaseSettings, DirectorySettings, Expr, ListenerSettings,
                    ListenerTls, ListSettings, RemoteSettings, SessionSettings, Settings, TlsClientSettings)
from . import schema
from . import directory
from .schema import SESSION_KEYS, TLS_PROTOCOLS, Setting, lookup_ref
from .proxy import listener_proxy

_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def load_file(path: str) -> Settings:
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError(path, f"cannot read configuration file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "configuration file is not valid UTF-8") from None
    return load_text(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def load_text(text: str, source: str = "<config>", base_dir: str | None = None) -> Settings:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"invalid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    _flatten("", doc, flat)
    return _Builder(flat, source, base_dir or os.getcwd()).build()


def _flatten(prefix: str, node: dict[str, Any], out: dict[str, Any]) -> None:
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            if not value:
                out[path] = value
            _flatten(path, value, out)
        else:
            out[path] = value


class _Builder:
    def __init__(self, flat: dict[str, Any], source: str, base_dir: str):
        self.flat = flat
        self.source = source
        self.base_dir = base_dir

    # -- key access -------------------------------------------------------------------------------
    def take(self, key: str, default: Any = None) -> Any:
        return self.flat.pop(key, default)

    def has(self, key: str) -> bool:
        return key in self.flat

    def optional(self, key: str, parse: Callable[[str, Any], Any], default: Any) -> Any:
        """``parse(key, value)`` when ``key`` is set, else ``default`` as it is (often inherited)."""
        return parse(key, self.take(key)) if self.has(key) else default

    def required(self, key: str, parse: Callable[[str, Any], Any], missing: str) -> Any:
        if not self.has(key):
            raise ConfigError(key, missing)
        return parse(key, self.take(key))

    def ids(self, prefix: str) -> list[str]:
        """Ids of ``prefix.<id>.*`` tables, in document order."""
        seen: list[str] = []
        for key in self.flat:
            if key.startswith(prefix + "."):
                ident = key[len(prefix) + 1:].split(".", 1)[0]
                if ident not in seen:
                    seen.append(ident)
        for ident in seen:
            if not _ID.match(ident):
                raise ConfigError(f"{prefix}.{ident}", "ids may contain only letters, digits, '-' and '_'")
        return seen

    def read_file_value(self, key: str, raw: str) -> str:
        if raw.startswith("file://"):
            path = raw[7:]
            if not os.path.isabs(path):
                path = os.path.join(self.base_dir, path)
            try:
                with open(path, encoding="utf-8") as fh:
                    return fh.read()
            except OSError as exc:
                raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
        return raw

    # -- sections -----------------------------------------------------------------------------------
    def build(self) -> Settings:
        hostname = values.nonempty_string("server.hostname", self.take("server.hostname", "localhost"))
        greeting = values.string("server.greeting", self.take("server.greeting", "smtpgate at your service"))
        grace = values.duration("server.shutdown-grace", self.take("server.shutdown-grace", "30s"))
        certificates = self.certificates()
        default_tls = self.tls("server.tls", ListenerTls(), certificates)
        listeners = self.listeners(default_tls, certificates)
        lists = self.lists()
        databases = self.databases()
        remotes = self.remotes()
        directories = self.directories()
        lookups = self.lookup_names(lists, databases, remotes, directories)
        scope = Scope(listeners, {k: _members(v.entries) for k, v in lists.items()}, lookups)
        session = self.session(scope, lookups, remotes)
        queue_path = values.nonempty_string("queue.path", self.take("queue.path", "spool"))
        if not os.path.isabs(queue_path):
            queue_path = os.path.join(self.base_dir, queue_path)
        next_hop = self.next_hop(scope, remotes)
        abuse = config_abuse.build(self.take, self.has, self.flat, scope, queue_path)
        run_as = runas.parse(self)
        observe = observe_config.parse(self, listeners)
        for key in self.flat:
            # An empty table of a known section (a header whose keys are all commented out) is harmless.
            if not (self.flat[key] == {} and _known_table(key)):
                raise ConfigError(key, "unknown configuration key")
        return Settings(hostname=hostname, greeting=greeting, listeners=listeners, certificates=certificates,
                        session=session, lists=lists, databases=databases, remotes=remotes,
                        directories=directories, queue_path=queue_path, next_hop=next_hop,
                        shutdown_grace=grace, source=self.source, abuse=abuse, run_as=run_as, observe=observe)

    def certificates(self) -> dict[str, CertificateSettings]:
        out = {}
        for ident in self.ids("certificate"):
            base = f"certificate.{ident}"
            pems = {}
            for part in ("cert", "private-key"):
                key = f"{base}.{part}"
                raw = self.required(key, values.nonempty_string, "missing (PEM text or file:///path)")
                pems[part] = self.read_file_value(key, raw)
                if "-----BEGIN" not in pems[part]:
                    # a bare path is the usual slip: say how to name a file
                    hint = (f' (to read a file, write "file://{raw.strip()}")'
                            if not raw.startswith("file://") and "\n" not in raw.strip() else "")
                    raise ConfigError(key, "not a PEM document" + hint)
            _check_keypair(base, pems["cert"], pems["private-key"])
            out[ident] = CertificateSettings(ident, pems["cert"], pems["private-key"])
        return out

    def tls(self, prefix: str, parent: ListenerTls, certificates: dict[str, CertificateSettings]) -> ListenerTls:
        t = ListenerTls(enable=parent.enable, implicit=parent.implicit, certificate=parent.certificate,
                        protocols=parent.protocols, timeout=parent.timeout,
                        ignore_client_order=parent.ignore_client_order)
        # What this level says explicitly decides; implicit TLS or a certificate here implies TLS on.
        enable_given = self.has(f"{prefix}.enable")
        t.enable = self.optional(f"{prefix}.enable", values.boolean, t.enable)
        if self.has(f"{prefix}.implicit"):
            t.implicit = values.boolean(f"{prefix}.implicit", self.take(f"{prefix}.implicit"))
            if t.implicit:
                if enable_given and not t.enable:
                    raise ConfigError(f"{prefix}.implicit", "implicit TLS needs TLS enabled")
                t.enable = True
        if self.has(f"{prefix}.certificate"):
            key = f"{prefix}.certificate"
            t.certificate = values.nonempty_string(key, self.take(key))
            if t.certificate not in certificates:
                raise ConfigError(key, f"unknown certificate {t.certificate!r} (define [certificate.{t.certificate}])")
            if not enable_given:
                t.enable = True
        if not t.enable:
            t.implicit = False
        if self.has(f"{prefix}.protocols"):
            key = f"{prefix}.protocols"
            protos = values.string_list(key, self.take(key))
            for p in protos:
                if p not in TLS_PROTOCOLS:
                    raise ConfigError(key, f"unsupported TLS protocol {p!r} (use {', '.join(TLS_PROTOCOLS)})")
            if not protos:
                raise ConfigError(key, "at least one protocol is required")
            t.protocols = tuple(protos)
        t.timeout = self.optional(f"{prefix}.timeout", values.duration, t.timeout)
        t.ignore_client_order = self.optional(f"{prefix}.ignore-client-order", values.boolean, t.ignore_client_order)
        return t

    def listeners(self, default_tls: ListenerTls, certificates) -> dict[str, ListenerSettings]:
        out = {}
        default_proxy = listener_proxy(self, "server", None)
        for ident in self.ids("server.listener"):
            base = f"server.listener.{ident}"
            binds = self.required(f"{base}.bind", values.binds, "missing (e.g. \"127.0.0.1:587\")")
            protocol = values.string(f"{base}.protocol", self.take(f"{base}.protocol", "smtp"))
            if protocol not in ("smtp", "lmtp", "http"):   # http: the management listener (observe/)
                raise ConfigError(f"{base}.protocol",
                                  f"unsupported protocol {protocol!r} (use \"smtp\", \"lmtp\" or \"http\")")
            tls = self.tls(f"{base}.tls", default_tls, certificates)
            if tls.enable and tls.certificate is None:
                if len(certificates) == 1:
                    tls.certificate = next(iter(certificates))
                else:
                    raise ConfigError(f"{base}.tls.certificate",
                                      "TLS is enabled but no certificate is configured" if not certificates
                                      else "several certificates exist: name one")
            max_conn = values.positive_int(f"{base}.max-connections", self.take(f"{base}.max-connections", 8192))
            hostname = self.optional(f"{base}.hostname", values.nonempty_string, None)
            greeting = self.optional(f"{base}.greeting", values.string, None)
            out[ident] = ListenerSettings(ident, binds, protocol, tls, hostname, greeting, max_conn,
                                          proxy=listener_proxy(self, base, default_proxy))
        if not out:
            raise ConfigError("server.listener", "no listener defined")
        seen: dict[tuple[str, int], str] = {}
        for ident, listener in out.items():
            for host, port in listener.binds:
                if port == 0:
                    continue            # ephemeral: the kernel picks distinct ports
                # A wildcard of one family conflicts with every address of that family on the port
                # (IPv6 sockets are V6ONLY, so 0.0.0.0:25 and [::]:25 coexist).
                ip = ipaddress.ip_address(host)
                clash = next((other for (h, p), other in seen.items() if p == port and (
                    h == host or (ipaddress.ip_address(h).version == ip.version
                                  and (ip.is_unspecified or ipaddress.ip_address(h).is_unspecified)))), None)
                if clash is not None:
                    raise ConfigError(f"server.listener.{ident}.bind",
                                      f"{host}:{port} is already bound by listener {clash!r}")
                seen[(host, port)] = ident
        return out

    def lists(self) -> dict[str, ListSettings]:
        out = {}
        for ident in self.ids("list"):
            key = f"list.{ident}"
            if not self.has(key):
                raise ConfigError(key, "expected an array of entries or \"file:///path\"")
            raw = self.take(key)
            if isinstance(raw, str):
                if not raw.startswith("file://"):
                    raise ConfigError(key, "expected an array of entries or \"file:///path\"")
                entries = [line.strip() for line in self.read_file_value(key, raw).splitlines()]
                entries = [e for e in entries if e and not e.startswith("#")]
            else:
                entries = values.string_list(key, raw)
            out[ident] = ListSettings(ident, entries)
        return out

    def cache(self, base: str) -> CacheSettings:
        c = CacheSettings()
        c.entries = self.optional(f"{base}.cache.entries", values.integer, c.entries)
        c.ttl_positive = self.optional(f"{base}.cache.ttl.positive", values.duration, c.ttl_positive)
        c.ttl_negative = self.optional(f"{base}.cache.ttl.negative", values.duration, c.ttl_negative)
        if c.entries and not (c.ttl_positive or c.ttl_negative):
            c.ttl_positive, c.ttl_negative = 300.0, 60.0
        return c

    def databases(self) -> dict[str, DatabaseSettings]:
        out = {}
        for ident in self.ids("database"):
            base = f"database.{ident}"
            address = self.required(f"{base}.address", values.nonempty_string,
                                    "missing (sqlite://path or postgres://user@host:port/db)")
            if not address.startswith(("sqlite://", "postgres://", "postgresql://")):
                raise ConfigError(f"{base}.address", "unsupported database URL (use sqlite:// or postgres://)")
            if address.startswith("sqlite://"):
                path = address[9:].split("?", 1)[0]
                if path and not os.path.isabs(path):
                    address = "sqlite://" + os.path.join(self.base_dir, address[9:])
            queries = {}
            prefix = f"{base}.lookup."
            for key in [k for k in self.flat if k.startswith(prefix)]:
                name = key[len(prefix):]
                sql = values.nonempty_string(key, self.take(key))
                if sql.count("?") != 1:
                    raise ConfigError(key, "query must contain exactly one '?' parameter")
                queries[name] = sql
            conc = values.positive_int(f"{base}.concurrency", self.take(f"{base}.concurrency", 10))
            timeout = values.duration(f"{base}.timeout", self.take(f"{base}.timeout", "5s"))
            decoy = values.nonempty_string(f"{base}.decoy-scheme", self.take(f"{base}.decoy-scheme", "ARGON2ID"))
            try:
                from ..lookup.secrets import parse_decoy_scheme
                parse_decoy_scheme(decoy)
            except ValueError as exc:
                raise ConfigError(f"{base}.decoy-scheme", str(exc)) from None
            out[ident] = DatabaseSettings(ident, address, queries, conc, timeout, self.cache(base), decoy)
        return out

    def tls_client(self, base: str) -> TlsClientSettings:
        t = TlsClientSettings()
        t.implicit = self.optional(f"{base}.tls.implicit", values.boolean, t.implicit)
        t.starttls = self.optional(f"{base}.tls.starttls", values.boolean, t.starttls)
        t.allow_invalid_certs = self.optional(f"{base}.tls.allow-invalid-certs", values.boolean, t.allow_invalid_certs)
        t.ca_file = self.optional(f"{base}.tls.ca-file", values.nonempty_string, t.ca_file)
        if t.implicit and t.starttls:
            raise ConfigError(f"{base}.tls.starttls", "cannot be combined with tls.implicit")
        return t

    def remotes(self) -> dict[str, RemoteSettings]:
        out = {}
        for ident in self.ids("remote"):
            base = f"remote.{ident}"
            for req in ("address", "protocol"):
                if not self.has(f"{base}.{req}"):
                    raise ConfigError(f"{base}.{req}", "missing")
            address = values.nonempty_string(f"{base}.address", self.take(f"{base}.address"))
            protocol = values.string(f"{base}.protocol", self.take(f"{base}.protocol"))
            if protocol not in ("imap", "smtp", "lmtp"):
                raise ConfigError(f"{base}.protocol", f"unsupported protocol {protocol!r} (use imap, smtp or lmtp)")
            tls = self.tls_client(base)
            default_port = {"imap": 993 if tls.implicit else 143, "smtp": 465 if tls.implicit else 25,
                            "lmtp": 24}[protocol]
            port = self.take(f"{base}.port", default_port)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"{base}.port", f"invalid port {port!r}")
            lookup = values.boolean(f"{base}.lookup", self.take(f"{base}.lookup", False))
            conc = values.positive_int(f"{base}.concurrency", self.take(f"{base}.concurrency", 10))
            timeout = values.duration(f"{base}.timeout", self.take(f"{base}.timeout", "10s"))
            out[ident] = RemoteSettings(ident, address, port, protocol, lookup, conc, timeout, tls, self.cache(base))
        return out

    def directories(self) -> dict[str, DirectorySettings]:
        out = {}
        for ident in self.ids("directory"):
            base = f"directory.{ident}"
            kind = self.required(f"{base}.type", values.string, "missing (internal, ldap or oauth)")
            if kind not in directory.OPTIONS:
                raise ConfigError(f"{base}.type", f"unknown directory type {kind!r} (use internal, ldap or oauth)")
            timeout = values.duration(f"{base}.timeout", self.take(f"{base}.timeout", "5s"))
            conc = values.positive_int(f"{base}.concurrency", self.take(f"{base}.concurrency", 10))
            cache = self.cache(base)
            raw: dict[str, Any] = {}
            for opt, parse in directory.OPTIONS[kind].items():
                key = f"{base}.{opt}"
                if self.has(key):
                    raw[opt] = parse(key, self.take(key))
            options: directory.UserStoreSettings | directory.LdapSettings | directory.OAuthSettings
            if kind == "internal":
                if "store" in raw and raw["store"].startswith("sqlite://"):
                    path = raw["store"][9:]
                    if path and not os.path.isabs(path):
                        raw["store"] = "sqlite://" + os.path.join(self.base_dir, path)
                options = directory.user_store_settings(base, raw)
            elif kind == "ldap":
                options = directory.ldap_settings(base, raw)
            else:
                options = directory.oauth_settings(base, raw)
            leftover = [k for k in self.flat if k.startswith(base + ".")]
            if leftover:
                raise ConfigError(leftover[0], f"unknown option for a directory of type {kind!r}")
            out[ident] = DirectorySettings(ident, kind, options, timeout, conc, cache)
        return out

    def lookup_names(self, lists, databases, remotes, directories) -> dict[str, str]:
        """Every lookup name a setting may use -> its kind."""
        names: dict[str, str] = {f"list/{i}": "list" for i in lists}
        for ident, db in databases.items():
            for q in db.lookups:
                names[f"db/{ident}/{q}"] = "db"
        for ident, r in remotes.items():
            names[f"remote/{ident}"] = "remote"
        for ident, d in directories.items():
            names[f"directory/{ident}"] = d.type
            names[f"{directory.PREFIXES[d.type]}/{ident}"] = d.type
        return names

    def session(self, scope: Scope, lookups: dict[str, str], remotes) -> SessionSettings:
        def setting(row: Setting) -> Expr:
            return self.session_setting(row, scope, lookups, remotes)

        relay = setting(schema.RCPT_RELAY)
        if relay.constant and relay.value is None:
            # Default: relay only for authenticated sessions.
            relay = Expr(schema.RCPT_RELAY.key, rules=[(lambda ctx: bool(ctx.authenticated_as), True)], default=False)
        else:
            _refuse_open_relay(relay)
        return SessionSettings(
            timeout=setting(schema.TIMEOUT),
            duration=setting(schema.DURATION),
            transfer_limit=setting(schema.TRANSFER_LIMIT),
            ehlo_require=setting(schema.EHLO_REQUIRE),
            errors_total=setting(schema.ERRORS_TOTAL),
            auth_mechanisms=setting(schema.AUTH_MECHANISMS),
            auth_lookup=setting(schema.AUTH_LOOKUP),
            auth_require=setting(schema.AUTH_REQUIRE),
            auth_errors_total=setting(schema.AUTH_ERRORS_TOTAL),
            auth_errors_wait=setting(schema.AUTH_ERRORS_WAIT),
            auth_errors_wait_spread=setting(schema.AUTH_ERRORS_WAIT_SPREAD),
            auth_allow_plain_text=setting(schema.AUTH_ALLOW_PLAIN_TEXT),
            auth_must_match_sender=setting(schema.AUTH_MUST_MATCH_SENDER),
            rcpt_relay=relay,
            rcpt_domains=setting(schema.RCPT_DOMAINS),
            rcpt_addresses=setting(schema.RCPT_ADDRESSES),
            rcpt_max_recipients=setting(schema.RCPT_MAX_RECIPIENTS),
            data_max_size=setting(schema.DATA_MAX_SIZE),
            data_max_messages=setting(schema.DATA_MAX_MESSAGES),
        )

    def session_setting(self, row: Setting, scope: Scope, lookups: dict[str, str], remotes) -> Expr:
        """Take one ``session.*`` key (or one of its aliases) and compile it; its default when absent."""
        present = [k for k in (row.key, *row.aliases) if self.has(k) or any(f.startswith(k + ".") for f in self.flat)]
        if len(present) > 1:
            raise ConfigError(present[1], f"duplicates {present[0]} (they are aliases)")
        if not present:
            return Expr(row.key, value=row.default)
        key = present[0]
        if any(k.startswith(key + ".") for k in self.flat):
            # e.g. require = { if = ..., then = ... }: an inline table flattened into sub-keys
            raise ConfigError(key, "expected a value or an array of if-block rules, got a table")
        raw = self.take(key)
        parse = self._lookup_parser(row.lookup, lookups, remotes) if row.lookup else row.parse
        expr = compile_setting(key, raw, parse, row.variables, scope, is_list=row.is_list)
        if row is schema.RCPT_RELAY:
            _refuse_open_relay_rules(key, raw, scope.lists)
        return expr

    def _lookup_parser(self, kind: str, lookups: dict[str, str], remotes):
        def parse(key: str, raw: Any) -> str | None:
            name = lookup_ref(key, raw)
            if name is None:
                return None
            if name not in lookups:
                raise ConfigError(key, f"unknown lookup {name!r}")
            if kind == "auth" and name.startswith("remote/"):
                remote = remotes[name[7:]]
                if not remote.lookup:
                    raise ConfigError(key, f"remote {remote.id!r} is not enabled for lookups "
                                           f"(set remote.{remote.id}.lookup = true)")
            if kind == "membership" and lookups[name] not in ("list", "db"):
                raise ConfigError(key, f"lookup {name!r} cannot answer membership queries (use list/ or db/)")
            return name
        return parse

    def next_hop(self, scope: Scope, remotes) -> Expr:
        key = "queue.outbound.next-hop"
        if not self.has(key):
            return Expr(key, value=None)

        def parse(k: str, raw: Any) -> str | None:
            name = lookup_ref(k, raw)
            if name is None:
                return None
            if not name.startswith("remote/") or name[7:] not in remotes:
                raise ConfigError(k, f"expected \"remote/<id>\" of a defined remote or false, got {name!r}")
            if remotes[name[7:]].protocol not in ("smtp", "lmtp"):
                raise ConfigError(k, f"remote {name[7:]!r} must use protocol smtp or lmtp to be a next hop")
            return name
        return compile_setting(key, self.take(key), parse, MAIL, scope)


def _members(entries: list[str]) -> frozenset[str]:
    """What in-list compares against: each entry, and for "user:secret" entries the name alone (as
    list/<id> lookups answer membership). Both, because an IPv6 address also contains colons."""
    out: set[str] = set()
    for entry in entries:
        out.add(entry.strip().lower())
        name, colon, _ = entry.partition(":")
        if colon and name.strip():
            out.add(name.strip().lower())
    return frozenset(out)


#: Sections that may appear as empty tables; "*" stands for an id.
_KNOWN_TABLES = ("server", "server.tls", "server.listener", "server.listener.*", "server.listener.*.tls",
                 "server.proxy", "server.listener.*.proxy",
                 "certificate", "list", "database", "database.*.lookup", "database.*.cache", "database.*.cache.ttl",
                 "remote", "remote.*.tls", "remote.*.cache", "remote.*.cache.ttl", "directory", "directory.*.*",
                 "directory.*.cache.ttl", "queue", "queue.outbound")


def _known_table(path: str) -> bool:
    if any(k.startswith(path + ".") for k in SESSION_KEYS):
        return True
    parts = path.split(".")
    for pattern in _KNOWN_TABLES:
        pp = pattern.split(".")
        if len(pp) == len(parts) and all(a == "*" or a == b for a, b in zip(pp, parts)):
            return True
    return False


def _refuse_open_relay_rules(key: str, raw: Any, lists: dict[str, frozenset[str]]) -> None:
    """The relay guard: every rule that allows relaying must be limited to authenticated sessions or to
    client networks, and the networks of all such rules together must leave part of the IPv4 and of the
    IPv6 address space out. Nothing else limits who may relay: a destination (``rcpt-domain ends-with
    ".com"``), a listener or a sender is chosen by the client, so rules on them alone are refused.

    Checked on the raw rules with a conservative reading, first match or not: a rule counts as guarded by
    authentication if a condition on ``authenticated-as`` can only hold once logged in (``ne = ""``, a
    non-empty ``eq``/``starts-with``/``ends-with``, ``in-list``, a ``matches`` that refuses ""); by networks if
    it is ``remote-ip eq <CIDR>`` or ``remote-ip in-list`` (the list's addresses). ``all-of`` takes the
    tightest part, ``any-of`` needs every part guarded (networks add up), ``none-of`` never guards.
    IPv4-mapped IPv6 networks count as IPv4.
    """
    if not isinstance(raw, list):
        return
    Nets = list[ipaddress.IPv4Network | ipaddress.IPv6Network]

    def guard(cond: Any) -> str | Nets | None:
        """Return "auth", the client networks the condition is limited to, or None (not limited)."""
        if not isinstance(cond, dict):
            return None
        if "all-of" in cond:
            parts = [guard(c) for c in cond["all-of"]] if isinstance(cond["all-of"], list) else []
            if "auth" in parts:
                return "auth"
            nets = [p for p in parts if isinstance(p, list)]
            return min(nets, key=lambda n: sum(x.num_addresses for x in n)) if nets else None
        if "any-of" in cond:
            parts = [guard(c) for c in cond["any-of"]] if isinstance(cond["any-of"], list) else [None]
            if not parts or None in parts:
                return None
            nets = [n for p in parts if isinstance(p, list) for n in p]
            return nets if nets else "auth"
        if "none-of" in cond:
            return None
        ops = [k for k in cond if k not in ("if", "then")]
        if len(ops) != 1:
            return None
        var, op, value = cond.get("if"), ops[0], cond[ops[0]]
        if var == "authenticated-as":
            if op in ("ne", "not-equal-to"):
                return "auth" if value == "" else None
            if op in ("eq", "equal-to", "starts-with", "ends-with"):
                return "auth" if isinstance(value, str) and value != "" else None
            if op == "matches":
                try:
                    return "auth" if isinstance(value, str) and re.search(value, "") is None else None
                except re.error:
                    return None
            return "auth" if op == "in-list" else None
        if var == "remote-ip" and op in ("eq", "equal-to") and isinstance(value, str):
            texts = [value]
        elif var == "remote-ip" and op == "in-list" and isinstance(value, str):
            texts = sorted(lists.get(value.removeprefix("list/"), ()))
        else:
            return None
        nets: Nets = []
        for text in texts:
            try:
                net = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                continue  # in-list members that are not addresses (user names) never equal an IP
            if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
                net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
            nets.append(net)
        return nets

    allowed: Nets = []
    for i, rule in enumerate(raw):
        if not (isinstance(rule, dict) and rule.get("then") is True):
            continue
        g = guard(rule)
        if g is None:
            raise ConfigError(f"{key}[{i}]", "this rule would relay for sessions that are neither authenticated nor "
                                             "from a chosen network (an open relay); add a condition on "
                                             "authenticated-as or remote-ip")
        if isinstance(g, list):
            allowed.extend(g)
    for everything in (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")):
        nets = [n for n in allowed if n.version == everything.version]
        if list(ipaddress.collapse_addresses(nets)) == [everything]:  # type: ignore[arg-type]
            raise ConfigError(key, f"the remote-ip networks of the relaying rules together cover every IPv"
                                   f"{everything.version} address (an open relay); name only your clients' networks")


def _refuse_open_relay(expr: Expr) -> None:
    """smtpgate is never an open relay: relaying must depend on something (authentication, network)."""
    if expr.constant:
        if expr.value:
            raise ConfigError(expr.key, "an unconditional true would make an open relay; use an if-block "
                                        "(e.g. { if = \"authenticated-as\", ne = \"\", then = true })")
        return
    if expr._default:
        raise ConfigError(expr.key, "'else = true' would make an open relay for everyone the rules miss")


def _check_keypair(base: str, cert_pem: str, key_pem: str) -> None:
    """Load the pair once so a bad certificate is a startup error with its key path."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cpath, kpath = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        with open(cpath, "w") as fh:
            fh.write(cert_pem)
        fd = os.open(kpath, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key_pem)
        try:
            ctx.load_cert_chain(cpath, kpath)
        except ssl.SSLError as exc:
            raise ConfigError(f"{base}.cert", f"certificate and private key do not load: {exc.reason or exc}") from None
