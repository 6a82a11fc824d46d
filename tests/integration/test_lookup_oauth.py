"""OAuthLookup against a real HTTP(S) provider stand-in: JWT + JWKS, RFC 7662 introspection, failures."""
from __future__ import annotations

import asyncio
import time

import pytest
from joserfc.jwk import ECKey, RSAKey

from smtpgate.config.directory import oauth_settings
from smtpgate.config.errors import ConfigError
from smtpgate.config.model import DirectorySettings
from smtpgate.lookup.base import AuthResult, Credentials, Outcome
from smtpgate.lookup.oauth import OAuthLookup
from tests.fixtures.oauth_server import AUDIENCE, CLIENT_ID, CLIENT_SECRET, ISSUER, OAuthServer
from tests.fixtures.oauth_server import (_oauth_server_module, oauth_pki, oauth_server,  # noqa: F401  (fixtures)
                                         oauth_tls_server)
from tests.fixtures.slapd import Pki

pytestmark = pytest.mark.service("oauth-http")


def jwt_lookup(server: OAuthServer, timeout: float = 2.0, **options: object) -> OAuthLookup:
    opts = {"jwks-url": server.jwks_url, "issuer": ISSUER, "audience": AUDIENCE, **options}
    return OAuthLookup(DirectorySettings(id="oauth", type="oauth", options=oauth_settings("directory.oauth", opts),
                                        timeout=timeout))


def introspection_lookup(server: OAuthServer, timeout: float = 2.0, **options: object) -> OAuthLookup:
    opts = {"introspection.url": server.introspection_url, "introspection.client-id": CLIENT_ID,
            "introspection.client-secret": CLIENT_SECRET, **options}
    return OAuthLookup(DirectorySettings(id="oauth", type="oauth", options=oauth_settings("directory.oauth", opts),
                                        timeout=timeout))


def bearer(token: str, user: str = "") -> Credentials:
    return Credentials(mechanism="OAUTHBEARER", username=user, secret=token, kind="token")


async def check(lookup: OAuthLookup, token: str, user: str = "") -> AuthResult:
    try:
        return await lookup.authenticate(bearer(token, user))
    finally:
        await lookup.close()


# --------------------------------------------------------------------------- JWT: accepted

async def test_valid_rsa_token(oauth_server: OAuthServer) -> None:
    result = await check(jwt_lookup(oauth_server), oauth_server.mint())
    assert result.outcome is Outcome.VALID
    assert result.account == "alice@example.org" and result.addresses == {"alice@example.org"}


async def test_valid_ec_token(oauth_server: OAuthServer) -> None:
    result = await check(jwt_lookup(oauth_server), oauth_server.mint(key=oauth_server.ec))
    assert result.valid


async def test_claimed_user_must_match_case_insensitively(oauth_server: OAuthServer) -> None:
    lookup = jwt_lookup(oauth_server)
    token = oauth_server.mint()
    try:
        same = await lookup.authenticate(bearer(token, "Alice@Example.ORG"))
        other = await lookup.authenticate(bearer(token, "bob@example.org"))
    finally:
        await lookup.close()
    assert same.valid and same.account == "alice@example.org"
    assert other.outcome is Outcome.INVALID


async def test_audience_list_and_leeway(oauth_server: OAuthServer) -> None:
    lookup = jwt_lookup(oauth_server)
    try:
        listed = await lookup.authenticate(bearer(oauth_server.mint(aud=["other-app", AUDIENCE])))
        # Expired 10 s ago: inside the default 60 s leeway for clock skew.
        skewed = await lookup.authenticate(bearer(oauth_server.mint(exp=int(time.time()) - 10)))
    finally:
        await lookup.close()
    assert listed.valid and skewed.valid


async def test_username_claim_and_non_address_user(oauth_server: OAuthServer) -> None:
    lookup = jwt_lookup(oauth_server, **{"username-claim": "preferred_username"})
    result = await check(lookup, oauth_server.mint(preferred_username="alice"))
    assert result.valid and result.account == "alice" and result.addresses == frozenset()


