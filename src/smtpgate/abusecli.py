"""``smtpgate ban list|add|del``: the operators' view of the auto-ban (README "Abuse resistance").

    smtpgate ban list [--json]                       every ban in force: address, reason, counts, until
    smtpgate ban add ADDRESS [--for 1d] [--reason R] ban by hand (IPv6: its whole /ipv6-prefix network)
    smtpgate ban del ADDRESS                         lift a ban

It works on the store the configuration names. With ``storage.lookup`` = a Redis store, it talks to
Redis directly and every node follows within a second. With the default in-memory store it changes the
running server's persisted ``bans.json`` (next to ``queue.path``) under the same lock the server uses;
the server notices the new file within a second, applies it and logs the change. So the CLI needs no
socket to the server and works the same whether the server is running or not.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
import time
from typing import Any, Callable

from .config import values
from .config.errors import ConfigError


class _CliError(Exception):
    pass


def register(subparsers: Any) -> None:
    """Registration for ``smtpgate.cli``: the ``ban`` command, its verbs and the options locating the
    configuration (before or after the verb)."""
    from . import cli
    ban = add_parser(subparsers)
    cli.add_config_options(ban)
    for action in ban._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb in action.choices.values():
                cli.add_config_options(verb, suppress_defaults=True)
    ban.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from . import cli
    return run(args, cli.load_settings)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    ban = subparsers.add_parser("ban", help="list, add or lift bans (auto-ban)",
                                description="List, add or lift bans in the configured abuse store.")
    sub = ban.add_subparsers(dest="ban_command", metavar="COMMAND")
    sub.required = True
    lst = sub.add_parser("list", help="bans in force")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    add = sub.add_parser("add", help="ban an address")
    add.add_argument("address")
    add.add_argument("--for", dest="period", default="1d", help="how long (e.g. 30m, 1d; default 1d)")
    add.add_argument("--reason", default="manual", help="recorded and logged with the ban")
    rm = sub.add_parser("del", help="lift a ban")
    rm.add_argument("address")
    return ban


def run(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    """``load`` turns the --config/--data-dir options into settings (cli._load)."""
    settings = load(args)
    # The store's own warnings (Redis down ...) are for a server's log; the CLI says it in one line.
    logging.getLogger("smtpgate.abuse").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_run(args, settings))
    except _CliError as exc:
        print(f"smtpgate ban: {exc}", file=sys.stderr)
        return 1


def _key(address: str, settings: Any) -> str:
    from .abuse.guard import ip_key
    prefix = settings.abuse.ipv6_prefix
    text = address.strip()
    try:
        if "/" in text:     # an IPv6 ban's key as `ban list` shows it, e.g. 2001:db8::/64
            net = ipaddress.ip_network(text, strict=False)
            if net.version == 6 and net.prefixlen == prefix:
                return str(net)
            raise ValueError(text)
        return ip_key(ipaddress.ip_address(text), prefix)
    except ValueError:
        raise _CliError(f"not an IP address: {address!r} (IPv6 networks: /{prefix} only; ban other networks "
                        f"with server.blocked-ip)") from None


async def _run(args: argparse.Namespace, settings: Any) -> int:
    from .abuse.store import Ban
    a = settings.abuse
    store = _open(settings)
    where = f"redis store {a.store.id!r}" if a.store is not None else a.ban_file
    try:
        if a.store is not None:
            await store.start()
            if store.down:
                raise _CliError(f"cannot reach {where} ({a.store.urls[0]})")
        if args.ban_command == "list":
            bans = sorted(await store.bans(), key=lambda b: b.until)
            now = time.time()
            for b in bans:
                if args.json:
                    print(json.dumps({"address": b.key, **b.to_json()}))
                else:
                    print(f"{b.key:<28} {b.reason:<10} {_counts(b.counts):<16} until {_iso(b.until)} "
                          f"({_left(b.until - now)} left)")
            if not args.json:
                print(f"{len(bans)} ban(s) in {where}", file=sys.stderr)
            return 0
        key = _key(args.address, settings)
        if args.ban_command == "add":
            try:
                period = values.duration("--for", args.period)
            except ConfigError as exc:
                raise _CliError(exc.reason) from None
            now = time.time()
            ban = Ban(key, now + period, args.reason, now, {})
            await store.ban(ban)
            _check(store, where)
            print(f"ban {key} reason={args.reason} until={_iso(ban.until)} ({where})")
            return 0
        old = await store.unban(key)
        _check(store, where)
        if old is None:
            print(f"smtpgate ban: {key} is not banned ({where})", file=sys.stderr)
            return 1
        print(f"unban {key} (was: reason={old.reason} counts={_counts(old.counts)}) ({where})")
        return 0
    finally:
        await store.close()


def _open(settings: Any) -> Any:
    a = settings.abuse
    if a.store is not None:
        from .abuse.redis import RedisStore
        return RedisStore(a.store)
    return _FileStore(a.ban_file)


def _check(store: Any, where: str) -> None:
    if getattr(store, "down", False):
        raise _CliError(f"cannot reach {where}; nothing was changed")


class _FileStore:
    """The in-memory store's file, changed the way the server changes it (see abuse/banfile.py)."""

    def __init__(self, path: str):
        from .abuse.banfile import BanFile
        self.file = BanFile(path)

    async def bans(self) -> list:
        try:
            return list(self.file.load().values())
        except (OSError, ValueError) as exc:
            raise _CliError(f"cannot read {self.file.path}: {exc}") from None

    async def ban(self, ban: Any) -> None:
        self._update(lambda bans: bans.__setitem__(ban.key, ban))

    async def unban(self, key: str) -> Any:
        return self._update(lambda bans: bans.pop(key, None))

    def _update(self, change: Callable[[dict], Any]) -> Any:
        try:
            return self.file.update(change)
        except OSError as exc:
            raise _CliError(f"cannot write {self.file.path}: {exc.strerror or exc}") from None

    async def close(self) -> None:
        pass


def _counts(counts: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 60}m{seconds % 60}s"
