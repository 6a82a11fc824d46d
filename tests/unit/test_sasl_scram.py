"""SCRAM-SHA-1/256(-PLUS) driven by scramp's *client*, and keys made by gsasl --mkpasswd."""
from __future__ import annotations

import base64
import re

import pytest
from scramp import ScramClient, ScramException, ScramMechanism

from smtpgate.lookup.base import ScramKeys, SecretRecord
from smtpgate.sasl.base import Challenge, ChannelBinding, Failure, NeedSecret, Success
from smtpgate.sasl.scram import Scram
from tests.fixtures.gsasl import gsasl_mkpasswd

CB = ChannelBinding("tls-unique", b"\x01finished-message-of-this-tls-session")


def run(mech: Scram, client: ScramClient, record_for, client_first: str | None = None):
    """Drive one exchange. ``record_for(username)`` plays the lookup. Returns (final action, server-first).
    ``client_first``: what ``client.get_client_first()`` already returned, if the test looked at it."""
    assert mech.start(None) == Challenge(b"")
    need = mech.respond((client_first or client.get_client_first()).encode())
    if not isinstance(need, NeedSecret):
        return need, None
    challenge = mech.secret(record_for(need.username))
    assert isinstance(challenge, Challenge)
    client.set_server_first(challenge.data.decode())
    final = mech.respond(client.get_client_final().encode())
    if isinstance(final, Success):
        client.set_server_final(final.final_data.decode())  # raises unless the server proved the key
    return final, challenge.data.decode()


def server_first_fields(server_first: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in server_first.split(","))


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_plaintext_record(name):
    rec = SecretRecord(account="tim@example.com", plaintext="pencil", addresses=frozenset({"tim@example.com"}))
    final, _ = run(Scram(name), ScramClient([name], "tim", "pencil"), lambda u: rec if u == "tim" else None)
    assert isinstance(final, Success)
    assert (final.account, final.addresses) == ("tim@example.com", frozenset({"tim@example.com"}))
    assert final.final_data.startswith(b"v=")


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_wrong_password(name):
    rec = SecretRecord(account="tim", plaintext="pencil")
    final, _ = run(Scram(name), ScramClient([name], "tim", "pen"), lambda u: rec)
    assert final.kind == "invalid" and final.username == "tim"


def test_stored_keys_from_scramp():
    salt, stored, server, i = ScramMechanism("SCRAM-SHA-256").make_auth_info("pencil", iteration_count=8192)
    rec = SecretRecord(account="tim", scram={"SHA-256": ScramKeys(salt, i, stored, server)})
    final, sf = run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "tim", "pencil"), lambda u: rec)
    assert isinstance(final, Success) and final.account == "tim"
    assert server_first_fields(sf)["i"] == "8192"
    assert base64.b64decode(server_first_fields(sf)["s"]) == salt


def test_keys_for_the_other_hash_are_not_used():
    salt, stored, server, i = ScramMechanism("SCRAM-SHA-256").make_auth_info("pencil")
    rec = SecretRecord(account="tim", scram={"SHA-256": ScramKeys(salt, i, stored, server)})
    final, _ = run(Scram("SCRAM-SHA-1"), ScramClient(["SCRAM-SHA-1"], "tim", "pencil"), lambda u: rec)
    assert final.kind == "invalid"


@pytest.mark.parametrize("name, key", [("SCRAM-SHA-256", "SHA-256"), ("SCRAM-SHA-1", "SHA-1")])
def test_gsasl_mkpasswd_keys(name, key):
    keys = gsasl_mkpasswd(name, "pässwörd", "--iteration-count=4096")
    rec = SecretRecord(account="jörg", scram={key: keys})
    final, sf = run(Scram(name), ScramClient([name], "jörg", "pässwörd"), lambda u: rec if u == "jörg" else None)
    assert isinstance(final, Success)
    assert server_first_fields(sf)["i"] == "4096"
    final, _ = run(Scram(name), ScramClient([name], "jörg", "passwörd"), lambda u: rec)
    assert final.kind == "invalid"


def test_unknown_user_is_indistinguishable_and_deterministic():
    rec = SecretRecord(account="tim", plaintext="pencil")
    lookup = {"tim": rec}.get
    _, real = run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "tim", "x"), lookup)
    f1, fake1 = run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "nobody", "x"), lookup)
    f2, fake2 = run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "nobody", "y"), lookup)
    _, other = run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "someone", "y"), lookup)
    assert f1 == f2 and f1.kind == "invalid" and f1.username == "nobody"
    real, fake1, fake2, other = map(server_first_fields, (real, fake1, fake2, other))
    assert fake1["s"] == fake2["s"] != other["s"]                   # same user, same salt
    assert fake1["i"] == real["i"] == "4096"
    assert len(base64.b64decode(fake1["s"])) == len(base64.b64decode(real["s"]))
    assert len(fake1["r"]) == len(real["r"])


