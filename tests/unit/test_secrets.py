"""Stored-secret verification against hashes made by the real tools admins use (doveadm, htpasswd,
mkpasswd, gsasl), plus our own hash_password / scram_keys."""
from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import threading
import time

import pytest

from smtpgate.lookup import secrets
from tests.support import need_binary

PW = "Pässwörd:1 x"   # non-ASCII, a colon and a space: encodings and splitting must all be right

DOVECOT_SCHEMES = [
    "PLAIN", "CLEAR", "PLAIN.B64", "SHA", "SSHA", "SHA256", "SSHA256", "SHA512", "SSHA512", "SHA.B64",
    "SHA256.HEX", "SSHA.HEX", "SSHA512.HEX", "PLAIN-MD5", "LDAP-MD5", "SMD5",
    "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "BLF-CRYPT", "ARGON2I", "ARGON2ID",
    "SCRAM-SHA-1", "SCRAM-SHA-256",
]


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def doveadm(scheme: str, password: str = PW) -> str:
    return run(need_binary("doveadm"), "pw", "-s", scheme, "-p", password)


@pytest.mark.parametrize("scheme", DOVECOT_SCHEMES)
async def test_dovecot_scheme(scheme: str) -> None:
    stored = doveadm(scheme)
    assert stored.upper().startswith("{" + scheme.upper() + "}")
    assert await secrets.verify(stored, PW)
    assert not await secrets.verify(stored, PW + "x")
    assert not await secrets.verify(stored, PW[:-1])
    assert not await secrets.verify(stored, "")


