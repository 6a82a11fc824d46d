#!/usr/bin/env python3
"""aiosmtpd 1.4.6 peer for the benchmark (runs in bench/.peers/aiosmtpd-venv, never in smtpgate's venv).

Configured the way a careful aiosmtpd user would for this job:
- ``hostname=`` passed to SMTP() (otherwise aiosmtpd calls socket.getfqdn() on every connection);
- an async-safe authenticator: auth_PLAIN/auth_LOGIN are overridden so the credential check is awaited;
  plaintext secrets are compared with hmac.compare_digest, argon2 PHC strings are verified in a thread
  pool (one thread per core; argon2-cffi releases the GIL) so the event loop never blocks;
- the same failure policy as smtpgate's ``errors.wait``/``errors.total``: a non-blocking sleep before each
  535, and 421 + close after --total failures.
Runs on the stock asyncio loop unless --uvloop is given (aiosmtpd itself never installs uvloop).
"""
from __future__ import annotations

import argparse
import asyncio
import binascii
import hmac
import logging
import os
import signal
import ssl
import warnings
from base64 import b64decode
from concurrent.futures import ThreadPoolExecutor

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

log = logging.getLogger("smtpgate.bench.aiosmtpd_peer")


class Settings:
    users: dict[bytes, bytes] = {}
    wait = 0.0
    total = 3
    pool: ThreadPoolExecutor | None = None
    hasher = None
    dummy_hash: bytes | None = None


def _verify_argon2(phc: bytes, password: bytes) -> bool:
    from argon2.exceptions import VerificationError, InvalidHashError
    try:
        return Settings.hasher.verify(phc, password)
    except (VerificationError, InvalidHashError):
        return False


class BenchSMTP(SMTP):
    _fails = 0

    async def _check(self, login: bytes, password: bytes) -> AuthResult:
        secret = Settings.users.get(login)
        if secret is not None and secret.startswith(b"$argon2"):
            ok = await asyncio.get_running_loop().run_in_executor(Settings.pool, _verify_argon2, secret, password)
        elif secret is None and Settings.dummy_hash is not None:
            # unknown user costs the same as a wrong password
            await asyncio.get_running_loop().run_in_executor(Settings.pool, _verify_argon2,
                                                             Settings.dummy_hash, password)
            ok = False
        else:
            ok = secret is not None and hmac.compare_digest(secret, password)
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(login, password))
        self._fails += 1
        if Settings.wait > 0:
            await asyncio.sleep(Settings.wait)
        if self._fails >= Settings.total:
            await self.push("535 5.7.8 Authentication credentials invalid.")
            await self.push("421 4.3.0 Too many authentication errors, disconnecting.")
            self.transport.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, _, args):
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except binascii.Error:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        fields = blob.split(b"\0")
        if len(fields) != 3:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check(fields[1], fields[2])

    async def auth_LOGIN(self, _, args):
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except binascii.Error:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        if not isinstance(login, bytes):
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check(login, password)


class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Message accepted"


async def serve(a):
    tls_ctx = None
    if a.cert:
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(a.cert, a.key)
    handler = Handler()
    loop = asyncio.get_running_loop()

    def factory():
        return BenchSMTP(handler, hostname=a.hostname, tls_context=tls_ctx, auth_required=True,
                         auth_require_tls=False, auth_exclude_mechanism=["CRAM-MD5"], timeout=300, loop=loop)

    server = await loop.create_server(factory, a.host, a.port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.warning("aiosmtpd peer on %s:%d", a.host, a.port)
    await stop.wait()
    server.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--hostname", default="bench.localhost")
    ap.add_argument("--users", required=True, help="user:secret lines; secret plaintext or $argon2id$ PHC")
    ap.add_argument("--wait", type=float, default=0.0)
    ap.add_argument("--total", type=int, default=3)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--uvloop", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    warnings.simplefilter("ignore")  # auth_required without TLS is intended on loopback
    # aiosmtpd warns about that once per connection; a real deployment would silence it too
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    with open(a.users, "rb") as f:
        for ln in f:
            ln = ln.strip()
            if ln:
                u, _, s = ln.partition(b":")
                Settings.users[u] = s
    Settings.wait, Settings.total = a.wait, a.total
    if any(s.startswith(b"$argon2") for s in Settings.users.values()):
        from argon2 import PasswordHasher
        Settings.hasher = PasswordHasher()
        Settings.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        Settings.dummy_hash = next(s for s in Settings.users.values() if s.startswith(b"$argon2"))
    if a.uvloop:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(a))


if __name__ == "__main__":
    main()