def test_plaintext_user_gets_the_same_salt_every_time():
    rec = SecretRecord(account="tim", plaintext="pencil")
    sfs = [run(Scram("SCRAM-SHA-1"), ScramClient(["SCRAM-SHA-1"], "tim", "pencil"), lambda u: rec)[1]
           for _ in range(2)]
    assert server_first_fields(sfs[0])["s"] == server_first_fields(sfs[1])["s"]


def test_fakes_copy_the_shape_the_lookup_fixed():
    keys = gsasl_mkpasswd("SCRAM-SHA-256", "pencil")  # gsasl defaults: 65536 iterations, 12-octet salt
    rec = SecretRecord(account="tim", scram={"SHA-256": keys})
    lookup = {"tim": rec}.get
    shape = {"SHA-256": (len(keys.salt), keys.iterations)}   # what ListLookup & co. compute at start
    _, real = run(Scram("SCRAM-SHA-256", fake_shape=shape), ScramClient(["SCRAM-SHA-256"], "tim", "pencil"), lookup)
    _, fake = run(Scram("SCRAM-SHA-256", fake_shape=shape), ScramClient(["SCRAM-SHA-256"], "ghost", "pencil"), lookup)
    real, fake = server_first_fields(real), server_first_fields(fake)
    assert fake["i"] == real["i"] == str(keys.iterations)
    assert len(fake["s"]) == len(real["s"])


def test_fakes_never_copy_earlier_exchanges():
    """Issue 9 item 8: a real exchange before must not change what an unknown user's fake looks like."""
    keys = gsasl_mkpasswd("SCRAM-SHA-256", "pencil")
    lookup = {"tim": SecretRecord(account="tim", scram={"SHA-256": keys})}.get
    _, before = run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "ghost", "pencil"), lookup)
    run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "tim", "pencil"), lookup)
    _, after = run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "ghost", "pencil"), lookup)
    assert server_first_fields(before)["i"] == server_first_fields(after)["i"] == "4096"


def test_record_without_usable_secret_fails_even_with_the_right_password():
    for rec in (SecretRecord(account="tim"),
                SecretRecord(account="tim", scram={"SHA-256": ScramKeys(b"short", 4096, b"x" * 32, b"y" * 32)})):
        final, _ = run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "tim", "pencil"), lambda u: rec)
        assert final.kind == "invalid"


def test_stored_keys_unusable_but_plaintext_present():
    rec = SecretRecord(account="tim", plaintext="pencil",
                       scram={"SHA-256": ScramKeys(b"0123456789ab", 1000, b"x" * 32, b"y" * 32)})
    final, _ = run(Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "tim", "pencil"), lambda u: rec)
    assert isinstance(final, Success)


def test_username_preparation_and_escapes():
    m = Scram("SCRAM-SHA-256")
    assert m.start(b"n,,n=a=2Cb=3Dc,r=abcdef") == NeedSecret("a,b=c")
    m = Scram("SCRAM-SHA-256")
    assert m.start("n,,n=us\u00ader,r=abcdef".encode()) == NeedSecret("user")  # SASLprep maps SHY to nothing


@pytest.mark.parametrize("client_first", [
    b"",
    b"n,,",
    b"n,,n=tim",                        # no nonce
    b"n,,r=abc,n=tim",                  # wrong order
    b"n,,n=tim,r=abc,extra",            # junk
    b"n,,m=ext,n=tim,r=abc",            # mandatory extension
    b"n,,n=t=41m,r=abc",                # bad escape
    b"n,,n=tim,r=a\x7fb",               # bad nonce
    b"n,,n=,r=abc",                     # empty user
    b"n,,n=t\xffm,r=abc",               # invalid UTF-8
    b"n,,n=tim\x07,r=abc",              # SASLprep forbids controls
    b"x,,n=tim,r=abc",                  # bad flag
    b"n",                               # no GS2 header
    b"p=tls-unique,,n=tim,r=abc",       # binding on a non-PLUS mechanism
])
def test_malformed_client_first(client_first):
    action = Scram("SCRAM-SHA-256", channel_binding=CB).start(client_first)
    assert isinstance(action, Failure) and action.kind == "malformed", action


def test_authzid_is_refused():
    action = Scram("SCRAM-SHA-256").start(b"n,a=boss,n=tim,r=abcdef")
    assert isinstance(action, Failure) and action.kind == "invalid"


