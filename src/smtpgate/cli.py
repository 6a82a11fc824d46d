"""Command line: ``smtpgate serve | check-config | user ... | --version``.

Every failure is one line on stderr and exit status 1, never a traceback: a configuration problem is
``Configuration error: <key path>: <reason>``; a failure to start (a port in use, an address this machine
does not have) is ``smtpgate: cannot start: <key path>: <reason>``, and the process exits at once.

Adding a sub-command: write a module with ``register(subparsers)`` that adds its parser and calls
``parser.set_defaults(run=<function(args) -> exit status>)``, then add one line to :func:`_commands`.
Commands that read a configuration use :func:`add_config_options` and :func:`load_settings`, so
``--config`` (and, without it, the embedded default in ``--data-dir``) means the same everywhere.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import logging
import os
import signal
import sys
from typing import Any, Callable

from . import defaults
from .config.errors import ConfigError
from .config.load import load_file


def _commands() -> list[Callable[[Any], None]]:
    """The sub-commands, in ``--help`` order: one ``register(subparsers)`` each."""
    from . import abusecli, opscli, usercli
    return [
        _register_serve,
        _register_check_config,
        usercli.register,
        abusecli.register,
        opscli.add_parsers,     # explain, spool, reload
    ]


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("smtpgate")
    except PackageNotFoundError:  # running from a source tree that was never installed
        from . import __version__
        return __version__


# -- shared options ---------------------------------------------------------------------------------
def add_config_options(parser: argparse.ArgumentParser, *, required: bool = False,
                       suppress_defaults: bool = False) -> None:
    """``--config`` and ``--data-dir``. Without ``--config`` a command uses the embedded default,
    kept in ``--data-dir`` (default ``$SMTPGATE_DATA`` or ``./smtpgate-data``, relative to the current
    directory). ``suppress_defaults`` lets a nested sub-parser repeat the options without overwriting
    what its parent parsed."""
    config_default = argparse.SUPPRESS if suppress_defaults else None
    data_default = argparse.SUPPRESS if suppress_defaults else _default_data_dir()
    parser.add_argument("--config", required=required, default=config_default, metavar="FILE",
                        help="TOML configuration" + ("" if required else
                                                     " (default: the embedded default in --data-dir)"))
    if not required:
        parser.add_argument("--data-dir", default=data_default, metavar="DIR",
                            help="data directory of the embedded default "
                                 f"(default: $SMTPGATE_DATA or ./{defaults.DEFAULT_DATA_DIR})")


def _default_data_dir() -> str:
    return os.environ.get("SMTPGATE_DATA") or defaults.DEFAULT_DATA_DIR


def load_settings(args: argparse.Namespace):
    """The settings named by ``--config``, or the embedded default (written on first use)."""
    if getattr(args, "config", None):
        return load_file(args.config)
    return load_file(defaults.ensure(getattr(args, "data_dir", None) or _default_data_dir()))


_load = load_settings  # the name sub-command modules written against the earlier cli.py use


# -- parser and main --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smtpgate", description="SMTP server with a Stalwart-style AUTH stage")
    p.add_argument("--version", action="version", version=f"smtpgate {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _commands():
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(exc.line(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- check-config -----------------------------------------------------------------------------------
def _register_check_config(sub: Any) -> None:
    check = sub.add_parser("check-config", help="validate a configuration and exit",
                           description="Validate a configuration (including that the spool and user store "
                                       "paths are writable) without serving.")
    add_config_options(check, required=True)
    check.set_defaults(run=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    from .lookup import registry
    from .startup import check_paths
    settings = load_file(args.config)
    for lookup in registry.unique(registry.build(settings)):  # same constructors as serve
        _discard(lookup)
    check_paths(settings)
    print(f"{args.config}: OK")
    return 0


def _discard(lookup: Any) -> None:
    close = getattr(lookup, "close", None)
    if close is not None:
        try:
            asyncio.run(close())
        except Exception:  # noqa: BLE001 - nothing was opened; closing is best effort
            pass


# -- serve ------------------------------------------------------------------------------------------
def _register_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the server in the foreground",
                           description="Run the server in the foreground. It logs one 'smtpgate ready:' "
                                       "line naming its listeners once it accepts connections.")
    add_config_options(serve)
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                       help="default: server.log.level, else info")
    serve.add_argument("--pid-file", help="for smtpgate reload (default: <data dir>/smtpgate.pid if that dir exists)")
    serve.set_defaults(run=_serve)


def _setup_logging(level: str):
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
    return handler


def _apply_log_settings(settings: Any, cli_level: str | None, handler: Any) -> Any:
    """server.log.* (format, output, level): see observe/logsetup.py. Returns the handler in use."""
    from .observe import logsetup
    try:
        handler = logsetup.apply(settings.observe.log, cli_level, handler)
    except OSError as exc:
        raise ConfigError("server.log.syslog.socket", f"cannot reach {settings.observe.log.syslog_socket}: "
                                                      f"{exc.strerror or exc}") from None
    atexit.register(logsetup.stop)
    return handler


def _serve(args: argparse.Namespace) -> int:
    from .startup import StartupError, check_binds, check_paths

    settings = load_settings(args)
    check_paths(settings)
    try:
        check_binds(settings)
    except StartupError as exc:
        print(f"smtpgate: cannot start: {exc}", file=sys.stderr)
        return 1
    handler = _setup_logging((args.log_level or "info").upper())
    handler = _apply_log_settings(settings, args.log_level, handler)
    if hasattr(handler, "submit") and logging.getLogger().handlers == [handler]:
        from .observe import events
        events.emit_directly(handler.submit)     # session lines skip the LogRecord (the hot path)
    handler.pause()  # startup progress is written once the server is up (or dropped if it is not)
    try:
        import uvloop  # optional: a faster event loop when installed
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return runner(_run(settings, handler, args))
    except ConfigError:
        handler.resume(drop_below=logging.WARNING)
        handler.close()
        raise
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        handler.resume(drop_below=logging.WARNING)
        handler.close()
        print(f"smtpgate: cannot start: {_startup_reason(settings, exc)}", file=sys.stderr)
        _exit_if_threads_linger(1)
        return 1


def _exit_if_threads_linger(status: int) -> None:
    """After a failed start nothing is worth waiting for: if a worker thread that was started (a store's,
    a pool's) did not end with the cleanup, leave now instead of hanging in interpreter shutdown."""
    import threading
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stderr.flush()
        os._exit(status)


def _startup_reason(settings: Any, exc: BaseException) -> str:
    from .startup import StartupError, describe_os_error
    if isinstance(exc, StartupError):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_os_error(settings, exc)
    return f"{type(exc).__name__}: {exc}"


async def _run(settings: Any, handler: Any, args: Any = None) -> int:
    from .server import Server
    from .service import Service
    server = Server(settings)
    try:
        await server.start()
    except BaseException:
        # Close what did start (the SQLite store's worker thread would keep the process alive).
        try:
            await asyncio.wait_for(server.stop(grace=0), 2.0)
        except Exception:  # noqa: BLE001 - the start failure is what gets reported
            pass
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = Service(server, settings, getattr(args, "pid_file", None), getattr(args, "data_dir", None))
    service.started()  # pid file, run-as, SIGHUP reload, READY=1 to systemd
    log = logging.getLogger("smtpgate")
    log.info("smtpgate ready: %s (configuration %s)", ready_listeners(server), settings.source)
    handler.resume()
    _tune_gc()
    await stop.wait()
    log.info("stopping: no new connections, %d sessions finishing", server.connection_count)
    service.stopping()
    await server.stop()
    service.stopped()
    return 0


def _tune_gc() -> None:
    """Sessions free their objects by reference counting; the cycle collector mostly re-walks what
    startup built (modules, config, caches). Move that out of its view (``gc.freeze``) and let it run
    every 20,000 allocations rather than every 700: about 8 % of a short session's CPU (bench/session_cpu.py)
    for at most a few MB of cyclic garbage waiting a little longer."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def ready_listeners(server: Any) -> str:
    """``smtp 127.0.0.1:2525, submission 127.0.0.1:5870 (STARTTLS), ...``: what is listening, where."""
    from .startup import format_address
    parts = []
    for ident, listener in server.settings.listeners.items():
        try:
            ports = server.ports(ident)
        except (KeyError, AttributeError):  # a listener served by another component: its configured ports
            ports = []
        addrs = [format_address(host, ports[i] if i < len(ports) else port)
                 for i, (host, port) in enumerate(listener.binds)]
        tls = " (implicit TLS)" if listener.tls.implicit else " (STARTTLS)" if listener.tls.enable else ""
        parts.append(f"{ident} {' '.join(addrs)}{tls}")
    return ", ".join(parts)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
