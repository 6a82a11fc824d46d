"""Builds every lookup named in the configuration, once, at startup.

Names: ``list/<id>``, ``db/<id>/<query>``, ``remote/<id>``, ``directory/<id>`` (also ``users/<id>``,
``ldap/<id>``, ``oauth/<id>`` by type). A lookup with ``cache.entries`` is wrapped in ``CachedLookup``.
Implementations are imported only when configured, so an unused backend costs nothing.
"""
from __future__ import annotations

from ..config.directory import PREFIXES as DIRECTORY_PREFIXES
from ..config.errors import ConfigError
from ..config.model import CacheSettings, Settings
from .base import Lookup


def _cached(lookup: Lookup, cache: CacheSettings) -> Lookup:
    if cache.entries <= 0:
        return lookup
    from .cache import CachedLookup
    wrapped = CachedLookup(lookup, cache)
    wrapped.name = lookup.name
    return wrapped


def build(settings: Settings) -> dict[str, Lookup]:
    """Construct every configured lookup (no I/O yet: ``start()`` opens connections)."""
    try:
        return _build(settings)
    except _Bad as bad:
        # Options are validated by config/; what is left is the environment (an unreadable CA file).
        raise ConfigError(bad.prefix, str(bad.exc)) from None


class _Bad(Exception):
    def __init__(self, prefix: str, exc: ValueError):
        self.prefix, self.exc = prefix, exc


def _make(prefix: str, factory, *args, **kwargs):
    try:
        return factory(*args, **kwargs)
    except ValueError as exc:
        raise _Bad(prefix, exc) from None


def _build(settings: Settings) -> dict[str, Lookup]:
    out: dict[str, Lookup] = {}
    if settings.lists:
        from .list import ListLookup
        for ident, ls in settings.lists.items():
            lk = _make(f"list.{ident}", ListLookup, ls)
            lk.name = f"list/{ident}"
            out[lk.name] = lk
    if settings.databases:
        from .sql import SqlDatabase
        for ident, db in settings.databases.items():
            database = _make(f"database.{ident}", SqlDatabase, db)
            for query in db.lookups:
                lk = database.lookup(query)
                lk.name = f"db/{ident}/{query}"
                out[lk.name] = _cached(lk, db.cache)
    for ident, remote in settings.remotes.items():
        if not remote.lookup:
            continue
        if remote.protocol == "imap":
            from .imap import ImapLookup
            lk = _make(f"remote.{ident}", ImapLookup, remote)
        else:
            from .remote_smtp import SmtpAuthLookup
            lk = _make(f"remote.{ident}", SmtpAuthLookup, remote, helo_name=settings.hostname)
        lk.name = f"remote/{ident}"
        out[lk.name] = _cached(lk, remote.cache)
    for ident, d in settings.directories.items():
        if d.type == "internal":
            from .users import UserStoreLookup
            lk = _make(f"directory.{ident}", UserStoreLookup, d)
        elif d.type == "ldap":
            from .ldap import LdapLookup
            lk = _make(f"directory.{ident}", LdapLookup, d)
        else:
            from .oauth import OAuthLookup
            lk = _make(f"directory.{ident}", OAuthLookup, d)
        lk.name = f"directory/{ident}"
        wrapped = _cached(lk, d.cache)
        out[lk.name] = wrapped
        out[f"{DIRECTORY_PREFIXES[d.type]}/{ident}"] = wrapped
    return out


def unique(lookups: dict[str, Lookup]) -> list[Lookup]:
    """Each lookup object once (aliases share one), for start()/close()."""
    seen: dict[int, Lookup] = {}
    for lk in lookups.values():
        seen.setdefault(id(lk), lk)
    return list(seen.values())
