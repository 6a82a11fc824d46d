"""OAUTHBEARER (RFC 7628): message parsing and the error flow, with the RFC's own examples."""
from __future__ import annotations

import base64
import json

import pytest

from smtpgate.lookup.base import INVALID, AuthResult, Outcome, unavailable
from smtpgate.sasl.base import Challenge, Failure, Success, Verify
from smtpgate.sasl.oauthbearer import OAuthBearer

# RFC 7628 §4.1, the initial response exactly as printed there (base64 of the client message)
RFC_4_1 = base64.b64decode(
    "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB")
TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="


def valid(account="user@example.com", **kw):
    return AuthResult(Outcome.VALID, account=account, **kw)


def test_rfc_example_success():
    assert RFC_4_1 == (b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
                       b"auth=Bearer " + TOKEN.encode() + b"\x01\x01")
    m = OAuthBearer()
    action = m.start(RFC_4_1)
    assert isinstance(action, Verify)
    c = action.creds
    assert (c.mechanism, c.username, c.secret, c.kind) == ("OAUTHBEARER", "user@example.com", TOKEN, "token")
    assert m.verified(valid()) == Success(account="user@example.com")


def test_without_initial_response():
    m = OAuthBearer()
    assert m.start(None) == Challenge(b"")
    assert isinstance(m.respond(RFC_4_1), Verify)


def test_no_authzid_and_lowercase_scheme_and_y_flag():
    m = OAuthBearer()
    action = m.start(b"y,,\x01auth=bearer abc.def-_~+/=\x01\x01")
    assert action.creds.username == "" and action.creds.secret == "abc.def-_~+/="
    # no claimed user: the token's account is taken as it is
    assert m.verified(valid("someone")) == Success(account="someone")


def test_saslname_escapes():
    m = OAuthBearer()
    action = m.start("n,a=j=2Cörg=3Dx,\x01auth=Bearer t\x01\x01".encode())
    assert action.creds.username == "j,örg=x"


@pytest.mark.parametrize("message", [
    b"",
    b"\x01",
    b"n,a=u\x01auth=Bearer t\x01\x01",                 # GS2 header not closed
    b"p=tls-unique,,\x01auth=Bearer t\x01\x01",        # channel binding
    b"x,,\x01auth=Bearer t\x01\x01",                   # bad flag
    b"n,u=someone,\x01auth=Bearer t\x01\x01",          # authzid without a=
    b"n,a=,\x01auth=Bearer t\x01\x01",                 # empty saslname
    b"n,a=us=41er,\x01auth=Bearer t\x01\x01",          # bad escape
    b"n,,\x01auth=Bearer t\x01",                       # missing final ^A
    b"n,,auth=Bearer t\x01\x01",                       # missing first ^A
    b"n,,\x01\x01",                                    # no auth
    b"n,,\x01host=x\x01\x01",                          # no auth
    b"n,,\x01auth=Basic dXNlcjpwdw==\x01\x01",         # other scheme
    b"n,,\x01auth=Bearer\x01\x01",                     # no token
    b"n,,\x01auth=Bearer a b\x01\x01",                 # space in token
    b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",  # duplicate key
    b"n,,\x01ho st=x\x01auth=Bearer t\x01\x01",        # bad key
    b"n,,\x01host\x01auth=Bearer t\x01\x01",           # no '='
    b"n,,\x01host=\xc3\xa9\x01auth=Bearer t\x01\x01",  # non-VCHAR value
    b"n,a=\xff,\x01auth=Bearer t\x01\x01",             # invalid UTF-8
])
def test_malformed(message):
    action = OAuthBearer().start(message)
    assert isinstance(action, Failure) and action.kind == "malformed", action


def test_rejected_token_error_flow_with_ctrl_a():
    m = OAuthBearer()
    m.start(RFC_4_1)
    challenge = m.verified(INVALID)
    assert isinstance(challenge, Challenge)
    assert json.loads(challenge.data) == {"status": "invalid_token", "schemes": "bearer"}
    assert m.respond(b"\x01") == Failure("invalid", "token rejected", "user@example.com")


def test_rejected_token_error_flow_with_empty_line():
    m = OAuthBearer()
    m.start(RFC_4_1)
    assert json.loads(m.verified(INVALID).data) == {"status": "invalid_token", "schemes": "bearer"}
    assert m.respond(b"").kind == "invalid"


def test_rejected_token_then_garbage_is_malformed():
    m = OAuthBearer()
    m.start(RFC_4_1)
    m.verified(INVALID)
    assert m.respond(RFC_4_1).kind == "malformed"


def test_unavailable_is_not_an_error_challenge():
    m = OAuthBearer()
    m.start(RFC_4_1)
    assert m.verified(unavailable("introspection timeout")) == Failure(
        "unavailable", "introspection timeout", "user@example.com")


def test_claimed_user_must_match_token_account():
    m = OAuthBearer()
    m.start(RFC_4_1)
    assert m.verified(valid("mallory@example.com")).kind == "invalid"


def test_claimed_user_may_be_an_address_of_the_account():
    m = OAuthBearer()
    m.start(RFC_4_1)
    done = m.verified(valid("u123", addresses=frozenset({"user@example.com"})))
    assert done == Success(account="u123", authzid="", addresses=frozenset({"user@example.com"}))


def test_claimed_user_granted_by_may_act_for():
    m = OAuthBearer()
    m.start(RFC_4_1)
    done = m.verified(valid("boss@example.com", may_act_for=frozenset({"USER@example.com"})))
    assert done == Success(account="boss@example.com", authzid="user@example.com")


def test_account_falls_back_to_claimed_user():
    m = OAuthBearer()
    m.start(RFC_4_1)
    assert m.verified(valid("")) == Success(account="user@example.com")
