#!/usr/bin/env python3
"""SMTP AUTH load generator for the smtpgate benchmark (loopback targets only).

Several client processes (multiprocessing), each an asyncio (uvloop when installed) loop running many
concurrent sessions:

    connect -> greeting -> EHLO -> [STARTTLS -> EHLO] -> AUTH (PLAIN-IR | LOGIN | SCRAM-SHA-256)
            -> [MAIL/RCPT/DATA of --size bytes] -> QUIT

Every run is bounded: sessions stop at warmup + duration (plus one session timeout at most), idle mode
holds its connections for --hold seconds. Output: a human table on stderr and one JSON line on stdout
(``--json-out`` also writes it to a file).

Extra populations:
  --bad-ratio F   fraction of the normal sessions that use a wrong password (expected 535, not an error)
  --attackers N   N additional sessions that only ever send wrong passwords, reconnecting when dropped
                  (scenario c); their figures are reported separately
  --idle N        open N sessions (greeting + EHLO), print "IDLE-READY <n>" on stdout, hold them for
                  --hold seconds, then QUIT (scenario d: the caller reads the server's RSS meanwhile)
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import ipaddress
import json
import multiprocessing as mp
import os
import random
import resource
import ssl
import sys
import time

try:  # the load client must not be the bottleneck: uvloop roughly halves its CPU per session
    import uvloop
except ImportError:  # pragma: no cover - optional
    uvloop = None

BAD_PASSWORD = "not-the-password"
SESSION_TIMEOUT = 30.0


class ReplyError(Exception):
    """The server answered something other than what the dialogue expects."""

    def __init__(self, code: int | str, step: str):
        super().__init__(f"{step}: {code}")
        self.code = code
        self.step = step


class Client(asyncio.Protocol):
    """Minimal SMTP client side: collects complete (multi-line) replies, hands them to one waiter."""

    __slots__ = ("transport", "buf", "replies", "waiter", "closed")

    def __init__(self):
        self.transport = None
        self.buf = b""
        self.replies = collections.deque()
        self.waiter = None
        self.closed = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        buf = self.buf + data
        start = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end < 0:
                break
            # a reply ends on a line whose 4th octet is not "-"
            if buf[start + 3:start + 4] != b"-":
                self.replies.append((buf[:end + 2]))
                buf = buf[end + 2:]
                start = 0
            else:
                start = end + 2
        self.buf = buf
        if self.replies and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc):
        self.closed = exc or EOFError()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def abort(self):
        if self.transport is not None:
            self.transport.abort()
        self.closed = TimeoutError()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(TimeoutError())

    async def reply(self) -> bytes:
        if not self.replies:
            if self.closed is not None:
                raise ConnectionError("closed")
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.replies.popleft()

    async def cmd(self, line: bytes, expect: int, step: str) -> bytes:
        self.transport.write(line)
        r = await self.reply()
        code = int(r[:3]) if r[:3].isdigit() else r[:3].decode("latin-1")
        if code != expect:
            raise ReplyError(code, step)
        return r


def b64(s: bytes) -> bytes:
    return base64.b64encode(s)


def _patch_scramp_cache():
    """Clients may cache SaltedPassword (RFC 5802 s5.1): keeps PBKDF2 off the client's CPU budget."""
    import functools

    import scramp.core
    orig = scramp.core.hi

    @functools.lru_cache(maxsize=4096)
    def cached(hf, password, salt, iterations):
        return orig(hf, password, salt, iterations)

    scramp.core.hi = lambda hf, password, salt, iterations: cached(hf, password, salt, int(iterations))


class Stats:
    def __init__(self):
        self.sessions = 0          # completed in the measured window
        self.auth_ok = 0
        self.auth_rejected = 0     # intended bad credentials answered 535
        self.failed = 0            # sessions that did not complete as expected
        self.auth_lat = []
        self.ehlo_lat = []
        self.errors = collections.Counter()

    def to_dict(self):
        return {"sessions": self.sessions, "auth_ok": self.auth_ok, "auth_rejected": self.auth_rejected,
                "failed": self.failed, "auth_lat": self.auth_lat, "ehlo_lat": self.ehlo_lat,
                "errors": dict(self.errors)}