async def test_keys_are_cached(oauth_server: OAuthServer) -> None:
    lookup = jwt_lookup(oauth_server)
    try:
        for _ in range(3):
            assert (await lookup.authenticate(bearer(oauth_server.mint()))).valid
        # Cached keys keep working while the provider is down.
        oauth_server.down()
        assert (await lookup.authenticate(bearer(oauth_server.mint(key=oauth_server.ec)))).valid
    finally:
        await lookup.close()
    assert oauth_server.jwks_hits == 1


# --------------------------------------------------------------------------- JWT: refused

@pytest.mark.parametrize("case", [
    "expired", "not_yet_valid", "wrong_issuer", "wrong_audience", "no_audience", "no_exp", "no_email",
    "email_unverified", "bad_signature", "unknown_kid", "alg_none", "hs256_with_public_key",
    "rs256_header_on_ec_key", "alg_not_configured",
])
async def test_refused_tokens_are_invalid(oauth_server: OAuthServer, case: str) -> None:
    now = int(time.time())
    stranger = RSAKey.generate_key(2048, parameters={"kid": "ghost"})
    token = {
        "expired": lambda: oauth_server.mint(exp=now - 3600),
        "not_yet_valid": lambda: oauth_server.mint(nbf=now + 3600),
        "wrong_issuer": lambda: oauth_server.mint(iss="https://evil.example.net"),
        "wrong_audience": lambda: oauth_server.mint(aud="another-app"),
        "no_audience": lambda: oauth_server.mint(aud=None),
        "no_exp": lambda: oauth_server.mint(exp=None),
        "no_email": lambda: oauth_server.mint(email=None),        # no silent fallback to "sub"
        "email_unverified": lambda: oauth_server.mint(email_verified=False),
        # Signed by a stranger's key but naming the provider's kid.
        "bad_signature": lambda: oauth_server.mint(key=stranger, kid=oauth_server.rsa.kid),
        "unknown_kid": lambda: oauth_server.mint(key=stranger),
        "alg_none": lambda: oauth_server.mint_alg_none(),
        "hs256_with_public_key": lambda: oauth_server.mint_hs256_with_public_key(),
        "rs256_header_on_ec_key": lambda: oauth_server.mint(key=stranger, alg="RS256", kid=oauth_server.ec.kid),
        "alg_not_configured": lambda: oauth_server.mint(alg="PS256"),
    }[case]()
    result = await check(jwt_lookup(oauth_server), token)
    assert result.outcome is Outcome.INVALID, result.reason


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b.c", "e30.e30.", "x" * 20000,
                                   "eyJhbGciOiJSUzI1NiJ9.e30.AAAA.BBBB.CCCC", "ünïcode.token.here"])
async def test_malformed_tokens_are_invalid(oauth_server: OAuthServer, token: str) -> None:
    result = await check(jwt_lookup(oauth_server), token)
    assert result.outcome is Outcome.INVALID


async def test_passwords_are_not_tokens(oauth_server: OAuthServer) -> None:
    lookup = jwt_lookup(oauth_server)
    try:
        result = await lookup.authenticate(Credentials("PLAIN", "alice@example.org", oauth_server.mint()))
    finally:
        await lookup.close()
    assert result.outcome is Outcome.INVALID


async def test_token_without_kid_needs_an_unambiguous_key(oauth_server: OAuthServer) -> None:
    token = oauth_server.mint(kid=None)
    # One RSA key (beside an EC key): the RS256 token can only mean that one.
    assert (await check(jwt_lookup(oauth_server), token)).valid
    oauth_server.rotate()
    oauth_server.published.append(oauth_server.initial_keys[0])     # now two RSA keys
    assert (await check(jwt_lookup(oauth_server), token)).outcome is Outcome.INVALID


# --------------------------------------------------------------------------- key rotation

async def test_rotated_key_is_picked_up_and_the_old_one_dropped(oauth_server: OAuthServer) -> None:
    lookup = jwt_lookup(oauth_server, **{"jwks-refresh-min": 0})
    try:
        old_token = oauth_server.mint()
        assert (await lookup.authenticate(bearer(old_token))).valid
        new_key = oauth_server.rotate()
        result = await lookup.authenticate(bearer(oauth_server.mint(key=new_key)))
        assert result.valid and oauth_server.jwks_hits == 2
        # The retired key is gone from the refreshed set; its tokens no longer pass.
        assert (await lookup.authenticate(bearer(old_token))).outcome is Outcome.INVALID
    finally:
        await lookup.close()


