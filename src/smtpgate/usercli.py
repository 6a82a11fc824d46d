"""``smtpgate user ...``: manage the embedded user store (lookup/users.py).

    smtpgate user add NAME [--address A ...]     smtpgate user passwd NAME
    smtpgate user del NAME                        smtpgate user list
    smtpgate user disable|enable NAME             smtpgate user alias add|del ADDRESS [USER]

Passwords are read with getpass from a terminal (asked twice), otherwise as one line from standard input
(``--password-stdin`` forces that), so scripts can pipe them in without exposing them in ``ps``.
Errors print one line to stderr and exit 1, never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

from .lookup.users import UserStore, UserStoreError


class _CliError(Exception):
    pass


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``user`` command to ``subparsers``; returns its parser so the caller can add options
    such as ``--config``. The chosen sub-command is in ``args.user_command``."""
    user = subparsers.add_parser("user", help="manage smtpgate's own user store",
                                 description="Manage smtpgate's own user store.")
    sub = user.add_subparsers(dest="user_command", metavar="COMMAND")
    sub.required = True

    def with_password(p: argparse.ArgumentParser) -> None:
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password as one line from standard input (implied without a terminal)")

    add = sub.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("-a", "--address", action="append", default=[], metavar="ADDRESS",
                     help="an extra address (alias) the user owns; repeatable")
    with_password(add)
    passwd = sub.add_parser("passwd", help="change a user's password")
    passwd.add_argument("name")
    with_password(passwd)
    delete = sub.add_parser("del", help="delete a user and its aliases")
    delete.add_argument("name")
    sub.add_parser("list", help="list users and their addresses")
    for verb in ("disable", "enable"):
        p = sub.add_parser(verb, help=f"{verb} a user's logins")
        p.add_argument("name")
    alias = sub.add_parser("alias", help="add or remove an address of a user")
    alias.add_argument("action", choices=("add", "del"))
    alias.add_argument("address")
    alias.add_argument("user", nargs="?", help="the owning user (needed for 'add')")
    return user


def register(subparsers: Any) -> None:
    """Registration for ``smtpgate.cli``: the ``user`` command and its options locating the store."""
    from . import cli
    user = add_parser(subparsers)
    cli.add_config_options(user)
    user.add_argument("--directory", default=None, metavar="ID",
                      help="id of the [directory.<id>] to manage (default: the first internal one)")
    # ... and the same options after the verb (`smtpgate user add bob --config F`), not overriding
    # what was given before it.
    for action in user._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb in action.choices.values():
                cli.add_config_options(verb, suppress_defaults=True)
                verb.add_argument("--directory", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    user.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    """``smtpgate user ...``: find the internal store of ``--config`` (without it: the embedded default's
    ``users.db`` in ``--data-dir``, by default ``./smtpgate-data``) and run the command on it."""
    from . import cli
    settings = cli.load_settings(args)
    stores = [d for d in settings.directories.values() if d.type == "internal"]
    if args.directory:
        stores = [d for d in stores if d.id == args.directory]
    if not stores:
        which = f"[directory.{args.directory}]" if args.directory else "[directory.<id>]"
        print(f"smtpgate user: no {which} with type = \"internal\" in {settings.source}", file=sys.stderr)
        return 1
    from .startup import store_url as url_of
    return run(args, url_of(stores[0]) or "")


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password_stdin", False) or not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
        if not password:
            raise _CliError("no password on standard input")
        return password
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise _CliError("passwords do not match")
    return first


async def _run(args: argparse.Namespace, store_url: str) -> str | None:
    cmd = args.user_command
    # ask for the password before touching the store: a typo in it should cost nothing
    password = _read_password(args) if cmd in ("add", "passwd") else None
    async with UserStore(store_url) as store:
        if cmd == "add":
            assert password is not None
            await store.add_user(args.name, password, args.address)
            return f"user {args.name} added"
        if cmd == "passwd":
            assert password is not None
            await store.set_password(args.name, password)
            return f"password of {args.name} changed"
        if cmd == "del":
            await store.delete_user(args.name)
            return f"user {args.name} deleted"
        if cmd in ("disable", "enable"):
            await store.set_disabled(args.name, cmd == "disable")
            return f"user {args.name} {cmd}d"
        if cmd == "list":
            lines = []
            for u in await store.list_users():
                flag = " (disabled)" if u.disabled else ""
                addrs = f": {', '.join(u.addresses)}" if u.addresses else ""
                lines.append(f"{u.name}{flag}{addrs}")
            return "\n".join(lines) if lines else None
        if cmd == "alias":
            if args.action == "add":
                if not args.user:
                    raise _CliError("alias add needs ADDRESS USER")
                await store.add_alias(args.address, args.user)
                return f"alias {args.address.strip().lower()} -> {args.user} added"
            await store.remove_alias(args.address)
            return f"alias {args.address.strip().lower()} removed"
    raise _CliError(f"unknown command {cmd!r}")


def run(args: argparse.Namespace, store_url: str) -> int:
    """Execute the parsed ``user`` command against ``store_url``; returns the exit status."""
    try:
        out = asyncio.run(_run(args, store_url))
    except (UserStoreError, _CliError, ValueError) as exc:
        print(f"smtpgate user: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("smtpgate user: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - operators get a line, not a traceback
        print(f"smtpgate user: unexpected error ({type(exc).__name__})", file=sys.stderr)
        return 1
    if out:
        print(out)
    return 0