class Worker:
    def __init__(self, a, wid: int, t_start: float):
        self.a = a
        self.wid = wid
        self.users = a.user_list
        self.rng = random.Random(wid * 7919 + 1)
        self.t_measure = t_start + a.warmup
        self.t_end = self.t_measure + a.duration
        self.good = Stats()
        self.attack = Stats()
        self.tls = None
        if a.starttls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.tls = ctx
        msg = (b"From: bench@bench.localhost\r\nTo: rcpt@example.test\r\nSubject: bench\r\n\r\n")
        filler = max(0, a.size - len(msg) - 3)
        body = (b"x" * 76 + b"\r\n") * (filler // 78) + b"y" * (filler % 78)
        self.message = msg + body + b"\r\n.\r\n"

    def _in_window(self, t):
        return self.t_measure <= t <= self.t_end

    async def _connect(self):
        loop = asyncio.get_running_loop()
        _, c = await loop.create_connection(Client, self.a.host, self.a.port)
        return c

    async def _auth(self, c: Client, user: str, password: str):
        mech = self.a.mech
        if mech == "noop":  # the session core alone: EHLO / NOOP / QUIT, no authentication
            return await c.cmd(b"NOOP\r\n", 250, "auth")
        if mech == "plain":
            r = await c.cmd(b"AUTH PLAIN " + b64(b"\0" + user.encode() + b"\0" + password.encode()) + b"\r\n",
                            235, "auth")
        elif mech == "login":
            await c.cmd(b"AUTH LOGIN\r\n", 334, "auth")
            await c.cmd(b64(user.encode()) + b"\r\n", 334, "auth")
            r = await c.cmd(b64(password.encode()) + b"\r\n", 235, "auth")
        else:
            import scramp
            sc = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
            r = await c.cmd(b"AUTH SCRAM-SHA-256 " + b64(sc.get_client_first().encode()) + b"\r\n", 334, "auth")
            sc.set_server_first(base64.b64decode(r[4:].strip()).decode())
            r = await c.cmd(b64(sc.get_client_final().encode()) + b"\r\n", 334, "auth")
            sc.set_server_final(base64.b64decode(r[4:].strip()).decode())
            r = await c.cmd(b"\r\n", 235, "auth")
        return r

    async def session(self, st: Stats, bad: bool, attacker: bool = False):
        loop = asyncio.get_running_loop()
        c = None
        timer = None
        try:
            c = await asyncio.wait_for(self._connect(), self.a.timeout)
            timer = loop.call_later(self.a.timeout if not attacker else self.a.timeout + 60, c.abort)
            r = await c.reply()
            if not r.startswith(b"220"):
                raise ReplyError(int(r[:3]) if r[:3].isdigit() else "?", "greeting")
            te = time.monotonic()
            await c.cmd(b"EHLO bench.client\r\n", 250, "ehlo")
            ehlo_lat = time.monotonic() - te
            if self.tls is not None:
                await c.cmd(b"STARTTLS\r\n", 220, "starttls")
                c.transport = await loop.start_tls(c.transport, c, self.tls, server_hostname="bench.localhost")
                await c.cmd(b"EHLO bench.client\r\n", 250, "ehlo")
            user, password = self.users[self.rng.randrange(len(self.users))]
            if attacker:
                # keep failing until the server drops us (errors.total) or the run ends
                while time.monotonic() < self.t_end:
                    ta = time.monotonic()
                    try:
                        await self._auth(c, user, BAD_PASSWORD)
                        st.errors["235-for-bad-password"] += 1
                        break
                    except ConnectionError:
                        break  # dropped after errors.total: expected
                    except ReplyError as e:
                        if e.code == 421:
                            break
                        if e.code != 535:
                            raise
                        now = time.monotonic()
                        if self._in_window(now):
                            st.auth_rejected += 1
                            st.auth_lat.append(now - ta)
                    if c.replies and c.replies[0].startswith(b"421"):
                        break
                if c.closed is None:
                    c.transport.abort()
                st.sessions += self._in_window(time.monotonic())
                return
            ta = time.monotonic()
            if bad:
                try:
                    await self._auth(c, user, BAD_PASSWORD)
                    raise ReplyError(235, "auth-bad-accepted")
                except ReplyError as e:
                    if e.code != 535:
                        raise
                auth_ok = False
            else:
                await self._auth(c, user, password)
                auth_ok = True
            auth_lat = time.monotonic() - ta
            if self.a.submit and auth_ok:
                await c.cmd(b"MAIL FROM:<" + user.encode() + b"> SIZE=%d\r\n" % len(self.message), 250, "mail")
                await c.cmd(b"RCPT TO:<rcpt@example.test>\r\n", 250, "rcpt")
                await c.cmd(b"DATA\r\n", 354, "data")
                await c.cmd(self.message, 250, "data-end")
            c.transport.write(b"QUIT\r\n")
            try:
                await c.reply()
            except ConnectionError:
                pass  # some servers close right after 221
            c.transport.close()
            now = time.monotonic()
            if self._in_window(now):
                st.sessions += 1
                st.ehlo_lat.append(ehlo_lat)
                st.auth_lat.append(auth_lat)
                if auth_ok:
                    st.auth_ok += 1
                else:
                    st.auth_rejected += 1
        except ReplyError as e:
            if time.monotonic() >= self.t_measure:  # also sessions that hang past the window's end
                st.failed += 1
                st.errors[f"{e.step}:{e.code}"] += 1
            if c is not None:
                c.transport.abort()
            await asyncio.sleep(0.05)  # do not spin on a server that refuses everything
        except (OSError, ConnectionError, asyncio.TimeoutError, EOFError) as e:
            if time.monotonic() >= self.t_measure:  # also sessions that hang past the window's end
                st.failed += 1
                kind = "timeout" if isinstance(e, (asyncio.TimeoutError, TimeoutError)) else (
                    "refused" if isinstance(e, ConnectionRefusedError) else "closed")
                st.errors[kind] += 1
            if c is not None and c.transport is not None:
                c.transport.abort()
            await asyncio.sleep(0.05)
        except Exception as e:  # e.g. a SCRAM message the client library refuses
            if time.monotonic() >= self.t_measure:  # also sessions that hang past the window's end
                st.failed += 1
                st.errors[f"client:{type(e).__name__}"] += 1
            if c is not None and c.transport is not None:
                c.transport.abort()
            await asyncio.sleep(0.05)
        finally:
            if timer is not None:
                timer.cancel()

    async def loop_sessions(self, st: Stats, attacker: bool):
        while time.monotonic() < self.t_end:
            bad = (not attacker) and self.a.bad_ratio > 0 and self.rng.random() < self.a.bad_ratio
            await self.session(st, bad, attacker)

    async def run(self, conc: int, attackers: int):
        # wait for the common start so all processes measure the same window
        delay = self.t_measure - self.a.warmup - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks = [asyncio.create_task(self.loop_sessions(self.attack, True)) for _ in range(attackers)]
        if attackers:
            await asyncio.sleep(min(2.0, self.a.warmup))  # let the attack build up first
        good = [asyncio.create_task(self.loop_sessions(self.good, False)) for _ in range(conc)]
        tasks += good
        cpu0 = None
        while time.monotonic() < self.t_measure:
            await asyncio.sleep(min(0.05, max(0.0, self.t_measure - time.monotonic())))
        cpu0 = time.process_time()
        while time.monotonic() < self.t_end:
            await asyncio.sleep(min(0.05, max(0.0, self.t_end - time.monotonic())))
        cpu = time.process_time() - cpu0
        done, pending = await asyncio.wait(tasks, timeout=self.a.timeout + 65)
        for t in pending:
            t.cancel()
        stuck = sum(1 for t in good if t in pending)
        if stuck:  # a good session that never finished (e.g. never got a greeting) failed too
            self.good.failed += stuck
            self.good.errors["unfinished"] += stuck
        return cpu

    async def idle(self, n: int, q, release):
        sem = asyncio.Semaphore(128)  # ramp up without overflowing the server's accept backlog
        conns = []
        failed = collections.Counter()

        async def one():
            async with sem:
                for attempt in range(3):
                    try:
                        c = await asyncio.wait_for(self._connect(), 15.0)
                        r = await asyncio.wait_for(c.reply(), 15.0)
                        if not r.startswith(b"220"):
                            raise ReplyError(r[:3].decode("latin-1"), "greeting")
                        await asyncio.wait_for(c.cmd(b"EHLO bench.client\r\n", 250, "ehlo"), 15.0)
                        conns.append(c)
                        return
                    except ReplyError as e:
                        failed[f"{e.step}:{e.code}"] += 1
                        return
                    except (OSError, ConnectionError, asyncio.TimeoutError):
                        if attempt == 2:
                            failed["connect"] += 1
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(one() for _ in range(n)))
        q.put(("ready", self.wid, len(conns)))
        while not release.is_set():
            await asyncio.sleep(0.1)
        dropped = sum(1 for c in conns if c.closed is not None)
        for c in conns:
            if c.closed is None:
                c.transport.write(b"QUIT\r\n")
        await asyncio.sleep(0.2)
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        return {"open": len(conns), "dropped_while_held": dropped, "errors": dict(failed)}


