"""SASL mechanisms (sans-IO) and their registry.

Each mechanism lives in its own module behind the interface of :mod:`.base`; the AUTH stage asks this
registry which names exist, what a mechanism needs from the lookup, whether it may be offered on a
cleartext connection, and creates one instance per AUTH command.
"""
from __future__ import annotations

from ..lookup.base import Capability
from .base import ChannelBinding, Mechanism
from .cram_md5 import CramMD5
from .login import Login
from .oauthbearer import OAuthBearer
from .plain import Plain
from .scram import CHANNEL_BINDING_TYPES, Scram
from .xoauth2 import XOAuth2

#: Every mechanism smtpgate implements, upper-case.
MECHANISM_NAMES: tuple[str, ...] = (
    "PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2", "CRAM-MD5",
    "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS",
)

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


def needs_channel_binding(name: str) -> bool:
    """True for the -PLUS variants: offer them only when :func:`channel_binding_usable` holds."""
    return _canonical(name).endswith("-PLUS")


def channel_binding_usable(cb: ChannelBinding | None) -> bool:
    """Whether SCRAM -PLUS can use this TLS channel binding (types scramp supports, non-empty data).
    Note RFC 9266: ``tls-unique`` must not be used on TLS 1.3 connections."""
    return cb is not None and cb.type in CHANNEL_BINDING_TYPES and bool(cb.data)


def create(name: str, *, hostname: str, channel_binding: ChannelBinding | None = None,
           plus_advertised: bool = False, oauth_scope: str | None = None,
           scram_decoy: dict[str, tuple[int, int]] | None = None) -> Mechanism:
    """A fresh mechanism instance for one AUTH exchange.

    ``name`` is case-insensitive (KeyError if unknown). ``hostname`` goes into the CRAM-MD5 challenge.
    ``channel_binding`` is required by the -PLUS variants (ValueError without a usable one).
    ``plus_advertised`` tells the non-PLUS SCRAM variants that a -PLUS variant was offered in this
    session, so a client claiming otherwise (``y``) is a downgrade. ``oauth_scope`` is added to the
    OAUTHBEARER/XOAUTH2 error JSON when known. ``scram_decoy`` is the lookup's fake SCRAM shape.
    """
    upper = _canonical(name)
    if upper == "PLAIN":
        return Plain()
    if upper == "LOGIN":
        return Login()
    if upper == "OAUTHBEARER":
        return OAuthBearer(scope=oauth_scope)
    if upper == "XOAUTH2":
        return XOAuth2(scope=oauth_scope)
    if upper == "CRAM-MD5":
        return CramMD5(hostname=hostname)
    return Scram(upper, channel_binding=channel_binding, plus_advertised=plus_advertised, fake_shape=scram_decoy)


__all__ = [
    "MECHANISM_NAMES", "create", "required_capability", "cleartext_sensitive", "needs_channel_binding",
    "channel_binding_usable", "Mechanism", "ChannelBinding",
]
