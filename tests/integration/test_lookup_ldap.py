"""LdapLookup against a real slapd: bind with a DN template, search-then-bind, TLS, failures."""
from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from smtpgate.config.directory import ldap_settings
from smtpgate.config.errors import ConfigError
from smtpgate.config.model import DirectorySettings
from smtpgate.lookup.base import Credentials, Outcome
from smtpgate.lookup.ldap import LdapLookup
from tests.fixtures.slapd import PEOPLE, SERVICE_DN, SERVICE_PW, SUFFIX, USERS, Pki, Slapd, make_pki
from tests.fixtures.slapd import ldap_pki, slapd, slapd_private  # noqa: F401  (fixtures)
from tests.support import free_port

pytestmark = pytest.mark.service("slapd")

ALICE_PW = USERS["alice"][0]
BOB_PW = USERS["bob"][0]
SEARCH_FILTER = "(&(objectClass=inetOrgPerson)(|(uid={user})(mail={user})))"


def make(url: str, timeout: float = 3.0, concurrency: int = 4, **options: object) -> LdapLookup:
    return LdapLookup(DirectorySettings(id="ldap", type="ldap", options=ldap_settings("directory.ldap", {"url": url, **options}),
                                        timeout=timeout, concurrency=concurrency))


def template(url: str, **options: object) -> LdapLookup:
    return make(url, **{"bind.dn-template": f"uid={{local}},{PEOPLE}",
                        "attributes.address": ["mail", "mailLocalAddress"], **options})


def search(url: str, **options: object) -> LdapLookup:
    return make(url, **{"search.base-dn": SUFFIX, "search.filter": SEARCH_FILTER,
                        "attributes.address": ["mail", "mailLocalAddress"], "attributes.name": "uid",
                        **options})


def plain(user: str, password: str) -> Credentials:
    return Credentials(mechanism="PLAIN", username=user, secret=password)


async def check(lookup: LdapLookup, user: str, password: str):
    try:
        return await lookup.authenticate(plain(user, password))
    finally:
        await lookup.close()


# --------------------------------------------------------------------------- bind with a DN template

async def test_template_valid_reads_addresses_as_the_user(slapd: Slapd) -> None:
    result = await check(template(slapd.url), "alice", ALICE_PW)
    assert result.outcome is Outcome.VALID
    assert result.account == "alice"
    # mailLocalAddress is readable only when bound, so its presence proves the read ran as alice.
    assert result.addresses == {"alice@example.org", "a.liddell@example.org", "postmaster@example.org"}


async def test_template_local_part_of_an_address_login(slapd: Slapd) -> None:
    result = await check(template(slapd.url), "alice@example.org", ALICE_PW)
    assert result.valid and result.account == "alice@example.org"


async def test_template_wrong_password_and_unknown_user_are_invalid(slapd: Slapd) -> None:
    lookup = template(slapd.url)
    try:
        wrong = await lookup.authenticate(plain("alice", "not-her-password"))
        unknown = await lookup.authenticate(plain("nobody", ALICE_PW))
    finally:
        await lookup.close()
    assert wrong.outcome is Outcome.INVALID and unknown.outcome is Outcome.INVALID
    assert "not-her-password" not in wrong.reason + repr(wrong)


async def test_template_escapes_dn_special_characters(slapd: Slapd) -> None:
    lookup = make(slapd.url, **{"bind.dn-template": f"uid={{user}},{PEOPLE}"})
    try:
        dave = await lookup.authenticate(plain("d,ave", USERS["d,ave"][0]))
        # Unescaped, this would be a DN one level deeper; escaped it is simply nobody.
        injected = await lookup.authenticate(plain("alice,ou=people", ALICE_PW))
    finally:
        await lookup.close()
    assert dave.valid and dave.addresses == {"dave@example.org"}
    assert injected.outcome is Outcome.INVALID


async def test_template_needing_a_domain_rejects_a_bare_login(slapd: Slapd) -> None:
    lookup = make(slapd.url, **{"bind.dn-template": f"uid={{local}},ou={{domain}},{SUFFIX}"})
    assert (await check(lookup, "alice", ALICE_PW)).outcome is Outcome.INVALID


