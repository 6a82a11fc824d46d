"""``server.proxy.trusted-networks`` and ``server.listener.<id>.proxy.trusted-networks`` (Stalwart's keys).

A listener with trusted networks speaks the PROXY protocol (v1 or v2) with peers in them: a connection
from such a peer must start with a valid header (else it is closed), and the header's client address is
then the session's ``remote-ip`` (and its destination ``local-ip``/``local-port``). Peers outside the
networks are ordinary SMTP clients; a header they send is just a bad command. The server-wide key is the
default of every listener; a listener's own key replaces it (``[]`` switches PROXY off there).
The transport side is ``server/proxy.py``; the header parser ``protocol/proxy.py``.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from . import values
from .errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: How long a trusted peer may take to send its header (a proxy sends it at once, with the connection).
HEADER_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ProxySettings:
    trusted: tuple[Network, ...]            # .proxy.trusted-networks

    def trusts(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted)


def trusted_networks(key: str, raw: Any) -> ProxySettings | None:
    """A list of CIDRs (or single addresses); ``None`` when the list is empty (PROXY off)."""
    nets: list[Network] = []
    for item in values.string_list(key, raw):
        try:
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ConfigError(key, f"invalid network {item!r} (expected e.g. \"10.0.0.0/8\" or \"::1\")") from None
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        nets.append(net)
    return ProxySettings(tuple(nets)) if nets else None


def listener_proxy(b: Any, base: str, default: ProxySettings | None) -> ProxySettings | None:
    """``<base>.proxy.trusted-networks`` read from the loader ``b`` (``_Builder``), else ``default``."""
    return b.optional(f"{base}.proxy.trusted-networks", trusted_networks, default)
