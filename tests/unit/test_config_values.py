"""Scalar value parsers: durations, sizes, booleans, integers, strings, lists, bind addresses."""
from __future__ import annotations

import pytest

from smtpgate.config import values
from smtpgate.config.errors import ConfigError
from smtpgate.config.schema import lookup_ref, mechanism_list


def err(fn, raw, key="a.b") -> str:
    with pytest.raises(ConfigError) as exc:
        fn(key, raw)
    return exc.value.line()


@pytest.mark.parametrize("raw,seconds", [
    ("500ms", 0.5), ("5s", 5.0), ("1m", 60.0), ("2h", 7200.0), ("1d", 86400.0),
    (1500, 1.5), ("250", 0.25), ("1.5s", 1.5), (" 10s ", 10.0), (0.5, 0.0005),
])
def test_durations(raw, seconds):
    assert values.duration("k", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", [0, "0", "0s", "0ms"])
def test_zero_duration_is_invalid(raw):
    assert err(values.duration, raw) == "Configuration error: a.b: duration must be greater than 0"


@pytest.mark.parametrize("raw", ["5 minutes", "5w", "-5s", "s", "", "1e3"])
def test_malformed_duration(raw):
    assert err(values.duration, raw) == \
        f"Configuration error: a.b: invalid duration {raw!r} (use e.g. \"500ms\", \"5s\", \"1m\", \"2h\", \"1d\")"


def test_negative_bare_duration():
    assert err(values.duration, -5) == "Configuration error: a.b: duration must be greater than 0"


@pytest.mark.parametrize("raw,shown", [(True, "true"), ([1], "an array"), ({"a": 1}, "a table")])
def test_duration_wrong_type(raw, shown):
    assert err(values.duration, raw) == f"Configuration error: a.b: expected a duration such as \"5s\", got {shown}"


@pytest.mark.parametrize("raw,size", [
    (1024, 1024), ("1024", 1024), ("10k", 10240), ("10KB", 10240), ("25MB", 25 * 1024**2), ("2m", 2 * 1024**2),
    ("1G", 1024**3), ("1gb", 1024**3), ("7b", 7),
])
def test_sizes(raw, size):
    assert values.size("k", raw) == size


@pytest.mark.parametrize("raw,shown", [(0, "0"), ("0", "'0'"), ("ten", "'ten'"), (True, "true"), (-1, "-1"),
                                       ("5TB", "'5TB'"), (1.5, "1.5")])
def test_bad_sizes(raw, shown):
    line = err(values.size, raw)
    if raw == 0 or raw == -1:
        assert line == "Configuration error: a.b: must be greater than 0"
    else:
        assert line == f"Configuration error: a.b: expected a size in bytes (e.g. 26214400 or \"25MB\"), got {shown}"


def test_boolean():
    assert values.boolean("k", True) is True and values.boolean("k", False) is False
    assert err(values.boolean, "true") == "Configuration error: a.b: expected true or false, got 'true'"
    assert err(values.boolean, 1) == "Configuration error: a.b: expected true or false, got 1"


def test_integers():
    assert values.integer("k", 0) == 0
    assert values.positive_int("k", 3) == 3
    assert err(values.integer, "3") == "Configuration error: a.b: expected an integer, got '3'"
    assert err(values.integer, True) == "Configuration error: a.b: expected an integer, got true"
    assert err(values.integer, -1) == "Configuration error: a.b: must not be negative"
    assert err(values.positive_int, 0) == "Configuration error: a.b: must be greater than 0"


def test_strings():
    assert values.string("k", "") == ""
    assert err(values.string, 5) == "Configuration error: a.b: expected a string, got 5"
    assert err(values.nonempty_string, "  ") == "Configuration error: a.b: must not be empty"


def test_string_lists():
    assert values.string_list("k", ["a", "b"]) == ["a", "b"]
    assert values.string_list("k", "a") == ["a"]
    assert values.string_list("k", []) == []
    assert err(values.string_list, ["a", 1]) == "Configuration error: a.b: expected a list of strings, got an array"
    assert err(values.string_list, 5) == "Configuration error: a.b: expected a list of strings, got 5"


@pytest.mark.parametrize("raw,expected", [
    ("127.0.0.1:25", ("127.0.0.1", 25)), ("0.0.0.0:587", ("0.0.0.0", 587)), ("[::1]:465", ("::1", 465)),
    ("[::]:0", ("::", 0)), (" 127.0.0.1:2525 ", ("127.0.0.1", 2525)),
    ("[0:0::1]:25", ("::1", 25)),  # normalised, so duplicates are recognised
])
def test_bind_addresses(raw, expected):
    assert values.bind_address("k", raw) == expected


@pytest.mark.parametrize("raw,reason", [
    ("localhost:25", "invalid IP address 'localhost' in bind address"),
    ("127.0.0.1", "invalid bind address '127.0.0.1' (expected \"ip:port\"; IPv6 as \"[::1]:587\")"),
    ("::1:25", "invalid bind address '::1:25' (expected \"ip:port\"; IPv6 as \"[::1]:587\")"),
    ("[::1]25", "invalid bind address '[::1]25' (expected \"[::1]:587\")"),
    ("127.0.0.1:99999", "invalid port '99999' in bind address"),
    ("127.0.0.1:", "invalid port '' in bind address"),
    ("127.0.0.1:smtp", "invalid port 'smtp' in bind address"),
    ("127.0.0.1:\u0662\u0665", "invalid port '\u0662\u0665' in bind address"),
    ("[127.0.0.1:25", "invalid bind address '[127.0.0.1:25' (expected \"[::1]:587\")"),
])
def test_bad_bind_addresses(raw, reason):
    assert err(values.bind_address, raw) == f"Configuration error: a.b: {reason}"


def test_binds_list():
    assert values.binds("k", ["127.0.0.1:1", "[::1]:2"]) == [("127.0.0.1", 1), ("::1", 2)]
    assert values.binds("k", "127.0.0.1:1") == [("127.0.0.1", 1)]
    assert err(values.binds, []) == "Configuration error: a.b: at least one bind address is required"
    assert err(values.binds, [25]) == "Configuration error: a.b: expected \"ip:port\", got 25"


def test_mechanism_list():
    assert mechanism_list("k", ["plain", "Login", "PLAIN", "scram-sha-256"]) == ("PLAIN", "LOGIN", "SCRAM-SHA-256")
    assert mechanism_list("k", []) == ()
    assert err(mechanism_list, ["plain", "gssapi"]).startswith(
        "Configuration error: a.b: unknown SASL mechanism 'gssapi' (known: PLAIN, LOGIN, OAUTHBEARER, XOAUTH2, ")


def test_lookup_ref():
    assert lookup_ref("k", False) is None
    assert lookup_ref("k", "list/users") == "list/users"
    assert err(lookup_ref, True) == \
        "Configuration error: a.b: expected a lookup name such as \"list/users\" or false, got true"
    assert err(lookup_ref, "") == \
        "Configuration error: a.b: expected a lookup name such as \"list/users\" or false, got ''"