def _raise_nofile(need: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, hard), max(need, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _worker_main(a, wid, conc, attackers, idle_n, t_start, q, release):
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if a.mech == "scram-sha-256":
        _patch_scramp_cache()
    _raise_nofile(conc + attackers + idle_n + 256)
    w = Worker(a, wid, t_start)
    try:
        if idle_n:
            res = asyncio.run(w.idle(idle_n, q, release))
            q.put(("idle", wid, res))
            return
        cpu = asyncio.run(w.run(conc, attackers))
        q.put(("done", wid, {"good": w.good.to_dict(), "attack": w.attack.to_dict(), "cpu": cpu}))
    except BaseException as e:  # report, never hang the parent
        q.put(("error", wid, repr(e)))


def _split(total: int, parts: int):
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def _ms(v):
    return None if v is None else round(v * 1000.0, 3)


def summarize(parts, a):
    def merge(key):
        m = Stats()
        for p in parts:
            d = p[key]
            m.sessions += d["sessions"]
            m.auth_ok += d["auth_ok"]
            m.auth_rejected += d["auth_rejected"]
            m.failed += d["failed"]
            m.auth_lat += d["auth_lat"]
            m.ehlo_lat += d["ehlo_lat"]
            m.errors.update(d["errors"])
        return m

    def block(m):
        return {
            "sessions": m.sessions, "sessions_per_s": round(m.sessions / a.duration, 1),
            "auth_ok": m.auth_ok, "auth_rejected": m.auth_rejected, "failed": m.failed,
            "auth_p50_ms": _ms(pct(m.auth_lat, 50)), "auth_p99_ms": _ms(pct(m.auth_lat, 99)),
            "auth_max_ms": _ms(max(m.auth_lat) if m.auth_lat else None),
            "ehlo_p50_ms": _ms(pct(m.ehlo_lat, 50)), "ehlo_p99_ms": _ms(pct(m.ehlo_lat, 99)),
            "errors": dict(m.errors),
        }

    cpus = [p["cpu"] / a.duration * 100.0 for p in parts]
    out = {
        "target": f"{a.host}:{a.port}", "mech": a.mech, "starttls": a.starttls, "submit": a.submit,
        "concurrency": a.concurrency, "attackers": a.attackers, "bad_ratio": a.bad_ratio,
        "duration_s": a.duration, "procs": len(parts),
        "client_cpu_pct": round(sum(cpus), 1), "client_cpu_max_proc_pct": round(max(cpus), 1) if cpus else 0,
        **block(merge("good")),
    }
    if a.attackers:
        out["attack"] = block(merge("attack"))
    return out


def human(r):
    lines = [f"target {r['target']}  mech={r['mech']} starttls={r['starttls']} submit={r['submit']} "
             f"concurrency={r['concurrency']} attackers={r['attackers']} procs={r['procs']}",
             f"  sessions/s {r['sessions_per_s']:>10}   (sessions {r['sessions']}, ok {r['auth_ok']}, "
             f"rejected-as-intended {r['auth_rejected']}, failed {r['failed']})",
             f"  AUTH ms    p50 {r['auth_p50_ms']}  p99 {r['auth_p99_ms']}  max {r['auth_max_ms']}",
             f"  EHLO ms    p50 {r['ehlo_p50_ms']}  p99 {r['ehlo_p99_ms']}",
             f"  errors     {r['errors'] or '-'}",
             f"  client CPU {r['client_cpu_pct']}% total, busiest process {r['client_cpu_max_proc_pct']}%"]
    if "attack" in r:
        x = r["attack"]
        lines.append(f"  attackers: rejected {x['auth_rejected']} in window, sessions ended {x['sessions']}, "
                     f"535 latency p50 {x['auth_p50_ms']} ms, errors {x['errors'] or '-'}")
    return "\n".join(lines)


def check_loopback(host: str):
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise SystemExit(f"refusing non-loopback target {host!r}: give 127.0.0.1 or ::1")
        return
    if not ip.is_loopback:
        raise SystemExit(f"refusing non-loopback target {host}: the bench only ever targets loopback")


def load_users(path):
    users = []
    if path:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    u, _, p = line.partition(":")
                    users.append((u, p))
    if not users:
        users = [("user0001@bench.localhost", "password1")]
    return users


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--mech", choices=["plain", "login", "scram-sha-256", "noop"], default="plain",
                    help="noop: EHLO/NOOP/QUIT only (session core throughput, no AUTH)")
    ap.add_argument("--starttls", action="store_true")
    ap.add_argument("--submit", action="store_true", help="authenticated MAIL/RCPT/DATA after AUTH")
    ap.add_argument("--size", type=int, default=2048, help="message size in bytes for --submit")
    ap.add_argument("--bad-ratio", type=float, default=0.0)
    ap.add_argument("--attackers", type=int, default=0)
    ap.add_argument("--users", help="file of user:password lines (client side, plaintext)")
    ap.add_argument("--idle", type=int, default=0, help="hold N idle sessions instead of a load run")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold --idle sessions (max 600)")
    ap.add_argument("--procs", type=int, default=0, help="client processes (default: one per core)")
    ap.add_argument("--timeout", type=float, default=SESSION_TIMEOUT,
                    help="seconds a good session may take before it counts as failed (timeout)")
    ap.add_argument("--json-out")
    a = ap.parse_args(argv)
    check_loopback(a.host)
    if not (0 <= a.bad_ratio <= 1):
        ap.error("--bad-ratio must be within 0..1")
    if a.duration <= 0 or a.duration > 3600 or a.hold > 600:
        ap.error("--duration must be in (0, 3600], --hold at most 600")
    a.user_list = load_users(a.users)
    return a


