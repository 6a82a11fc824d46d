"""XOAUTH2: Google's documented format and error flow."""
from __future__ import annotations

import base64
import json

import pytest

from smtpgate.lookup.base import INVALID, AuthResult, Outcome, unavailable
from smtpgate.sasl.base import Challenge, Failure, Success, Verify
from smtpgate.sasl.xoauth2 import XOAuth2

# The example initial client response from Google's XOAUTH2 protocol documentation.
GOOGLE = base64.b64decode("dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==")


def test_google_example():
    assert GOOGLE == b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    m = XOAuth2()
    action = m.start(GOOGLE)
    assert isinstance(action, Verify)
    c = action.creds
    assert (c.mechanism, c.username, c.secret, c.kind) == (
        "XOAUTH2", "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg", "token")
    assert m.verified(AuthResult(Outcome.VALID)) == Success(account="someuser@example.com")


def test_without_initial_response_and_key_order():
    m = XOAuth2()
    assert m.start(None) == Challenge(b"")
    action = m.respond("auth=Bearer abc\x01user=jörg@example.com\x01\x01".encode())
    assert action.creds.username == "jörg@example.com" and action.creds.secret == "abc"


@pytest.mark.parametrize("message", [
    b"",
    b"user=u\x01auth=Bearer t\x01",           # one final ^A
    b"user=u\x01auth=Bearer t",
    b"auth=Bearer t\x01\x01",                 # no user
    b"user=\x01auth=Bearer t\x01\x01",        # empty user
    b"user=u\x01\x01",                        # no auth
    b"user=u\x01auth=Basic t\x01\x01",
    b"user=u\x01auth=Bearer \x01\x01",
    b"user=u\x01user=v\x01auth=Bearer t\x01\x01",
    b"user=u\x01garbage\x01auth=Bearer t\x01\x01",
    b"user=u\xff\x01auth=Bearer t\x01\x01",
    b"user=u\r\n\x01auth=Bearer t\x01\x01",
])
def test_malformed(message):
    action = XOAuth2().start(message)
    assert isinstance(action, Failure) and action.kind == "malformed", action


def test_rejected_token_flow():
    m = XOAuth2()
    m.start(GOOGLE)
    challenge = m.verified(INVALID)
    assert isinstance(challenge, Challenge)
    assert json.loads(challenge.data) == {"status": "401", "schemes": "Bearer"}
    assert m.respond(b"") == Failure("invalid", "token rejected", "someuser@example.com")


def test_rejected_token_ack_variants():
    m = XOAuth2()
    m.start(GOOGLE)
    assert json.loads(m.verified(INVALID).data) == {"status": "401", "schemes": "Bearer"}
    assert m.respond(b"\x01").kind == "invalid"
    m = XOAuth2()
    m.start(GOOGLE)
    m.verified(INVALID)
    assert m.respond(b"user=x").kind == "malformed"


def test_unavailable():
    m = XOAuth2()
    m.start(GOOGLE)
    assert m.verified(unavailable("jwks fetch failed")).kind == "unavailable"


def test_token_for_another_user():
    m = XOAuth2()
    m.start(GOOGLE)
    assert m.verified(AuthResult(Outcome.VALID, account="other@example.com")).kind == "invalid"
    m = XOAuth2()
    m.start(GOOGLE)
    done = m.verified(AuthResult(Outcome.VALID, account="SomeUser@Example.com"))
    assert done == Success(account="SomeUser@Example.com")
