"""``[directory."<id>"]`` options, validated into typed settings: one dataclass per directory type.

The loader takes each option of the table through its type parser (``OPTIONS``: strings, booleans,
durations as seconds, lists), then hands them here for what depends on several of them at once. Every
problem is a :class:`ConfigError` naming the exact key path; the lookups receive only valid settings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from . import values
from .errors import ConfigError

# Options per type: option key -> parser. "type", "timeout", "concurrency" and "cache.*" are common to
# all and handled by the loader.
OPTIONS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "internal": {
        "store": values.nonempty_string,
    },
    "ldap": {
        "url": values.nonempty_string,
        "tls.starttls": values.boolean,
        "tls.allow-invalid-certs": values.boolean,
        "tls.ca-file": values.nonempty_string,
        "bind.dn-template": values.nonempty_string,
        "search.base-dn": values.nonempty_string,
        "search.filter": values.nonempty_string,
        "search.bind-dn": values.nonempty_string,
        "search.bind-secret": values.string,
        "attributes.address": values.string_list,
        "attributes.name": values.nonempty_string,
    },
    "oauth": {
        "jwks-url": values.nonempty_string,
        "jwks-refresh-min": values.duration,
        "issuer": values.nonempty_string,
        "audience": values.nonempty_string,
        "username-claim": values.nonempty_string,
        "algorithms": values.string_list,
        "leeway": values.duration,
        "introspection.url": values.nonempty_string,
        "introspection.client-id": values.nonempty_string,
        "introspection.client-secret": values.string,
        "tls.allow-invalid-certs": values.boolean,
        "tls.ca-file": values.nonempty_string,
    },
}

#: lookup name prefixes accepted for directories besides the generic "directory/<id>"
PREFIXES = {"internal": "users", "ldap": "ldap", "oauth": "oauth"}

#: Asymmetric JWS algorithms (RFC 7518, RFC 8037): neither "none" nor an HMAC "signed" with the public key
#: can pass. The OAuth lookup checks that its JOSE library implements each one configured.
ASYMMETRIC_JWS = frozenset({"ES256", "ES256K", "ES384", "ES512", "Ed25519", "Ed448", "EdDSA",
                            "PS256", "PS384", "PS512", "RS256", "RS384", "RS512"})


@dataclass(frozen=True, slots=True)
class UserStoreSettings:        # type = "internal"
    store: str                  # .store: sqlite://<path> | postgres://user@host:port/db


@dataclass(frozen=True, slots=True)
class LdapSettings:             # type = "ldap"
    url: str                    # .url
    host: str
    port: int
    use_ssl: bool               # ldaps://
    starttls: bool = False      # .tls.starttls
    allow_invalid_certs: bool = False  # .tls.allow-invalid-certs
    ca_file: str | None = None  # .tls.ca-file
    dn_template: str | None = None     # .bind.dn-template (bind as the user directly)
    base_dn: str | None = None         # .search.base-dn   (or search, then bind)
    filter: str | None = None          # .search.filter
    service_dn: str | None = None      # .search.bind-dn
    service_secret: str | None = None  # .search.bind-secret
    address_attributes: tuple[str, ...] = ("mail",)  # .attributes.address (lower-case)
    name_attribute: str | None = None  # .attributes.name (lower-case)


@dataclass(frozen=True, slots=True)
class OAuthSettings:            # type = "oauth"
    jwks_url: str | None = None        # .jwks-url            (JWT mode)
    introspection_url: str | None = None  # .introspection.url (RFC 7662 mode)
    issuer: str | None = None          # .issuer
    audience: str | None = None        # .audience
    username_claim: str = "email"      # .username-claim
    leeway: int = 60                   # .leeway (seconds)
    algorithms: tuple[str, ...] = ("RS256", "ES256")  # .algorithms
    refresh_min: float = 30.0          # .jwks-refresh-min (seconds)
    client_id: str | None = None       # .introspection.client-id
    client_secret: str | None = None   # .introspection.client-secret
    allow_invalid_certs: bool = False  # .tls.allow-invalid-certs
    ca_file: str | None = None         # .tls.ca-file


def user_store_settings(base: str, opts: dict[str, Any]) -> UserStoreSettings:
    store = opts.get("store")
    if store is None:
        raise ConfigError(f"{base}.store", "missing")
    if not store.startswith(("sqlite://", "postgres://", "postgresql://")):
        raise ConfigError(f"{base}.store", "expected sqlite://path or postgres://user@host:port/db")
    return UserStoreSettings(store)


def ldap_settings(base: str, opts: dict[str, Any]) -> LdapSettings:
    """From parsed options (``OPTIONS["ldap"]``); ``base`` is the table's key path for errors."""
    def bad(key: str, reason: str) -> ConfigError:
        return ConfigError(f"{base}.{key}", reason)

    url = opts.get("url")
    if url is None:
        raise bad("url", "missing")
    if not url.startswith(("ldap://", "ldaps://")):
        raise bad("url", "expected ldap://host:port or ldaps://host:port")
    dn_template, base_dn, search_filter = opts.get("bind.dn-template"), opts.get("search.base-dn"), opts.get("search.filter")
    service_dn, service_secret = opts.get("search.bind-dn"), opts.get("search.bind-secret")
    if (dn_template is None) == (base_dn is None):
        raise bad("bind.dn-template", "set either bind.dn-template or search.base-dn (search then bind)")
    if base_dn is not None and search_filter is None:
        raise bad("search.filter", "missing (e.g. \"(mail={user})\")")
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/"):
        raise bad("url", "expected ldap://host[:port] or ldaps://host[:port]")
    try:
        port = parts.port or (636 if parts.scheme == "ldaps" else 389)
    except ValueError:
        raise bad("url", "invalid port") from None
    use_ssl = parts.scheme == "ldaps"
    starttls = bool(opts.get("tls.starttls", False))
    if starttls and use_ssl:
        raise bad("tls.starttls", "not possible with an ldaps:// url")

    if dn_template:
        if base_dn or search_filter or service_dn:
            raise bad("bind.dn-template", "cannot be combined with search.*")
        if "{user}" not in dn_template and "{local}" not in dn_template:
            raise bad("bind.dn-template", "must contain {user} or {local}")
    else:
        if "{user}" not in search_filter and "{local}" not in search_filter:
            raise bad("search.filter", "must contain {user} or {local}")
        # A service DN without a secret would be an unauthenticated bind: anonymous in disguise.
        if bool(service_dn) != bool(service_secret):
            raise bad("search.bind-secret", "search.bind-dn and search.bind-secret go together")

    addresses = opts.get("attributes.address", ["mail"])
    if isinstance(addresses, str):
        addresses = [addresses]
    if not isinstance(addresses, list) or not all(isinstance(a, str) and a for a in addresses):
        raise bad("attributes.address", "must be a list of attribute names")
    name_attr = opts.get("attributes.name")
    return LdapSettings(url=url, host=parts.hostname, port=port, use_ssl=use_ssl, starttls=starttls,
                        allow_invalid_certs=bool(opts.get("tls.allow-invalid-certs", False)),
                        ca_file=opts.get("tls.ca-file"), dn_template=dn_template, base_dn=base_dn,
                        filter=search_filter, service_dn=service_dn, service_secret=service_secret,
                        address_attributes=tuple(a.lower() for a in addresses),
                        name_attribute=name_attr.lower() if name_attr else None)


