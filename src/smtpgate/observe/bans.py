"""The management API's view of bans: list, add, lift -- an adapter over the abuse guard.

The API speaks plain JSON objects (``{"ip": "192.0.2.7", "reason": "auth", "at": <unix time>,
"until": <unix time>, "counts": {"auth": 100}}``; an IPv6 ban's ``ip`` is its network, e.g.
``2001:db8:1:2::/64``). Adding and lifting go through the running server's guard, so they take effect at
once on this node, are persisted like the guard's own bans, and reach other nodes through a shared store
as ``smtpgate ban`` changes do. :func:`adapter` answers None when the server has no guard (a build or an
embedding without the abuse package), and the routes then answer 501.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Any

log = logging.getLogger("smtpgate.abuse")

DEFAULT_PERIOD = "1d"


def adapter(server: Any) -> Any:
    guard = getattr(server, "guard", None)
    return None if guard is None else GuardBans(guard)


def _key(guard: Any, text: str) -> str:
    """The ban key the guard uses for an address (IPv6: its /ipv6-prefix network), as ``smtpgate ban``."""
    text = text.strip()
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            if net.version == 6 and net.prefixlen == guard.settings.ipv6_prefix:
                return str(net)
            raise ValueError(text)
        return guard.ip_key(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r} (IPv6 networks: /{guard.settings.ipv6_prefix} only)") from None


def _as_json(ban: Any) -> dict[str, Any]:
    return {"ip": ban.key, **ban.to_json()}


class GuardBans:
    """Changes go to the guard's store, as the guard's own bans do: the in-memory store persists them in
    its ban file, a Redis store shares them with every node."""

    def __init__(self, guard: Any):
        self.guard = guard

    async def list(self) -> list[dict[str, Any]]:
        now = self.guard.clock()
        return [_as_json(b) for b in sorted(await self.guard.store.bans(), key=lambda b: b.until) if b.until > now]

    async def add(self, ip: str, duration: Any, reason: str) -> dict[str, Any]:
        from ..abuse.store import Ban
        from ..config import values
        from ..config.errors import ConfigError
        key = _key(self.guard, ip)
        try:
            period = values.duration("duration", duration if duration is not None else DEFAULT_PERIOD)
        except ConfigError as exc:
            raise ValueError(f"duration: {exc.reason}") from None
        now = self.guard.clock()
        ban = Ban(key, now + period, reason[:64], now, {})
        await self.guard.store.ban(ban)
        log.warning("ban %s reason=%s counts=- period=%ds (management API)", key, ban.reason, int(period))
        return _as_json(ban)

    async def lift(self, ip: str) -> bool:
        ban = await self.guard.store.unban(_key(self.guard, ip))
        if ban is not None:
            log.warning("unban %s (was: reason=%s; management API)", ban.key, ban.reason)
        return ban is not None