async def test_unknown_kids_refetch_at_most_once_per_interval(oauth_server: OAuthServer) -> None:
    lookup = jwt_lookup(oauth_server, **{"jwks-refresh-min": 30})
    stranger = ECKey.generate_key("P-256", parameters={"kid": "forged"})
    try:
        assert (await lookup.authenticate(bearer(oauth_server.mint()))).valid
        results = [await lookup.authenticate(bearer(oauth_server.mint(key=stranger))) for _ in range(5)]
    finally:
        await lookup.close()
    assert all(r.outcome is Outcome.INVALID for r in results)
    assert oauth_server.jwks_hits == 1      # the first fetch was less than 30 s ago


async def test_concurrent_first_use_fetches_once(oauth_server: OAuthServer) -> None:
    lookup = jwt_lookup(oauth_server)
    try:
        results = await asyncio.gather(*(lookup.authenticate(bearer(oauth_server.mint())) for _ in range(8)))
    finally:
        await lookup.close()
    assert all(r.valid for r in results) and oauth_server.jwks_hits == 1


# --------------------------------------------------------------------------- JWKS endpoint trouble

@pytest.mark.parametrize("mode", ["down", "hang", "garbage", "error"])
async def test_jwks_trouble_is_unavailable_within_the_timeout(oauth_server: OAuthServer, mode: str) -> None:
    if mode == "down":
        oauth_server.down()
    else:
        oauth_server.mode = mode
    started = time.monotonic()
    result = await check(jwt_lookup(oauth_server, timeout=0.5), oauth_server.mint())
    assert result.outcome is Outcome.UNAVAILABLE, result.reason
    assert time.monotonic() - started < 1.5


async def test_unknown_kid_while_provider_down_is_unavailable(oauth_server: OAuthServer) -> None:
    lookup = jwt_lookup(oauth_server, **{"jwks-refresh-min": 0})
    try:
        assert (await lookup.authenticate(bearer(oauth_server.mint()))).valid
        new_key = oauth_server.rotate()
        oauth_server.down()
        result = await lookup.authenticate(bearer(oauth_server.mint(key=new_key)))
    finally:
        await lookup.close()
    assert result.outcome is Outcome.UNAVAILABLE


async def test_jwks_without_usable_keys_is_unavailable(oauth_server: OAuthServer) -> None:
    oauth_server.published = []
    assert (await check(jwt_lookup(oauth_server), oauth_server.mint())).outcome is Outcome.UNAVAILABLE


# --------------------------------------------------------------------------- TLS to the provider

async def test_https_provider_with_the_ca(oauth_tls_server: OAuthServer, oauth_pki: Pki) -> None:
    lookup = jwt_lookup(oauth_tls_server, **{"tls.ca-file": str(oauth_pki.ca_cert)})
    assert (await check(lookup, oauth_tls_server.mint())).valid


async def test_https_provider_with_an_untrusted_certificate(oauth_tls_server: OAuthServer) -> None:
    result = await check(jwt_lookup(oauth_tls_server), oauth_tls_server.mint())
    assert result.outcome is Outcome.UNAVAILABLE
    relaxed = jwt_lookup(oauth_tls_server, **{"tls.allow-invalid-certs": True})
    assert (await check(relaxed, oauth_tls_server.mint())).valid


# --------------------------------------------------------------------------- introspection