async def test_empty_password_is_refused_before_any_ldap_traffic(slapd: Slapd) -> None:
    dn = f"uid=alice,{PEOPLE}"
    # The hazard is real on this server: an empty-password simple bind is an unauthenticated bind that
    # succeeds (slapd.conf has "allow bind_anon_dn", like many permissive servers).
    who = subprocess.run(["ldapwhoami", "-x", "-H", slapd.url, "-D", dn, "-w", ""],
                         capture_output=True, text=True, timeout=10)
    assert who.returncode == 0, who.stderr
    assert (await check(template(slapd.url), "alice", "")).outcome is Outcome.INVALID
    # Against a port where nothing listens the answer is still INVALID, never UNAVAILABLE: no connection
    # was attempted.
    assert (await check(template(f"ldap://127.0.0.1:{free_port()}"), "alice", "")).outcome is Outcome.INVALID
    assert (await check(search(slapd.url), "alice", "")).outcome is Outcome.INVALID


async def test_token_credentials_are_not_passwords(slapd: Slapd) -> None:
    lookup = template(slapd.url)
    try:
        result = await lookup.authenticate(Credentials("XOAUTH2", "alice", ALICE_PW, kind="token"))
    finally:
        await lookup.close()
    assert result.outcome is Outcome.INVALID


# --------------------------------------------------------------------------- search then bind

async def test_search_anonymous_by_uid_and_by_alternate_address(slapd: Slapd) -> None:
    lookup = search(slapd.url)
    try:
        by_uid = await lookup.authenticate(plain("alice", ALICE_PW))
        by_mail = await lookup.authenticate(plain("A.Liddell@example.org", ALICE_PW))
        wrong = await lookup.authenticate(plain("alice", BOB_PW))
        unknown = await lookup.authenticate(plain("nobody@example.org", ALICE_PW))
    finally:
        await lookup.close()
    for result in (by_uid, by_mail):
        assert result.valid
        assert result.account == "alice"               # attributes.name = uid
        # Anonymous search cannot read mailLocalAddress (ACL), so it is absent here.
        assert result.addresses == {"alice@example.org", "a.liddell@example.org"}
    assert wrong.outcome is Outcome.INVALID and unknown.outcome is Outcome.INVALID


async def test_search_as_service_account(slapd: Slapd) -> None:
    lookup = search(slapd.url, **{"search.bind-dn": SERVICE_DN, "search.bind-secret": SERVICE_PW})
    result = await check(lookup, "bob@example.org", BOB_PW)
    assert result.valid and result.account == "bob" and result.addresses == {"bob@example.org"}
    lookup = search(slapd.url, **{"search.bind-dn": SERVICE_DN, "search.bind-secret": SERVICE_PW})
    alice = await check(lookup, "alice", ALICE_PW)
    assert "postmaster@example.org" in alice.addresses   # readable by the bound service account


async def test_search_with_a_wrong_service_secret_is_unavailable(slapd: Slapd) -> None:
    lookup = search(slapd.url, **{"search.bind-dn": SERVICE_DN, "search.bind-secret": "wrong"})
    result = await check(lookup, "alice", ALICE_PW)
    assert result.outcome is Outcome.UNAVAILABLE and "service account" in result.reason


async def test_search_matching_several_entries_is_invalid(slapd: Slapd) -> None:
    # shared@example.org is a mail value of both carol and carl.
    result = await check(search(slapd.url), "shared@example.org", USERS["carol"][0])
    assert result.outcome is Outcome.INVALID


@pytest.mark.parametrize("login", ["ali*", "*", "*)(uid=*", "alice)(|(uid=*", "*)(objectClass=*"])
async def test_filter_injection_matches_nobody(slapd: Slapd, login: str) -> None:
    # Unescaped, "ali*" would find exactly alice and her password would log "ali*" in.
    result = await check(search(slapd.url), login, ALICE_PW)
    assert result.outcome is Outcome.INVALID


async def test_parallel_logins_share_the_bounded_pool(slapd: Slapd) -> None:
    lookup = search(slapd.url, concurrency=3)
    try:
        logins = [("alice", ALICE_PW), ("bob", BOB_PW), ("alice", "nope")] * 5
        results = await asyncio.gather(*(lookup.authenticate(plain(u, p)) for u, p in logins))
    finally:
        await lookup.close()
    assert [r.outcome for r in results] == [Outcome.VALID, Outcome.VALID, Outcome.INVALID] * 5


# --------------------------------------------------------------------------- TLS

