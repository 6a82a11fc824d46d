"""If-blocks: every operator, combinator and variable, IP/CIDR matching, and every compile-time error.

Rules are compiled with the real compiler (``config.ifblock.compile_setting``) and evaluated against the
session's own variable holder (``session.variables.SessionVariables``), exactly as the running server does.
"""
from __future__ import annotations

import ipaddress

import pytest

from smtpgate.config import values
from smtpgate.config.errors import ConfigError
from smtpgate.config.ifblock import AUTHENTICATED, CONNECT, EHLO, MAIL, RCPT, VARIABLES, Scope, compile_setting
from smtpgate.session.variables import SessionVariables

SCOPE = Scope(["smtp", "submission", "submissions"],
              {"blocked": frozenset({"spam.example", "10.9.9.9"}), "vip": frozenset({"boss@example.org"})})


def ctx(**kw) -> SessionVariables:
    v = SessionVariables(kw.pop("listener", "smtp"), _ip(kw.pop("remote_ip", "192.0.2.1")), _ip(kw.pop("local_ip", "127.0.0.1")),
             kw.pop("local_port", 25), kw.pop("tls", False))
    for k, val in kw.items():
        setattr(v, k, val)
    return v


def _ip(text):
    return None if text is None else ipaddress.ip_address(text)


def rule(var: str, op: str, value, allowed=RCPT, scope=SCOPE):
    """An if-block that yields "yes" when the condition holds, "no" otherwise."""
    return compile_setting("k", [{"if": var, op: value, "then": "yes"}, {"else": "no"}], values.string, allowed, scope)


def holds(var: str, op: str, value, **kw) -> bool:
    return rule(var, op, value).evaluate(ctx(**kw)) == "yes"


def error(raw, allowed=RCPT, parse=values.string, is_list=False, scope=SCOPE) -> str:
    with pytest.raises(ConfigError) as exc:
        compile_setting("session.x", raw, parse, allowed, scope, is_list=is_list)
    return exc.value.line()


# --- operators ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["eq", "equal-to"])
def test_eq_and_alias(op):
    assert holds("helo-domain", op, "client.test", helo_domain="client.test")
    assert not holds("helo-domain", op, "client.test", helo_domain="other.test")


@pytest.mark.parametrize("op", ["ne", "not-equal-to"])
def test_ne_and_alias(op):
    assert holds("listener", op, "smtp", listener="submission")
    assert not holds("listener", op, "smtp", listener="smtp")


def test_starts_with_and_negation():
    assert holds("sender", "starts-with", "postmaster@", sender="postmaster@example.org")
    assert not holds("sender", "starts-with", "postmaster@", sender="john@example.org")
    assert holds("sender", "not-starts-with", "postmaster@", sender="john@example.org")
    assert not holds("sender", "not-starts-with", "postmaster@", sender="postmaster@example.org")


def test_ends_with_and_negation():
    assert holds("rcpt-domain", "ends-with", ".example.org", rcpt_domain="mail.example.org")
    assert not holds("rcpt-domain", "ends-with", ".example.org", rcpt_domain="example.net")
    assert holds("rcpt-domain", "not-ends-with", ".example.org", rcpt_domain="example.net")
    assert not holds("rcpt-domain", "not-ends-with", ".example.org", rcpt_domain="mail.example.org")


def test_in_list_and_negation():
    assert holds("sender-domain", "in-list", "list/blocked", sender_domain="spam.example")
    assert not holds("sender-domain", "in-list", "list/blocked", sender_domain="ok.example")
    assert holds("sender-domain", "not-in-list", "list/blocked", sender_domain="ok.example")
    assert not holds("sender-domain", "not-in-list", "list/blocked", sender_domain="spam.example")
    # an IP variable is compared in its text form
    assert holds("remote-ip", "in-list", "list/blocked", remote_ip="10.9.9.9")
    assert not holds("remote-ip", "in-list", "list/blocked", remote_ip="10.9.9.8")


