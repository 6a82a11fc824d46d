"""``smtpgate explain``: what every ``session.*`` setting evaluates to for one client, and which rule of
which file and line decided it -- the question Stalwart users ask when an if-block does not do what they
meant.

    smtpgate explain --config smtpgate.toml --listener submission --remote-ip 192.0.2.7 [--tls]
                     [--helo client.example] [--sender a@example.org] [--rcpt b@example.net]
                     [--user alice@example.org]        (password from stdin, or a prompt on a terminal)

It evaluates the compiled settings exactly as a session does (the same :class:`~smtpgate.config.model.Expr`
objects, the same variable names); line numbers come from :mod:`smtpgate.config.positions`. With
``--user`` it asks the configured ``session.auth.lookup`` directly, as a session would, and says why
the answer is what it is (unknown user, wrong secret, disabled, store unavailable with its error). It
runs in its own process and talks to the store only: no session exists, so no failure counter, throttle
or ban of a running server moves. (A remote store such as Dovecot may count the failed login itself.)
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import json
import sys
import tomllib
from typing import Any

from .config import positions
from .config.errors import ConfigError
from .config.ifblock import VARIABLES
from .config.load import load_file
from .config.model import Expr, Settings
from .config.schema import SESSION_KEYS

_LATE_VARS = {  # variables a caller may leave out, and the option that gives them
    "helo-domain": "--helo", "authenticated-as": "--user", "sender": "--sender", "sender-domain": "--sender",
    "rcpt": "--rcpt", "rcpt-domain": "--rcpt",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("explain", help="show every session setting for one client and the rule behind it",
                       description="Evaluate the session.* settings for one client context and show, for "
                                   "each, the rule (file:line) that produced the value.")
    p.add_argument("--config", required=True)
    p.add_argument("--listener", required=True, help="listener id (server.listener.<id>)")
    p.add_argument("--remote-ip", required=True)
    p.add_argument("--tls", action="store_true", help="the session is encrypted (after STARTTLS, or implicit)")
    p.add_argument("--local-ip", help="default: the listener's first bind address")
    p.add_argument("--local-port", type=int, help="default: the listener's first bind port")
    p.add_argument("--helo", help="EHLO domain (helo-domain)")
    p.add_argument("--sender", help="MAIL FROM address (sender, sender-domain)")
    p.add_argument("--rcpt", help="RCPT TO address (rcpt, rcpt-domain)")
    p.add_argument("--user", help="ask the auth lookup about this login; the password (or token) is read "
                                  "from standard input, or prompted for on a terminal")
    p.add_argument("--bearer", action="store_true",
                   help="what is read for --user is a bearer token (as OAUTHBEARER/XOAUTH2 send), not a password")
    p.set_defaults(run=run)


class Context:
    """The variables an if-block tests (``config.ifblock.VARIABLES``), as a session holds them."""

    def __init__(self, **values: Any):
        for attr in VARIABLES.values():
            setattr(self, attr, values.get(attr))


def run(args: argparse.Namespace) -> int:
    settings = load_file(args.config)
    with open(args.config, "rb") as fh:
        text = fh.read().decode("utf-8")
    secret = _read_secret(args.user) if args.user is not None else None
    try:
        out = asyncio.run(explain(settings, text, args.config, listener_id=args.listener, remote_ip=args.remote_ip,
                                  tls=args.tls, local_ip=args.local_ip, local_port=args.local_port, helo=args.helo,
                                  sender=args.sender, rcpt=args.rcpt, user=args.user, secret=secret,
                                  bearer=args.bearer))
    except ValueError as exc:
        print(f"smtpgate explain: {exc}", file=sys.stderr)
        return 2
    print("\n".join(out))
    return 0


async def explain(settings: Settings, text: str, source: str, *, listener_id: str, remote_ip: str,
                  tls: bool = False, local_ip: str | None = None, local_port: int | None = None,
                  helo: str | None = None, sender: str | None = None, rcpt: str | None = None,
                  user: str | None = None, secret: str | None = None, bearer: bool = False) -> list[str]:
    """The report's lines for one client context (``smtpgate explain`` and the management API's
    ``POST /api/explain``). ``text`` is the configuration file's text, for line numbers. Raises
    ValueError for an unknown listener or a malformed address."""
    lines = positions.key_lines(text)
    raw = tomllib.loads(text) if text else {}
    listener = settings.listeners.get(listener_id)
    if listener is None:
        raise ValueError(f"no listener {listener_id!r} (have: {', '.join(settings.listeners)})")
    remote = _ip(remote_ip)
    local = _ip(local_ip or listener.binds[0][0])
    ctx = Context(listener=listener.id, remote_ip=remote, local_ip=local,
                  local_port=local_port if local_port is not None else listener.binds[0][1],
                  tls=bool(tls or listener.tls.implicit))
    if helo:
        ctx.helo_domain = helo.lower()
    if sender is not None:
        ctx.sender = sender.lower()
        ctx.sender_domain = ctx.sender.rpartition("@")[2] or None
    if rcpt is not None:
        ctx.rcpt = rcpt.lower()
        ctx.rcpt_domain = ctx.rcpt.rpartition("@")[2] or None

    given = {"helo-domain": helo, "sender": sender, "sender-domain": sender,
             "rcpt": rcpt, "rcpt-domain": rcpt, "authenticated-as": None}
    auth_lines: list[str] = []
    if user is not None:
        lookup_name = settings.session.auth_lookup.evaluate(ctx)
        account, auth_lines = await check_user(settings, lookup_name, user, secret or "", bearer=bearer)
        if account:
            ctx.authenticated_as = account.lower()
            given["authenticated-as"] = account

    out = [f"# {source}: listener={listener.id} remote-ip={remote} local-ip={ctx.local_ip} "
           f"local-port={ctx.local_port} tls={str(ctx.tls).lower()} helo-domain={helo or '-'} "
           f"authenticated-as={ctx.authenticated_as or '-'} sender={sender or '-'} rcpt={rcpt or '-'}"]
    rows = []
    for expr in _session_exprs(settings.session):
        row = SESSION_KEYS.get(expr.key)          # an alias (errors.max) is shown under its canonical key
        rows.append((row.key if row else expr.key, expr))
    rows.append(("queue.outbound.next-hop", settings.next_hop))
    for key, expr in rows:
        value, where, missing = explain_expr(expr, ctx, lines, raw, source, given)
        out.append(f"{key} = {_show(value)}")
        out.append(f"    {where}")
        if missing:
            out.append(f"    note: evaluated without {', '.join(missing)} "
                       f"(give {', '.join(sorted({_LATE_VARS[m] for m in missing}))})")
    out.extend(_abuse_rows(settings.abuse, ctx, lines, source, given))
    if auth_lines:
        out.append("")
        out.extend(auth_lines)
    return out


def _abuse_rows(abuse: Any, ctx: Any, lines: dict[str, int], source: str, given: dict[str, Any]) -> list[str]:
    """The ``session.*`` keys parsed with the abuse settings (``config/abuse.py``): the progressive wait
    and each ``[[session.throttle]]``, with whether it applies to this client."""
    if abuse is None:
        return []
    out = []
    for key, value in (("session.auth.errors.wait-growth", abuse.wait_growth),
                       ("session.auth.errors.wait-max", abuse.wait_max)):
        out.append(f"{key} = {_show(float(value))}")
        out.append(f"    {source}:{lines[key]}: {key}" if key in lines else "    built-in default (not set in the file)")
    for t in abuse.throttles:
        limits = [f"concurrency={t.concurrency}"] if t.concurrency is not None else []
        if t.rate is not None:
            limits.append(f"rate={t.rate}")
        missing = sorted({v for v in t.keys if v in given and not given[v]})
        if not t.enable:
            verdict = "disabled (enable = false)"
        elif t.match is not None and not t.match.evaluate(ctx):
            verdict = "does not apply: match is false"
        else:
            verdict = f"applies, checked at {t.stage.upper() if t.stage != 'connect' else 'connect'}"
        out.append(f"{t.path} = key={_show(list(t.keys))} {' '.join(limits)}: {verdict}")
        out.append(f"    {source}:{lines[t.path]}: {t.path}" if t.path in lines else f"    {t.path}")
        if missing:
            out.append(f"    note: counted per {', '.join(missing)}, which this report was not given")
    return out


def _session_exprs(session: Any) -> list[Expr]:
    """Every compiled ``session.*`` setting, in the order ``config.model.SessionSettings`` declares them."""
    import dataclasses
    if dataclasses.is_dataclass(session):
        values = [getattr(session, f.name) for f in dataclasses.fields(session)]
    else:
        values = list(vars(session).values())
    return [v for v in values if isinstance(v, Expr)]


def explain_expr(expr: Expr, ctx: Any, lines: dict[str, int], raw: dict, source: str,
                 given: dict[str, Any]) -> tuple[Any, str, list[str]]:
    """(value, "file:line rule ...", variables the rules test that were not given)."""
    key = expr.key
    rules_raw = _raw_at(raw, key)
    if expr.constant:
        if key in lines:
            return expr.value, f"{source}:{lines[key]}: {key} = {_compact(rules_raw)}", []
        return expr.value, "built-in default (not set in the file)", []
    if not lines:
        # No file text to place the rules in (a configuration built from a string, e.g. by a library user).
        for index, (cond, val) in enumerate(expr._rules):
            if cond(ctx):
                return val, f"{key}[{index}] matched", []
        return expr._default, f"{key}: no rule matched, else = {_compact(expr._default)}", []
    if key not in lines:
        # A rule set built by the loader itself (session.rcpt.relay's default).
        value = expr.evaluate(ctx)
        return value, "built-in default (not set in the file): relay only for authenticated sessions" \
            if key == "session.rcpt.relay" else "built-in default (not set in the file)", []
    missing = sorted({v for v in _tested_vars(rules_raw) if v in given and not given[v]})
    for index, (cond, val) in enumerate(expr._rules):
        if cond(ctx):
            rkey = f"{key}[{index}]"
            rule = rules_raw[index] if isinstance(rules_raw, list) and index < len(rules_raw) else None
            return val, f"{source}:{lines.get(rkey, lines[key])}: {rkey} matched: {_compact(rule)}", missing
    rkey = f"{key}[{len(expr._rules)}]"
    if rkey in lines:
        return expr._default, f"{source}:{lines[rkey]}: {rkey}: no rule matched, else = {_compact(expr._default)}", \
            missing
    return expr._default, (f"{source}:{lines[key]}: {key}: no rule matched and there is no else: "
                           f"the default for a list is []"), missing


async def check_user(settings: Settings, lookup_name: str | None, user: str, secret: str,
                     bearer: bool = False) -> tuple[str | None, list[str]]:
    """Ask the auth lookup as a session would. Returns (account if valid, report lines). ``bearer``: the
    secret is a token (implied for a lookup that verifies nothing else)."""
    from .lookup import registry
    from .lookup.base import Capability, Credentials, Outcome
    head = f"auth lookup for {user!r}: "
    if lookup_name is None:
        return None, [head + "none (session.auth.lookup is false here): AUTH is not offered"]
    lookups = registry.build(settings)
    lk = lookups[lookup_name]
    token = bearer or (Capability.TOKEN in lk.capabilities and Capability.PASSWORD not in lk.capabilities)
    creds = Credentials("OAUTHBEARER" if token else "PLAIN", user, secret, kind="token" if token else "password")
    timeout = _timeout(settings, lookup_name) + 5.0
    try:
        await asyncio.wait_for(lk.start(), timeout)
        result = await asyncio.wait_for(lk.authenticate(creds), timeout)
        lines = [f"auth lookup {lookup_name} for {user!r}:"]
        if result.outcome is Outcome.VALID:
            lines.append(f"    valid: account {result.account!r}")
            if result.addresses:
                lines.append(f"    owns: {', '.join(sorted(result.addresses))}")
            if result.may_act_for:
                lines.append(f"    may act for: {', '.join(sorted(result.may_act_for))}")
            return result.account, lines
        if result.outcome is Outcome.UNAVAILABLE:
            lines.append(f"    store unavailable (clients get 454 4.7.0, not counted): {result.reason or 'no reason'}")
            return None, lines
        why = await _why_invalid(lk, user, secret)
        lines.append(f"    invalid (clients get 535 5.7.8, counted): {why or result.reason or 'the store said no'}")
        return None, lines
    except TimeoutError:
        return None, [f"auth lookup {lookup_name} for {user!r}:", f"    store unavailable: no answer within {timeout:g}s"]
    finally:
        for one in registry.unique(lookups):
            try:
                await one.close()
            except Exception:  # noqa: BLE001 - closing what may never have opened
                pass


async def _why_invalid(lk: Any, user: str, secret: str) -> str | None:
    """Tell unknown user, wrong secret and disabled apart for the stores that hold the secret themselves.
    A session must never reveal this (same reply, same timing); an administrator asking may know it.
    Reaches into the store modules' own record readers, so a store this does not know gets the
    lookup's own reason instead."""
    from .lookup import secrets
    inner = getattr(lk, "inner", lk)          # CachedLookup wraps the real one
    kind = type(inner).__name__
    try:
        if kind == "ListLookup":
            found = inner._users.get(user.lower())
            return "unknown user" if found is None else "wrong secret"
        if kind == "SqlLookup":
            rows = await inner._query(user)
            stored, disabled, _, _ = inner._record(user, rows) if rows else (None, False, None, None)
            return _verdict(stored is not None, disabled, stored is not None and await secrets.verify(stored, secret))
        if kind == "UserStoreLookup":
            login = await inner.store.login(user)
            if login is None:
                return "unknown user"
            return _verdict(True, login.disabled, await secrets.verify(login.password, secret))
    except Exception as exc:  # noqa: BLE001 - diagnosis only; the lookup's answer stands
        return f"the store said no (could not tell why: {type(exc).__name__})"
    return None