async def test_introspection_active_and_inactive(oauth_server: OAuthServer) -> None:
    oauth_server.register_opaque("opaque-alice", active=True, username="alice@example.org",
                                 exp=int(time.time()) + 300)
    oauth_server.register_opaque("opaque-revoked", active=False, username="bob@example.org")
    oauth_server.register_opaque("opaque-email", active=True, email="carol@example.org")
    oauth_server.register_opaque("opaque-nobody", active=True)
    oauth_server.register_opaque("opaque-stringly", active="true", username="eve@example.org")
    lookup = introspection_lookup(oauth_server)
    try:
        alice = await lookup.authenticate(bearer("opaque-alice", "alice@example.org"))
        mismatch = await lookup.authenticate(bearer("opaque-alice", "mallory@example.org"))
        revoked = await lookup.authenticate(bearer("opaque-revoked"))
        unknown = await lookup.authenticate(bearer("never-issued"))
        carol = await lookup.authenticate(bearer("opaque-email"))
        nobody = await lookup.authenticate(bearer("opaque-nobody"))
        stringly = await lookup.authenticate(bearer("opaque-stringly"))
    finally:
        await lookup.close()
    assert alice.valid and alice.account == "alice@example.org" and alice.addresses == {"alice@example.org"}
    assert carol.valid and carol.account == "carol@example.org"
    for result in (mismatch, revoked, unknown, nobody):
        assert result.outcome is Outcome.INVALID
    assert stringly.outcome is Outcome.UNAVAILABLE      # "active" must be a JSON boolean
    assert oauth_server.introspection_hits == 7


async def test_introspection_checks_audience_and_issuer_when_configured(oauth_server: OAuthServer) -> None:
    oauth_server.register_opaque("ours", active=True, username="a@example.org", aud=[AUDIENCE], iss=ISSUER)
    oauth_server.register_opaque("theirs", active=True, username="a@example.org", aud="other", iss=ISSUER)
    oauth_server.register_opaque("unsaid", active=True, username="a@example.org")
    lookup = introspection_lookup(oauth_server, issuer=ISSUER, audience=AUDIENCE)
    try:
        outcomes = [(await lookup.authenticate(bearer(t))).outcome for t in ("ours", "theirs", "unsaid")]
    finally:
        await lookup.close()
    assert outcomes == [Outcome.VALID, Outcome.INVALID, Outcome.INVALID]


async def test_introspection_with_wrong_client_secret_is_unavailable(oauth_server: OAuthServer) -> None:
    oauth_server.register_opaque("opaque-alice", active=True, username="alice@example.org")
    lookup = introspection_lookup(oauth_server, **{"introspection.client-secret": "wrong"})
    result = await check(lookup, "opaque-alice")
    assert result.outcome is Outcome.UNAVAILABLE and "401" in result.reason
    assert "opaque-alice" not in result.reason and "wrong" not in result.reason


@pytest.mark.parametrize("mode", ["down", "hang", "garbage", "error"])
async def test_introspection_trouble_is_unavailable_within_the_timeout(oauth_server: OAuthServer,
                                                                        mode: str) -> None:
    oauth_server.register_opaque("opaque-alice", active=True, username="alice@example.org")
    if mode == "down":
        oauth_server.down()
    else:
        oauth_server.mode = mode
    started = time.monotonic()
    result = await check(introspection_lookup(oauth_server, timeout=0.5), "opaque-alice")
    assert result.outcome is Outcome.UNAVAILABLE, result.reason
    assert time.monotonic() - started < 1.5


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("options, fragment", [
    ({}, "jwks-url"),
    ({"jwks-url": "https://idp/jwks", "introspection.url": "https://idp/i"}, "jwks-url"),
    ({"jwks-url": "ftp://idp/jwks", "issuer": ISSUER, "audience": AUDIENCE}, "jwks-url"),
    ({"jwks-url": "https://idp/jwks", "audience": AUDIENCE}, "issuer"),
    ({"jwks-url": "https://idp/jwks", "issuer": ISSUER}, "audience"),
    ({"jwks-url": "https://idp/jwks", "issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["none"]},
     "algorithms"),
    ({"jwks-url": "https://idp/jwks", "issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["RS256", "HS256"]},
     "algorithms"),
    ({"jwks-url": "https://idp/jwks", "issuer": ISSUER, "audience": AUDIENCE, "leeway": -1}, "leeway"),
    ({"introspection.url": "https://idp/i", "introspection.client-id": "x"}, "introspection.client-id"),
])
def test_broken_configuration_is_refused(options: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        oauth_settings("directory.x", options)
    assert err.value.key.startswith("directory.x." + fragment)