def test_matches_and_negation():
    assert holds("rcpt", "matches", r"^[a-z]+\+tag@", rcpt="john+tag@example.org")
    assert not holds("rcpt", "matches", r"^[a-z]+\+tag@", rcpt="john@example.org")
    assert holds("rcpt", "not-matches", r"^[a-z]+\+tag@", rcpt="john@example.org")
    assert not holds("rcpt", "not-matches", r"^[a-z]+\+tag@", rcpt="john+tag@example.org")


def test_matches_on_domain_variable_ignores_case():
    # domain-like variables are held lower-cased; a pattern written in capitals must still match them
    assert holds("helo-domain", "matches", r"^MAIL\.", helo_domain="mail.example.org")


def test_domain_literals_compare_case_insensitively():
    assert holds("sender-domain", "eq", "Example.ORG", sender_domain="example.org")
    assert holds("helo-domain", "ends-with", ".EXAMPLE.org", helo_domain="mx.example.org")


def test_unset_variable_is_empty_text():
    assert holds("sender", "eq", "", sender=None)
    assert not holds("sender", "ne", "", sender=None)
    assert holds("authenticated-as", "ne", "", authenticated_as="john")


# --- every variable -----------------------------------------------------------------------------
@pytest.mark.parametrize("var,attr,value,other", [
    ("listener", "listener", "submission", "smtp"),
    ("helo-domain", "helo_domain", "client.test", "x.test"),
    ("authenticated-as", "authenticated_as", "john@example.org", "jane@example.org"),
    ("sender", "sender", "john@example.org", "jane@example.org"),
    ("sender-domain", "sender_domain", "example.org", "example.net"),
    ("rcpt", "rcpt", "jane@example.net", "joe@example.net"),
    ("rcpt-domain", "rcpt_domain", "example.net", "example.com"),
])
def test_every_text_variable(var, attr, value, other):
    assert holds(var, "eq", value, **{attr: value})
    assert not holds(var, "eq", value, **{attr: other})


def test_variables_table_is_what_spec_lists():
    assert set(VARIABLES) == {"listener", "remote-ip", "local-ip", "local-port", "tls", "helo-domain",
                              "authenticated-as", "sender", "sender-domain", "rcpt", "rcpt-domain"}


def test_local_port():
    assert holds("local-port", "eq", 587, local_port=587)
    assert holds("local-port", "eq", "587", local_port=587)
    assert not holds("local-port", "eq", 587, local_port=465)
    assert holds("local-port", "ne", 587, local_port=465)


def test_tls_boolean():
    assert holds("tls", "eq", True, tls=True)
    assert not holds("tls", "eq", True, tls=False)
    assert holds("tls", "eq", False, tls=False)
    assert holds("tls", "ne", True, tls=False)


# --- IP addresses and networks ------------------------------------------------------------------
@pytest.mark.parametrize("var,attr", [("remote-ip", "remote_ip"), ("local-ip", "local_ip")])
def test_ipv4_address_and_cidr(var, attr):
    assert holds(var, "eq", "10.1.2.3", **{attr: "10.1.2.3"})
    assert not holds(var, "eq", "10.1.2.3", **{attr: "10.1.2.4"})
    assert holds(var, "eq", "10.0.0.0/8", **{attr: "10.200.1.1"})
    assert not holds(var, "eq", "10.0.0.0/8", **{attr: "11.0.0.1"})
    assert holds(var, "ne", "10.0.0.0/8", **{attr: "11.0.0.1"})
    # host bits set in the network are tolerated (10.1.2.3/8 == 10.0.0.0/8)
    assert holds(var, "eq", "10.1.2.3/8", **{attr: "10.9.9.9"})


def test_ipv6_address_and_cidr():
    assert holds("remote-ip", "eq", "2001:db8::1", remote_ip="2001:db8::1")
    assert holds("remote-ip", "eq", "2001:db8::/32", remote_ip="2001:db8:ffff::5")
    assert not holds("remote-ip", "eq", "2001:db8::/32", remote_ip="2001:db9::5")
    # an IPv4 network never matches an IPv6 client and vice versa
    assert not holds("remote-ip", "eq", "0.0.0.0/0", remote_ip="::1")
    assert not holds("remote-ip", "eq", "::/0", remote_ip="127.0.0.1")


