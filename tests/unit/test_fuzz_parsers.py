"""Property tests (hypothesis, bounded) of everything that parses client input without a socket: the
command-argument parsers and every SASL mechanism (issue 9 item 4). The only exception a parser may raise
is its documented one (``ParseError``); a mechanism never raises at all for client bytes -- it answers
with a Failure. Numbers are ASCII digits only."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpgate import sasl
from smtpgate.lookup.base import AuthResult, Outcome, ScramKeys, SecretRecord
from smtpgate.protocol.commands import (ParseError, ascii_number, parse_params, parse_path, parse_path_and_params,
                                        split_path, xtext_decode)
from smtpgate.sasl.base import Challenge, ChannelBinding, Failure, NeedSecret, Success, Verify

# CI budget: every property here runs in well under a second.
BOUNDED = settings(max_examples=300, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow])

# Text a client can put on a command line: anything but CR/LF; surrogates cannot be UTF-8 anyway.
LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=80)
# Characters that look like digits to str.isdigit()/int() but are not DIGIT on the wire.
NOT_ASCII_DIGITS = ["\u00b2", "\u2460", "\u0664", "\uff11", "\u0967", " 1", "1 ", "+1", "-1", "1_0", "0x1", ""]


@pytest.mark.parametrize("value", NOT_ASCII_DIGITS)
def test_ascii_number_refuses_other_digits(value):
    assert ascii_number(value) is None


def test_ascii_number_bounds():
    assert ascii_number("0") == 0 and ascii_number("12345") == 12345
    assert ascii_number("9" * 20) == 10 ** 20 - 1
    assert ascii_number("9" * 21) is None  # RFC 1870: size-value is 1*20DIGIT


@BOUNDED
@given(LINE_TEXT)
def test_ascii_number_is_exactly_ascii_digits(text):
    n = ascii_number(text)
    ok = 0 < len(text) <= 20 and all(c in "0123456789" for c in text)
    assert (n is not None) == ok
    if ok:
        assert n == int(text)


def _path_text():
    local = st.one_of(LINE_TEXT, st.from_regex(r"[a-z0-9.+=\-]{1,10}", fullmatch=True),
                      st.from_regex(r'"[ -~]{0,10}"', fullmatch=True))
    domain = st.one_of(LINE_TEXT, st.from_regex(r"[a-z0-9\-.]{1,20}", fullmatch=True),
                       st.from_regex(r"\[[0-9.:IPv6a-f]{0,40}\]", fullmatch=True))
    return st.builds(lambda l, d, sep: f"{l}{sep}{d}", local, domain, st.sampled_from(["@", "", "@@", ":"]))


def _params_text():
    key = st.one_of(st.sampled_from(["SIZE", "BODY", "AUTH", "SMTPUTF8", "RET", "ENVID", "NOTIFY", "ORCPT"]),
                    LINE_TEXT)
    value = st.one_of(st.none(), LINE_TEXT, st.sampled_from(NOT_ASCII_DIGITS + ["<>", "+2B", "+", "+ZZ", "=", "8BITMIME"]))
    item = st.builds(lambda k, v: k if v is None else f"{k}={v}", key, value)
    return st.lists(item, max_size=5).map(" ".join)


@BOUNDED
@given(st.sampled_from(["FROM:", "TO:"]), st.sampled_from(["", " ", "  "]), _path_text(),
       st.sampled_from(["<", ""]), st.sampled_from([">", "", ">>"]), st.sampled_from(["", " "]), _params_text())
def test_command_arguments_raise_only_parse_error(prefix, gap, path, lt, gt, sp, params):
    arg = f"{prefix}{gap}{lt}{path}{gt}{sp}{params}"
    for parse in (lambda: parse_path_and_params(arg, prefix), lambda: split_path(arg, prefix),
                  lambda: parse_path(path), lambda: parse_params(params)):
        try:
            parse()
        except ParseError:
            pass


@BOUNDED
@given(st.one_of(LINE_TEXT, st.from_regex(r"[!-~]{0,10}(\+[0-9A-Fa-z]{0,2}[!-~]{0,5}){0,4}", fullmatch=True)))
def test_xtext_raises_only_parse_error(value):
    try:
        decoded = xtext_decode(value)
    except ParseError:
        return
    assert isinstance(decoded, str)


# -- SASL -----------------------------------------------------------------------------------------------

CB = ChannelBinding("tls-server-end-point", b"\x01" * 32)
SCRAM_KEYS = {"SHA-256": ScramKeys(b"s" * 16, 4096, b"k" * 32, b"v" * 32),
              "SHA-1": ScramKeys(b"s" * 16, 4096, b"k" * 20, b"v" * 20)}
RECORDS = [None, SecretRecord("john@example.org", plaintext="secret"),
           SecretRecord("john@example.org", scram=SCRAM_KEYS), SecretRecord("john@example.org")]
RESULTS = [AuthResult(Outcome.VALID, account="john@example.org", addresses=frozenset({"john@example.org"})),
           AuthResult(Outcome.INVALID), AuthResult(Outcome.UNAVAILABLE, reason="down"),
           AuthResult(Outcome.VALID, may_act_for=frozenset({"x"}))]

# Client messages: random bytes, and near-misses of each mechanism's grammar (so the fuzzer gets past the
# first check into the deeper parsing).
MESSAGES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=120).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(lambda a, b, c: b"\0".join((a, b, c)), st.binary(max_size=20), st.binary(max_size=20),
              st.binary(max_size=20)),
    st.builds(lambda f, a, body: f + b"," + a + b"," + body, st.sampled_from([b"n", b"y", b"p=tls-unique", b"p=", b"x"]),
              st.sampled_from([b"", b"a=", b"a=u", b"a==2C", b"a==ZZ"]),
              st.lists(st.sampled_from([b"n=user", b"n=", b"r=abc", b"r=", b"c=biws", b"p=AAAA", b"\x01",
                                        b"auth=Bearer tok", b"auth=", b"host=h", b"port=\xc2\xb2", b"=", b"m=x",
                                        b"n=\xff", b"r=\x00"]), max_size=6).map(b",".join)),
    st.builds(lambda kv: b"\x01".join(kv) + b"\x01\x01",
              st.lists(st.sampled_from([b"user=u", b"auth=Bearer t", b"auth=bearer", b"user=", b"x", b"user=\x7f",
                                        b"port=\xe2\x91\xa0"]), max_size=4)),
    st.builds(lambda u, d: u + b" " + d, st.binary(max_size=20), st.from_regex(rb"[0-9a-fA-F]{0,34}", fullmatch=True)),
)


@BOUNDED
@given(name=st.sampled_from(sasl.MECHANISM_NAMES), plus=st.booleans(),
       initial=st.one_of(st.none(), MESSAGES), answers=st.lists(MESSAGES, max_size=4),
       record=st.sampled_from(RECORDS), result=st.sampled_from(RESULTS))
def test_sasl_mechanisms_never_raise_on_client_input(name, plus, initial, answers, record, result):
    mech = sasl.create(name, hostname="mx.test", channel_binding=CB, plus_advertised=plus)
    if mech.server_first and initial is not None:
        initial = None  # the stage answers 501 itself; the mechanism is never started with one
    action = mech.start(initial)
    for _ in range(8):
        if isinstance(action, (Success, Failure)):
            assert not isinstance(action, Failure) or action.kind in ("invalid", "malformed", "unavailable")
            return
        if isinstance(action, Challenge):
            if not answers:
                return
            action = mech.respond(answers.pop(0))
        elif isinstance(action, Verify):
            action = mech.verified(result)
        elif isinstance(action, NeedSecret):
            action = mech.secret(record)
        else:  # pragma: no cover
            pytest.fail(f"unexpected action {action!r}")


SASLNAME = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12)
PRINTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=16)


@BOUNDED
@given(name=st.sampled_from([n for n in sasl.MECHANISM_NAMES if n.startswith("SCRAM-")]),
       gs2=st.sampled_from(["n,,", "y,,", "p=tls-server-end-point,,", "p=tls-unique,,", "n,a=u,"]),
       user=SASLNAME, nonce=PRINTABLE, ext=st.sampled_from(["", ",m=x", ",x=1", ",n=dup"]),
       record=st.sampled_from(RECORDS), cbind=st.sampled_from(["biws", "eSws", "cD10bHMtc2VydmVyLWVuZC1wb2ludCws", "", "!"]),
       same_nonce=st.booleans(), proof=st.one_of(st.just("AAAA"), PRINTABLE), tail=st.sampled_from(["", ",x=y", ","]))
def test_scram_exchange_never_raises(name, gs2, user, nonce, ext, record, cbind, same_nonce, proof, tail):
    """SCRAM deeper than random bytes reach: a well-formed client-first, then a client-final built on the
    server's nonce, with each field varied."""
    mech = sasl.create(name, hostname="mx.test", channel_binding=CB)
    action = mech.start(f"{gs2}n={user},r={nonce}{ext}".encode())
    if isinstance(action, Failure):
        return
    assert isinstance(action, NeedSecret)
    action = mech.secret(record)
    if isinstance(action, Failure):
        return
    assert isinstance(action, Challenge)
    server_nonce = dict(p.split("=", 1) for p in action.data.decode().split(","))["r"]
    final = f"c={cbind},r={server_nonce if same_nonce else nonce},p={proof}{tail}"
    action = mech.respond(final.encode())
    assert isinstance(action, Failure) and action.kind in ("invalid", "malformed")


@BOUNDED
@given(MESSAGES)
def test_sasl_message_parsers_raise_only_malformed(message):
    """Each mechanism's own parser: its answer, or Malformed (the 501 detail), nothing else."""
    from smtpgate.sasl import cram_md5, oauthbearer, plain, xoauth2
    from smtpgate.sasl.base import Malformed
    for parse in (plain.parse, oauthbearer.parse, xoauth2.parse, cram_md5.parse):
        try:
            parse(message)
        except Malformed:
            pass
