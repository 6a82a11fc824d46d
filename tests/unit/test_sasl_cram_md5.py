"""CRAM-MD5 (RFC 2195): the RFC's test vector and client responses computed independently with hmac."""
from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from smtpgate.lookup.base import SecretRecord
from smtpgate.sasl.base import Challenge, Failure, NeedSecret, Success
from smtpgate.sasl.cram_md5 import CramMD5


def client_response(user: str, password: str, challenge: bytes) -> bytes:
    return f"{user} {hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()}".encode()


def test_rfc2195_example():
    m = CramMD5(hostname="ignored", challenge=b"<1896.697170952@postoffice.reston.mci.net>")
    assert m.start(None) == Challenge(b"<1896.697170952@postoffice.reston.mci.net>")
    assert m.respond(b"tim b913a602c7eda7a495b4e6e7334d3890") == NeedSecret("tim")
    done = m.secret(SecretRecord(account="tim@example.com", plaintext="tanstaaftanstaaf",
                                 addresses=frozenset({"tim@example.com"})))
    assert done == Success(account="tim@example.com", addresses=frozenset({"tim@example.com"}))


def test_challenge_shape_and_uniqueness():
    m1, m2 = CramMD5(hostname="mx.example.com"), CramMD5(hostname="mx.example.com")
    assert m1.server_first
    c1, c2 = m1.start(None).data, m2.start(None).data
    assert re.fullmatch(rb"<\d+\.\d+@mx\.example\.com>", c1)
    assert c1 != c2


def exchange(password_sent: str, record: SecretRecord | None, user: str = "tim", upper: bool = False):
    m = CramMD5(hostname="mx.example.com")
    challenge = m.start(None).data
    response = client_response(user, password_sent, challenge)
    if upper:
        name, digest = response.rsplit(b" ", 1)
        response = name + b" " + digest.upper()
    assert m.respond(response) == NeedSecret(user)
    return m.secret(record)


def test_success_and_wrong_password():
    rec = SecretRecord(account="tim", plaintext="pässwörd")
    assert exchange("pässwörd", rec) == Success(account="tim")
    assert exchange("pässwörd", rec, upper=True) == Success(account="tim")
    assert exchange("wrong", rec) == Failure("invalid", "digest mismatch", "tim")


def test_username_with_space_and_account_fallback():
    assert exchange("pw", SecretRecord(account="", plaintext="pw"), user="tim smith") == Success(account="tim smith")


def test_unknown_user_and_record_without_plaintext():
    assert exchange("pw", None).kind == "invalid"
    # a client that guesses an empty password must not match a record with no plaintext
    assert exchange("", SecretRecord(account="tim")).kind == "invalid"


def test_initial_response_refused():
    action = CramMD5(hostname="h").start(b"tim 0123")
    assert isinstance(action, Failure) and action.kind == "malformed"


@pytest.mark.parametrize("response", [
    b"", b"tim", b"tim b913a602c7eda7a495b4e6e7334d389", b"tim b913a602c7eda7a495b4e6e7334d3890f",
    b"tim zz13a602c7eda7a495b4e6e7334d3890", b" b913a602c7eda7a495b4e6e7334d3890",
    b"t\xffm b913a602c7eda7a495b4e6e7334d3890", b"t\x00m b913a602c7eda7a495b4e6e7334d3890",
])
def test_malformed(response):
    m = CramMD5(hostname="h")
    m.start(None)
    action = m.respond(response)
    assert isinstance(action, Failure) and action.kind == "malformed"


def test_out_of_order():
    m = CramMD5(hostname="h")
    with pytest.raises(RuntimeError):
        m.secret(None)
