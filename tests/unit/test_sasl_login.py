"""LOGIN: prompts, initial response, failures."""
from __future__ import annotations

import pytest

from smtpgate.lookup.base import INVALID, AuthResult, Outcome, unavailable
from smtpgate.sasl.base import Challenge, Failure, Success, Verify
from smtpgate.sasl.login import Login


def test_full_dialogue():
    m = Login()
    assert m.start(None) == Challenge(b"Username:")
    assert m.respond(b"tim") == Challenge(b"Password:")
    action = m.respond(b"s3cret")
    assert isinstance(action, Verify)
    c = action.creds
    assert (c.mechanism, c.username, c.secret, c.kind) == ("LOGIN", "tim", "s3cret", "password")
    done = m.verified(AuthResult(Outcome.VALID, account="tim@example.com"))
    assert done == Success(account="tim@example.com")


def test_username_as_initial_response():
    m = Login()
    assert m.start(b"tim") == Challenge(b"Password:")
    assert m.respond(b"pw").creds.username == "tim"
    assert m.verified(AuthResult(Outcome.VALID)) == Success(account="tim")


def test_empty_initial_response_prompts_for_username():
    m = Login()
    assert m.start(b"") == Challenge(b"Username:")
    assert m.respond("jörg".encode()) == Challenge(b"Password:")
    assert m.respond("pässwörd".encode()).creds.secret == "pässwörd"


@pytest.mark.parametrize("username, password", [(b"", b"pw"), (b"tim", b"")])
def test_empty_fields_fail_as_wrong_credentials_without_lookup(username, password):
    m = Login()
    m.start(None)
    assert m.respond(username) == Challenge(b"Password:")
    done = m.respond(password)
    assert isinstance(done, Failure) and done.kind == "invalid"


@pytest.mark.parametrize("username, password", [
    (b"t\xffim", None), (b"t\0im", None), (b"tim", b"p\0w"), (b"tim", b"\xc3"),
])
def test_malformed(username, password):
    m = Login()
    action = m.start(username)
    if password is not None:
        assert action == Challenge(b"Password:")
        action = m.respond(password)
    assert isinstance(action, Failure) and action.kind == "malformed"


def test_invalid_and_unavailable():
    m = Login()
    m.start(b"tim")
    m.respond(b"wrong")
    assert m.verified(INVALID) == Failure("invalid", "credentials rejected", "tim")
    m = Login()
    m.start(b"tim")
    m.respond(b"pw")
    assert m.verified(unavailable("db down")).kind == "unavailable"


def test_out_of_order():
    m = Login()
    with pytest.raises(RuntimeError):
        m.respond(b"tim")
    m.start(b"tim")
    with pytest.raises(RuntimeError):
        m.verified(INVALID)