def test_v4_mapped_ipv6_client_matches_ipv4_rules():
    assert holds("remote-ip", "eq", "192.168.0.0/16", remote_ip="::ffff:192.168.1.7")
    assert holds("remote-ip", "eq", "192.168.1.7", remote_ip="::ffff:192.168.1.7")
    assert not holds("remote-ip", "eq", "10.0.0.0/8", remote_ip="::ffff:192.168.1.7")


def test_v4_mapped_rule_matches_ipv4_client():
    assert holds("remote-ip", "eq", "::ffff:10.0.0.0/104", remote_ip="10.3.4.5")
    assert not holds("remote-ip", "eq", "::ffff:10.0.0.0/104", remote_ip="11.3.4.5")
    assert holds("remote-ip", "eq", "::ffff:10.3.4.5", remote_ip="10.3.4.5")


def test_ip_text_operators():
    assert holds("remote-ip", "starts-with", "192.0.2.", remote_ip="192.0.2.77")
    assert holds("remote-ip", "matches", r"^192\.0\.2\.\d+$", remote_ip="192.0.2.77")


def test_unknown_remote_ip_never_matches_a_network():
    assert not holds("remote-ip", "eq", "0.0.0.0/0", remote_ip=None)
    assert holds("remote-ip", "ne", "0.0.0.0/0", remote_ip=None)


# --- combinators --------------------------------------------------------------------------------
def _combo(raw_cond: dict):
    return compile_setting("k", [dict(raw_cond, then="yes"), {"else": "no"}], values.string, RCPT, SCOPE)


def test_any_of():
    e = _combo({"any-of": [{"if": "listener", "eq": "smtp"}, {"if": "tls", "eq": True}]})
    assert e.evaluate(ctx(listener="smtp", tls=False)) == "yes"
    assert e.evaluate(ctx(listener="submission", tls=True)) == "yes"
    assert e.evaluate(ctx(listener="submission", tls=False)) == "no"


def test_all_of():
    e = _combo({"all-of": [{"if": "listener", "eq": "submission"}, {"if": "tls", "eq": True}]})
    assert e.evaluate(ctx(listener="submission", tls=True)) == "yes"
    assert e.evaluate(ctx(listener="submission", tls=False)) == "no"
    assert e.evaluate(ctx(listener="smtp", tls=True)) == "no"


def test_none_of():
    e = _combo({"none-of": [{"if": "remote-ip", "eq": "10.0.0.0/8"}, {"if": "remote-ip", "eq": "127.0.0.1"}]})
    assert e.evaluate(ctx(remote_ip="192.0.2.1")) == "yes"
    assert e.evaluate(ctx(remote_ip="10.1.1.1")) == "no"
    assert e.evaluate(ctx(remote_ip="127.0.0.1")) == "no"


def test_nested_combinators():
    # (listener = submission AND (tls OR from 10/8)) AND NOT sender ends-with .invalid
    e = _combo({"all-of": [
        {"if": "listener", "eq": "submission"},
        {"any-of": [{"if": "tls", "eq": True}, {"if": "remote-ip", "eq": "10.0.0.0/8"}]},
        {"none-of": [{"if": "sender", "ends-with": ".invalid"}]},
    ]})
    assert e.evaluate(ctx(listener="submission", tls=True, sender="a@b.test")) == "yes"
    assert e.evaluate(ctx(listener="submission", remote_ip="10.0.0.9", sender="a@b.test")) == "yes"
    assert e.evaluate(ctx(listener="submission", remote_ip="192.0.2.1", sender="a@b.test")) == "no"
    assert e.evaluate(ctx(listener="submission", tls=True, sender="a@b.invalid")) == "no"
    assert e.evaluate(ctx(listener="smtp", tls=True, sender="a@b.test")) == "no"


