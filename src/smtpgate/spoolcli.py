"""``smtpgate spool list | show <id> | deliver --to remote/<id>``: the way out of the spool.

The spool's file format is a contract, documented in ``docs/spool-format.md``: ``<queue.path>/new/<id>``,
one JSON line with the envelope, a line feed, then the message bytes exactly as accepted.

``deliver`` hands each message to a next hop with :class:`~smtpgate.delivery.nexthop.NextHop`, the code
in-session delivery uses, so the same all-or-nothing rule holds: every recipient is checked with RCPT
first and DATA is sent only when all were accepted. A message leaves the spool only after the next hop
accepted it (its file is unlinked and the directory fsynced then). It is safe from a timer, and two runs
at once never deliver a message twice: a run claims a message with an exclusive, non-blocking ``flock``
on its file and re-checks, holding the lock, that the file is still the one in ``new/`` (another run may
have delivered and removed it meanwhile). A run that dies drops its locks with its file descriptors, so
nothing stays claimed after a crash (a claim by rename into a ``claimed/`` directory would need a sweeper
for that). flock is per host: do not share one spool directory between hosts over NFS.

Outcomes per message:
* all recipients accepted -> removed from the spool;
* temporary refusal (4xx, next hop down) -> left as it is for the next run (exit status 75, EX_TEMPFAIL);
* LMTP next hop accepted some recipients after DATA -> the file is rewritten (atomically) with only the
  recipients still to do, so a retry never duplicates mail to those already served;
* permanent refusal (5xx) of every remaining recipient -> moved to ``<queue.path>/failed/<id>`` with a
  ``<id>.reason`` file beside it (no bounce message is generated: smtpgate has no outbound queue).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import fcntl
import json
import os
import sys
from typing import Any

from .config.errors import ConfigError
from .config.model import Settings
from .delivery.base import Envelope, RcptResult

EX_TEMPFAIL = 75


def add_parser(sub: Any) -> None:
    spool = sub.add_parser("spool", help="list, show and deliver spooled messages",
                           description="List, show and deliver the messages in queue.path.")
    actions = spool.add_subparsers(dest="spool_command", metavar="COMMAND")
    actions.required = True
    ls = actions.add_parser("list", help="one line per spooled message")
    ls.add_argument("--json", action="store_true", help="one JSON envelope per line")
    show = actions.add_parser("show", help="envelope and message of one spooled message")
    show.add_argument("id")
    show.add_argument("--headers", action="store_true", help="only the message header")
    deliver = actions.add_parser("deliver", help="hand spooled messages to a next hop")
    deliver.add_argument("--to", required=True, metavar="remote/<id>",
                         help="a [remote.<id>] with protocol lmtp or smtp")
    deliver.add_argument("ids", nargs="*", help="only these messages (default: all)")
    from . import cli
    # the options locating the configuration, before or after the verb (`spool list --config F`)
    cli.add_config_options(spool)
    for p in (ls, show, deliver):
        cli.add_config_options(p, suppress_defaults=True)
    spool.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    spool = SpoolDir(settings.queue_path)
    try:
        if args.spool_command == "list":
            return _list(spool, args.json)
        if args.spool_command == "show":
            return _show(spool, args.id, args.headers)
        return asyncio.run(deliver_all(settings, spool, args.to, args.ids or None))
    except OSError as exc:   # e.g. run as a user who may not read the spool
        print(f"smtpgate spool: {exc.filename or spool.path}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _settings(args: argparse.Namespace) -> Settings:
    from . import cli
    return cli.load_settings(args)


class SpoolDir:
    def __init__(self, path: str):
        self.path = path
        self.new = os.path.join(path, "new")
        self.failed = os.path.join(path, "failed")

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.new)
        except FileNotFoundError:
            return []
        # "<unix time>.<queue id>": oldest first
        return sorted((n for n in names if not n.startswith(".")), key=lambda n: (n.split(".", 1)[0].zfill(12), n))

    def find(self, ident: str) -> str | None:
        """A full id, or the queue id alone (what the 250 reply and the Received header show)."""
        if "/" in ident or ident.startswith("."):
            return None
        if os.path.exists(os.path.join(self.new, ident)):
            return ident
        matches = [n for n in self.ids() if n.split(".", 1)[-1] == ident]
        return matches[0] if len(matches) == 1 else None


def read(path: str) -> tuple[dict[str, Any], bytes]:
    from .delivery.spool import read_message
    return read_message(path)


def _list(spool: SpoolDir, as_json: bool) -> int:
    count = 0
    for ident in spool.ids():
        try:
            env, _ = read(os.path.join(spool.new, ident))
        except (OSError, ValueError) as exc:
            if not isinstance(exc, FileNotFoundError):   # delivered meanwhile: not an error
                print(f"{ident}: unreadable: {exc}", file=sys.stderr)
            continue
        count += 1
        if as_json:
            print(json.dumps({"id": ident, **env}, separators=(",", ":")))
            continue
        when = datetime.datetime.fromtimestamp(env.get("received_at", 0), datetime.timezone.utc)
        rcpts = env.get("rcpt_to", [])
        print(f"{ident}  {when:%Y-%m-%d %H:%M:%S}Z  {env.get('size', 0):>9}  <{env.get('mail_from', '')}> -> "
              f"{', '.join(f'<{r}>' for r in rcpts[:3])}{f' (+{len(rcpts) - 3})' if len(rcpts) > 3 else ''}"
              f"{'  auth=' + env['authenticated_as'] if env.get('authenticated_as') else ''}")
    if not as_json:
        print(f"{count} message(s) in {spool.new}", file=sys.stderr)
    return 0


def _show(spool: SpoolDir, ident: str, headers_only: bool) -> int:
    name = spool.find(ident)
    if name is None:
        print(f"smtpgate spool: no message {ident!r} in {spool.new}", file=sys.stderr)
        return 1
    try:
        env, message = read(os.path.join(spool.new, name))
    except (OSError, ValueError) as exc:
        print(f"smtpgate spool: {name}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"id": name, **env}, indent=2, ensure_ascii=False))
    print()
    if headers_only:
        end = message.find(b"\r\n\r\n")
        message = message if end < 0 else message[:end + 2]
    sys.stdout.flush()
    sys.stdout.buffer.write(message)
    sys.stdout.buffer.flush()
    return 0


def envelope_of(env: dict[str, Any], message: bytes) -> Envelope:
    return Envelope(mail_from=env["mail_from"], rcpt_to=list(env["rcpt_to"]), data=message,
                    mail_params=dict(env.get("params") or {}), authenticated_as=env.get("authenticated_as"),
                    auth_param=env.get("auth_param"), helo=env.get("helo", ""), remote_ip=env.get("remote_ip", ""),
                    listener=env.get("listener", ""), tls=env.get("tls"), queue_id=env.get("queue_id", ""),
                    received_at=env.get("received_at", 0.0), per_recipient=False)


async def deliver_all(settings: Settings, spool: SpoolDir, target: str, only: list[str] | None = None) -> int:
    ident = target[7:] if target.startswith("remote/") else None
    remote = settings.remotes.get(ident) if ident else None
    if remote is None or remote.protocol not in ("smtp", "lmtp"):
        raise ConfigError("--to", f"expected \"remote/<id>\" of a [remote.<id>] with protocol lmtp or smtp, got {target!r}")
    from .delivery.nexthop import NextHop
    hop = NextHop(remote, settings.hostname)
    names = spool.ids() if only is None else [n for n in (spool.find(i) for i in only) if n]
    done = kept = failed = 0
    try:
        for name in names:
            outcome = await deliver_one(spool, name, hop, target)
            if outcome == "delivered":
                done += 1
            elif outcome == "failed":
                failed += 1
            elif outcome == "kept":
                kept += 1
    finally:
        await hop.close()
    print(f"spool deliver to {target}: {done} delivered, {kept} kept for retry, {failed} failed permanently")
    return EX_TEMPFAIL if kept else 0


async def deliver_one(spool: SpoolDir, name: str, hop: Any, target: str) -> str:
    """Deliver one message under its lock. Returns delivered | kept | failed | skipped."""
    path = os.path.join(spool.new, name)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return "skipped"                      # another run delivered it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "skipped"                  # another run is delivering it right now
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return "skipped"              # replaced (rewritten with fewer recipients) meanwhile
        except FileNotFoundError:
            return "skipped"                  # delivered and removed by another run meanwhile
        try:
            env, message = read(path)
        except ValueError as exc:
            print(f"{name}: unreadable, left in place: {exc}", file=sys.stderr)
            return "kept"
        envelope = envelope_of(env, message)
        results = await hop.deliver(envelope)
        return _settle(spool, name, env, message, envelope.rcpt_to, results, target)
    finally:
        os.close(fd)                          # drops the lock


def _settle(spool: SpoolDir, name: str, env: dict[str, Any], message: bytes, rcpts: list[str],
            results: list[RcptResult], target: str) -> str:
    path = os.path.join(spool.new, name)
    left = [(r, res) for r, res in zip(rcpts, results) if not res.ok]
    if not left:
        os.unlink(path)
        _fsync_dir(spool.new)
        print(f"{name}: delivered to {target}: {results[0].code} {results[0].text}")
        return "delivered"
    if len(left) < len(rcpts):
        # An LMTP next hop took some recipients after DATA: keep only the others.
        env = {**env, "rcpt_to": [r for r, _ in left]}
        _rewrite(spool, name, env, message)
        print(f"{name}: delivered to {len(rcpts) - len(left)} of {len(rcpts)} recipients; "
              f"kept for {', '.join(r for r, _ in left)}")
    if all(res.code >= 500 for _, res in left):
        os.makedirs(spool.failed, mode=0o700, exist_ok=True)
        reason = "; ".join(f"<{r}>: {res.code} {res.text}" for r, res in left)
        with open(os.path.join(spool.failed, name + ".reason"), "w", encoding="utf-8") as fh:
            fh.write(f"{target}: {reason}\n")
        os.rename(path, os.path.join(spool.failed, name))
        _fsync_dir(spool.new)
        print(f"{name}: refused permanently by {target}, moved to {spool.failed}: {reason}")
        return "failed"
    print(f"{name}: kept for retry: {left[0][1].code} {left[0][1].text}")
    return "kept"


def _rewrite(spool: SpoolDir, name: str, env: dict[str, Any], message: bytes) -> None:
    # Written beside the original (a dot name, which listings ignore), not in tmp/: the server empties
    # tmp/ when it starts, which may happen while this runs.
    tmp = os.path.join(spool.new, f".{name}.{os.getpid()}.tmp")
    header = json.dumps(env, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(header + b"\n" + message)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(spool.new, name))
    _fsync_dir(spool.new)


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
