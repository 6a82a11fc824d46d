"""The abuse policy: throttles, auto-ban, login locks and the progressive AUTH wait, over one :class:`Store`.

Where each key acts (config in ``config/abuse.py``):
  ``server.blocked-ip`` / ``server.allowed-ip`` -> :meth:`Guard.admit` / :meth:`Guard._exempt`
  ``[[session.throttle]]`` concurrency           -> :meth:`Guard.admit` (per process), ``release``
  ``[[session.throttle]]`` rate                  -> :meth:`Guard.connect_rate` (connect keys), :meth:`Guard.rate`
  ``server.auto-ban.auth.*``                     -> :meth:`Guard.auth_gate`, :meth:`Guard.auth_done`
  ``server.auto-ban.{abuse,loiter,scan}.*``      -> :meth:`Guard.offence`
  ``session.auth.errors.wait-growth`` / ``-max`` -> :meth:`Guard.auth_gate` (the wait it answers)

Failed logins are counted *before* the lookup runs (a reservation, undone if the verdict is success or
a tempfail): so however many sessions an attacker opens at once, at most ``auth.rate``'s count of guesses
per window reach the lookup from one address, and an attempt whose client hangs up before the verdict
still counts. The same credentials retried from one address count once (a mark keyed by a MAC -- keyed
BLAKE2b -- of login and secret under the store's key; never the secret itself).

Login names are counted across addresses too. Past ``auth.rate`` for one login, that login is *locked*
for addresses that have not logged in as it successfully within ``server.auto-ban.auth.trust`` (30 days):
their attempts are answered exactly like a wrong password, without asking the lookup, so a distributed
guesser learns nothing and its guesses are wasted, while the owner keeps working from the addresses
they used before. ``server.allowed-ip`` addresses are never counted, banned or locked out.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Coroutine

from ..config.abuse import AbuseSettings, ThrottleSettings
from . import replies, scan
from .requests import AuthDone, AuthGate, GateAnswer, Offence, RateCheck
from .store import Ban, Changes, Hit, Store, drive

log = logging.getLogger("smtpgate.abuse")

REFRESH_INTERVAL = 0.5          # how often bans made elsewhere are picked up

#: Failures of an address (in the auth.rate window, across sessions) after which its failure waits are
#: spread by ``session.auth.errors.wait-spread``: a user's few typos wait exactly ``errors.wait``.
SPREAD_AFTER = 5


@dataclass(slots=True)
class Ticket:
    """What a connection holds from :meth:`Guard.admit`."""
    refusal: bytes | None = None        # write this and close
    slots: tuple[str, ...] = ()         # concurrency slots to release when the connection ends
    pending: Coroutine | None = None    # connect-stage rate check still to await (shared store only)


_ADMITTED = Ticket()


class _ConnVars:
    """The connect-time if-block variables, for throttles checked before a session exists."""
    __slots__ = ("listener", "remote_ip", "local_ip", "local_port", "tls")

    def __init__(self, listener: str, remote_ip: Any, local_ip: Any, local_port: int, tls: bool):
        self.listener, self.remote_ip, self.local_ip, self.local_port, self.tls = \
            listener, remote_ip, local_ip, local_port, tls


@dataclass(slots=True)
class _AuthTicket:
    hits: tuple[Hit, ...]               # what the gate counted (undone on success/tempfail)
    ip: str
    login_key: str
    count: int                          # the address's failure count after this attempt


class Guard:
    def __init__(self, settings: AbuseSettings, store: Store, *, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.immediate = store.immediate
        a = settings
        self._auth = a.autoban.get("auth")
        self._auth_limit = self._auth.rate.count if self._auth is not None and self._auth.rate else None
        self.tracks_auth = a.tracks_auth
        self._connect = a.stage_throttles("connect")
        self._connect_conc = [t for t in self._connect if t.concurrency is not None]
        self._connect_rate = [t for t in self._connect if t.rate is not None]
        self.needs_local = bool(self._connect)    # connect throttles may test local-ip / local-port
        self._stage = {stage: [t for t in a.stage_throttles(stage) if t.rate is not None] for stage in ("mail", "rcpt")}
        self.has_mail_rates = bool(self._stage["mail"])
        self.has_rcpt_rates = bool(self._stage["rcpt"])
        self._ban_kinds = {k: v for k, v in a.autoban.items() if v.rate is not None}
        self._prefix = a.ipv6_prefix
        self._task: asyncio.Task | None = None
        self.ip_key = functools.lru_cache(maxsize=65536)(self._ip_key)
        self._auth_window = a.auth_window       # a property of the settings: read once, not per AUTH

    # -- addresses ----------------------------------------------------------------------------------------
    def _ip_key(self, ip: Any) -> str:
        return ip_key(ip, self._prefix)

    @staticmethod
    @functools.lru_cache(maxsize=65536)
    def _addr(ip: Any) -> Any:
        if isinstance(ip, str):
            try:
                ip = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    def _in(self, ip: Any, nets: tuple) -> bool:
        if not nets:
            return False
        addr = self._addr(ip)
        return addr is not None and any(addr.version == n.version and addr in n for n in nets)

    def _exempt(self, ip: Any) -> bool:
        return self._in(ip, self.settings.allowed)

    # -- connection level (synchronous: the accept path) -------------------------------------------------
    def admit(self, remote_ip: str, listener: str, local_ip: str = "", local_port: int = 0,
              tls: bool = False) -> Ticket:
        """Blocked or banned address, concurrency over a limit -> a refusal; else the slots it holds.
        Cost when nothing applies: a dict lookup."""
        a = self.settings
        if a.blocked and self._in(remote_ip, a.blocked):
            return Ticket(replies.BANNED)
        key = self.ip_key(remote_ip)
        if self.store.banned(key, self.clock()) is not None and not self._exempt(remote_ip):
            return Ticket(replies.BANNED)
        if not self._connect:
            return _ADMITTED
        ctx = _ConnVars(listener, self._addr(remote_ip), self._addr(local_ip), local_port, tls)
        slots: list[str] = []
        for t in self._connect_conc:
            if t.match is not None and not t.match.evaluate(ctx):
                continue
            slot = self._throttle_key(t, ctx)
            if slot is None:
                continue
            if not self.store.acquire(slot, t.concurrency):
                for s in slots:
                    self.store.release(s)
                return Ticket(replies.TOO_MANY_CONCURRENT)
            slots.append(slot)
        pending = None
        if self._connect_rate:
            check = self._rates(self._connect_rate, ctx)
            if self.immediate:
                if not drive(check):
                    for s in slots:
                        self.store.release(s)
                    return Ticket(replies.RATE_LIMITED_CLOSE)
            else:
                pending = check
        return Ticket(None, tuple(slots), pending) if slots or pending else _ADMITTED

    def release(self, ticket: Ticket) -> None:
        for slot in ticket.slots:
            self.store.release(slot)
        if ticket.pending is not None:
            ticket.pending.close()
            ticket.pending = None

    async def connect_rate(self, ticket: Ticket) -> bytes | None:
        """The shared store's connect-stage rate check: None (go on) or the refusal to send."""
        pending, ticket.pending = ticket.pending, None
        if pending is None or await pending:
            return None
        return replies.RATE_LIMITED_CLOSE

    @staticmethod
    def not_smtp(first: bytes) -> str | None:
        """"http" / "tls" when a connection's first input is not SMTP (server.auto-ban.scan)."""
        return scan.not_smtp(first)

    # -- throttles ---------------------------------------------------------------------------------------
    def _throttle_key(self, t: ThrottleSettings, v: Any) -> str | None:
        parts = [f"t{t.index}"]
        for name in t.keys:
            if name == "remote-ip":
                value = self.ip_key(v.remote_ip) if v.remote_ip is not None else None
            elif name == "sender":
                value = v.sender if v.sender is not None else None
                value = "<>" if value == "" else value
            else:
                value = getattr(v, name.replace("-", "_"), None)
            if value is None or value == "":
                return None             # the key has no value in this session: the throttle does not apply
            parts.append(str(value))
        return ":".join(parts)

    async def _rates(self, throttles: list[ThrottleSettings], v: Any) -> bool:
        hits, limits = [], []
        for t in throttles:
            if t.match is not None and not t.match.evaluate(v):
                continue
            key = self._throttle_key(t, v)
            if key is None:
                continue
            hits.append(Hit(key, t.rate.period))
            limits.append(t.rate.count)
        if not hits:
            return True
        counts, _ = await self.store.hit(hits)
        return all(count <= limit for (count, _), limit in zip(counts, limits))

    async def rate(self, stage: str, v: Any) -> bool:
        return await self._rates(self._stage[stage], v)

    # -- AUTH ----------------------------------------------------------------------------------------------
    def _fingerprint(self, login: str, secret: str) -> str:
        """A MAC of login and secret under the store's key (keyed BLAKE2b: one C call, unlike hmac.new)."""
        key = getattr(self.store, "fingerprint_key", b"")[:64]
        data = f"{login}\0{secret}".encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, key=key, digest_size=16).hexdigest()

    def _gate_hits(self, remote_ip: Any, login: str, secret: str | None) -> tuple[str, str, list[Hit], str]:
        """What an AUTH attempt counts before its lookup: (ip key, login key, hits, trust mark)."""
        ip = self.ip_key(remote_ip)
        window = self._auth_window
        login_l = login.lower()[:320]
        login_key = _login_key(login_l)
        fp = self._fingerprint(login_l, secret) if secret is not None else None
        hits = [Hit(f"a:ip:{ip}", window, f"a:ipfp:{ip}:{fp}" if fp else None)]
        if login_l and self._auth_limit is not None:
            hits.append(Hit(f"a:login:{login_key}", window, f"a:lfp:{fp}" if fp else None))
        return ip, login_key, hits, f"a:trust:{ip}:{login_key}"

    def _gate_verdict(self, ip: str, login_key: str, hits: list[Hit], results: list[tuple[int, bool]],
                      trusted: bool, wait: float) -> tuple[GateAnswer, bool]:
        """The gate's answer from the store's counts, and whether the address must be banned now."""
        count = results[0][0]
        counted = tuple([h for h, (_, did) in zip(hits, results) if did])
        ticket = _AuthTicket(counted, ip, login_key, count)
        grown = wait
        spread = count > SPREAD_AFTER
        if self.settings.wait_growth > 0:
            previous = max(0, count - 1)
            grown = min(max(wait, self.settings.wait_max), wait + self.settings.wait_growth * previous)
        limit = self._auth_limit
        if limit is not None:
            if count > limit or self.store.banned(ip, self.clock()) is not None:
                return GateAnswer("banned", grown, ticket, spread), count > limit
            if len(results) > 1 and results[1][0] > limit and not trusted:
                return GateAnswer("locked", grown, ticket, spread), False
        return GateAnswer("ok", grown, ticket, spread), False

    async def auth_gate(self, remote_ip: Any, login: str, secret: str | None, wait: float) -> GateAnswer:
        if not self.tracks_auth or self._exempt(remote_ip):
            return GateAnswer("ok", wait)
        ip, login_key, hits, trust = self._gate_hits(remote_ip, login, secret)
        results, (trusted,) = await self.store.hit(hits, check_marks=[trust])
        answer, ban = self._gate_verdict(ip, login_key, hits, results, trusted, wait)
        if ban:
            await self._ban(ip, "auth", {"auth": results[0][0]})
        return answer

    def auth_gate_now(self, remote_ip: Any, login: str, secret: str | None, wait: float) -> GateAnswer:
        """:meth:`auth_gate` over an immediate store, without a coroutine (the hot path)."""
        if not self.tracks_auth or self._exempt(remote_ip):
            return GateAnswer("ok", wait)
        ip, login_key, hits, trust = self._gate_hits(remote_ip, login, secret)
        results, (trusted,) = self.store.hit_now(hits, (), (trust,))
        answer, ban = self._gate_verdict(ip, login_key, hits, results, trusted, wait)
        if ban:
            self._ban_now(ip, "auth", {"auth": results[0][0]})
        return answer

    def _done_plan(self, ticket: "_AuthTicket", outcome: str) -> tuple[bool, list[Hit], list[tuple[str, float]]]:
        """After the verdict: (ban now, hits that undo the reservation, marks to set)."""
        if outcome == "invalid":
            limit = self._auth_limit
            return limit is not None and ticket.count >= limit and bool(ticket.hits), [], []
        undo = [Hit(h.key, h.ttl, h.once, -1) for h in ticket.hits]
        marks = [(f"a:trust:{ticket.ip}:{ticket.login_key}", self.settings.auth_trust)] if outcome == "success" else []
        return False, undo, marks

    async def auth_done(self, ticket: Any, outcome: str) -> bool:
        """After the verdict: undo the reservation (success, tempfail), trust the address (success), ban
        when this failure reached the limit. True when the address is banned now."""
        done = self.auth_done_now(ticket, outcome)
        if done is not None:
            return done
        await self._ban(ticket.ip, "auth", {"auth": ticket.count})      # due, on a shared store
        return True

    def auth_done_now(self, ticket: Any, outcome: str) -> bool | None:
        """:meth:`auth_done` without a coroutine (the hot path): over an immediate store always; over a
        shared one whenever no ban is due (the undo and the trust mark are not waited for). None when
        only the coroutine can finish it (a ban to write to a shared store)."""
        if not isinstance(ticket, _AuthTicket):
            return False
        ban, undo, marks = self._done_plan(ticket, outcome)
        if ban:
            if not self.immediate:
                return None
            self._ban_now(ticket.ip, "auth", {"auth": ticket.count})
        elif undo or marks:
            if self.immediate:
                self.store.hit_now(undo, marks)
            else:
                self.store.hit_soon(undo, set_marks=marks)   # the client's reply need not wait for the store
        return ban

    # -- other offences -------------------------------------------------------------------------------------
    async def offence(self, kind: str, remote_ip: Any) -> bool:
        """Count one relay attempt / unknown recipient ("abuse"), idle timeout without a transaction
        ("loiter") or non-SMTP client ("scan"); ban at the kind's rate. True when banned now."""
        rule = self._ban_kinds.get(kind)
        if rule is None or self._exempt(remote_ip):
            return False
        ip = self.ip_key(remote_ip)
        results, _ = await self.store.hit([Hit(f"o:{kind}:{ip}", rule.rate.period)])
        count = results[0][0]
        if count >= rule.rate.count:
            await self._ban(ip, kind, {kind: count})
            return True
        return False

    # -- bans -----------------------------------------------------------------------------------------------
    def _new_ban(self, ip: str, reason: str, counts: dict[str, int]) -> Ban | None:
        now = self.clock()
        if self.store.banned(ip, now) is not None:
            return None
        rule = self._ban_kinds.get(reason)
        return Ban(ip, now + (rule.period if rule is not None else 86400.0), reason, now, counts)

    async def _ban(self, ip: str, reason: str, counts: dict[str, int]) -> None:
        ban = self._new_ban(ip, reason, counts)
        if ban is not None:
            await self.store.ban(ban)
            _log_ban(ban)

    def _ban_now(self, ip: str, reason: str, counts: dict[str, int]) -> None:
        ban = self._new_ban(ip, reason, counts)
        if ban is not None:
            self.store.ban_now(ban)
            _log_ban(ban)

    # -- serving the session's requests ---------------------------------------------------------------------
    def perform(self, req: Any) -> Coroutine:
        kind = type(req)
        if kind is AuthGate:
            return self.auth_gate(req.remote_ip, req.login, req.secret, req.wait)
        if kind is AuthDone:
            return self.auth_done(req.ticket, req.outcome)
        if kind is Offence:
            return self.offence(req.kind, req.remote_ip)
        if kind is RateCheck:
            return self.rate(req.stage, req.vars)
        raise TypeError(f"not an abuse request: {req!r}")

    def answer_now(self, req: Any, later: Any) -> Any:
        """The answer, synchronously, when it can be given now (an immediate store; a verdict that earns
        no ban); else ``later``."""
        kind = type(req)
        if kind is AuthDone:
            done = self.auth_done_now(req.ticket, req.outcome)
            return later if done is None else done
        if not self.immediate:
            return later
        if kind is AuthGate:
            return self.auth_gate_now(req.remote_ip, req.login, req.secret, req.wait)
        return drive(self.perform(req))

    def notify(self, req: Any) -> None:
        """A request nobody waits for (a session's notice: AuthDone of a success or tempfail)."""
        if self.answer_now(req, _LATER) is _LATER:
            asyncio.get_running_loop().create_task(_quietly(self.perform(req)))

    def offence_soon(self, kind: str, remote_ip: Any) -> None:
        """Count an offence of a connection that is going away (nothing waits for the answer)."""
        if kind not in self._ban_kinds:
            return
        coro = self.offence(kind, remote_ip)
        if self.immediate:
            drive(coro)
        else:
            asyncio.get_running_loop().create_task(coro)

    # -- life cycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()
        self._task = asyncio.get_running_loop().create_task(self._refresher())

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a refresh failure must not end the refresher
                log.exception("refreshing the abuse store failed")

    async def refresh(self) -> None:
        """Pick up now the bans made or lifted elsewhere (another node, ``smtpgate ban``) and log each
        change; the background refresher does this every ``REFRESH_INTERVAL``."""
        self._log_changes(await self.store.refresh())

    def _log_changes(self, changes: Changes) -> None:
        for ban in changes.added:
            log.warning("ban %s reason=%s counts=%s until=%s (made elsewhere)", ban.key, ban.reason,
                        _counts(ban.counts), _iso(ban.until))
        for ban in changes.removed:
            log.warning("unban %s (was: reason=%s counts=%s; lifted elsewhere)", ban.key, ban.reason,
                        _counts(ban.counts))

    def reconfigured(self, settings: AbuseSettings) -> "Guard":
        """A guard with new policy (throttles, auto-ban rates and periods, allowed/blocked addresses,
        progressive wait) over this guard's store: its counters, bans and concurrency slots carry over.
        What a reload builds; nothing changes until :meth:`take_over`."""
        return Guard(settings, self.store, clock=self.clock)

    def take_over(self, old: "Guard") -> None:
        """Become the server's guard in place of ``old`` (same store): its ban refresher keeps running."""
        self._task, old._task = old._task, None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.store.close()


def ip_key(ip: Any, ipv6_prefix: int = 64) -> str:
    """The counting/banning key of an address: itself (IPv4), or its /ipv6-prefix network (IPv6) --
    one IPv6 client usually owns a whole /64, and would otherwise rotate through it."""
    if isinstance(ip, str):
        if ":" not in ip:
            return ip
        try:
            ip = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return str(ip)


@functools.lru_cache(maxsize=65536)
def _login_key(login_l: str) -> str:
    """A login's counting key (a digest: names of any length make keys of one size). Cached: the same
    logins come back all day, and each digest is a hash object built and thrown away."""
    return hashlib.blake2b(login_l.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


_LATER = object()


async def _quietly(coro: Coroutine) -> None:
    try:
        await coro
    except Exception:  # noqa: BLE001 - nobody waits for it: log, never raise into the loop's handler
        log.exception("abuse store update failed")


def _log_ban(ban: Ban) -> None:
    log.warning("ban %s reason=%s counts=%s period=%ds until=%s", ban.key, ban.reason, _counts(ban.counts),
                int(ban.until - ban.at), _iso(ban.until))


def _counts(counts: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