def test_client_final_errors():
    rec = SecretRecord(account="tim", plaintext="pencil")

    def to_final(mech: Scram):
        client = ScramClient(["SCRAM-SHA-256"], "tim", "pencil")
        mech.start(client.get_client_first().encode())
        client.set_server_first(mech.secret(rec).data.decode())
        return client.get_client_final()

    m = Scram("SCRAM-SHA-256")
    to_final(m)
    assert m.respond(b"garbage").kind == "malformed"
    m = Scram("SCRAM-SHA-256")
    good = to_final(m)
    assert m.respond(b"\xff" + good.encode()).kind == "malformed"
    m = Scram("SCRAM-SHA-256")
    good = to_final(m)
    nonce = re.search(r"r=([^,]+)", good)[1]
    assert m.respond(good.replace(nonce, nonce[:-1] + "x").encode()).kind == "malformed"
    m = Scram("SCRAM-SHA-256")
    good = to_final(m)
    proof = re.search(r"p=([^,]+)", good)[1]
    bad = base64.b64encode(bytes(len(base64.b64decode(proof)))).decode()
    assert m.respond(good.replace(proof, bad).encode()).kind == "invalid"


def test_downgrade_detected_when_plus_was_advertised():
    rec = SecretRecord(account="tim", plaintext="pencil")
    # a client that can bind but did not see -PLUS sends "y"
    client = ScramClient(["SCRAM-SHA-256"], "tim", "pencil", channel_binding=("tls-unique", CB.data))
    first = client.get_client_first()
    assert first.startswith("y,,")
    final, _ = run(Scram("SCRAM-SHA-256", plus_advertised=True), client, lambda u: rec, first)
    assert final.kind == "invalid"
    client = ScramClient(["SCRAM-SHA-256"], "tim", "pencil", channel_binding=("tls-unique", CB.data))
    final, _ = run(Scram("SCRAM-SHA-256", plus_advertised=False), client, lambda u: rec)
    assert isinstance(final, Success)


@pytest.mark.parametrize("name, cb", [
    ("SCRAM-SHA-256-PLUS", CB),
    ("SCRAM-SHA-1-PLUS", CB),
    ("SCRAM-SHA-256-PLUS", ChannelBinding("tls-server-end-point", b"\x02" * 32)),
])
def test_plus_with_channel_binding(name, cb):
    rec = SecretRecord(account="tim", plaintext="pencil")
    client = ScramClient([name], "tim", "pencil", channel_binding=(cb.type, cb.data))
    first = client.get_client_first()
    assert first.startswith(f"p={cb.type},,")
    final, _ = run(Scram(name, channel_binding=cb), client, lambda u: rec, first)
    assert isinstance(final, Success)


def test_plus_channel_binding_mismatch():
    rec = SecretRecord(account="tim", plaintext="pencil")
    client = ScramClient(["SCRAM-SHA-256-PLUS"], "tim", "pencil", channel_binding=("tls-unique", b"mitm"))
    final, _ = run(Scram("SCRAM-SHA-256-PLUS", channel_binding=CB), client, lambda u: rec)
    assert final.kind == "invalid"
    client = ScramClient(["SCRAM-SHA-256-PLUS"], "tim", "pencil",
                         channel_binding=("tls-server-end-point", CB.data))
    final, _ = run(Scram("SCRAM-SHA-256-PLUS", channel_binding=CB), client, lambda u: rec)
    assert final.kind == "malformed"  # a binding type we do not have


@pytest.mark.parametrize("client_first", [b"n,,n=tim,r=abc", b"y,,n=tim,r=abc"])
def test_plus_requires_binding_flag(client_first):
    action = Scram("SCRAM-SHA-256-PLUS", channel_binding=CB).start(client_first)
    assert isinstance(action, Failure) and action.kind == "malformed"


@pytest.mark.parametrize("cb", [None, ChannelBinding("tls-exporter", b"x" * 32), ChannelBinding("tls-unique", b"")])
def test_plus_needs_a_supported_binding(cb):
    with pytest.raises(ValueError):
        Scram("SCRAM-SHA-256-PLUS", channel_binding=cb)


def test_unknown_name_and_bad_iterations():
    with pytest.raises(KeyError):
        Scram("SCRAM-SHA-512")
    with pytest.raises(ValueError):
        Scram("SCRAM-SHA-256", iterations=100)


def test_out_of_order():
    m = Scram("SCRAM-SHA-256")
    with pytest.raises(RuntimeError):
        m.secret(None)
    m.start(b"n,,n=tim,r=abcdef")
    with pytest.raises(RuntimeError):
        m.respond(b"c=biws,r=abcdef,p=AAAA")


def test_scramp_client_rejects_a_forged_server_final():
    """Sanity check of the harness: the client really verifies the server signature."""
    rec = SecretRecord(account="tim", plaintext="pencil")
    m, client = Scram("SCRAM-SHA-256"), ScramClient(["SCRAM-SHA-256"], "tim", "pencil")
    m.start(client.get_client_first().encode())
    client.set_server_first(m.secret(rec).data.decode())
    assert isinstance(m.respond(client.get_client_final().encode()), Success)
    with pytest.raises(ScramException):
        client.set_server_final("v=" + base64.b64encode(bytes(32)).decode())
