"""OAuth bearer-token lookup (OAUTHBEARER, XOAUTH2): a JWT checked against a JWKS, or RFC 7662 introspection.

Configured as ``[directory."<id>"] type = "oauth"`` (validated in ``config/directory.py``), one of two modes:

* JWT: ``jwks-url``, ``issuer`` and ``audience`` (both required: without them any token the provider
  signed for any client would log in), ``algorithms`` (default ``["RS256", "ES256"]``; asymmetric only,
  so neither ``none`` nor an HMAC "signed" with the public key can pass), ``leeway`` (seconds, default
  60), ``jwks-refresh-min`` (seconds, default 30).
* Introspection: ``introspection.url``, ``introspection.client-id``, ``introspection.client-secret``
  (HTTP Basic, RFC 6749 §2.3.1); ``issuer``/``audience`` are checked when configured.
* Both: ``username-claim`` (default ``email``), ``tls.allow-invalid-certs``, ``tls.ca-file``.

The user is the ``username-claim`` claim (introspection: ``username`` first). There is deliberately no
fallback to ``sub``: at most providers ``sub`` is an opaque id from another namespace than mail addresses,
and silently switching namespaces could map a token onto someone else's account. With the default
``email`` claim, ``email_verified: false`` is refused.

JWKS keys are cached. A token whose ``kid`` is unknown triggers a refetch at most once per
``jwks-refresh-min`` (so forged kids cannot make us hammer the provider); keys older than an hour are
refetched on next use, and kept if that fails. Unknown, expired, mis-addressed or badly signed tokens are
INVALID; an endpoint that is down, slow, erroring or talking nonsense makes the lookup UNAVAILABLE.
"""
from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from typing import Any
from urllib.parse import quote_plus

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry, extract_compact

from ..config.directory import OAuthSettings
from ..config.errors import ConfigError
from ..config.model import DirectorySettings
from .base import AuthResult, Capability, Credentials, Lookup, Outcome, unavailable

log = logging.getLogger("smtpgate.lookup.oauth")

_ASYMMETRIC = frozenset(name for name, alg in JWSRegistry.algorithms.items()
                        if getattr(alg, "key_type", None) in ("RSA", "EC", "OKP"))
_MAX_TOKEN = 16 * 1024          # far above any real access token; bounds parsing work
_MAX_BODY = 1024 * 1024         # JWKS / introspection responses
_JWKS_MAX_AGE = 3600.0


class _Unavailable(Exception):
    """The provider could not answer; the message is a log reason without secrets."""


def _looks_like_address(user: str) -> bool:
    local, at, domain = user.rpartition("@")
    return bool(at and local and "." in domain and not any(c.isspace() for c in user))