def main(argv=None):
    a = parse_args(argv)
    ctx = mp.get_context("fork")
    load = a.idle or (a.concurrency + a.attackers)
    procs = a.procs or max(1, min(os.cpu_count() or 1, load))
    procs = min(procs, max(1, load))
    q = ctx.Queue()
    release = ctx.Event()
    t_start = time.monotonic() + 0.3
    concs = _split(a.concurrency, procs)
    atts = _split(a.attackers, procs)
    idles = _split(a.idle, procs) if a.idle else [0] * procs
    ps = [ctx.Process(target=_worker_main, args=(a, i, concs[i], atts[i], idles[i], t_start, q, release),
                      daemon=True) for i in range(procs)]
    for p in ps:
        p.start()
    results, errors = [], []
    deadline = time.monotonic() + a.warmup + a.duration + a.timeout + 100 + (120 if a.idle else 0)
    if not a.idle:
        # marks for a caller that samples the server's CPU over exactly the measured window
        time.sleep(max(0.0, t_start + a.warmup - time.monotonic()))
        print("MEASURE-START", flush=True)
        time.sleep(max(0.0, t_start + a.warmup + a.duration - time.monotonic()))
        print("MEASURE-END", flush=True)
    if a.idle:
        ready = 0
        n_ready = 0
        while n_ready < procs and time.monotonic() < deadline:
            try:
                kind, wid, v = q.get(timeout=1.0)
            except Exception:
                continue
            if kind == "ready":
                n_ready += 1
                ready += v
            elif kind == "error":
                errors.append(v)
                n_ready += 1
        print(f"IDLE-READY {ready}", flush=True)
        time.sleep(a.hold)
        release.set()
    while len(results) + len(errors) < procs and time.monotonic() < deadline:
        try:
            kind, wid, v = q.get(timeout=1.0)
        except Exception:
            if not any(p.is_alive() for p in ps):
                break
            continue
        if kind in ("done", "idle"):
            results.append(v)
        elif kind == "error":
            errors.append(v)
    for p in ps:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    if errors:
        print(f"client process errors: {errors}", file=sys.stderr)
    if a.idle:
        out = {"target": f"{a.host}:{a.port}", "idle_requested": a.idle,
               "idle_open": sum(r["open"] for r in results),
               "dropped_while_held": sum(r["dropped_while_held"] for r in results),
               "errors": dict(sum((collections.Counter(r["errors"]) for r in results), collections.Counter()))}
        print(f"idle: {out['idle_open']}/{a.idle} open, {out['dropped_while_held']} dropped while held, "
              f"errors {out['errors'] or '-'}", file=sys.stderr)
    else:
        if not results:
            raise SystemExit("no client process returned results")
        out = summarize(results, a)
        print(human(out), file=sys.stderr)
    line = json.dumps(out)
    print(line, flush=True)
    if a.json_out:
        with open(a.json_out, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    return out


if __name__ == "__main__":
    main()
