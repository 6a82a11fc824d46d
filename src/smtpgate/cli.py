"""Command line: ``smtpgate serve | check-config | user ...``.

Configuration problems print one line ``Configuration error: <key path>: <reason>`` and exit 1.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import os
import signal
import sys

from . import defaults
from .config.errors import ConfigError
from .config.load import load_file


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smtpgate", description="SMTP server with a Stalwart-style AUTH stage")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server in the foreground")
    serve.add_argument("--config", help="TOML configuration (default: the embedded quickstart setup)")
    serve.add_argument("--data-dir", default=os.environ.get("SMTPGATE_DATA", defaults.DEFAULT_DATA_DIR),
                       help="where the embedded default keeps its certificate, users and spool")
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                       help="default: server.log.level, else info")
    check = sub.add_parser("check-config", help="validate a configuration and exit")
    check.add_argument("--config", required=True)
    try:
        from . import usercli
        usercli.add_parser(sub)
    except ImportError:  # pragma: no cover
        return p
    # Every "user" sub-command takes the options that locate the store.
    user = sub.choices["user"]
    targets = [user] + [a for act in user._actions if isinstance(act, argparse._SubParsersAction)
                        for a in act.choices.values()]
    for target in targets:
        target.add_argument("--config", default=argparse.SUPPRESS, help="configuration naming the user store")
        target.add_argument("--data-dir", default=argparse.SUPPRESS, help="data directory of the embedded default")
        target.add_argument("--directory", default=argparse.SUPPRESS, help="id of the [directory.<id>] to manage")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            from .lookup import registry
            settings = load_file(args.config)
            for lookup in registry.unique(registry.build(settings)):  # same constructors as serve
                _discard(lookup)
            print(f"{args.config}: OK")
            return 0
        if args.command == "serve":
            return _serve(args)
        if args.command == "user":
            return _user(args)
    except ConfigError as exc:
        print(exc.line(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _discard(lookup) -> None:
    close = getattr(lookup, "close", None)
    if close is not None:
        try:
            asyncio.run(close())
        except Exception:  # noqa: BLE001 - nothing was opened; closing is best effort
            pass


def _load(args: argparse.Namespace):
    if getattr(args, "config", None):
        return load_file(args.config)
    return load_file(defaults.ensure(getattr(args, "data_dir", None) or defaults.DEFAULT_DATA_DIR))


def _setup_logging(level: str) -> None:
    """Log lines go through :class:`~smtpgate.logsink.BatchingHandler` (batched writes from a thread,
    never a stalled event loop). The knobs below are the logging module's documented optimisations for
    record fields we never print."""
    from .logsink import BatchingHandler
    logging._srcfile = None  # no caller lookup per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingHandler(sys.stderr)
    atexit.register(handler.close)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _apply_log_settings(settings, cli_level: str | None) -> None:
    """server.log.* (format, output, level): see observe/logsetup.py."""
    from .observe import logsetup
    try:
        logsetup.apply(settings.observe.log, cli_level)
    except OSError as exc:
        raise ConfigError("server.log.syslog.socket", f"cannot reach {settings.observe.log.syslog_socket}: "
                                                      f"{exc.strerror or exc}") from None
    atexit.register(logsetup.stop)


def _serve(args: argparse.Namespace) -> int:
    _setup_logging((args.log_level or "info").upper())
    settings = _load(args)
    _apply_log_settings(settings, args.log_level)
    try:
        import uvloop  # optional: a faster event loop when installed
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return runner(_run(settings))
    except OSError as exc:
        print(f"smtpgate: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1


async def _run(settings) -> int:
    from .server import Server
    server = Server(settings)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("smtpgate").info("smtpgate ready (%s)", settings.source)
    await stop.wait()
    logging.getLogger("smtpgate").info("stopping: no new connections, %d sessions finishing",
                                       server.connection_count)
    await server.stop()
    return 0


def _user(args: argparse.Namespace) -> int:
    from . import usercli
    settings = _load(args)
    stores = [d for d in settings.directories.values() if d.type == "internal"]
    wanted = getattr(args, "directory", None)
    if wanted:
        stores = [d for d in stores if d.id == wanted]
    if not stores:
        print("smtpgate: no [directory.<id>] with type = \"internal\" in the configuration", file=sys.stderr)
        return 1
    return usercli.run(args, stores[0].options.store)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