class OAuthLookup(Lookup):
    capabilities = Capability.TOKEN

    def __init__(self, settings: DirectorySettings):
        """``settings.options`` is a validated :class:`~smtpgate.config.directory.OAuthSettings`."""
        opts: OAuthSettings = settings.options
        self.name = f"directory/{settings.id}"
        self._timeout = float(settings.timeout)
        self._concurrency = max(1, int(settings.concurrency))
        self._sem = asyncio.Semaphore(self._concurrency)

        self._jwks_url = opts.jwks_url
        self._introspection_url = opts.introspection_url
        self._issuer = opts.issuer
        self._audience = opts.audience
        self._username_claim = opts.username_claim
        self._leeway = opts.leeway
        if self._jwks_url:
            missing = [alg for alg in opts.algorithms if alg not in _ASYMMETRIC]
            if missing:      # config knows the names; this JOSE library may lack one
                raise ConfigError(f"directory.{settings.id}.algorithms",
                                  f"{missing[0]!r} is not supported by this server's JOSE library")
            self._algorithms = list(opts.algorithms)
            self._registry = JWSRegistry(algorithms=self._algorithms)
            self._refresh_min = opts.refresh_min
        else:
            assert opts.client_id and opts.client_secret
            # RFC 6749 §2.3.1: both are form-urlencoded before going into the Basic header.
            self._client_auth = (quote_plus(opts.client_id), quote_plus(opts.client_secret))

        if opts.allow_invalid_certs:
            self._verify: ssl.SSLContext | bool = False
        else:
            # The system store (or the configured CA), not httpx's bundled certifi.
            self._verify = ssl.create_default_context(cafile=opts.ca_file)
        self._client: httpx.AsyncClient | None = None

        self._keys: list[Key] | None = None
        self._keys_at = 0.0            # when the current keys were fetched
        self._last_attempt = -1e18     # when we last tried to fetch (success or not)
        self._fetches = 0              # fetch attempts so far: lets lock waiters see a fresh result
        self._fetch_error: str | None = None
        self._fetch_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._verify, timeout=httpx.Timeout(self._timeout), follow_redirects=False,
                limits=httpx.Limits(max_connections=self._concurrency,
                                    max_keepalive_connections=self._concurrency))
        return self._client

    async def start(self) -> None:
        self._http()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ authenticate

    async def authenticate(self, creds: Credentials) -> AuthResult:
        if creds.kind != "token":
            return AuthResult(Outcome.INVALID, reason="oauth verifies bearer tokens only")
        token = creds.secret
        if not token or len(token) > _MAX_TOKEN or not token.isascii():
            return AuthResult(Outcome.INVALID, reason="malformed token")
        try:
            async with asyncio.timeout(self._timeout):
                async with self._sem:
                    if self._jwks_url:
                        user, why = await self._check_jwt(token)
                    else:
                        user, why = await self._introspect(token)
        except TimeoutError:
            return unavailable(f"oauth: no answer within {self._timeout:g}s")
        except _Unavailable as exc:
            return unavailable(f"oauth: {exc}")
        if user is None:
            return AuthResult(Outcome.INVALID, reason=why)
        if creds.username and creds.username.casefold() != user.casefold():
            return AuthResult(Outcome.INVALID, reason="token belongs to another user")
        addresses = frozenset({user.lower()}) if _looks_like_address(user) else frozenset()
        return AuthResult(Outcome.VALID, account=user, addresses=addresses)

    def _user_from(self, claims: dict[str, Any], first: str | None = None) -> tuple[str | None, str]:
        for name in (first, self._username_claim):
            if name and isinstance(claims.get(name), str) and claims[name]:
                if name == "email" and claims.get("email_verified") is False:
                    return None, "email not verified"
                return claims[name], ""
        return None, f"token has no {self._username_claim!r} claim"

    # ------------------------------------------------------------------ JWT

    async def _check_jwt(self, token: str) -> tuple[str | None, str]:
        try:
            header = extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, TypeError, KeyError):
            return None, "malformed token"
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._algorithms:
            return None, f"algorithm {str(alg)[:20]!r} not allowed"
        if kid is not None and not isinstance(kid, str):
            return None, "malformed kid"

        key = self._pick(await self._current_keys(), alg, kid)
        if key is None and time.monotonic() - self._last_attempt >= self._refresh_min:
            key = self._pick(await self._refresh(), alg, kid)
        if key is None:
            return None, "no key for the token's kid"

        try:
            decoded = jwt.decode(token, key, algorithms=[alg], registry=self._registry)
            jwt.JWTClaimsRegistry(
                leeway=self._leeway,
                iss={"essential": True, "value": self._issuer},
                aud={"essential": True, "value": self._audience},
                exp={"essential": True},
            ).validate(decoded.claims)
        except JoseError as exc:
            return None, f"token rejected: {type(exc).__name__}"
        except (ValueError, TypeError):
            return None, "malformed token"
        return self._user_from(decoded.claims)

    def _pick(self, keys: list[Key], alg: str, kid: str | None) -> Key | None:
        key_type = self._registry.get_alg(alg).key_type
        usable = [k for k in keys if k.key_type == key_type and k.get("use") in (None, "sig")
                  and k.get("alg") in (None, alg)]
        if kid is not None:
            usable = [k for k in usable if k.kid == kid]
        # Without a kid only an unambiguous key will do.
        return usable[0] if len(usable) == 1 else None

    async def _current_keys(self) -> list[Key]:
        if self._keys is None:
            return await self._refresh()
        if time.monotonic() - self._keys_at > _JWKS_MAX_AGE:
            try:
                return await self._refresh()
            except _Unavailable as exc:
                log.warning("%s: JWKS refresh failed, keeping the cached keys: %s", self.name, exc)
        return self._keys

    async def _refresh(self) -> list[Key]:
        generation = self._fetches
        async with self._fetch_lock:
            # Someone else fetched while we waited for the lock: use theirs.
            if self._keys is not None and self._fetches != generation:
                if self._fetch_error:
                    raise _Unavailable(self._fetch_error)
                return self._keys
            self._last_attempt = time.monotonic()
            assert self._jwks_url is not None
            self._fetch_error = "JWKS fetch did not complete"
            try:
                keys = self._parse_jwks(await self._request("GET", self._jwks_url))
                self._fetch_error = None
            except _Unavailable as exc:
                self._fetch_error = str(exc)
                raise
            finally:
                self._fetches += 1     # counted when done, so everyone who queued behind us reuses it
            self._keys, self._keys_at = keys, time.monotonic()
            log.debug("%s: loaded %d JWKS keys", self.name, len(keys))
            return keys

    def _parse_jwks(self, body: Any) -> list[Key]:
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise _Unavailable("JWKS is not a key set")
        keys: list[Key] = []
        for data in body["keys"]:
            # RFC 7517 §5: skip keys we cannot use rather than failing the whole set.
            if not isinstance(data, dict) or data.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            try:
                keys.append(JWKRegistry.import_key(data))
            except (JoseError, ValueError, TypeError, KeyError):
                log.debug("%s: skipping an unusable JWKS entry", self.name)
        if not keys:
            raise _Unavailable("JWKS holds no usable signing key")
        return keys

    # ------------------------------------------------------------------ introspection (RFC 7662)

    async def _introspect(self, token: str) -> tuple[str | None, str]:
        assert self._introspection_url is not None
        body = await self._request("POST", self._introspection_url,
                                   data={"token": token, "token_type_hint": "access_token"},
                                   auth=self._client_auth)
        if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
            raise _Unavailable("introspection response lacks a boolean 'active'")
        if body["active"] is not True:
            return None, "token not active"
        if self._issuer is not None and body.get("iss") != self._issuer:
            return None, "wrong issuer"
        if self._audience is not None:
            aud = body.get("aud")
            if not (aud == self._audience or (isinstance(aud, list) and self._audience in aud)):
                return None, "wrong audience"
        exp = body.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp <= time.time() - self._leeway:
            return None, "token expired"
        return self._user_from(body, first="username")

    # ------------------------------------------------------------------ HTTP

    async def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        """JSON body of a 200 answer; anything else is the provider's trouble (_Unavailable)."""
        try:
            async with self._http().stream(method, url, headers={"Accept": "application/json"},
                                           **kwargs) as resp:
                if resp.status_code != 200:
                    raise _Unavailable(f"{method} {url}: HTTP {resp.status_code}")
                raw = bytearray()
                async for chunk in resp.aiter_bytes():
                    raw += chunk
                    if len(raw) > _MAX_BODY:
                        raise _Unavailable(f"{method} {url}: response too large")
        except httpx.TimeoutException:
            raise _Unavailable(f"{method} {url}: timed out") from None
        except httpx.HTTPError as exc:
            raise _Unavailable(f"{method} {url}: {type(exc).__name__}: {str(exc)[:200]}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Unavailable(f"{method} {url}: response is not JSON") from None
