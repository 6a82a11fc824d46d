"""Compiles Stalwart-style if-blocks into plain Python closures, once, at startup.

A setting is a plain value or an array of rules; the first rule whose condition holds gives the value::

    mechanisms = [ { if = "listener", ne = "smtp", then = ["plain", "login"] },
                   { any-of = [ { if = "remote-ip", eq = "10.0.0.0/8" },
                                { if = "tls", eq = true } ], then = ["plain"] },
                   { else = [] } ]

Conditions become closures over a *context*: any object with the attributes named in ``VARIABLES`` (the
session keeps one). Domain-like variables are held lower-cased by the session and their literals are
lower-cased here, so ``eq`` on them is case-insensitive; IP variables compare against an address or a
CIDR network (v4-mapped IPv6 addresses are compared as IPv4).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Iterable

from .errors import ConfigError
from .model import Expr

#: config variable name -> context attribute
VARIABLES = {
    "listener": "listener",
    "remote-ip": "remote_ip",
    "local-ip": "local_ip",
    "local-port": "local_port",
    "tls": "tls",
    "helo-domain": "helo_domain",
    "authenticated-as": "authenticated_as",
    "sender": "sender",
    "sender-domain": "sender_domain",
    "rcpt": "rcpt",
    "rcpt-domain": "rcpt_domain",
}
_IP_VARS = {"remote-ip", "local-ip"}
_LOWERCASE_VARS = {"helo-domain", "authenticated-as", "sender", "sender-domain", "rcpt", "rcpt-domain"}

# Which variables exist at each evaluation time (SPEC §2.3).
CONNECT = frozenset({"listener", "remote-ip", "local-ip", "local-port", "tls"})
EHLO = CONNECT | {"helo-domain"}
AUTHENTICATED = EHLO | {"authenticated-as"}
MAIL = AUTHENTICATED | {"sender", "sender-domain"}
RCPT = MAIL | {"rcpt", "rcpt-domain"}

_OPS = {
    "eq": "eq", "equal-to": "eq",
    "ne": "ne", "not-equal-to": "ne",
    "starts-with": "starts-with", "not-starts-with": "not-starts-with",
    "ends-with": "ends-with", "not-ends-with": "not-ends-with",
    "in-list": "in-list", "not-in-list": "not-in-list",
    "matches": "matches", "not-matches": "not-matches",
}
_COMBINATORS = ("any-of", "all-of", "none-of")

Cond = Callable[[Any], bool]


class Scope:
    """What a compiled if-block may refer to: listener ids, list contents, allowed variables."""

    def __init__(self, listeners: Iterable[str], lists: dict[str, frozenset[str]], lookups: Iterable[str] = ()):
        self.listeners = frozenset(listeners)
        self.lists = lists
        self.lookups = frozenset(lookups)


def is_ifblock(raw: Any) -> bool:
    return isinstance(raw, list) and bool(raw) and all(isinstance(x, dict) for x in raw)


def compile_setting(key: str, raw: Any, parse: Callable[[str, Any], Any], allowed: frozenset[str],
                    scope: Scope, *, is_list: bool = False, default: Any = None) -> Expr:
    """Compile a plain value or an if-block. ``parse(key, raw)`` validates one value (a ``then``/``else``)."""
    if not is_ifblock(raw):
        if isinstance(raw, dict):
            raise ConfigError(key, "expected a value or an array of if-block rules, got a table")
        return Expr(key, value=parse(key, raw))
    rules: list[tuple[Cond, Any]] = []
    else_value: Any = None
    has_else = False
    for index, rule in enumerate(raw):
        rkey = f"{key}[{index}]"
        if "else" in rule:
            extra = set(rule) - {"else"}
            if extra:
                raise ConfigError(rkey, f"unexpected key {sorted(extra)[0]!r} beside 'else'")
            if index != len(raw) - 1:
                raise ConfigError(rkey, "'else' must be the last rule")
            else_value = parse(f"{rkey}.else", rule["else"])
            has_else = True
            continue
        if "then" not in rule:
            raise ConfigError(rkey, "rule has no 'then' value")
        cond = _compile_condition(rkey, {k: v for k, v in rule.items() if k != "then"}, allowed, scope)
        rules.append((cond, parse(f"{rkey}.then", rule["then"])))
    if not has_else:
        if not is_list:
            raise ConfigError(key, "if-block needs a final { else = ... } rule")
        else_value = parse(f"{key}.else", [])
    if not rules:
        return Expr(key, value=else_value)
    return Expr(key, rules=rules, default=else_value)


def _compile_condition(key: str, cond: dict[str, Any], allowed: frozenset[str], scope: Scope) -> Cond:
    combinators = [c for c in _COMBINATORS if c in cond]
    if combinators:
        name = combinators[0]
        extra = set(cond) - {name}
        if extra:
            raise ConfigError(key, f"unexpected key {sorted(extra)[0]!r} beside {name!r}")
        items = cond[name]
        if not isinstance(items, list) or not items or not all(isinstance(x, dict) for x in items):
            raise ConfigError(f"{key}.{name}", "expected a non-empty array of conditions")
        subs = []
        for i, sub in enumerate(items):
            if "then" in sub or "else" in sub:
                raise ConfigError(f"{key}.{name}[{i}]", "nested conditions take no 'then'/'else'")
            subs.append(_compile_condition(f"{key}.{name}[{i}]", sub, allowed, scope))
        if name == "any-of":
            return lambda ctx: any(c(ctx) for c in subs)
        if name == "all-of":
            return lambda ctx: all(c(ctx) for c in subs)
        return lambda ctx: not any(c(ctx) for c in subs)

    if "if" not in cond:
        raise ConfigError(key, "rule needs 'if', 'any-of', 'all-of', 'none-of' or 'else'")
    var = cond["if"]
    if not isinstance(var, str):
        raise ConfigError(f"{key}.if", "expected a variable name")
    if var not in VARIABLES:
        raise ConfigError(f"{key}.if", f"unknown variable {var!r}")
    if var not in allowed:
        raise ConfigError(f"{key}.if", f"variable {var!r} is not available when this setting is evaluated")
    ops = [k for k in cond if k != "if"]
    if len(ops) != 1:
        raise ConfigError(key, "condition needs exactly one operator (eq, ne, starts-with, ends-with, in-list, matches, ...)")
    op_name = ops[0]
    if op_name not in _OPS:
        raise ConfigError(f"{key}.{op_name}", f"unknown operator {op_name!r}")
    return _compile_test(f"{key}.{op_name}", var, _OPS[op_name], cond[op_name], scope)


def _compile_test(key: str, var: str, op: str, value: Any, scope: Scope) -> Cond:
    attr = VARIABLES[var]
    negate = op.startswith("not-") or op == "ne"
    base = {"ne": "eq"}.get(op, op.removeprefix("not-"))

    if var == "tls":
        if base != "eq" or not isinstance(value, bool):
            raise ConfigError(key, "'tls' compares with eq/ne against true or false")
        return (lambda ctx: bool(getattr(ctx, attr)) != value) if negate else (lambda ctx: bool(getattr(ctx, attr)) == value)

    if base == "in-list":
        if not isinstance(value, str) or not value.startswith("list/"):
            raise ConfigError(key, "in-list takes a list lookup such as \"list/blocked\"")
        members = scope.lists.get(value[5:])
        if members is None:
            raise ConfigError(key, f"unknown list {value!r}")
        test = lambda ctx: _text(getattr(ctx, attr)) in members  # noqa: E731
        return (lambda ctx: not test(ctx)) if negate else test

    if base == "matches":
        if not isinstance(value, str):
            raise ConfigError(key, "expected a regular expression string")
        try:
            # Domain-like variables are held lower-cased, so their patterns must ignore case to match.
            rx = re.compile(value, re.IGNORECASE if var in _LOWERCASE_VARS else 0)
        except re.error as exc:
            raise ConfigError(key, f"invalid regular expression: {exc}") from None
        test = lambda ctx: rx.search(_text(getattr(ctx, attr))) is not None  # noqa: E731
        return (lambda ctx: not test(ctx)) if negate else test

    if var == "local-port":
        if base != "eq":
            raise ConfigError(key, "'local-port' compares with eq/ne")
        try:
            port = int(value) if not isinstance(value, bool) else -1
        except (TypeError, ValueError):
            port = -1
        if not 0 <= port <= 65535:
            raise ConfigError(key, f"invalid port {value!r}")
        return (lambda ctx: getattr(ctx, attr) != port) if negate else (lambda ctx: getattr(ctx, attr) == port)

    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(key, "expected a string")
    text = str(value)

    if var in _IP_VARS and base == "eq":
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(key, f"invalid IP address or network {text!r}") from None
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        test = lambda ctx: _in_net(getattr(ctx, attr), net)  # noqa: E731
        return (lambda ctx: not test(ctx)) if negate else test

    if var == "listener" and base == "eq" and text not in scope.listeners:
        raise ConfigError(key, f"unknown listener id {text!r}")
    if var in _LOWERCASE_VARS:
        text = text.lower()

    if base == "eq":
        return (lambda ctx: _text(getattr(ctx, attr)) != text) if negate else (lambda ctx: _text(getattr(ctx, attr)) == text)
    if base == "starts-with":
        test = lambda ctx: _text(getattr(ctx, attr)).startswith(text)  # noqa: E731
    elif base == "ends-with":
        test = lambda ctx: _text(getattr(ctx, attr)).endswith(text)  # noqa: E731
    else:  # pragma: no cover - _OPS is exhaustive
        raise ConfigError(key, f"operator {op!r} not supported for {var!r}")
    return (lambda ctx: not test(ctx)) if negate else test


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _in_net(ip: Any, net: Any) -> bool:
    if ip is None:
        return False
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip)
        except ValueError:
            return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version == net.version and ip in net