async def test_ldaps_with_the_ca_verifies(slapd: Slapd, ldap_pki: Pki) -> None:
    result = await check(template(slapd.ldaps_url, **{"tls.ca-file": str(ldap_pki.ca_cert)}), "bob", BOB_PW)
    assert result.valid


async def test_starttls_with_the_ca_verifies(slapd: Slapd, ldap_pki: Pki) -> None:
    lookup = template(slapd.url, **{"tls.starttls": True, "tls.ca-file": str(ldap_pki.ca_cert)})
    assert (await check(lookup, "bob", BOB_PW)).valid


async def test_untrusted_certificate_is_unavailable_unless_allowed(slapd: Slapd) -> None:
    for lookup in (template(slapd.ldaps_url), template(slapd.url, **{"tls.starttls": True})):
        result = await check(lookup, "bob", BOB_PW)
        assert result.outcome is Outcome.UNAVAILABLE
        assert "CERTIFICATE_VERIFY_FAILED" in result.reason
    lookup = template(slapd.ldaps_url, **{"tls.allow-invalid-certs": True})
    assert (await check(lookup, "bob", BOB_PW)).valid


async def test_certificate_for_another_host_name_is_unavailable(tmp_path) -> None:
    pki = make_pki(tmp_path / "pki", hosts=("ldap.invalid",))
    server = Slapd(tmp_path / "slapd", pki)
    server.start()
    try:
        result = await check(template(server.ldaps_url, **{"tls.ca-file": str(pki.ca_cert)}), "bob", BOB_PW)
        assert result.outcome is Outcome.UNAVAILABLE and "mismatch" in result.reason
        relaxed = template(server.ldaps_url, **{"tls.ca-file": str(pki.ca_cert), "tls.allow-invalid-certs": True})
        assert (await check(relaxed, "bob", BOB_PW)).valid
    finally:
        server.stop()


# --------------------------------------------------------------------------- the server misbehaves

async def test_stopped_server_is_unavailable(slapd_private: Slapd) -> None:
    lookup = template(slapd_private.url)
    try:
        assert (await lookup.authenticate(plain("bob", BOB_PW))).valid
        slapd_private.stop()
        started = time.monotonic()
        result = await lookup.authenticate(plain("bob", BOB_PW))
    finally:
        await lookup.close()
    assert result.outcome is Outcome.UNAVAILABLE
    assert time.monotonic() - started < 2


async def test_black_hole_is_unavailable_within_the_timeout(slapd_private: Slapd) -> None:
    lookup = make(slapd_private.url, timeout=0.5, concurrency=1, **{"bind.dn-template": f"uid={{user}},{PEOPLE}"})
    slapd_private.freeze()
    started = time.monotonic()
    try:
        # concurrency=1: the second call waits for the only worker and must still answer on time.
        results = await asyncio.gather(lookup.authenticate(plain("bob", BOB_PW)),
                                       lookup.authenticate(plain("alice", ALICE_PW)))
    finally:
        await lookup.close()
    elapsed = time.monotonic() - started
    assert [r.outcome for r in results] == [Outcome.UNAVAILABLE, Outcome.UNAVAILABLE]
    assert 0.4 < elapsed < 1.5


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("options, fragment", [
    ({"bind.dn-template": "uid={user}"}, "url"),
    ({"url": "http://127.0.0.1", "bind.dn-template": "uid={user}"}, "url"),
    ({"url": "ldaps://127.0.0.1", "tls.starttls": True, "bind.dn-template": "uid={user}"}, "tls.starttls"),
    ({"url": "ldap://127.0.0.1"}, "bind.dn-template"),
    ({"url": "ldap://127.0.0.1", "bind.dn-template": "uid=fixed"}, "bind.dn-template"),
    ({"url": "ldap://127.0.0.1", "search.base-dn": SUFFIX}, "search"),
    ({"url": "ldap://127.0.0.1", "search.base-dn": SUFFIX, "search.filter": "(uid={user})",
      "search.bind-dn": SERVICE_DN}, "search.bind-secret"),
    ({"url": "ldap://127.0.0.1", "bind.dn-template": "uid={user}", "search.base-dn": SUFFIX}, "bind.dn-template"),
])
def test_broken_configuration_is_refused(options: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        ldap_settings("directory.x", options)
    assert err.value.key.startswith("directory.x." + fragment)

