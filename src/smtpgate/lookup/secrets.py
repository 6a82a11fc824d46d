"""Verification of stored secrets (SPEC §5.1), off the event loop.

A stored secret is recognised by its prefix:

* ``{SCHEME}value`` -- Dovecot's notation. Schemes are case-insensitive; digest schemes accept the
  ``.HEX`` / ``.B64`` / ``.BASE64`` suffixes Dovecot uses for the encoding (default base64, except
  ``PLAIN-MD5`` which is hex). ``{CRYPT}`` delegates to the ``$id$`` form that follows.
* a bare modular-crypt string with a known id: ``$argon2id$``, ``$argon2i$``, ``$2a$``/``$2b$``/``$2y$``
  (bcrypt), ``$6$``/``$5$``/``$1$``/``$y$`` (crypt(3)).
* anything else is a plaintext password.

Consequence worth knowing: a plaintext password that itself starts with ``{WORD}`` or with one of the ids
above is read as a hash -- store such a password as ``{PLAIN}...``.

All hashing runs in ONE module-level bounded thread pool so a burst of logins cannot starve the event loop
or spawn unbounded threads; every comparison is constant-time. An unknown user (``stored=None``) is checked
against a decoy (by default a dummy argon2id hash with :func:`hash_password`'s parameters) so that
"no such user" costs the same as "wrong password". Secrets never appear in logs or exceptions.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets as _random
import warnings
from collections.abc import Iterable

import argon2
import bcrypt
import scramp

from ..executor import configure_executor, run_sync
from .base import ScramKeys

try:  # stdlib crypt exists up to 3.12; the crypt-r package carries the same API from 3.13 on
    import crypt_r as _crypt  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt as _crypt  # type: ignore[no-redef]

log = logging.getLogger("smtpgate.lookup.secrets")


__all__ = [
    "verify", "plaintext_of", "scram_of", "hash_password", "scram_keys", "configure_executor", "run_sync",
    "scheme_of", "cost", "slowest", "parse_decoy_scheme", "make_decoy", "default_decoy",
]

# --------------------------------------------------------------------------------------------------------
# parsing

_BRACED = re.compile(r"\{([A-Za-z0-9._-]+)\}")
# Only ids we know: a bare "$word$" prefix on a plaintext password must not turn it into a hash.
_MCF = re.compile(r"\$(argon2id|argon2i|argon2d|2a|2b|2y|6|5|1|y|gy|7)\$")

_DIGESTS: dict[str, tuple[str, bool, str]] = {
    # scheme: (hashlib name, salted, default encoding)
    "SHA": ("sha1", False, "b64"), "SHA1": ("sha1", False, "b64"),
    "SSHA": ("sha1", True, "b64"),
    "SHA256": ("sha256", False, "b64"), "SSHA256": ("sha256", True, "b64"),
    "SHA512": ("sha512", False, "b64"), "SSHA512": ("sha512", True, "b64"),
    "PLAIN-MD5": ("md5", False, "hex"), "LDAP-MD5": ("md5", False, "b64"), "SMD5": ("md5", True, "b64"),
}
_PLAIN = {"PLAIN", "CLEAR", "CLEARTEXT"}
_CRYPT_IDS = {"SHA512-CRYPT": "6", "SHA256-CRYPT": "5", "MD5-CRYPT": "1"}
_SCRAM = {"SCRAM-SHA-1": "SHA-1", "SCRAM-SHA-256": "SHA-256"}
_ENCODINGS = {"HEX": "hex", "B64": "b64", "BASE64": "b64"}


class _Malformed(Exception):
    """The stored value cannot be used; the message names the scheme only."""


def _split(stored: str) -> tuple[str, str, str | None]:
    """Return (scheme, value, encoding). Scheme "" means plaintext; for bare MCF strings the scheme is
    "MCF" and value is the whole string."""
    m = _BRACED.match(stored)
    if m:
        name = m.group(1).upper()
        encoding = None
        base, dot, suffix = name.rpartition(".")
        if dot and suffix in _ENCODINGS:
            name, encoding = base, _ENCODINGS[suffix]
        return name, stored[m.end():], encoding
    if _MCF.match(stored):
        return "MCF", stored, None
    return "", stored, None


def scheme_of(stored: str) -> str:
    """The scheme name for logs ("PLAIN" for plaintext, "$6$"-style ids for bare crypt strings)."""
    scheme, value, _ = _split(stored)
    if scheme == "MCF":
        return value[: value.index("$", 1) + 1]
    return scheme or "PLAIN"


def _decode(value: str, encoding: str) -> bytes:
    try:
        if encoding == "hex":
            return bytes.fromhex(value.strip())
        return base64.b64decode(value.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise _Malformed("bad encoding") from None


def plaintext_of(stored: str | None) -> str | None:
    """The clear-text password if the store holds it (bare plaintext or ``{PLAIN}``/``{CLEAR}``), for
    mechanisms that need the secret itself (CRAM-MD5, SCRAM without stored keys). Otherwise None."""
    if stored is None:
        return None
    scheme, value, encoding = _split(stored)
    if scheme == "":
        return value
    if scheme in _PLAIN:
        if encoding is None:
            return value
        try:
            return _decode(value, encoding).decode("utf-8")
        except (_Malformed, UnicodeDecodeError):
            return None
    return None


def _parse_scram(value: str) -> ScramKeys:
    parts = value.split(",")
    if len(parts) < 4:
        raise _Malformed("expected iterations,salt,stored-key,server-key")
    # ASCII digits only: int() would also take "٤٠٩٦", " 4096" or "4_096".
    if not (parts[0].isascii() and parts[0].isdigit() and len(parts[0]) <= 10):
        raise _Malformed("bad iteration count")
    iterations = int(parts[0])
    if iterations < 1:
        raise _Malformed("bad iteration count")
    salt, stored_key, server_key = (_decode(p, "b64") for p in parts[1:4])
    return ScramKeys(salt=salt, iterations=iterations, stored_key=stored_key, server_key=server_key)


def scram_of(stored: str | None) -> dict[str, ScramKeys]:
    """SCRAM keys when the stored value is Dovecot's ``{SCRAM-SHA-1}``/``{SCRAM-SHA-256}`` form
    (``iterations,salt,StoredKey,ServerKey`` in base64 -- also what ``gsasl --mkpasswd`` prints)."""
    if stored is None:
        return {}
    scheme, value, _ = _split(stored)
    if scheme in _SCRAM:
        try:
            return {_SCRAM[scheme]: _parse_scram(value)}
        except _Malformed:
            _log_problem(scheme, "malformed")
    return {}


# --------------------------------------------------------------------------------------------------------
# checking (runs on the pool)

_PLAIN_KEY = _random.token_bytes(32)  # comparing HMACs hides the plaintext's length as well
_hasher = argon2.PasswordHasher()     # RFC 9106 "low memory" profile: t=3, m=64 MiB, p=4
_logged: set[tuple[str, str]] = set()


def _log_problem(scheme: str, problem: str) -> None:
    key = (scheme, problem)
    if key not in _logged:  # once per scheme and problem: a broken row must not flood the log
        _logged.add(key)
        log.warning("stored secret with scheme %s is %s; such credentials never verify", scheme, problem)


def _eq(a: bytes, b: bytes) -> bool:
    # Keyed BLAKE2b is a MAC in one C call (hashlib's own code); OpenSSL 3's one-shot HMAC behind
    # hmac.digest sets up a MAC context per call and costs 2-4x more -- on every plaintext-list AUTH.
    return hmac.compare_digest(hashlib.blake2b(a, key=_PLAIN_KEY).digest(),
                               hashlib.blake2b(b, key=_PLAIN_KEY).digest())


def _check_crypt(pw: bytes, value: str) -> bool:
    try:
        out = _crypt.crypt(pw.decode("utf-8", "surrogateescape"), value)
    except (ValueError, UnicodeEncodeError):  # NUL in the password, unencodable salt
        return False
    if not out or out.startswith("*"):
        raise _Malformed("not understood by crypt(3)")
    return hmac.compare_digest(out.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))


def _check_bcrypt(pw: bytes, value: str) -> bool:
    # bcrypt only reads 72 bytes; libraries >= 5 refuse longer input, while htpasswd and Dovecot
    # truncate -- truncate too, so their hashes keep verifying.
    try:
        return bcrypt.checkpw(pw[:72], value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise _Malformed("not a valid bcrypt hash") from None


def _check_argon2(pw: bytes, value: str) -> bool:
    try:
        return _hasher.verify(value, pw)
    except argon2.exceptions.VerifyMismatchError:
        return False
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError, ValueError):
        raise _Malformed("not a valid argon2 hash") from None


def _check_scram(pw: bytes, hash_name: str, value: str) -> bool:
    keys = _parse_scram(value)
    try:
        derived = scram_keys(pw.decode("utf-8", "surrogateescape"), hash_name, keys.salt, keys.iterations)
    except ValueError:  # SASLprep refuses the password, so it cannot be the one that was stored
        return False
    return hmac.compare_digest(derived.stored_key, keys.stored_key)


def _check_mcf(pw: bytes, value: str) -> bool:
    if value.startswith("$argon2"):
        return _check_argon2(pw, value)
    if value.startswith("$2"):
        return _check_bcrypt(pw, value)
    return _check_crypt(pw, value)


def _check(stored: str, pw: bytes) -> bool:
    scheme, value, encoding = _split(stored)
    try:
        if scheme == "":
            return _eq(pw, value.encode("utf-8", "surrogateescape"))
        if scheme == "MCF":
            return _check_mcf(pw, value)
        if scheme in _PLAIN:
            clear = _decode(value, encoding) if encoding else value.encode("utf-8", "surrogateescape")
            return _eq(pw, clear)
        if scheme in _DIGESTS:
            algo, salted, default_enc = _DIGESTS[scheme]
            raw = _decode(value, encoding or default_enc)
            size = hashlib.new(algo).digest_size
            if len(raw) < size or (not salted and len(raw) != size):
                raise _Malformed("of the wrong length")
            digest, salt = raw[:size], raw[size:]
            return hmac.compare_digest(hashlib.new(algo, pw + salt).digest(), digest)
        if scheme in _CRYPT_IDS:
            if not value.startswith(f"${_CRYPT_IDS[scheme]}$"):
                raise _Malformed("not in $id$ form")
            return _check_crypt(pw, value)
        if scheme == "CRYPT":
            if not _MCF.match(value):  # DES crypt: 8-character passwords, refuse rather than accept
                raise _Malformed("DES or unknown crypt")
            return _check_mcf(pw, value)
        if scheme == "BLF-CRYPT":
            return _check_bcrypt(pw, value)
        if scheme in ("ARGON2ID", "ARGON2I"):
            if not value.startswith(f"${scheme.lower()}$"):
                raise _Malformed("not in $argon2 form")
            return _check_argon2(pw, value)
        if scheme in _SCRAM:
            return _check_scram(pw, _SCRAM[scheme], value)
        raise _Malformed("unsupported")
    except _Malformed as exc:
        _log_problem(scheme_of(stored), str(exc))
        return False
    except Exception as exc:  # a library surprise must read as "invalid", never escape to the session
        _log_problem(scheme_of(stored), f"unverifiable ({type(exc).__name__})")
        return False


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(_random.token_urlsafe(24))


# --------------------------------------------------------------------------------------------------------
# decoys: what an unknown user's password is checked against
#
# Each lookup fixes its decoy when it starts, from what it stores (the slowest secret it holds, see
# :func:`slowest`) or from configuration (:func:`make_decoy`), so "no such user" costs what "wrong password"
# costs for its slowest users -- and never depends on which logins came before (an attacker must not be
# able to pick the decoy by logging in first).

_ARGON2_PARAMS = re.compile(r"\$argon2(?:id|i|d)\$(?:v=[0-9]+\$)?m=([0-9]{1,9}),t=([0-9]{1,9}),p=([0-9]{1,9})\$")
_BCRYPT_COST = re.compile(r"\$2[abxy]?\$([0-9][0-9])\$")
_CRYPT_ROUNDS = re.compile(r"\$[56]\$rounds=([0-9]{1,9})\$")


def cost(stored: str) -> float:
    """A rough verification cost in microseconds, to rank a store's secrets (not a measurement).

    Ordering is what matters: plaintext < digests < md5-crypt < sha-crypt/SCRAM (per round) < bcrypt
    (2^cost) and argon2 (memory x passes)."""
    scheme, value, _ = _split(stored)
    if scheme in ("", *_PLAIN):
        return 0.1
    if scheme in _DIGESTS:
        return 1.0
    if scheme in _SCRAM:
        try:
            return _parse_scram(value).iterations * 0.25
        except _Malformed:
            return 0.0
    if scheme in ("ARGON2ID", "ARGON2I", "BLF-CRYPT", "CRYPT", "MCF", *_CRYPT_IDS):
        if m := _ARGON2_PARAMS.match(value):
            return int(m.group(1)) * int(m.group(2)) * 0.8
        if m := _BCRYPT_COST.match(value):
            return 2 ** min(int(m.group(1)), 31) * 60.0
        if value.startswith(("$6$", "$5$")):
            m = _CRYPT_ROUNDS.match(value)
            return (int(m.group(1)) if m else 5000) * (0.25 if value.startswith("$6$") else 0.4)
        if value.startswith("$1$"):
            return 300.0
        if value.startswith(("$y$", "$gy$", "$7$")):
            return 50_000.0
    return 0.0


def slowest(stored: Iterable[str]) -> str | None:
    """The stored secret that costs most to verify (the first of equals), or None for none."""
    best: str | None = None
    best_cost = -1.0
    for value in stored:
        c = cost(value)
        if c > best_cost:
            best, best_cost = value, c
    return best


#: decoy-scheme name -> (kind, default parameters)
_DECOY_SCHEMES: dict[str, tuple[str, dict[str, int]]] = {
    "PLAIN": ("plain", {}),
    **{name: ("digest", {}) for name in _DIGESTS},
    "SHA512-CRYPT": ("crypt", {"rounds": 5000}), "SHA256-CRYPT": ("crypt", {"rounds": 5000}),
    "MD5-CRYPT": ("crypt", {}),
    "BLF-CRYPT": ("bcrypt", {"cost": 10}),
    # what hash_password (and so `smtpgate user`) writes
    "ARGON2ID": ("argon2", {"m": _hasher.memory_cost, "t": _hasher.time_cost, "p": _hasher.parallelism}),
    "ARGON2I": ("argon2", {"m": _hasher.memory_cost, "t": _hasher.time_cost, "p": _hasher.parallelism}),
    "SCRAM-SHA-1": ("scram", {"i": 4096}), "SCRAM-SHA-256": ("scram", {"i": 4096}),
}
_DECOY_LIMITS = {"rounds": (1000, 999_999_999), "cost": (4, 31), "m": (8, 4_194_304), "t": (1, 100),
                 "p": (1, 255), "i": (1, 10_000_000)}


def parse_decoy_scheme(spec: str) -> tuple[str, dict[str, int]]:
    """``"SHA512-CRYPT"``, ``"SHA512-CRYPT rounds=10000"``, ``"BLF-CRYPT cost=12"``,
    ``"ARGON2ID m=65536 t=3 p=4"``, ``"SCRAM-SHA-256 i=4096"`` -> (scheme, parameters). ValueError with
    a one-line reason otherwise."""
    words = spec.split()
    if not words or words[0].upper() not in _DECOY_SCHEMES:
        raise ValueError(f"expected one of {', '.join(sorted(_DECOY_SCHEMES))} (optionally with parameters)")
    scheme = words[0].upper()
    params = dict(_DECOY_SCHEMES[scheme][1])
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or key not in params:
            raise ValueError(f"{scheme} takes {', '.join(f'{k}=' for k in params) or 'no parameters'}, "
                             f"not {word!r}")
        low, high = _DECOY_LIMITS[key]
        if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
            raise ValueError(f"{key} must be a number from {low} to {high}")
        params[key] = int(value)
    return scheme, params


def make_decoy(spec: str) -> str:
    """A stored secret of the scheme ``spec`` names (see :func:`parse_decoy_scheme`) for a random password
    nobody knows. CPU-bound for slow schemes: call via :func:`run_sync`."""
    scheme, p = parse_decoy_scheme(spec)
    kind = _DECOY_SCHEMES[scheme][0]
    if scheme == "ARGON2ID" and p == _DECOY_SCHEMES[scheme][1]:
        return _dummy_hash()  # the same parameters: one per process is enough
    secret = _random.token_urlsafe(24)
    if kind == "plain":
        return "{PLAIN}" + secret
    if kind == "digest":
        algo, salted, enc = _DIGESTS[scheme]
        salt = _random.token_bytes(8) if salted else b""
        raw = hashlib.new(algo, secret.encode() + salt).digest() + salt
        return f"{{{scheme}}}" + (raw.hex() if enc == "hex" else base64.b64encode(raw).decode())
    if kind == "crypt":
        ident = _CRYPT_IDS[scheme]
        rounds = f"rounds={p['rounds']}$" if "rounds" in p else ""
        salt = _random.token_urlsafe(12).replace("-", ".").replace("_", "/")[:16]
        return f"{{{scheme}}}" + _crypt.crypt(secret, f"${ident}${rounds}{salt}$")
    if kind == "bcrypt":
        return "{BLF-CRYPT}" + bcrypt.hashpw(secret.encode(), bcrypt.gensalt(p["cost"])).decode()
    if kind == "argon2":
        hasher = argon2.PasswordHasher(time_cost=p["t"], memory_cost=p["m"], parallelism=p["p"],
                                       type=argon2.Type.ID if scheme == "ARGON2ID" else argon2.Type.I)
        return f"{{{scheme}}}" + hasher.hash(secret)
    return format_scram(scram_keys(secret, _SCRAM[scheme], iterations=p["i"]), _SCRAM[scheme])


def default_decoy() -> str:
    """A decoy with :func:`hash_password`'s parameters (the internal user store's own). CPU-bound."""
    return _dummy_hash()


def _check_decoy(decoy: str | None, pw: bytes) -> bool:
    _check(decoy if decoy is not None else _dummy_hash(), pw)
    return False


async def verify(stored: str | None, password: str, *, decoy: str | None = None) -> bool:
    """True if ``password`` matches ``stored``.

    ``stored=None`` means "unknown user": the password is checked against ``decoy`` (a stored secret of
    the same kind the store normally holds, so the cost matches) or a dummy argon2id hash, and the answer
    is always False. Unusable stored values give False and are logged once per scheme (never the value).
    """
    try:
        pw = password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        pw = None
    if stored is None or pw is None:
        if decoy is not None and _cheap(decoy):
            return _check_decoy(decoy, pw if pw is not None else b"")
        await run_sync(_check_decoy, decoy, pw if pw is not None else b"")
        return False
    if _cheap(stored):
        return _check(stored, pw)
    return await run_sync(_check, stored, pw)


def verify_now(stored: str | None, password: str, *, decoy: str | None = None) -> bool | None:
    """:func:`verify` without the pool, for cheap schemes only; None when the check needs the pool."""
    target = stored if stored is not None else decoy
    if target is None or not _cheap(target):
        return None
    try:
        pw = password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        pw = b""
        stored = None
    if stored is None:
        return _check_decoy(target, pw)
    return _check(stored, pw)


def _cheap(stored: str) -> bool:
    """Plaintext and single-digest schemes cost microseconds: a thread hop would cost more than the
    check itself, so they run inline. Every KDF (crypt, bcrypt, argon2, PBKDF2) goes to the pool."""
    scheme = _split(stored)[0]
    return scheme == "" or scheme in _PLAIN or scheme in _DIGESTS


# --------------------------------------------------------------------------------------------------------
# creating

def hash_password(password: str) -> str:
    """An argon2id hash (``$argon2id$v=19$m=65536,t=3,p=4$...``). CPU-bound: call via :func:`run_sync`."""
    return _hasher.hash(password)


_SCRAM_NAMES = {"SHA-1": "SCRAM-SHA-1", "SHA1": "SCRAM-SHA-1", "SHA-256": "SCRAM-SHA-256",
                "SHA256": "SCRAM-SHA-256", "SCRAM-SHA-1": "SCRAM-SHA-1", "SCRAM-SHA-256": "SCRAM-SHA-256"}


def scram_keys(password: str, hash_name: str, salt: bytes | None = None, iterations: int = 4096) -> ScramKeys:
    """RFC 5802 stored keys for ``hash_name`` ("SHA-256" or "SHA-1"). CPU-bound (PBKDF2).

    Derived with scramp -- the library the SCRAM mechanism itself uses -- rather than hashlib.pbkdf2_hmac,
    so SASLprep of the password and the key derivation can never drift apart between storing and checking.
    """
    try:
        mech = _SCRAM_NAMES[hash_name.upper()]
    except KeyError:
        raise ValueError(f"unsupported SCRAM hash {hash_name!r}") from None
    if salt is None:
        salt = _random.token_bytes(16)
    try:
        salt_out, stored_key, server_key, iters = scramp.ScramMechanism(mech).make_auth_info(
            password, iteration_count=iterations, salt=salt)
    except scramp.ScramException:  # SASLprep rejected the password; the exception text may quote it
        raise ValueError("password contains characters SASLprep prohibits") from None
    return ScramKeys(salt=salt_out, iterations=iters, stored_key=stored_key, server_key=server_key)


def format_scram(keys: ScramKeys, hash_name: str) -> str:
    """Dovecot's ``{SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey`` notation (read by scram_of)."""
    mech = _SCRAM_NAMES[hash_name.upper()]
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"{{{mech}}}{keys.iterations},{b64(keys.salt)},{b64(keys.stored_key)},{b64(keys.server_key)}"