def _verdict(known: bool, disabled: bool, secret_ok: bool) -> str:
    if not known:
        return "unknown user"
    if disabled:
        return "account disabled" + (" (the secret is right)" if secret_ok else " (and the secret is wrong)")
    return "wrong secret"


def _timeout(settings: Settings, name: str) -> float:
    kind, _, rest = name.partition("/")
    ident = rest.split("/", 1)[0]
    table = {"db": settings.databases, "remote": settings.remotes}.get(kind, settings.directories)
    return float(getattr(table.get(ident), "timeout", 10.0) or 10.0)


def _read_secret(user: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {user}: ")
    return sys.stdin.readline().rstrip("\r\n")


def _ip(text: str) -> Any:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _raw_at(doc: dict, key: str) -> Any:
    node: Any = doc
    # keys of the flattened form may cross a dotted key or a table boundary alike
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _tested_vars(rules: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(rules, list):
        for r in rules:
            out |= _tested_vars(r)
    elif isinstance(rules, dict):
        if isinstance(rules.get("if"), str):
            out.add(rules["if"])
        for comb in ("any-of", "all-of", "none-of"):
            out |= _tested_vars(rules.get(comb))
    return out


def _compact(value: Any) -> str:
    if value is None:
        return "false"
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _show(value: Any) -> str:
    if value is None:
        return "false"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}s"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


__all__ = ["add_parser", "run", "explain_expr", "check_user", "ConfigError"]