def test_first_matching_rule_wins():
    e = compile_setting("k", [{"if": "tls", "eq": True, "then": "first"},
                              {"if": "listener", "eq": "smtp", "then": "second"},
                              {"else": "last"}], values.string, RCPT, SCOPE)
    assert e.evaluate(ctx(listener="smtp", tls=True)) == "first"
    assert e.evaluate(ctx(listener="smtp", tls=False)) == "second"
    assert e.evaluate(ctx(listener="submission", tls=False)) == "last"
    assert not e.constant


def test_plain_value_is_constant():
    e = compile_setting("k", "hello", values.string, RCPT, SCOPE)
    assert e.constant and e.value == "hello" and e.evaluate(None) == "hello"


def test_list_setting_without_else_defaults_to_empty():
    e = compile_setting("k", [{"if": "tls", "eq": True, "then": ["a"]}], values.string_list, RCPT, SCOPE,
                        is_list=True)
    assert e.evaluate(ctx(tls=True)) == ["a"]
    assert e.evaluate(ctx(tls=False)) == []


def test_else_only_block_is_constant():
    e = compile_setting("k", [{"else": "x"}], values.string, RCPT, SCOPE)
    assert e.constant and e.value == "x"


def test_then_values_are_parsed_at_compile_time():
    e = compile_setting("k", [{"if": "tls", "eq": True, "then": "5s"}, {"else": "500ms"}], values.duration,
                        RCPT, SCOPE)
    assert e.evaluate(ctx(tls=True)) == 5.0
    assert e.evaluate(ctx(tls=False)) == 0.5


# --- evaluation times ---------------------------------------------------------------------------
def test_evaluation_time_sets_nest():
    assert CONNECT < EHLO < AUTHENTICATED < MAIL < RCPT
    assert "sender" not in CONNECT and "sender" not in EHLO and "rcpt" not in MAIL
    assert "helo-domain" not in CONNECT and "authenticated-as" not in EHLO


# --- errors: exact messages ---------------------------------------------------------------------
def test_missing_else_for_scalar():
    assert error([{"if": "tls", "eq": True, "then": "a"}]) == \
        "Configuration error: session.x: if-block needs a final { else = ... } rule"


def test_else_not_last():
    assert error([{"else": "a"}, {"if": "tls", "eq": True, "then": "b"}]) == \
        "Configuration error: session.x[0]: 'else' must be the last rule"


def test_else_with_other_keys():
    assert error([{"if": "tls", "eq": True, "else": "a"}]) == \
        "Configuration error: session.x[0]: unexpected key 'eq' beside 'else'"


def test_rule_without_then():
    assert error([{"if": "tls", "eq": True}, {"else": "a"}]) == \
        "Configuration error: session.x[0]: rule has no 'then' value"


