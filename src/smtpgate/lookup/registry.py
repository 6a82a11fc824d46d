"""Builds every lookup named in the configuration, once, at startup.

Names: ``list/<id>``, ``db/<id>/<query>``, ``remote/<id>``, ``directory/<id>`` (also ``users/<id>``,
``ldap/<id>``, ``oauth/<id>`` by type). A lookup with ``cache.entries`` is wrapped in ``CachedLookup``.
Implementations are imported only when configured, so an unused backend costs nothing.
"""
from __future__ import annotations

from ..config.model import CacheSettings, Settings
from ..config.schema import DIRECTORY_PREFIXES
from .base import Lookup


def _cached(lookup: Lookup, cache: CacheSettings) -> Lookup:
    if cache.entries <= 0:
        return lookup
    from .cache import CachedLookup
    wrapped = CachedLookup(lookup, cache)
    wrapped.name = lookup.name
    return wrapped


def build(settings: Settings) -> dict[str, Lookup]:
    out: dict[str, Lookup] = {}
    if settings.lists:
        from .list import ListLookup
        for ident, ls in settings.lists.items():
            lk = ListLookup(ls)
            lk.name = f"list/{ident}"
            out[lk.name] = lk
    if settings.databases:
        from .sql import SqlDatabase
        for ident, db in settings.databases.items():
            database = SqlDatabase(db)
            for query in db.lookups:
                lk = database.lookup(query)
                lk.name = f"db/{ident}/{query}"
                out[lk.name] = _cached(lk, db.cache)
    for ident, remote in settings.remotes.items():
        if not remote.lookup:
            continue
        if remote.protocol == "imap":
            from .imap import ImapLookup
            lk = ImapLookup(remote)
        else:
            from .remote_smtp import SmtpAuthLookup
            lk = SmtpAuthLookup(remote)
        lk.name = f"remote/{ident}"
        out[lk.name] = _cached(lk, remote.cache)
    for ident, d in settings.directories.items():
        if d.type == "internal":
            from .users import UserStoreLookup
            lk = UserStoreLookup(d)
        elif d.type == "ldap":
            from .ldap import LdapLookup
            lk = LdapLookup(d)
        else:
            from .oauth import OAuthLookup
            lk = OAuthLookup(d)
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
