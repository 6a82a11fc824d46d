"""PLAIN (RFC 4616): bytes in, actions out."""
from __future__ import annotations

import pytest

from smtpgate.lookup.base import INVALID, AuthResult, Outcome, unavailable
from smtpgate.sasl.base import Challenge, Failure, Success, Verify
from smtpgate.sasl.plain import Plain


def valid(account: str = "", **kw) -> AuthResult:
    return AuthResult(Outcome.VALID, account=account, **kw)


def test_initial_response_success():
    m = Plain()
    action = m.start(b"\0tim\0tanstaaftanstaaf")  # RFC 4616 §4 example
    assert isinstance(action, Verify)
    c = action.creds
    assert (c.mechanism, c.username, c.secret, c.kind, c.authzid) == ("PLAIN", "tim", "tanstaaftanstaaf",
                                                                       "password", "")
    done = m.verified(valid("tim", addresses=frozenset({"tim@example.com"})))
    assert done == Success(account="tim", authzid="", addresses=frozenset({"tim@example.com"}))


def test_without_initial_response_sends_empty_challenge():
    m = Plain()
    assert m.start(None) == Challenge(b"")
    action = m.respond(b"\0tim\0pw")
    assert isinstance(action, Verify) and action.creds.username == "tim"
    assert m.verified(valid()) == Success(account="tim")  # account falls back to the authcid


def test_utf8_fields():
    m = Plain()
    action = m.start("\0jörg\0pässwörd".encode())
    assert action.creds.username == "jörg" and action.creds.secret == "pässwörd"


@pytest.mark.parametrize("message", [
    b"",                       # '=' (empty initial response)
    b"tim\0pw",                # one NUL
    b"tim",                    # none
    b"a\0tim\0pw\0x",          # three NULs
    b"\0\0pw",                 # empty authcid
    b"\0tim\0",                # empty password
    b"\0tim\xff\0pw",          # invalid UTF-8 in authcid
    b"\0tim\0p\xc3",           # truncated UTF-8 in password
    b"\xfe\0tim\0pw",          # invalid UTF-8 in authzid
    b"\0" + b"u" * 256 + b"\0pw",
    b"\0tim\0" + b"p" * 256,
    b"z" * 256 + b"\0tim\0pw",
])
def test_malformed(message):
    m = Plain()
    action = m.start(message)
    assert isinstance(action, Failure) and action.kind == "malformed"


def test_malformed_reports_claimed_user_for_logs():
    action = Plain().start(b"\0tim\0")
    assert action.kind == "malformed" and action.username == "tim"


def test_field_of_exactly_255_octets_is_fine():
    m = Plain()
    action = m.start(b"a" * 255 + b"\0" + b"u" * 255 + b"\0" + b"p" * 255)
    assert isinstance(action, Verify) and len(action.creds.secret) == 255


def test_wrong_credentials_and_unavailable():
    m = Plain()
    m.start(b"\0tim\0wrong")
    assert m.verified(INVALID) == Failure("invalid", "credentials rejected", "tim")
    m = Plain()
    m.start(b"\0tim\0pw")
    done = m.verified(unavailable("imap timeout"))
    assert done == Failure("unavailable", "imap timeout", "tim")


def test_authzid_same_as_authcid_ignoring_case():
    m = Plain()
    action = m.start(b"TIM\0tim\0pw")
    assert action.creds.authzid == "TIM"
    assert m.verified(valid("tim")) == Success(account="tim", authzid="")


def test_authzid_equal_to_canonical_account():
    m = Plain()
    m.start(b"tim@example.com\0tim\0pw")
    assert m.verified(valid("Tim@Example.com")) == Success(account="Tim@Example.com", authzid="")


def test_authzid_not_permitted():
    m = Plain()
    m.start(b"boss\0tim\0pw")
    done = m.verified(valid("tim", may_act_for=frozenset({"other"})))
    assert isinstance(done, Failure) and done.kind == "invalid" and done.username == "tim"


def test_authzid_permitted_by_lookup():
    m = Plain()
    m.start(b"Shared@Example.com\0tim\0pw")
    done = m.verified(valid("tim", may_act_for=frozenset({"shared@example.com"})))
    assert done == Success(account="tim", authzid="Shared@Example.com")


def test_authzid_not_checked_before_credentials():
    m = Plain()
    m.start(b"boss\0tim\0pw")
    assert m.verified(INVALID).kind == "invalid"


def test_calls_out_of_order_are_a_bug():
    m = Plain()
    with pytest.raises(RuntimeError):
        m.respond(b"\0a\0b")
    m.start(b"\0a\0b")
    with pytest.raises(RuntimeError):
        m.respond(b"\0a\0b")
    m.verified(valid())
    with pytest.raises(RuntimeError):
        m.verified(valid())
    with pytest.raises(RuntimeError):
        m.secret(None)
