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
from typing import Any

DEFAULT_PERIOD = "1d"


def adapter(server: Any) -> Any:
    guard = getattr(server, "guard", None)
    return None if guard is None else GuardBans(guard)


def _address(text: str) -> str:
    text = text.strip()
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text, strict=False).network_address)
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def _as_json(ban: Any) -> dict[str, Any]:
    return {"ip": ban.key, **ban.to_json()}


class GuardBans:
    def __init__(self, guard: Any):
        self.guard = guard

    async def list(self) -> list[dict[str, Any]]:
        return [_as_json(b) for b in sorted(await self.guard.store.bans(), key=lambda b: b.until)]

    async def add(self, ip: str, duration: Any, reason: str) -> dict[str, Any]:
        from ..config import values
        from ..config.errors import ConfigError
        try:
            period = values.duration("duration", duration if duration is not None else DEFAULT_PERIOD)
        except ConfigError as exc:
            raise ValueError(f"duration: {exc.reason}") from None
        return _as_json(await self.guard.ban(_address(ip), period, reason[:64]))

    async def lift(self, ip: str) -> bool:
        return await self.guard.unban(_address(ip)) is not None
