"""Command argument parsing: paths, ESMTP parameters, xtext."""
from __future__ import annotations

import pytest

from smtpgate.protocol.commands import (NULL_PATH, Address, ParseError, parse_params, parse_path,
                                        parse_path_and_params, split_path, xtext_decode, xtext_encode)


def reason(fn, *args) -> str:
    with pytest.raises(ParseError) as exc:
        fn(*args)
    return str(exc.value)


@pytest.mark.parametrize("arg,addr,params", [
    ("FROM:<john@example.org>", Address("john", "example.org"), {}),
    ("from:<john@example.org>", Address("john", "example.org"), {}),
    ("FROM: <john@example.org>", Address("john", "example.org"), {}),
    ("FROM:<>", NULL_PATH, {}),
    ("FROM:<John.Doe@Example.ORG.>", Address("John.Doe", "example.org"), {}),
    ("FROM:<a@b> SIZE=100 BODY=8BITMIME", Address("a", "b"), {"SIZE": "100", "BODY": "8BITMIME"}),
    ("FROM:<a@b>  size=1  ", Address("a", "b"), {"SIZE": "1"}),
    ("FROM:<a@b> SMTPUTF8", Address("a", "b"), {"SMTPUTF8": None}),
    ("FROM:<a@b> AUTH=<>", Address("a", "b"), {"AUTH": "<>"}),
    ("FROM:<@relay1.test,@relay2.test:a@b.test>", Address("a", "b.test"), {}),
    ('FROM:<"john doe"@example.org>', Address('"john doe"', "example.org"), {}),
    ('FROM:<"a>b"@example.org> SIZE=5', Address('"a>b"', "example.org"), {"SIZE": "5"}),
    ('FROM:<"a\\"b"@example.org>', Address('"a\\"b"', "example.org"), {}),
    ("FROM:<a@[192.0.2.1]>", Address("a", "[192.0.2.1]"), {}),
    ("FROM:<a@[IPv6:2001:db8::1]>", Address("a", "[ipv6:2001:db8::1]"), {}),
    ("FROM:<josé@exämple.org>", Address("josé", "exämple.org"), {}),
    ("FROM:<中文@例え.jp>", Address("中文", "例え.jp"), {}),
])
def test_valid_paths(arg, addr, params):
    assert parse_path_and_params(arg, "FROM:") == (addr, params)


def test_rcpt_prefix():
    assert parse_path_and_params("TO:<x@y>", "TO:") == (Address("x", "y"), {})
    assert reason(parse_path_and_params, "FROM:<x@y>", "TO:") == "syntax"


@pytest.mark.parametrize("arg", [
    "FROM:john@example.org", "FROM <a@b>", "FROM:<a@b", "FROM:<a@b>SIZE=1", "FROM:", "", "FROM:<\"a@b>",
    "TO:<a@b>",
])
def test_syntax_errors(arg):
    assert reason(parse_path_and_params, arg, "FROM:") == "syntax"


@pytest.mark.parametrize("path", [
    "john", "john@", "@example.org", "a@@b", "a@b@c", "a b@c", "a@b..c", "a@-b.c", "a@b-.c", ".a@b", "a.@b",
    "a..b@c", "a@b\x01c", "a\x7f@b", '"unterminated@b', "a@[300.1.1.1]", "a@[IPv6:192.0.2.1]", "a@[::1]",
    "x" * 65 + "@b", "é" * 33 + "@b", "a@" + "b" * 256,
])
def test_address_errors(path):
    assert reason(parse_path, path) == "address"


def test_length_limits_at_the_edge():
    assert parse_path("x" * 64 + "@b").local == "x" * 64
    assert parse_path("é" * 32 + "@b").local == "é" * 32


def test_address_forms():
    a = parse_path("John@Example.Org")
    assert a.text == "John@example.org" and a.lower == "john@example.org" and not a.quoted_local
    assert parse_path('"x y"@b').quoted_local
    assert NULL_PATH.text == "" and NULL_PATH.lower == ""


@pytest.mark.parametrize("text", ["SIZE=1 SIZE=2", "size=1 SIZE=2", "=x", "-X=1", "S_Z=1", "A=1 B=2 a=3"])
def test_param_errors(text):
    assert reason(parse_params, text) == "param"


def test_params_keep_values_verbatim():
    assert parse_params(" AUTH=john+40example.org  X-Y=a=b ") == {"AUTH": "john+40example.org", "X-Y": "a=b"}


def test_split_path_leaves_params_unparsed():
    assert split_path("TO:<a@b> FOO=bar", "TO:") == (Address("a", "b"), " FOO=bar")


@pytest.mark.parametrize("encoded,decoded", [
    ("john@example.org", "john@example.org"), ("john+2Bsmith@example.org", "john+smith@example.org"),
    ("a+3Db", "a=b"), ("+20x", " x"), ("<>", "<>"), ("caf+C3+A9", "café"), ("", ""),
])
def test_xtext_decode(encoded, decoded):
    assert xtext_decode(encoded) == decoded


@pytest.mark.parametrize("bad", ["+2", "+2b", "+GG", "a b", "a=b", "+", "caf+C3", "\x01"])
def test_xtext_decode_errors(bad):
    assert reason(xtext_decode, bad) == "xtext"


@pytest.mark.parametrize("text", ["john@example.org", "a+b=c d", "café", "<>", "\x01x"])
def test_xtext_round_trip(text):
    encoded = xtext_encode(text)
    assert all("!" <= c <= "~" and c != "=" for c in encoded)
    assert xtext_decode(encoded) == text
