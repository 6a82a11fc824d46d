"""The mechanism registry the AUTH stage uses."""
from __future__ import annotations

import pytest

from smtpgate import sasl
from smtpgate.lookup.base import INVALID, Capability
from smtpgate.sasl.base import Challenge, ChannelBinding, Mechanism

CB = ChannelBinding("tls-unique", b"finished")


def test_names_are_upper_case_and_all_creatable():
    assert len(set(sasl.MECHANISM_NAMES)) == len(sasl.MECHANISM_NAMES) == 9
    for name in sasl.MECHANISM_NAMES:
        assert name == name.upper()
        m = sasl.create(name.lower(), hostname="mx.example.com", channel_binding=CB)
        assert isinstance(m, Mechanism) and m.name == name


def test_unknown_mechanism():
    for fn in (lambda n: sasl.create(n, hostname="h"), sasl.required_capability, sasl.cleartext_sensitive):
        with pytest.raises(KeyError):
            fn("GSSAPI")


def test_fresh_instance_per_exchange():
    a, b = sasl.create("PLAIN", hostname="h"), sasl.create("plain", hostname="h")
    assert a is not b
    assert a.start(None) == Challenge(b"") and b.start(None) == Challenge(b"")


@pytest.mark.parametrize("name, cap", [
    ("PLAIN", Capability.PASSWORD), ("login", Capability.PASSWORD),
    ("OAUTHBEARER", Capability.TOKEN), ("xoauth2", Capability.TOKEN),
    ("SCRAM-SHA-1", Capability.SCRAM), ("scram-sha-256", Capability.SCRAM),
    ("SCRAM-SHA-1-PLUS", Capability.SCRAM), ("SCRAM-SHA-256-PLUS", Capability.SCRAM),
    ("Cram-MD5", Capability.CRAM),
])
def test_required_capability(name, cap):
    assert sasl.required_capability(name) is cap


def test_cleartext_sensitive():
    assert {n for n in sasl.MECHANISM_NAMES if sasl.cleartext_sensitive(n)} == {
        "PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"}
    assert sasl.cleartext_sensitive("plain")


def test_server_first_only_for_cram_md5():
    assert {n for n in sasl.MECHANISM_NAMES
            if sasl.create(n, hostname="h", channel_binding=CB).server_first} == {"CRAM-MD5"}


def test_plus_variants_need_channel_binding():
    with pytest.raises(ValueError):
        sasl.create("SCRAM-SHA-256-PLUS", hostname="h")


def test_options_reach_the_mechanisms():
    m = sasl.create("cram-md5", hostname="mx.example.com")
    assert m.start(None).data.endswith(b"@mx.example.com>")
    m = sasl.create("SCRAM-SHA-256", hostname="h", plus_advertised=True)
    assert m.start(b"y,,n=tim,r=abcdef").kind == "invalid"
    m = sasl.create("SCRAM-SHA-256", hostname="h", plus_advertised=False)
    assert m.start(b"y,,n=tim,r=abcdef").username == "tim"  # NeedSecret