@pytest.mark.parametrize("scheme", ["SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "ARGON2I", "ARGON2ID"])
async def test_bare_modular_crypt_form(scheme: str) -> None:
    bare = doveadm(scheme).split("}", 1)[1]
    assert bare.startswith("$")
    assert await secrets.verify(bare, PW)
    assert not await secrets.verify(bare, "wrong")


async def test_lowercase_scheme_name() -> None:
    stored = doveadm("SSHA256")
    assert await secrets.verify("{ssha256}" + stored.split("}", 1)[1], PW)


async def test_htpasswd_bcrypt() -> None:
    htpasswd = need_binary("htpasswd")
    line = run(htpasswd, "-nbB", "user", PW)
    stored = line.split(":", 1)[1]
    assert stored.startswith("$2y$")
    assert await secrets.verify(stored, PW)
    assert not await secrets.verify(stored, "Pässwörd:1 y")


async def test_bcrypt_long_password_truncated_like_htpasswd() -> None:
    long_pw = "a" * 72 + "tail-ignored-by-bcrypt"
    stored = run(need_binary("htpasswd"), "-nbB", "u", long_pw).split(":", 1)[1]
    assert await secrets.verify(stored, long_pw)      # bcrypt >= 5 would raise on > 72 bytes
    assert not await secrets.verify(stored, "a" * 71)


@pytest.mark.parametrize("method,prefix", [("sha-512", "$6$"), ("sha-256", "$5$"), ("yescrypt", "$y$")])
async def test_mkpasswd(method: str, prefix: str) -> None:
    stored = run(need_binary("mkpasswd"), "-m", method, PW)
    assert stored.startswith(prefix)
    assert await secrets.verify(stored, PW)
    assert not await secrets.verify(stored, PW.upper())


async def test_own_argon2id_hash() -> None:
    stored = secrets.hash_password(PW)
    assert stored.startswith("$argon2id$")
    assert await secrets.verify(stored, PW)
    assert await secrets.verify("{ARGON2ID}" + stored, PW)
    assert not await secrets.verify(stored, PW + " ")


async def test_plaintext() -> None:
    assert await secrets.verify("secret", "secret")
    assert not await secrets.verify("secret", "Secret")
    assert not await secrets.verify("secret", "secret2")
    assert not await secrets.verify("", "x")
    # a plaintext that looks like a hash is a hash; {PLAIN} disambiguates
    assert not await secrets.verify("$6$notahash", "$6$notahash")
    assert await secrets.verify("{PLAIN}$6$notahash", "$6$notahash")
    assert await secrets.verify("{PLAIN}{weird}", "{weird}")


def test_plaintext_of() -> None:
    assert secrets.plaintext_of("secret") == "secret"
    assert secrets.plaintext_of("{PLAIN}a:b") == "a:b"
    assert secrets.plaintext_of("{CLEAR}x") == "x"
    assert secrets.plaintext_of(doveadm("PLAIN.B64")) == PW
    assert secrets.plaintext_of(doveadm("SSHA256")) is None
    assert secrets.plaintext_of(doveadm("SHA512-CRYPT").split("}", 1)[1]) is None
    assert secrets.plaintext_of(None) is None


def test_scram_keys_match_doveadm() -> None:
    stored = doveadm("SCRAM-SHA-256")
    iterations, salt, stored_key, server_key = stored.split("}", 1)[1].split(",")
    keys = secrets.scram_keys(PW, "SHA-256", base64.b64decode(salt), int(iterations))
    assert keys.stored_key == base64.b64decode(stored_key)
    assert keys.server_key == base64.b64decode(server_key)
    assert secrets.scram_of(stored) == {"SHA-256": keys}
    assert secrets.format_scram(keys, "SHA-256") == stored


def test_scram_keys_match_gsasl() -> None:
    gsasl = need_binary("gsasl")
    salt = base64.b64encode(b"0123456789abcdef").decode()
    stored = run(gsasl, "--mkpasswd", "-m", "SCRAM-SHA-1", "-p", PW, "--salt", salt, "--iteration-count", "4096")
    keys = secrets.scram_keys(PW, "SHA-1", b"0123456789abcdef", 4096)
    assert secrets.scram_of(stored) == {"SHA-1": keys}


def test_scram_keys_random_salt() -> None:
    a, b = secrets.scram_keys("pw", "SHA-256"), secrets.scram_keys("pw", "SHA-256")
    assert a.salt != b.salt and a.stored_key != b.stored_key and a.iterations == 4096
    with pytest.raises(ValueError):
        secrets.scram_keys("pw", "MD5")
    with pytest.raises(ValueError) as exc:
        secrets.scram_keys("bad\x07secret", "SHA-256")
    assert "secret" not in str(exc.value)


async def test_unusable_values_are_false_and_logged_once_without_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="smtpgate.lookup.secrets")
    for _ in range(3):
        assert not await secrets.verify("{NOSUCH-SCHEME}topsecretvalue", "topsecretvalue")
    assert not await secrets.verify("{SHA256}!!!not-base64!!!", "x")
    assert not await secrets.verify("{SHA}" + base64.b64encode(b"short").decode(), "x")
    assert not await secrets.verify("{BLF-CRYPT}$2y$05$garbage", "x")
    assert not await secrets.verify("{ARGON2ID}$argon2id$garbage", "x")
    assert not await secrets.verify("{CRYPT}abJnggxhB/yWI", "x")   # DES crypt refused
    records = [r for r in caplog.records if "NOSUCH-SCHEME" in r.getMessage()]
    assert len(records) == 1
    assert all("topsecretvalue" not in r.getMessage() for r in caplog.records)
    assert any("BLF-CRYPT" in r.getMessage() for r in caplog.records)


async def test_awkward_passwords_never_raise() -> None:
    sha512 = doveadm("SHA512-CRYPT").split("}", 1)[1]
    assert not await secrets.verify(sha512, "nul\x00inside")
    assert not await secrets.verify(sha512, "\udcff")              # surrogate-escaped byte
    assert not await secrets.verify(doveadm("SCRAM-SHA-256"), "bell\x07")  # SASLprep refuses


async def test_unknown_user_costs_like_a_known_one() -> None:
    stored = secrets.hash_password("right")
    await secrets.verify(None, "warm-up")        # the dummy hash is made on first use

    async def timed(s: str | None) -> float:
        t = time.perf_counter()
        assert not await secrets.verify(s, "wrong")
        return time.perf_counter() - t
    known = min([await timed(stored) for _ in range(3)])   # min: robust to load spikes
    unknown = min([await timed(None) for _ in range(3)])
    assert 0.5 < unknown / known < 2.0, (known, unknown)


async def test_decoy_is_checked_but_never_accepted() -> None:
    assert not await secrets.verify(None, "decoy-secret", decoy="decoy-secret")
    stored = doveadm("SHA512-CRYPT")
    t = time.perf_counter()
    assert not await secrets.verify(None, PW, decoy=stored)
    assert time.perf_counter() - t < 0.1   # cost of the decoy's scheme, not of argon2id


async def test_hashing_stays_off_the_loop_and_bounded() -> None:
    secrets.configure_executor(2)
    try:
        stored = secrets.hash_password("pw")
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.005)
        t = asyncio.create_task(ticker())
        results = await asyncio.gather(*(secrets.verify(stored, "pw") for _ in range(6)))
        stop = True
        await t
        assert all(results)
        assert ticks >= 20       # six argon2id checks take >= 3 rounds of ~0.1 s; the loop kept running
        workers = [th for th in threading.enumerate() if th.name.startswith("smtpgate-hash")]
        assert 1 <= len(workers) <= 2
    finally:
        secrets.configure_executor(None)
    with pytest.raises(ValueError):
        secrets.configure_executor(0)
