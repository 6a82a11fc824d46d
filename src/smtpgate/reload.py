"""Reload without dropping anyone: SIGHUP (or ``smtpgate reload``, or ``systemctl reload smtpgate``).

Theory of operation
-------------------
A reload builds a complete new *generation* -- settings, lookups, per-listener contexts, TLS contexts,
next hops -- next to the running one, and swaps it in only when every part of it was built:

1. the file is read and validated exactly as at startup (``config.load``); lookups are constructed and
   started, TLS contexts loaded, new or moved listeners bound. Any failure logs ONE line
   ``Configuration error: <key path>: <reason>``, releases what was built, and the old generation keeps
   serving untouched.
2. The swap: each listener's protocol factory reads the server's current context for that listener at
   accept time, so a session gets the generation that was current when it connected and keeps it to the
   end (``ListenerContext`` carries settings and lookups). New sessions see the new mechanisms,
   limits, if-blocks and certificate at once.
3. Certificates: STARTTLS takes the listener's ``SSLContext`` current at the handshake from
   ``server._ssl_contexts`` (the swap replaces it); an implicit-TLS socket holds its context object, so
   that object is updated in place (``load_cert_chain`` replaces the chain for handshakes that start
   afterwards; OpenSSL gives each connection its own copy, so handshakes in progress are not disturbed).
4. Listeners: added ones are bound in step 1; removed ones stop accepting (their sessions finish); a
   listener keeps the sockets of the addresses it keeps, gets new ones for added addresses, and its
   sockets for dropped addresses are closed at the swap. Management (``http``) listeners follow the same
   rules through the observer (``observe/observer.py``): their sockets come and go the same way, a
   dropped socket's connections close once their request in progress is answered, and the handlers read
   the serving configuration (token included) at each request. Metrics are counted whether or not a
   management listener exists, so one added by a reload exposes true figures from its first scrape.
5. The old generation's lookups are closed once no session of that generation remains (checked every
   second), so a session halfway through AUTH still has its store.

6. The abuse guard's policy (throttles, auto-ban rates and periods, allowed/blocked addresses, the
   progressive wait) is replaced for every request from the swap on, sessions in progress included;
   its store -- counters, bans, concurrency slots -- carries over. A different store (``storage.lookup``,
   ``[store.*]``, or the bans file beside a moved ``queue.path``) takes effect only at a restart: the
   reload says so in a warning and keeps the running store.

With ``server.run-as`` the process no longer has root after startup: a reload can change everything
except binding new ports below 1024 (use the systemd unit's ``AmbientCapabilities=CAP_NET_BIND_SERVICE``
instead of run-as if listeners on such ports must come and go by reload).

How the CLI finds the server: ``smtpgate serve`` writes its pid to ``--pid-file`` (default
``<data dir>/smtpgate.pid``, where ``SMTPGATE_DATA`` points under systemd); ``smtpgate reload`` reads it,
sends SIGHUP, and waits for the outcome the server writes to ``<pid file>.reload``. Under systemd, ``systemctl reload smtpgate`` sends SIGHUP to ``$MAINPID`` and waits for
the ``RELOADING=1`` ... ``READY=1`` notifications this module sends.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import ssl
import sys
import time
from typing import Any

from .config.errors import ConfigError
from .server import tls as tls_contexts

log = logging.getLogger("smtpgate")

PID_FILE = "smtpgate.pid"
STATUS_SUFFIX = ".reload"     # <pid file>.reload: "<ns> ok" or "<ns> error Configuration error: ..."
_RETIRING: set[asyncio.Task] = set()


# -- the CLI side --------------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    p = sub.add_parser("reload", help="make a running server re-read its configuration (SIGHUP)",
                       description="Send SIGHUP to the running server found through its pid file and "
                                   "report whether it took the new configuration (exit 0) or not (its "
                                   "Configuration error line, exit 1). With --config the file is validated "
                                   "first and nothing is sent if it is invalid.")
    p.add_argument("--pid-file", help="default: <data dir>/smtpgate.pid")
    p.add_argument("--data-dir", default=None, help="data directory of the server (default: $SMTPGATE_DATA)")
    p.add_argument("--config", help="validate this file before signalling")
    p.add_argument("--wait", type=float, default=15.0, metavar="SECONDS",
                   help="how long to wait for the server's outcome (default 15)")
    p.set_defaults(run=run)


def default_pid_file(data_dir: str | None) -> str:
    from . import defaults
    return os.path.join(data_dir or os.environ.get("SMTPGATE_DATA", defaults.DEFAULT_DATA_DIR), PID_FILE)


def run(args: argparse.Namespace) -> int:
    if args.config:
        from .config.load import load_file
        load_file(args.config)           # ConfigError -> one line, exit 1 (cli.main)
    path = args.pid_file or default_pid_file(args.data_dir)
    try:
        with open(path, encoding="ascii") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError) as exc:
        print(f"smtpgate reload: cannot read pid file {path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1
    if not _is_smtpgate(pid):
        print(f"smtpgate reload: pid {pid} from {path} is not a running smtpgate (stale pid file?)", file=sys.stderr)
        return 1
    status_path = path + STATUS_SUFFIX
    before = _read(status_path)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"smtpgate reload: cannot signal pid {pid}: {exc.strerror}", file=sys.stderr)
        return 1
    # The server writes the outcome next to its pid file; wait for it (a reload takes milliseconds,
    # lookups that are slow to start can make it longer).
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        now = _read(status_path)
        if now is not None and now != before:
            _, _, outcome = now.partition(" ")
            if outcome.startswith("ok"):
                print(f"smtpgate reload: pid {pid} serves the new configuration")
                return 0
            print(outcome.removeprefix("error ").rstrip("\n"), file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"smtpgate reload: sent SIGHUP to pid {pid}; no outcome reported within {args.wait:g}s "
          "(see the server's log)", file=sys.stderr)
    return 0 if before is None and not os.path.exists(status_path) else 1


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def _is_smtpgate(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"smtpgate" in fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True          # no /proc: trust the pid file


class PidFile:
    """Written at startup (after the privilege drop would make /run unwritable, so before it), removed
    at exit if it still holds our pid."""

    def __init__(self, path: str | None):
        self.path = path
        if path:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="ascii") as fh:
                    fh.write(f"{os.getpid()}\n")
                os.replace(tmp, path)
            except OSError as exc:
                log.warning("cannot write pid file %s: %s (smtpgate reload will not find this server)",
                            path, exc.strerror)
                self.path = None

    def remove(self) -> None:
        if not self.path:
            return
        try:
            with open(self.path, encoding="ascii") as fh:
                if fh.read().strip() == str(os.getpid()):
                    os.unlink(self.path)
        except OSError:
            pass


# -- the server side ---------------------------------------------------------------------------------
def install(server: Any, path: str, status_path: str | None = None) -> None:
    """SIGHUP -> reload ``path`` into ``server`` (one reload at a time; signals during one coalesce).
    Each outcome is written to ``status_path`` for ``smtpgate reload`` to report."""
    loop = asyncio.get_running_loop()
    state = {"task": None, "again": False}

    def on_hup() -> None:
        if state["task"] is not None and not state["task"].done():
            state["again"] = True
            return
        state["task"] = loop.create_task(_loop())

    async def _loop() -> None:
        while True:
            state["again"] = False
            await reload(server, path, status_path)
            if not state["again"]:
                return

    loop.add_signal_handler(signal.SIGHUP, on_hup)


async def reload(server: Any, path: str, status_path: str | None = None) -> bool:
    """Load ``path`` and swap it into ``server``. True when the new configuration serves."""
    from . import sdnotify
    sdnotify.reloading()
    ok = False
    try:
        error = await _reload(server, path)
        ok = error is None
        if status_path:
            _write_status(status_path, "ok" if ok else f"error {error}")
    finally:
        # READY=1 either way: systemd leaves the "reloading" state; STATUS= says how it went.
        sdnotify.ready("configuration reloaded" if ok else "reload refused (configuration error, see the log); "
                       "the previous configuration is serving")
    return ok


async def _reload(server: Any, path: str) -> str | None:
    """None when the new configuration serves, else the one-line reason."""
    from .config.load import load_file
    from .lookup import registry
    loop = asyncio.get_running_loop()
    log.info("reloading configuration from %s", path)
    built: dict[str, Any] = {"lookups": {}, "servers": {}, "in_place": []}
    try:
        settings = await loop.run_in_executor(None, load_file, path)
        lookups = registry.build(settings)
        built["lookups"] = lookups
        lookups.update(server._custom_lookups)
        for lk in registry.unique(lookups):
            if lk not in server._custom_lookups.values():
                await lk.start()
        plan = await _prepare_listeners(server, settings, lookups, built)
        hops = _next_hops(server, settings)
        guard = _next_guard(server, settings)
        delivery = None
        if server._custom_delivery is None and settings.queue_path != server.settings.queue_path:
            from .delivery.spool import Spool
            delivery = Spool(settings.queue_path)
            await delivery.start()
    except Exception as exc:  # noqa: BLE001 - whatever it was, the old configuration keeps serving
        line = exc.line() if isinstance(exc, ConfigError) else f"Configuration error: {path}: {_describe(exc)}"
        log.error("%s (reload refused; the running configuration stays)", line)
        await _discard(server, built)
        return line

    # -- the swap: nothing below is expected to fail ---------------------------------------------------
    for ssl_ctx, cert, tls in built["in_place"]:
        tls_contexts.configure(ssl_ctx, cert, tls)
    old_settings, old_lookups, old_delivery = server.settings, server.lookups, server.delivery
    server.settings = settings
    server.lookups = lookups
    if guard is not None:
        guard.take_over(server.guard)
        server.guard = guard
    for name, hop in hops.items():
        server._next_hops[name] = hop
    if delivery is not None:
        server.delivery = delivery
    retired_servers = []
    for ident, (ctx, ssl_ctx, servers, retire) in plan.items():
        server._servers[ident] = servers
        retired_servers += retire
        for srv in servers:
            if hasattr(srv, "trusts"):
                # A PROXY listener's socket (server/proxy.py) hands its own context to the connections
                # it accepts, and checks the trusted networks it was made with: give it the new ones.
                srv.ctx, srv.trusts = ctx, ctx.listener.proxy.trusts
        if ssl_ctx is not None:
            server._ssl_contexts[ident] = ssl_ctx
        else:
            server._ssl_contexts.pop(ident, None)
        if ctx is not None:
            server._contexts[ident] = ctx
        else:                                   # a management listener: no SMTP context
            server._contexts.pop(ident, None)
    for ident in [i for i in list(server._servers) if i not in settings.listeners]:
        retired_servers += server._servers.pop(ident)
        server._ssl_contexts.pop(ident, None)
        server._contexts.pop(ident, None)
        log.info("listener %s removed: no new connections, %s", ident,
                 "its requests in progress are answered" if old_settings.listeners[ident].protocol == "http"
                 else "its sessions finish")
    for srv in retired_servers:
        srv.close()
        server.observer.closed(srv)             # a management socket's connections close after their request
    server.observer.reloaded()
    _retire_when_idle(server, old_settings, old_lookups, old_delivery)
    log.info("configuration reloaded from %s: %d listener(s); sessions in progress keep the previous settings",
             path, len(settings.listeners))
    return None


def _next_guard(server: Any, settings: Any) -> Any:
    """The guard with the new abuse settings over the running store (None: no guard to replace)."""
    old, new = server.guard, getattr(settings, "abuse", None)
    if old is None or new is None:
        return None
    running = old.settings
    if (new.store, new.ban_file) != (running.store, running.ban_file):
        log.warning("reload: the abuse store (storage.lookup, [store.*], the bans file beside queue.path) "
                    "changes only with a restart; the new throttle and auto-ban settings use the running one")
    return old.reconfigured(new)


async def _prepare_listeners(server: Any, settings: Any, lookups: dict, built: dict) -> dict:
    """ident -> (ListenerContext | None, SSLContext | None, the listener's asyncio servers, servers to close).
    SMTP/LMTP listeners get a context; management (``http``) listeners get none: the observer serves them."""
    plan = {}
    for ident, listener in settings.listeners.items():
        old = server.settings.listeners.get(ident)
        http = listener.protocol == "http"
        if old is not None and (old.protocol == "http") != http:
            old = None              # SMTP <-> management: other code serves it, so other sockets
        # A management listener speaks TLS only when implicit (HTTP has no STARTTLS; an inherited
        # server.tls.enable does not turn it on), as at startup (observe/observer.py).
        ssl_ctx = None
        if listener.tls.implicit if http else listener.tls.enable:
            try:
                ssl_ctx = tls_contexts.server_context(settings.certificates[listener.tls.certificate], listener.tls)
            except ssl.SSLError as exc:
                raise ConfigError(f"certificate.{listener.tls.certificate}", f"cannot be loaded: {exc.reason or exc}") from None
        ctx = None if http else server._context(settings, listener, lookups, ssl_ctx)
        # Sockets of addresses the listener keeps stay open (no refused connection, no lost backlog);
        # only added addresses are bound, removed ones closed at the swap. Switching implicit TLS on or
        # off needs other sockets (server/tls_listener.py accepts implicit-TLS connections itself).
        current = server._servers.get(ident, [])
        reusable: dict[tuple[str, int], Any] = {}
        if (old is not None and old.tls.implicit == listener.tls.implicit and len(current) == len(old.binds)
                and (getattr(old, "proxy", None) is None) == (getattr(listener, "proxy", None) is None)):
            reusable = dict(zip(old.binds, current))
        if listener.tls.implicit and reusable:
            # An implicit-TLS listening socket holds its SSLContext object: at the swap that object gets
            # the new chain and protocol range (handshakes that start from then on use them; OpenSSL gives
            # each connection its own copy). The fresh context built above has validated them.
            ssl_ctx = server._ssl_contexts[ident]
            built["in_place"].append((ssl_ctx, settings.certificates[listener.tls.certificate], listener.tls))
        servers, fresh = [], []
        built["servers"][ident] = fresh
        for bind in listener.binds:
            if bind in reusable:
                servers.append(reusable[bind])
                continue
            host, port = bind
            try:
                if http:
                    srv = await server.observer.listen(listener, ssl_ctx, host, port)
                else:
                    srv = await server._listen(ctx, ssl_ctx, host, port)
            except OSError as exc:
                # The words of a failed start (startup.py): the errno's text, and a hint for the usual causes.
                from .startup import bind_error
                key, _, reason = bind_error(ident, host, port, exc).partition(": ")
                raise ConfigError(key, reason) from None
            servers.append(srv)
            fresh.append(srv)
        retire = [srv for srv in current if srv not in servers]
        socks = [sock for srv in servers for sock in srv.sockets]
        if ctx is not None and len(socks) == 1:
            host, port = socks[0].getsockname()[:2]
            if host not in ("0.0.0.0", "::"):
                ctx.local_addr = (host, port)
        plan[ident] = (ctx, ssl_ctx, servers, retire)
    return plan


def _next_hops(server: Any, settings: Any) -> dict:
    """New next hops by name. Names that disappear stay until the process ends: a session of the old
    generation may still hand a message to them."""
    if server._custom_delivery is not None:
        return {}
    from .delivery.nexthop import NextHop
    return {f"remote/{ident}": NextHop(remote, settings.hostname)
            for ident, remote in settings.remotes.items() if remote.protocol in ("smtp", "lmtp")}


async def _discard(server: Any, built: dict) -> None:
    from .lookup import registry
    for servers in built["servers"].values():
        for srv in servers:
            srv.close()
            server.observer.closed(srv)
    for lk in registry.unique(built["lookups"]):
        if lk in server._custom_lookups.values():
            continue
        try:
            await lk.close()
        except Exception:  # noqa: BLE001
            pass


def _retire_when_idle(server: Any, settings: Any, lookups: dict, delivery: Any) -> None:
    """Close the previous generation's lookups once its last session has ended: checked every second
    by a timer (no task waits meanwhile). If the server stops first, they are left to the end of the
    process (their sessions are being cut then; the server closes the current generation's)."""
    loop = asyncio.get_running_loop()

    def check() -> None:
        if server._stopping:
            return
        if any(conn.ctx.settings is settings for conn in list(server._connections)):
            loop.call_later(1.0, check)
            return
        task = loop.create_task(_retire(server, lookups, delivery))
        _RETIRING.add(task)                  # the loop keeps only a weak reference to tasks
        task.add_done_callback(_RETIRING.discard)
    loop.call_soon(check)


async def _retire(server: Any, lookups: dict, delivery: Any) -> None:
    from .lookup import registry
    current = {id(lk) for lk in registry.unique(server.lookups)}
    for lk in registry.unique(lookups):
        if id(lk) in current or lk in server._custom_lookups.values():
            continue
        try:
            await lk.close()
        except Exception:  # noqa: BLE001
            log.exception("closing lookup %s", lk.name)
    if delivery is not None and delivery is not server.delivery and delivery is not server._custom_delivery:
        await delivery.close()
    if gc.get_freeze_count():
        # `smtpgate serve` froze what startup built (cli._tune_gc): let the collector see the retired
        # configuration's cycles, then freeze what is left, the new configuration included.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
    log.debug("previous configuration retired: its last session ended")


def _write_status(path: str, outcome: str) -> None:
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{time.time_ns()} {outcome}\n")
        os.replace(tmp, path)
    except OSError as exc:   # e.g. the pid file's directory is root's and we run as server.run-as
        log.debug("cannot write %s: %s", path, exc.strerror)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"
