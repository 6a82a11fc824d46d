#!/usr/bin/env python3
"""The "canned" peer: a bare asyncio Protocol that answers the bench dialogue with fixed replies.

It does the least work an SMTP AUTH server can do in Python (split lines, one dict lookup per AUTH), so
its throughput is the upper bound for a Python server on this machine, and its RSS per idle connection
is the floor. Supports EHLO/HELO, AUTH PLAIN (with or without initial response), AUTH LOGIN, STARTTLS,
MAIL/RCPT/DATA (message discarded), RSET, NOOP, QUIT; a wrong password is answered 535 after --wait
seconds (a timer, not a blocking sleep) and the connection is closed after --total failures.

``--burn-us N`` spins N microseconds of Python before handling each command line: the same replies and
system calls, from a server that is slower by a known amount of user-space work (bench/RESULTS.md uses it
to show how much of a slower server's CPU per session the kernel adds on loopback).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import logging
import signal
import ssl
import time

log = logging.getLogger("smtpgate.bench.canned")

EHLO_CAPS = ("250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 26214400\r\n")


class Canned(asyncio.Protocol):
    def __init__(self, srv):
        self.srv = srv
        self.t = None
        self.buf = b""
        self.state = 0          # 0 command, 1 AUTH PLAIN continuation, 2 LOGIN user, 3 LOGIN pass, 4 DATA
        self.login_user = b""
        self.fails = 0
        self.tls = False
        self.tls_pending = None  # bytes decrypted before start_tls() returned to us

    def connection_made(self, transport):
        self.t = transport
        transport.write(self.srv.greeting)

    def data_received(self, data):
        if self.tls_pending is not None:
            self.tls_pending += data
            return
        buf = self.buf + data
        while True:
            if self.state == 4:
                end = buf.find(b"\r\n.\r\n")
                if end < 0:
                    # keep only what could be the start of the terminator
                    buf = buf[-4:]
                    break
                buf = buf[end + 5:]
                self.state = 0
                self.t.write(b"250 2.0.0 Message queued\r\n")
                continue
            nl = buf.find(b"\r\n")
            if nl < 0:
                if len(buf) > 16384:
                    self.t.write(b"500 5.5.6 Line too long\r\n")
                    self.t.close()
                    buf = b""
                break
            line = buf[:nl]
            buf = buf[nl + 2:]
            if self.line(line):
                break
        self.buf = buf

    def check(self, user: bytes, password: bytes):
        want = self.srv.users.get(user)
        ok = want is not None and hmac.compare_digest(want, password)
        if ok:
            self.t.write(b"235 2.7.0 Authentication succeeded.\r\n")
            return
        self.fails += 1
        last = self.fails >= self.srv.total
        if self.srv.wait > 0:
            asyncio.get_running_loop().call_later(self.srv.wait, self._fail_reply, last)
        else:
            self._fail_reply(last)

    def _fail_reply(self, last):
        if self.t.is_closing():
            return
        self.t.write(b"535 5.7.8 Authentication credentials invalid.\r\n")
        if last:
            self.t.write(b"421 4.3.0 Too many authentication errors, disconnecting.\r\n")
            self.t.close()

    def line(self, line: bytes) -> bool:
        """Handle one line; True means stop reading this buffer (TLS switch or close)."""
        if self.srv.burn:
            end = time.perf_counter() + self.srv.burn
            while time.perf_counter() < end:
                pass
        w = self.t.write
        st = self.state
        if st == 1 or st == 3:
            self.state = 0
            if line == b"*":
                w(b"501 5.7.0 Authentication cancelled.\r\n")
                return False
            try:
                raw = base64.b64decode(line, validate=True)
            except binascii.Error:
                w(b"501 5.5.2 Invalid base64.\r\n")
                return False
            if st == 1:
                parts = raw.split(b"\0")
                if len(parts) != 3:
                    w(b"501 5.5.2 Malformed PLAIN response.\r\n")
                    return False
                self.check(parts[1], parts[2])
            else:
                self.check(self.login_user, raw)
            return False
        if st == 2:
            try:
                self.login_user = base64.b64decode(line, validate=True)
            except binascii.Error:
                self.state = 0
                w(b"501 5.5.2 Invalid base64.\r\n")
                return False
            self.state = 3
            w(b"334 UGFzc3dvcmQ6\r\n")
            return False
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb == b"EHLO":
            w(self.srv.ehlo_tls if (self.srv.tls_ctx is not None and not self.tls) else self.srv.ehlo)
        elif verb == b"HELO":
            w(b"250 " + self.srv.hostname + b"\r\n")
        elif verb == b"AUTH":
            mech, _, ir = arg.partition(b" ")
            mech = mech.upper()
            if mech == b"PLAIN":
                if ir:
                    self.state = 1
                    return self.line(ir)
                self.state = 1
                w(b"334 \r\n")
            elif mech == b"LOGIN":
                if ir:
                    self.state = 2
                    return self.line(ir)
                self.state = 2
                w(b"334 VXNlcm5hbWU6\r\n")
            else:
                w(b"504 5.5.4 Authentication mechanism not supported.\r\n")
        elif verb == b"MAIL" or verb == b"RCPT" or verb == b"RSET" or verb == b"NOOP":
            w(b"250 2.1.0 OK\r\n")
        elif verb == b"DATA":
            self.state = 4
            w(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
        elif verb == b"QUIT":
            w(b"221 2.0.0 Bye\r\n")
            self.t.close()
            return True
        elif verb == b"STARTTLS" and self.srv.tls_ctx is not None and not self.tls:
            w(b"220 2.0.0 Ready to start TLS\r\n")
            # raw handshake bytes must stay in the socket until start_tls() has taken over the transport
            self.t.pause_reading()
            self.tls_pending = b""
            asyncio.get_running_loop().create_task(self._starttls())
            return True
        else:
            w(b"502 5.5.1 Command not implemented\r\n")
        return False

    async def _starttls(self):
        loop = asyncio.get_running_loop()
        try:
            self.t = await asyncio.wait_for(
                loop.start_tls(self.t, self, self.srv.tls_ctx, server_side=True), 30)
            self.tls = True
            self.buf = b""  # cleartext bytes pipelined after STARTTLS are discarded (RFC 3207)
            pending, self.tls_pending = self.tls_pending, None
            if pending:
                self.data_received(pending)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
            log.debug("STARTTLS failed: %r", e)
            self.t.abort()


class Server:
    def __init__(self, a):
        self.hostname = a.hostname.encode()
        self.burn = a.burn_us / 1e6
        self.greeting = b"220 " + self.hostname + b" ESMTP canned\r\n"
        self.ehlo = (b"250-" + self.hostname + b" says hello\r\n" + EHLO_CAPS.encode()
                     + b"250 AUTH PLAIN LOGIN\r\n")
        self.ehlo_tls = (b"250-" + self.hostname + b" says hello\r\n" + EHLO_CAPS.encode()
                         + b"250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n")
        self.users = {}
        if a.users:
            with open(a.users, "rb") as f:
                for ln in f:
                    ln = ln.strip()
                    if ln:
                        u, _, p = ln.partition(b":")
                        self.users[u] = p
        self.wait = a.wait
        self.total = a.total
        self.tls_ctx = None
        if a.cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(a.cert, a.key)
            self.tls_ctx = ctx


async def serve(a):
    srv = Server(a)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Canned(srv), a.host, a.port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("canned server on %s:%d", a.host, a.port)
    await stop.wait()
    server.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--hostname", default="bench.localhost")
    ap.add_argument("--users", help="file of user:password lines")
    ap.add_argument("--wait", type=float, default=0.0, help="seconds before each 535")
    ap.add_argument("--total", type=int, default=3, help="failures before 421 and close")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--burn-us", type=float, default=0.0, help="spin this long before each command line")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not a.no_uvloop:
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    asyncio.run(serve(a))


if __name__ == "__main__":
    main()
