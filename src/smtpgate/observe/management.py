"""The management listener: ``[server.listener.<id>] protocol = "http"``, served on the server's own loop.

Routes::

  GET  /metrics                         Prometheus text format (no token: scrapers rarely carry one, and
                                        the listener is loopback-only unless server.management.allow-remote)
  GET  /healthz                         200 while the process serves (liveness)
  GET  /readyz                          200 or 503, JSON {"ready": bool, "checks": {name: "ok" | reason}}
  --- JSON API, "Authorization: Bearer <token>" (server.management.token), else 401 ---
  GET    /api/bans                      current bans
  POST   /api/bans                      {"ip": "192.0.2.7", "duration": "1h", "reason": "…"}
  DELETE /api/bans/{ip}                 lift a ban
  GET    /api/users[?directory=<id>]    the internal user store (type = "internal")
  POST   /api/users                     {"name": "john", "password": "…", "addresses": ["j@example.org"]}
  PUT    /api/users/{name}/password     {"password": "…"}
  POST   /api/users/{name}/disable      (and /enable)
  DELETE /api/users/{name}
  POST   /api/explain                   {"listener": "submission", "remote-ip": "192.0.2.7", "tls": true,
                                         "helo"/"sender"/"rcpt"/"local-ip"/"local-port": optional,
                                         "user": "…", "password": "…", "bearer": false}
                                        -> {"lines": [...]}: `smtpgate explain` for the running config;
                                        a --user check asks the lookup directly, so no limit moves

aiohttp, because HTTP/1.1 parsing, keep-alive and limits are a library's job; it runs its protocol on
the loop the SMTP sessions use (``loop.create_server`` with aiohttp's protocol factory), so a scrape costs
no thread and sees the same objects. The token is checked in constant time through the same verifier
as user passwords (``lookup/secrets.py``: a hashed token may be an argon2 hash, run in the hash executor);
a verified token is remembered as a keyed digest so a scraper-like client does not hash on every call.
Handlers read the server's settings, lookups and token at each request, so a reload changes what they
answer without restarting anything here (``observer.py`` adds and drops the listening sockets).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from typing import Any

from aiohttp import web

from . import health

log = logging.getLogger("smtpgate.management")

MAX_BODY = 64 * 1024
_BAN_REASONS = frozenset(("auth", "abuse", "loiter", "scan"))    # server.auto-ban.<reason>


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, sort_keys=True) + "\n",
                        content_type="application/json")


class Management:
    def __init__(self, server: Any, metrics: Any):
        self.server = server
        self.metrics = metrics
        self._key = os.urandom(32)
        self._verified: tuple[str, bytes] | None = None    # (token setting, keyed digest of what matched it)
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        r = self.app.router
        r.add_get("/metrics", self.get_metrics)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/api/bans", self.list_bans)
        r.add_post("/api/bans", self.add_ban)
        r.add_delete("/api/bans/{ip}", self.lift_ban)
        r.add_get("/api/users", self.list_users)
        r.add_post("/api/users", self.add_user)
        r.add_put("/api/users/{name}/password", self.set_password)
        r.add_post("/api/users/{name}/disable", self.disable_user)
        r.add_post("/api/users/{name}/enable", self.enable_user)
        r.add_delete("/api/users/{name}", self.delete_user)
        r.add_post("/api/explain", self.explain)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self.runner.setup()

    def protocol_factory(self) -> Any:
        return self.runner.server

    async def stop(self) -> None:
        await self.runner.cleanup()

    # -- the token ---------------------------------------------------------------------------------
    @property
    def token(self) -> str | None:
        """``server.management.token`` of the configuration serving now (a reload may change it)."""
        return self.server.settings.observe.management.token

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            if self.token is None:
                return _json(403, {"error": "the API is disabled: set server.management.token"})
            if not await self._authorized(request.headers.get("Authorization", "")):
                log.warning("management API: request without a valid token from %s", request.remote)
                resp = _json(401, {"error": "unauthorized"})
                resp.headers["WWW-Authenticate"] = 'Bearer realm="smtpgate"'
                return resp
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _json(exc.status, {"error": exc.reason})
            raise

    async def _authorized(self, header: str) -> bool:
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return False
        presented = presented.strip()
        token = self.token
        digest = hmac.digest(self._key, presented.encode("utf-8", "surrogateescape"), "sha256")
        verified = self._verified
        # Remembered only for the token it matched: after a reload that changes the token, the old one
        # is checked against the new setting like any other.
        if verified is not None and verified[0] == token and hmac.compare_digest(digest, verified[1]):
            return True
        from ..lookup import secrets
        if token is not None and await secrets.verify(token, presented):
            self._verified = (token, digest)
            return True
        return False

    # -- metrics and health ------------------------------------------------------------------------
    async def get_metrics(self, request: web.Request) -> web.Response:
        await self._count_bans()
        body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, checks = await health.check(self.server)
        if not ready:
            return _json(503, {"ready": False, "checks": checks,
                               "failing": sorted(k for k, v in checks.items() if v != "ok")})
        return _json(200, {"ready": True, "checks": checks})

    async def _count_bans(self) -> None:
        """smtpgate_bans_active from the ban store itself (shared with other nodes, changed by
        ``smtpgate ban``): counted where the truth is, once per scrape."""
        store = self._bans()
        if store is None:
            return
        try:
            bans = await asyncio.wait_for(store.list(), 2.0)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the store is down
            log.warning("management: cannot read bans for /metrics: %s", type(exc).__name__)
            return
        family = self.metrics.bans_active
        for child in family.children.values():
            child.set(0)
        for ban in bans:
            reason = ban.get("reason")
            family.labels_(reason if reason in _BAN_REASONS else "manual").inc()   # operators' texts vary

    # -- bans (the abuse package's store) ----------------------------------------------------------
    def _bans(self) -> Any:
        from . import bans
        return bans.adapter(self.server)

    async def list_bans(self, request: web.Request) -> web.Response:
        store = self._bans()
        if store is None:
            return _json(501, {"error": "bans are not available in this build"})
        return _json(200, {"bans": await store.list()})

    async def add_ban(self, request: web.Request) -> web.Response:
        store = self._bans()
        if store is None:
            return _json(501, {"error": "bans are not available in this build"})
        body = await _body(request)
        ip = body.get("ip")
        if not isinstance(ip, str) or not ip:
            return _json(400, {"error": "\"ip\" is required"})
        try:
            ban = await store.add(ip, body.get("duration"), str(body.get("reason") or "manual"))
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        log.info("management API: banned %s", ip)
        return _json(201, {"ban": ban})

    async def lift_ban(self, request: web.Request) -> web.Response:
        store = self._bans()
        if store is None:
            return _json(501, {"error": "bans are not available in this build"})
        ip = request.match_info["ip"]
        try:
            lifted = await store.lift(ip)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        if not lifted:
            return _json(404, {"error": f"{ip} is not banned"})
        log.info("management API: ban of %s lifted", ip)
        return _json(200, {"lifted": ip})

    # -- the internal user store (the functions ``smtpgate user`` uses) ----------------------------
    def _store(self, request: web.Request) -> tuple[Any, Any]:
        wanted = request.query.get("directory")
        dirs = [d for d in self.server.settings.directories.values() if d.type == "internal"
                and (wanted is None or d.id == wanted)]
        if not dirs:
            raise web.HTTPNotFound(reason="no [directory.<id>] with type = \"internal\""
                                   + (f" and id {wanted!r}" if wanted else ""))
        lookup = self.server.lookups.get(f"directory/{dirs[0].id}")
        inner = getattr(lookup, "inner", lookup)
        return inner.store, lookup

    async def _user_op(self, request: web.Request, op: Any, done: str, status: int = 200) -> web.Response:
        from ..lookup.users import UserStoreError
        store, lookup = self._store(request)
        try:
            await op(store)
        except UserStoreError as exc:
            text = str(exc)
            status = 404 if text.startswith("no such ") else 503 if text.startswith("user store unavailable") else 400
            return _json(status, {"error": text})
        except Exception as exc:  # noqa: BLE001 - the store is down: say so, no traceback
            log.warning("management API: user store error: %s", type(exc).__name__)
            return _json(503, {"error": f"user store unavailable ({type(exc).__name__})"})
        clear = getattr(lookup, "clear", None)
        if clear is not None:
            clear()                   # a cached success must not outlive a password change or a disable
        log.info("management API: %s", done)
        return _json(status, {"ok": done})

    async def list_users(self, request: web.Request) -> web.Response:
        store, _ = self._store(request)
        try:
            users = await store.list_users()
        except Exception as exc:  # noqa: BLE001
            return _json(503, {"error": f"user store unavailable ({type(exc).__name__})"})
        return _json(200, {"users": [{"name": u.name, "disabled": u.disabled, "addresses": list(u.addresses)}
                                     for u in users]})

    async def add_user(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name, password = body.get("name"), body.get("password")
        addresses = body.get("addresses") or []
        if not isinstance(name, str) or not isinstance(password, str) or not isinstance(addresses, list) \
                or not all(isinstance(a, str) for a in addresses):
            return _json(400, {"error": "expected {\"name\": str, \"password\": str, \"addresses\": [str]}"})
        return await self._user_op(request, lambda s: s.add_user(name, password, addresses),
                                   f"user {name} added", 201)

    async def set_password(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        password = (await _body(request)).get("password")
        if not isinstance(password, str):
            return _json(400, {"error": "expected {\"password\": str}"})
        return await self._user_op(request, lambda s: s.set_password(name, password),
                                   f"password of {name} changed")

    async def disable_user(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._user_op(request, lambda s: s.set_disabled(name, True), f"user {name} disabled")

    async def enable_user(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._user_op(request, lambda s: s.set_disabled(name, False), f"user {name} enabled")

    async def delete_user(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._user_op(request, lambda s: s.delete_user(name), f"user {name} deleted")


    # -- explain: ``smtpgate explain`` against the configuration this server runs now -----------------
    async def explain(self, request: web.Request) -> web.Response:
        from .. import explain
        body = await _body(request)
        listener, remote_ip = body.get("listener"), body.get("remote-ip")
        if not isinstance(listener, str) or not isinstance(remote_ip, str):
            return _json(400, {"error": "\"listener\" and \"remote-ip\" are required"})
        strings = {k: body.get(k) for k in ("local-ip", "helo", "sender", "rcpt", "user", "password")}
        if any(v is not None and not isinstance(v, str) for v in strings.values()):
            return _json(400, {"error": "local-ip, helo, sender, rcpt, user and password must be strings"})
        port = body.get("local-port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)):
            return _json(400, {"error": "\"local-port\" must be an integer"})
        settings = self.server.settings
        source = settings.source
        try:        # line numbers come from the file the running configuration was loaded from
            with open(source, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            text = ""
        try:
            lines = await explain.explain(
                settings, text, source, listener_id=listener, remote_ip=remote_ip, tls=bool(body.get("tls")),
                local_ip=strings["local-ip"], local_port=port, helo=strings["helo"], sender=strings["sender"],
                rcpt=strings["rcpt"], user=strings["user"], secret=strings["password"],
                bearer=bool(body.get("bearer")))
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, {"lines": lines})


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(reason="the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    return body