def oauth_settings(base: str, opts: dict[str, Any]) -> OAuthSettings:
    """From parsed options (``OPTIONS["oauth"]``, durations in seconds)."""
    def bad(key: str, reason: str) -> ConfigError:
        return ConfigError(f"{base}.{key}", reason)

    def http_url(key: str) -> str | None:
        value = opts.get(key)
        if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
            raise bad(key, "must be an http:// or https:// URL")
        return value

    def seconds(key: str, default: float) -> float:
        value = opts.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad(key, "must be a non-negative number of seconds")
        return float(value)

    if ("jwks-url" in opts) == ("introspection.url" in opts):
        raise bad("jwks-url", "set either jwks-url or introspection.url")
    jwks_url, introspection_url = http_url("jwks-url"), http_url("introspection.url")
    issuer, audience = opts.get("issuer"), opts.get("audience")
    common = dict(issuer=issuer, audience=audience, username_claim=opts.get("username-claim") or "email",
                  leeway=int(seconds("leeway", 60)), allow_invalid_certs=bool(opts.get("tls.allow-invalid-certs", False)),
                  ca_file=opts.get("tls.ca-file"))
    if jwks_url:
        # Without both, any token the provider signed for any client would log in.
        if not issuer:
            raise bad("issuer", "required with jwks-url")
        if not audience:
            raise bad("audience", "required with jwks-url")
        algorithms = opts.get("algorithms", ["RS256", "ES256"])
        if not isinstance(algorithms, list) or not algorithms:
            raise bad("algorithms", "must be a non-empty list")
        for alg in algorithms:
            if alg not in ASYMMETRIC_JWS:
                raise bad("algorithms", f"{alg!r} is not an asymmetric JWS algorithm "
                                        f"(allowed: {', '.join(sorted(ASYMMETRIC_JWS))})")
        return OAuthSettings(jwks_url=jwks_url, algorithms=tuple(dict.fromkeys(algorithms)),
                             refresh_min=seconds("jwks-refresh-min", 30), **common)
    client_id, client_secret = opts.get("introspection.client-id"), opts.get("introspection.client-secret")
    if not client_id or not client_secret:
        raise bad("introspection.client-id", "client-id and client-secret are required")
    return OAuthSettings(introspection_url=introspection_url, client_id=client_id, client_secret=client_secret,
                         **common)