def test_rule_without_condition():
    assert error([{"then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0]: rule needs 'if', 'any-of', 'all-of', 'none-of' or 'else'"


def test_unknown_variable():
    assert error([{"if": "client-ip", "eq": "1.2.3.4", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].if: unknown variable 'client-ip'"


def test_variable_name_not_a_string():
    assert error([{"if": 3, "eq": "1.2.3.4", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].if: expected a variable name"


@pytest.mark.parametrize("allowed,var", [(CONNECT, "sender"), (CONNECT, "helo-domain"), (EHLO, "authenticated-as"),
                                         (EHLO, "rcpt"), (MAIL, "rcpt-domain"), (AUTHENTICATED, "sender-domain")])
def test_variable_not_available_at_evaluation_time(allowed, var):
    assert error([{"if": var, "eq": "x", "then": "a"}, {"else": "b"}], allowed=allowed) == \
        f"Configuration error: session.x[0].if: variable {var!r} is not available when this setting is evaluated"


def test_unavailable_variable_inside_combinator_has_its_path():
    raw = [{"any-of": [{"if": "tls", "eq": True}, {"if": "sender", "eq": "x"}], "then": "a"}, {"else": "b"}]
    assert error(raw, allowed=CONNECT) == \
        "Configuration error: session.x[0].any-of[1].if: variable 'sender' is not available when this setting " \
        "is evaluated"


def test_unknown_operator():
    assert error([{"if": "sender", "contains": "x", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].contains: unknown operator 'contains'"


def test_two_operators():
    assert error([{"if": "sender", "eq": "x", "ne": "y", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0]: condition needs exactly one operator (eq, ne, starts-with, " \
        "ends-with, in-list, matches, ...)"


def test_no_operator():
    assert error([{"if": "sender", "then": "a"}, {"else": "b"}]).startswith(
        "Configuration error: session.x[0]: condition needs exactly one operator")


def test_bad_regex():
    line = error([{"if": "sender", "matches": "(abc", "then": "a"}, {"else": "b"}])
    assert line.startswith("Configuration error: session.x[0].matches: invalid regular expression: ")
    assert "missing ), unterminated subpattern" in line


def test_bad_regex_in_not_matches():
    assert error([{"if": "sender", "not-matches": "*x", "then": "a"}, {"else": "b"}]).startswith(
        "Configuration error: session.x[0].not-matches: invalid regular expression: ")


def test_regex_not_a_string():
    assert error([{"if": "sender", "matches": 5, "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].matches: expected a regular expression string"


def test_unknown_listener_id():
    assert error([{"if": "listener", "eq": "smpt", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].eq: unknown listener id 'smpt'"
    assert error([{"if": "listener", "ne": "submision", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].ne: unknown listener id 'submision'"


def test_unknown_list_in_in_list():
    assert error([{"if": "sender-domain", "in-list": "list/nope", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].in-list: unknown list 'list/nope'"


def test_in_list_needs_a_list_lookup():
    assert error([{"if": "sender-domain", "not-in-list": "blocked", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].not-in-list: in-list takes a list lookup such as \"list/blocked\""


def test_invalid_ip_network():
    assert error([{"if": "remote-ip", "eq": "10.0.0.300/8", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].eq: invalid IP address or network '10.0.0.300/8'"


def test_tls_needs_boolean():
    assert error([{"if": "tls", "eq": "yes", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].eq: 'tls' compares with eq/ne against true or false"
    assert error([{"if": "tls", "starts-with": "t", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].starts-with: 'tls' compares with eq/ne against true or false"


def test_local_port_errors():
    assert error([{"if": "local-port", "eq": "smtp", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].eq: invalid port 'smtp'"
    assert error([{"if": "local-port", "eq": True, "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].eq: invalid port True"
    assert error([{"if": "local-port", "eq": 70000, "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].eq: invalid port 70000"
    assert error([{"if": "local-port", "starts-with": "5", "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].starts-with: 'local-port' compares with eq/ne"


def test_compared_value_must_be_text():
    assert error([{"if": "sender", "eq": ["a"], "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].eq: expected a string"


def test_combinator_errors():
    assert error([{"any-of": [], "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].any-of: expected a non-empty array of conditions"
    assert error([{"all-of": {"if": "tls", "eq": True}, "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].all-of: expected a non-empty array of conditions"
    assert error([{"none-of": [{"if": "tls", "eq": True, "then": "x"}], "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0].none-of[0]: nested conditions take no 'then'/'else'"
    assert error([{"any-of": [{"if": "tls", "eq": True}], "if": "tls", "eq": True, "then": "a"}, {"else": "b"}]) == \
        "Configuration error: session.x[0]: unexpected key 'eq' beside 'any-of'"


def test_then_value_errors_carry_rule_path():
    assert error([{"if": "tls", "eq": True, "then": "0"}, {"else": "1s"}], parse=values.duration) == \
        "Configuration error: session.x[0].then: duration must be greater than 0"
    assert error([{"if": "tls", "eq": True, "then": "1s"}, {"else": "soon"}], parse=values.duration) == \
        "Configuration error: session.x[1].else: invalid duration 'soon' (use e.g. \"500ms\", \"5s\", \"1m\", " \
        "\"2h\", \"1d\")"


def test_table_instead_of_value():
    assert error({"if": "tls"}) == \
        "Configuration error: session.x: expected a value or an array of if-block rules, got a table"
