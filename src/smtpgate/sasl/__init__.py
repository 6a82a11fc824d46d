"""SASL mechanisms (sans-IO) and their registry.

Each mechanism lives in its own module behind the interface of :mod:`.base`; the AUTH stage asks this
registry which names exist, what a mechanism needs from the lookup, whether it may be offered on a
cleartext connection, and creates one instance per AUTH command.
"""
from __future__ import annotations

from ..lookup.base import Capability
from ..sasl_names import MECHANISM_NAMES
from .base import ChannelBinding, Mechanism
from .cram_md5 import CramMD5
from .login import Login
from .oauthbearer import OAuthBearer
from .plain import Plain
from .scram import Scram
from .xoauth2 import XOAuth2

_CAPABILITY = {
    "PLAIN": Capability.PASSWORD, "LOGIN": Capability.PASSWORD,
    "OAUTHBEARER": Capability.TOKEN, "XOAUTH2": Capability.TOKEN,
    "CRAM-MD5": Capability.CRAM,
    **{n: Capability.SCRAM for n in MECHANISM_NAMES if n.startswith("SCRAM-")},
}
# Mechanisms that put the password or a bearer token on the wire (SPEC §4.1).
_CLEARTEXT_SENSITIVE = frozenset({"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"})


def _canonical(name: str) -> str:
    upper = name.upper()
    if upper not in _CAPABILITY:
        raise KeyError(name)
    return upper


def required_capability(name: str) -> Capability:
    """What the configured lookup must be able to do for ``name`` to be offered. KeyError if unknown."""
    return _CAPABILITY[_canonical(name)]


def cleartext_sensitive(name: str) -> bool:
    """True if ``name`` must not be offered without TLS unless ``allow-plain-text`` is set."""
    return _canonical(name) in _CLEARTEXT_SENSITIVE


def create(name: str, *, hostname: str, channel_binding: ChannelBinding | None = None,
           plus_advertised: bool = False, scram_decoy: dict[str, tuple[int, int]] | None = None) -> Mechanism:
    """A fresh mechanism instance for one AUTH exchange.

    ``name`` is case-insensitive (KeyError if unknown). ``hostname`` goes into the CRAM-MD5 challenge.
    ``channel_binding`` is required by the -PLUS variants (ValueError without a usable one).
    ``plus_advertised`` tells the non-PLUS SCRAM variants that a -PLUS variant was offered in this
    session, so a client claiming otherwise (``y``) is a downgrade. ``scram_decoy`` is the lookup's fake
    SCRAM shape (fixed when it started).
    """
    upper = _canonical(name)
    if upper == "PLAIN":
        return Plain()
    if upper == "LOGIN":
        return Login()
    if upper == "OAUTHBEARER":
        return OAuthBearer()
    if upper == "XOAUTH2":
        return XOAuth2()
    if upper == "CRAM-MD5":
        return CramMD5(hostname=hostname)
    return Scram(upper, channel_binding=channel_binding, plus_advertised=plus_advertised, fake_shape=scram_decoy)


__all__ = [
    "MECHANISM_NAMES", "create", "required_capability", "cleartext_sensitive", "Mechanism",
    "ChannelBinding",
]
