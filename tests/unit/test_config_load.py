"""The loader: a Stalwart-style document becomes compiled settings; every error is one exact line.

Each error test asserts the whole ``Configuration error: <key path>: <reason>`` line that ``serve`` and
``check-config`` print.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from smtpgate.config.errors import ConfigError
from smtpgate.config.load import load_file, load_text
from smtpgate.session.variables import SessionVariables
from tests.fixtures.certs import make_pki

ROOT = Path(__file__).resolve().parents[2]

LISTENERS = """
[server]
hostname = "mx.test"

[server.listener.smtp]
bind = ["127.0.0.1:0"]

[server.listener.submission]
bind = ["127.0.0.1:0"]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_section(pki, ident: str = "default") -> str:
    return f"""
[certificate.{ident}]
cert = "file://{pki.cert}"
private-key = "file://{pki.key}"
"""


def load(extra: str = "", base: str = LISTENERS, **kw):
    return load_text(base + extra, **kw)


def fails(extra: str = "", base: str = LISTENERS, **kw) -> str:
    with pytest.raises(ConfigError) as exc:
        load_text(base + extra, **kw)
    return exc.value.line()


def v(listener="smtp", remote_ip="192.0.2.1", tls=False, **kw) -> SessionVariables:
    out = SessionVariables(listener, ipaddress.ip_address(remote_ip), ipaddress.ip_address("127.0.0.1"), 25, tls)
    for k, val in kw.items():
        setattr(out, k, val)
    return out


# --- a full Stalwart-style configuration --------------------------------------------------------
STALWART = """
[server]
hostname = "mail.example.org"
greeting = "ESMTP ready"

[server.listener."smtp"]
bind = ["127.0.0.1:0", "[::1]:0"]
protocol = "smtp"

[server.listener."submission"]
bind = ["127.0.0.1:0"]
hostname = "submit.example.org"

[server.listener."submissions"]
bind = ["127.0.0.1:0"]
tls.implicit = true

[server.listener."lmtp"]
bind = "127.0.0.1:0"
protocol = "lmtp"
max-connections = 10

[server.tls]
enable = true
implicit = false
certificate = "default"
timeout = "1m"
protocols = ["TLSv1.3"]

[session]
timeout = "5m"
duration = "10m"
transfer-limit = "250MB"

[session.ehlo]
require = true

[session.auth]
mechanisms = [ { if = "listener", ne = "smtp", then = ["plain", "login"] },
               { else = [] } ]
directory = [ { if = "listener", ne = "smtp", then = "remote/imap" },
              { else = false } ]
require = [ { if = "listener", ne = "smtp", then = true },
            { else = false } ]
allow-plain-text = [ { if = "remote-ip", eq = "10.0.0.0/8", then = true }, { else = false } ]
must-match-sender = true

[session.auth.errors]
max = 3
wait = "5s"

[session.rcpt]
relay = [ { if = "authenticated-as", ne = "", then = true }, { else = false } ]
max-recipients = 25

[session.rcpt.lookup]
domains = "list/domains"

[session.data.limits]
size = 104857600
messages = 10

[remote."imap"]
address = "127.0.0.1"
port = 993
protocol = "imap"
lookup = true
concurrency = 10
timeout = "15s"
tls.implicit = true
tls.allow-invalid-certs = true
cache.entries = 1000
cache.ttl.positive = "1h"
cache.ttl.negative = "10m"

[list]
domains = ["example.org", "Example.NET"]

[queue]
path = "spool"
"""


def test_stalwart_style_config(pki, tmp_path):
    s = load_text(STALWART + tls_section(pki), base_dir=str(tmp_path))
    assert s.hostname == "mail.example.org" and s.greeting == "ESMTP ready"
    assert list(s.listeners) == ["smtp", "submission", "submissions", "lmtp"]
    smtp, sub, subs, lmtp = s.listeners.values()
    assert smtp.binds == [("127.0.0.1", 0), ("::1", 0)]
    assert sub.hostname == "submit.example.org"
    assert smtp.tls.enable and not smtp.tls.implicit and smtp.tls.certificate == "default"
    assert subs.tls.enable and subs.tls.implicit
    assert smtp.tls.protocols == ("TLSv1.3",) and smtp.tls.timeout == 60.0
    assert lmtp.protocol == "lmtp" and lmtp.max_connections == 10
    ss = s.session
    assert ss.timeout.value == 300.0 and ss.duration.value == 600.0 and ss.transfer_limit.value == 250 * 1024**2
    assert ss.auth_mechanisms.evaluate(v("smtp")) == ()
    assert ss.auth_mechanisms.evaluate(v("submission")) == ("PLAIN", "LOGIN")
    # aliases: session.auth.directory and session.auth.errors.max
    assert ss.auth_lookup.evaluate(v("submission")) == "remote/imap"
    assert ss.auth_lookup.evaluate(v("smtp")) is None
    assert ss.auth_errors_total.value == 3 and ss.auth_errors_wait.value == 5.0
    assert ss.auth_require.evaluate(v("submissions")) is True
    assert ss.auth_allow_plain_text.evaluate(v(remote_ip="10.1.1.1")) is True
    assert ss.auth_allow_plain_text.evaluate(v(remote_ip="192.0.2.1")) is False
    assert ss.rcpt_relay.evaluate(v(authenticated_as="john")) is True
    assert ss.rcpt_relay.evaluate(v()) is False
    assert ss.data_max_size.value == 104857600
    r = s.remotes["imap"]
    assert (r.address, r.port, r.protocol, r.lookup, r.timeout) == ("127.0.0.1", 993, "imap", True, 15.0)
    assert r.tls.implicit and r.tls.allow_invalid_certs
    assert (r.cache.entries, r.cache.ttl_positive, r.cache.ttl_negative) == (1000, 3600.0, 600.0)
    assert s.queue_path == str(tmp_path / "spool")


def test_defaults():
    s = load()
    assert s.hostname == "mx.test" and s.greeting == "smtpgate at your service"
    ss = s.session
    assert ss.auth_mechanisms.value == ("PLAIN", "LOGIN")
    assert ss.auth_lookup.value is None
    assert ss.auth_require.value is False
    assert ss.auth_errors_total.value == 3
    assert ss.auth_errors_wait_spread.value == 0.5
    assert ss.auth_allow_plain_text.value is False
    assert ss.ehlo_require.value is True
    # relaying defaults to "authenticated sessions only"
    assert ss.rcpt_relay.evaluate(v()) is False
    assert ss.rcpt_relay.evaluate(v(authenticated_as="john")) is True
    assert not s.listeners["smtp"].tls.enable
    assert s.next_hop.evaluate(v()) is None


@pytest.mark.parametrize("raw,value", [("0", 0.0), ("0.5", 0.5), ('"40%"', 0.4), ("1", 1.0)])
def test_wait_spread_takes_a_share_or_a_percentage(raw, value):
    s = load_text(f'[server.listener.smtp]\nbind = "127.0.0.1:0"\n[session.auth.errors]\nwait-spread = {raw}\n')
    assert s.session.auth_errors_wait_spread.value == value


def test_examples_load(pki, tmp_path):
    for path in sorted((ROOT / "examples").glob("*.toml")):
        (tmp_path / "tls").mkdir(exist_ok=True)   # the examples name tls/*.pem next to themselves
        (tmp_path / "tls" / "fullchain.pem").write_bytes(pki.cert.read_bytes())
        (tmp_path / "tls" / "privkey.pem").write_bytes(pki.key.read_bytes())
        load_text(path.read_text(), source=str(path), base_dir=str(tmp_path))


def test_false_means_no_lookup():
    s = load('[session.auth]\nlookup = false\n[session.rcpt.lookup]\ndomains = false\n')
    assert s.session.auth_lookup.value is None and s.session.rcpt_domains.value is None


def test_errors_total_alias_and_canonical():
    assert load("[session.auth.errors]\nmax = 7\n").session.auth_errors_total.value == 7
    assert load("[session.auth.errors]\ntotal = 5\n").session.auth_errors_total.value == 5


def test_empty_tables_are_harmless(pki):
    s = load("[session]\n[session.auth]\n[session.auth.errors]\n[list]\n[queue]\n[queue.outbound]\n"
             "[server.tls]\n[server.listener.smtp.tls]\n[database]\n[remote]\n[directory]\n")
    assert s.session.auth_errors_total.value == 3


def test_listener_certificate_enables_tls(pki):
    s = load('[server.listener.submission.tls]\ncertificate = "default"\n' + tls_section(pki))
    assert s.listeners["submission"].tls.enable and s.listeners["submission"].tls.certificate == "default"
    assert not s.listeners["smtp"].tls.enable


def test_listener_tls_overrides(pki):
    s = load('[server.tls]\nenable = true\ncertificate = "a"\n'
             '[server.listener.smtp.tls]\nenable = false\n'
             '[server.listener.submission.tls]\ncertificate = "b"\nprotocols = ["TLSv1.2"]\n'
             + tls_section(pki, "a") + tls_section(pki, "b"))
    assert not s.listeners["smtp"].tls.enable
    sub = s.listeners["submission"].tls
    assert sub.enable and sub.certificate == "b" and sub.protocols == ("TLSv1.2",)


def test_single_certificate_is_the_default(pki):
    s = load("[server.tls]\nenable = true\n" + tls_section(pki, "only"))
    assert s.listeners["smtp"].tls.certificate == "only"


def test_inline_pem_certificate(pki):
    cert, key = pki.cert.read_text(), pki.key.read_text()
    s = load(f'[certificate.inline]\ncert = """{cert}"""\nprivate-key = """{key}"""\n')
    assert s.certificates["inline"].cert_pem == cert and s.certificates["inline"].key_pem == key


def test_file_values_relative_to_config(pki, tmp_path):
    (tmp_path / "domains.txt").write_text("# local domains\nexample.org\n\n  Example.NET  \n")
    (tmp_path / "c.pem").write_bytes(pki.cert.read_bytes())
    (tmp_path / "k.pem").write_bytes(pki.key.read_bytes())
    (tmp_path / "smtpgate.toml").write_text(
        LISTENERS + '[list]\ndomains = "file://domains.txt"\n'
        f'[certificate.x]\ncert = "file://c.pem"\nprivate-key = "file://{tmp_path}/k.pem"\n'
        '[session.rcpt]\nrelay = [ { all-of = [ { if = "authenticated-as", ne = "" }, '
        '{ if = "rcpt-domain", in-list = "list/domains" } ], then = true }, { else = false } ]\n')
    s = load_file(str(tmp_path / "smtpgate.toml"))
    assert s.lists["domains"].entries == ["example.org", "Example.NET"]
    assert s.certificates["x"].cert_pem == pki.cert.read_text()
    # list contents are compared case-insensitively by in-list
    assert s.session.rcpt_relay.evaluate(v(authenticated_as="j", rcpt_domain="example.net")) is True
    assert s.session.rcpt_relay.evaluate(v(authenticated_as="j", rcpt_domain="example.com")) is False


def test_in_list_on_user_list_compares_names():
    s = load('[list]\nusers = ["john@example.org:secret", "2001:db8::1"]\n'
             '[session.rcpt]\nrelay = [ { if = "authenticated-as", in-list = "list/users", then = true }, '
             '{ if = "remote-ip", in-list = "list/users", then = true }, { else = false } ]\n')
    assert s.session.rcpt_relay.evaluate(v(authenticated_as="john@example.org")) is True
    assert s.session.rcpt_relay.evaluate(v(remote_ip="2001:db8::1")) is True
    assert s.session.rcpt_relay.evaluate(v(authenticated_as="jane@example.org")) is False


def test_database_and_lookup_names(tmp_path):
    s = load('[database.sql]\naddress = "sqlite://users.db?mode=rwc"\n'
             'lookup.auth = "SELECT secret FROM users WHERE email=?"\n'
             'lookup.domains = "SELECT 1 FROM domains WHERE name=?"\n'
             '[session.auth]\nlookup = "db/sql/auth"\n[session.rcpt.lookup]\ndomains = "db/sql/domains"\n',
             base_dir=str(tmp_path))
    assert s.databases["sql"].address == f"sqlite://{tmp_path}/users.db?mode=rwc"
    assert s.session.auth_lookup.value == "db/sql/auth"


def test_next_hop(pki):
    s = load('[remote.lmtp]\naddress = "127.0.0.1"\nport = 24\nprotocol = "lmtp"\n'
             '[queue.outbound]\nnext-hop = [ { if = "sender-domain", eq = "example.org", then = "remote/lmtp" },'
             ' { else = false } ]\n')
    assert s.next_hop.evaluate(v(sender_domain="example.org")) == "remote/lmtp"
    assert s.next_hop.evaluate(v(sender_domain="example.net")) is None


# --- errors -------------------------------------------------------------------------------------
def test_bad_toml():
    line = fails('[session\nx = 1\n')
    assert line.startswith("Configuration error: <config>: invalid TOML: ")
    assert "\n" not in line


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nhostname = "a"\nhostname = "b"\n')
    with pytest.raises(ConfigError) as exc:
        load_file(str(path))
    assert exc.value.line().startswith(f"Configuration error: {path}: invalid TOML: ")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_file(str(tmp_path / "nope.toml"))
    assert exc.value.line() == \
        f"Configuration error: {tmp_path}/nope.toml: cannot read configuration file: No such file or directory"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhostname = "\xe9"\n')
    with pytest.raises(ConfigError) as exc:
        load_file(str(path))
    assert exc.value.line() == f"Configuration error: {path}: configuration file is not valid UTF-8"


@pytest.mark.parametrize("extra,key", [
    ("[session.auth]\nmechanism = []\n", "session.auth.mechanism"),
    ("[session]\nidle-timeout = \"5s\"\n", "session.idle-timeout"),
    ("ports = 25\n", "server.listener.smtp.ports"),
    ("[foo]\nbar = 1\n", "foo.bar"),
    ("[foo]\n", "foo"),
    ("[session.auth.errors]\ntotl = 3\n", "session.auth.errors.totl"),
    ("[remote.imap]\naddress = \"h\"\nprotocol = \"imap\"\nlookups = true\n", "remote.imap.lookups"),
    ("[server.listener.smtp.tls]\nimplicit = false\nenabled = true\n", "server.listener.smtp.tls.enabled"),
])
def test_unknown_key(extra, key):
    assert fails(extra, base=TOP + 'bind = "127.0.0.1:0"\n') == f"Configuration error: {key}: unknown configuration key"


TOP = '[server]\nhostname = "mx.test"\n[server.listener.smtp]\n'


@pytest.mark.parametrize("top,line", [
    ('hostnme = "x"\n', "server.hostnme: unknown configuration key"),
    ("hostname = 5\n", "server.hostname: expected a string, got 5"),
    ('greeting = ["a"]\n', "server.greeting: expected a string, got an array"),
    ('shutdown-grace = "0ms"\n', "server.shutdown-grace: duration must be greater than 0"),
])
def test_server_section_errors(top, line):
    assert fails(base=f"[server]\n{top}[server.listener.smtp]\nbind = \"127.0.0.1:0\"\n") == \
        f"Configuration error: {line}"


@pytest.mark.parametrize("extra,line", [
    ('[session.ehlo]\nrequire = "yes"\n', "session.ehlo.require: expected true or false, got 'yes'"),
    ('[session.auth]\nrequire = 1\n', "session.auth.require: expected true or false, got 1"),
    ('[session.auth.errors]\ntotal = "3"\n', "session.auth.errors.total: expected an integer, got '3'"),
    ('[session.auth.errors]\ntotal = 0\n', "session.auth.errors.total: must be greater than 0"),
    ('[session.auth.errors]\nwait = true\n',
     "session.auth.errors.wait: expected a duration such as \"5s\", got true"),
    ('[session.auth.errors]\nwait-spread = 2\n',
     "session.auth.errors.wait-spread: expected a share between 0 and 1 such as 0.25 or \"25%\", got 2"),
    ('[session.auth.errors]\nwait-spread = "lots%"\n',
     "session.auth.errors.wait-spread: expected a share between 0 and 1 such as 0.25 or \"25%\", got 'lots%'"),
    ('[session]\ntimeout = 0\n', "session.timeout: duration must be greater than 0"),
    ('[session]\ntimeout = "0s"\n', "session.timeout: duration must be greater than 0"),
    ('[session.auth]\nmechanisms = "plain"\nlookup = 5\n',
     "session.auth.lookup: expected a lookup name such as \"list/users\" or false, got 5"),
    ('[session.auth]\nmechanisms = [1]\n', "session.auth.mechanisms: expected a list of strings, got an array"),
    ('[session.data.limits]\nsize = "big"\n',
     "session.data.limits.size: expected a size in bytes (e.g. 26214400 or \"25MB\"), got 'big'"),
    ('[session.auth]\nrequire = { if = "tls", eq = true }\n',
     "session.auth.require: expected a value or an array of if-block rules, got a table"),
])
def test_wrong_type(extra, line):
    assert fails(extra) == f"Configuration error: {line}"


def test_missing_else_for_scalar():
    assert fails('[session.auth]\nrequire = [ { if = "listener", eq = "smtp", then = true } ]\n') == \
        "Configuration error: session.auth.require: if-block needs a final { else = ... } rule"


def test_missing_else_for_list_is_empty():
    s = load('[session.auth]\nmechanisms = [ { if = "listener", eq = "submission", then = ["plain"] } ]\n')
    assert s.session.auth_mechanisms.evaluate(v("smtp")) == ()


def test_else_not_last():
    assert fails('[session.auth]\nrequire = [ { else = false }, { if = "tls", eq = true, then = true } ]\n') == \
        "Configuration error: session.auth.require[0]: 'else' must be the last rule"


def test_unknown_variable():
    assert fails('[session.auth]\nrequire = [ { if = "client", eq = "x", then = true }, { else = false } ]\n') == \
        "Configuration error: session.auth.require[0].if: unknown variable 'client'"


@pytest.mark.parametrize("key,var", [
    ("session.auth.require", "sender"), ("session.auth.lookup", "helo-domain"),
    ("session.auth.errors.total", "authenticated-as"), ("session.auth.mechanisms", "sender"),
    ("session.timeout", "rcpt"), ("session.rcpt.max-recipients", "rcpt-domain"),
    ("session.auth.must-match-sender", "sender"), ("session.data.limits.size", "rcpt"),
])
def test_variable_not_available(key, var):
    section, _, leaf = key.rpartition(".")
    then = {"session.auth.lookup": '"list/x"', "session.auth.errors.total": "3", "session.auth.mechanisms": '["plain"]',
            "session.timeout": '"5s"', "session.rcpt.max-recipients": "5", "session.data.limits.size": "5"
            }.get(key, "true")
    other = {"session.auth.lookup": "false", "session.auth.mechanisms": "[]"}.get(key, then)
    extra = f'[{section}]\n{leaf} = [ {{ if = "{var}", eq = "x", then = {then} }}, {{ else = {other} }} ]\n' \
            '[list]\nx = []\n'
    assert fails(extra) == \
        f"Configuration error: {key}[0].if: variable {var!r} is not available when this setting is evaluated"


@pytest.mark.parametrize("key,var", [
    ("session.auth.mechanisms", "tls"), ("session.auth.mechanisms", "helo-domain"),
    ("session.auth.must-match-sender", "authenticated-as"), ("session.rcpt.max-recipients", "sender-domain"),
    ("session.rcpt.relay", "rcpt-domain"), ("session.auth.require", "local-port"),
])
def test_variable_available(key, var):
    section, _, leaf = key.rpartition(".")
    # (a relay rule on rcpt-domain alone must not relay: issue 9 item 7)
    then = {"session.auth.mechanisms": '["plain"]', "session.rcpt.max-recipients": "5",
            "session.rcpt.relay": "false"}.get(key, "true")
    other = {"session.auth.mechanisms": "[]", "session.rcpt.max-recipients": "5"}.get(key, "false")
    value = {"tls": "true", "local-port": "587"}.get(var, '"x"')
    load(f'[{section}]\n{leaf} = [ {{ if = "{var}", eq = {value}, then = {then} }}, {{ else = {other} }} ]\n')


def test_bad_regex():
    line = fails('[session.auth]\nrequire = [ { if = "remote-ip", matches = "(10", then = true }, { else = false } ]\n')
    assert line == "Configuration error: session.auth.require[0].matches: invalid regular expression: " \
                   "missing ), unterminated subpattern at position 0"


def test_unknown_listener_id():
    assert fails('[session.auth]\nrequire = [ { if = "listener", eq = "submissions", then = true }, '
                 '{ else = false } ]\n') == \
        "Configuration error: session.auth.require[0].eq: unknown listener id 'submissions'"


def test_unknown_lookup_name():
    assert fails('[session.auth]\nlookup = "list/users"\n') == \
        "Configuration error: session.auth.lookup: unknown lookup 'list/users'"
    assert fails('[session.auth]\ndirectory = "db/sql/auth"\n') == \
        "Configuration error: session.auth.directory: unknown lookup 'db/sql/auth'"
    assert fails('[session.auth]\nlookup = [ { if = "listener", eq = "smtp", then = false }, '
                 '{ else = "remote/imap" } ]\n') == \
        "Configuration error: session.auth.lookup[1].else: unknown lookup 'remote/imap'"
    assert fails('[session.rcpt.lookup]\ndomains = "list/domains"\n') == \
        "Configuration error: session.rcpt.lookup.domains: unknown lookup 'list/domains'"


def test_unknown_list_in_in_list():
    assert fails('[session.rcpt]\nrelay = [ { if = "rcpt-domain", in-list = "list/relay", then = true }, '
                 '{ else = false } ]\n') == \
        "Configuration error: session.rcpt.relay[0].in-list: unknown list 'list/relay'"


def test_unknown_certificate(pki):
    assert fails('[server.tls]\ncertificate = "main"\n' + tls_section(pki)) == \
        "Configuration error: server.tls.certificate: unknown certificate 'main' (define [certificate.main])"
    assert fails('[server.listener.submission.tls]\ncertificate = "x"\n' + tls_section(pki)) == \
        "Configuration error: server.listener.submission.tls.certificate: unknown certificate 'x' " \
        "(define [certificate.x])"


def test_unknown_mechanism():
    assert fails('[session.auth]\nmechanisms = ["plain", "ntlm"]\n') == \
        "Configuration error: session.auth.mechanisms: unknown SASL mechanism 'ntlm' (known: PLAIN, LOGIN, " \
        "OAUTHBEARER, XOAUTH2, SCRAM-SHA-256, SCRAM-SHA-1, SCRAM-SHA-256-PLUS, SCRAM-SHA-1-PLUS, CRAM-MD5)"
    assert fails('[session.auth]\nmechanisms = [ { if = "tls", eq = true, then = ["gssapi"] } ]\n').startswith(
        "Configuration error: session.auth.mechanisms[0].then: unknown SASL mechanism 'gssapi'")


REMOTE = '[remote.imap]\naddress = "127.0.0.1"\nprotocol = "imap"\n'


def test_remote_without_lookup_true_as_auth_lookup():
    assert fails(REMOTE + '[session.auth]\nlookup = "remote/imap"\n') == \
        "Configuration error: session.auth.lookup: remote 'imap' is not enabled for lookups " \
        "(set remote.imap.lookup = true)"
    load(REMOTE + 'lookup = true\n[session.auth]\nlookup = "remote/imap"\n')


def test_remote_cannot_be_membership_lookup():
    assert fails(REMOTE + 'lookup = true\n[session.rcpt.lookup]\ndomains = "remote/imap"\n') == \
        "Configuration error: session.rcpt.lookup.domains: lookup 'remote/imap' cannot answer membership " \
        "queries (use list/ or db/)"


def test_open_relay_refused():
    assert fails('[session.rcpt]\nrelay = true\n') == \
        "Configuration error: session.rcpt.relay: an unconditional true would make an open relay; use an " \
        "if-block (e.g. { if = \"authenticated-as\", ne = \"\", then = true })"
    assert fails('[session.rcpt]\nrelay = [ { if = "remote-ip", eq = "10.0.0.0/8", then = false }, '
                 '{ else = true } ]\n') == \
        "Configuration error: session.rcpt.relay: 'else = true' would make an open relay for everyone the rules miss"
    s = load('[session.rcpt]\nrelay = false\n')
    assert s.session.rcpt_relay.evaluate(v(authenticated_as="john")) is False


def test_duplicate_binds():
    base = "[server.listener.a]\nbind = \"127.0.0.1:2525\"\n[server.listener.b]\nbind = [\"[::1]:25\", " \
           "\"127.0.0.1:2525\"]\n"
    assert fails(base=base) == \
        "Configuration error: server.listener.b.bind: 127.0.0.1:2525 is already bound by listener 'a'"
    assert fails(base='[server.listener.a]\nbind = ["[::1]:25", "[0::1]:25"]\n') == \
        "Configuration error: server.listener.a.bind: ::1:25 is already bound by listener 'a'"
    assert fails(base='[server.listener.a]\nbind = "0.0.0.0:25"\n[server.listener.b]\nbind = "127.0.0.1:25"\n') == \
        "Configuration error: server.listener.b.bind: 127.0.0.1:25 is already bound by listener 'a'"
    assert fails(base='[server.listener.a]\nbind = "[::1]:25"\n[server.listener.b]\nbind = "[::]:25"\n') == \
        "Configuration error: server.listener.b.bind: :::25 is already bound by listener 'a'"
    # IPv4 and IPv6 wildcards on one port are separate sockets (IPV6_V6ONLY); ephemeral ports never clash
    load(base='[server.listener.a]\nbind = ["0.0.0.0:25", "[::]:25"]\n[server.listener.b]\nbind = "127.0.0.1:0"\n'
              '[server.listener.c]\nbind = "127.0.0.1:0"\n')


def test_invalid_bind_address():
    assert fails(base='[server.listener.a]\nbind = "localhost:25"\n') == \
        "Configuration error: server.listener.a.bind: invalid IP address 'localhost' in bind address"
    assert fails(base='[server.listener.a]\nbind = ["127.0.0.1:25", "::1:26"]\n') == \
        "Configuration error: server.listener.a.bind: invalid bind address '::1:26' (expected \"ip:port\"; " \
        "IPv6 as \"[::1]:587\")"
    assert fails(base='[server.listener.a]\nbind = "127.0.0.1:65536"\n') == \
        "Configuration error: server.listener.a.bind: invalid port '65536' in bind address"


@pytest.mark.parametrize("base,line", [
    ('[server]\nhostname = "x"\n', "server.listener: no listener defined"),
    ('[server.listener.a]\nprotocol = "smtp"\n', 'server.listener.a.bind: missing (e.g. "127.0.0.1:587")'),
    ('[server.listener.a]\nbind = "127.0.0.1:0"\nprotocol = "imap"\n',
     "server.listener.a.protocol: unsupported protocol 'imap' (use \"smtp\", \"lmtp\" or \"http\")"),
    ('[server.listener.a]\nbind = "0.0.0.0:0"\nprotocol = "http"\n',
     "server.listener.a.bind: 0.0.0.0:0 is not a loopback address; the management listener serves metrics and an "
     "admin API: bind it to 127.0.0.1/[::1], or set server.management.allow-remote = true (and a token)"),
    ('[server.listener.a]\nbind = "127.0.0.1:0"\nmax-connections = 0\n',
     "server.listener.a.max-connections: must be greater than 0"),
    ('[server.listener."a b"]\nbind = "127.0.0.1:0"\n',
     "server.listener.a b: ids may contain only letters, digits, '-' and '_'"),
    ('[server.listener.a]\nbind = "127.0.0.1:0"\ntls.implicit = true\n',
     "server.listener.a.tls.certificate: TLS is enabled but no certificate is configured"),
    ('[server.listener.a]\nbind = "127.0.0.1:0"\ntls.enable = false\ntls.implicit = true\n',
     "server.listener.a.tls.implicit: implicit TLS needs TLS enabled"),
])
def test_listener_errors(base, line):
    assert fails(base=base) == f"Configuration error: {line}"


def test_several_certificates_need_a_name(pki):
    assert fails("[server.tls]\nenable = true\n" + tls_section(pki, "a") + tls_section(pki, "b")) == \
        "Configuration error: server.listener.smtp.tls.certificate: several certificates exist: name one"


def test_tls_protocols(pki):
    assert fails('[server.tls]\nprotocols = ["TLSv1.1"]\n') == \
        "Configuration error: server.tls.protocols: unsupported TLS protocol 'TLSv1.1' (use TLSv1.2, TLSv1.3)"
    assert fails('[server.tls]\nprotocols = []\n') == \
        "Configuration error: server.tls.protocols: at least one protocol is required"


def test_certificate_errors(pki, tmp_path):
    assert fails('[certificate.a]\ncert = "x"\n') == \
        "Configuration error: certificate.a.cert: not a PEM document (to read a file, write \"file://x\")"
    assert fails(f'[certificate.a]\ncert = "file://{pki.cert}"\n') == \
        "Configuration error: certificate.a.private-key: missing (PEM text or file:///path)"
    assert fails(f'[certificate.a]\ncert = "file://{tmp_path}/none.pem"\nprivate-key = "x"\n') == \
        f"Configuration error: certificate.a.cert: cannot read {tmp_path}/none.pem: No such file or directory"
    other = make_pki(tmp_path / "other")
    line = fails(f'[certificate.a]\ncert = "file://{pki.cert}"\nprivate-key = "file://{other.key}"\n')
    assert line.startswith("Configuration error: certificate.a.cert: certificate and private key do not load: ")
    assert fails(f'[certificate.a]\ncert = "file://{pki.cert}"\nprivate-key = "file://{pki.key}"\nchain = "x"\n') == \
        "Configuration error: certificate.a.chain: unknown configuration key"


def test_list_errors(tmp_path):
    assert fails('[list]\nusers = "john:secret"\n') == \
        "Configuration error: list.users: expected an array of entries or \"file:///path\""
    assert fails('[list]\nusers = [1, 2]\n') == \
        "Configuration error: list.users: expected a list of strings, got an array"
    assert fails(f'[list]\nusers = "file://{tmp_path}/missing.txt"\n') == \
        f"Configuration error: list.users: cannot read {tmp_path}/missing.txt: No such file or directory"


def test_alias_given_twice():
    assert fails('[session.auth]\nlookup = false\ndirectory = false\n') == \
        "Configuration error: session.auth.directory: duplicates session.auth.lookup (they are aliases)"
    assert fails('[session.auth.errors]\ntotal = 3\nmax = 3\n') == \
        "Configuration error: session.auth.errors.max: duplicates session.auth.errors.total (they are aliases)"


@pytest.mark.parametrize("extra,line", [
    ('[database.sql]\nlookup.auth = "SELECT ?"\n',
     "database.sql.address: missing (sqlite://path or postgres://user@host:port/db)"),
    ('[database.sql]\naddress = "mysql://x"\n',
     "database.sql.address: unsupported database URL (use sqlite:// or postgres://)"),
    ('[database.sql]\naddress = "sqlite://x.db"\nlookup.auth = "SELECT secret FROM users"\n',
     "database.sql.lookup.auth: query must contain exactly one '?' parameter"),
    ('[remote.imap]\nprotocol = "imap"\n', "remote.imap.address: missing"),
    ('[remote.imap]\naddress = "h"\nprotocol = "pop3"\n',
     "remote.imap.protocol: unsupported protocol 'pop3' (use imap, smtp or lmtp)"),
    ('[remote.imap]\naddress = "h"\nprotocol = "imap"\nport = 0\n', "remote.imap.port: invalid port 0"),
    ('[remote.imap]\naddress = "h"\nprotocol = "imap"\ntls.implicit = true\ntls.starttls = true\n',
     "remote.imap.tls.starttls: cannot be combined with tls.implicit"),
    ('[remote.imap]\naddress = "h"\nprotocol = "imap"\ncache.ttl.positive = "0"\n',
     "remote.imap.cache.ttl.positive: duration must be greater than 0"),
    ('[directory.x]\nstore = "sqlite://u.db"\n', "directory.x.type: missing (internal, ldap or oauth)"),
    ('[directory.x]\ntype = "sql"\n', "directory.x.type: unknown directory type 'sql' (use internal, ldap or oauth)"),
    ('[directory.x]\ntype = "internal"\n', "directory.x.store: missing"),
    ('[directory.x]\ntype = "internal"\nstore = "sqlite://u.db"\nurl = "ldap://h"\n',
     "directory.x.url: unknown option for a directory of type 'internal'"),
    ('[queue.outbound]\nnext-hop = "remote/none"\n',
     "queue.outbound.next-hop: expected \"remote/<id>\" of a defined remote or false, got 'remote/none'"),
    ('[remote.imap]\naddress = "h"\nprotocol = "imap"\n[queue.outbound]\nnext-hop = "remote/imap"\n',
     "queue.outbound.next-hop: remote 'imap' must use protocol smtp or lmtp to be a next hop"),
    ('[queue.outbound]\nnext-hop = [ { if = "rcpt", eq = "x", then = false }, { else = false } ]\n',
     "queue.outbound.next-hop[0].if: variable 'rcpt' is not available when this setting is evaluated"),
])
def test_store_errors(extra, line):
    assert fails(extra) == f"Configuration error: {line}"


def test_directory_lookup_names():
    s = load('[directory.users]\ntype = "internal"\nstore = "sqlite:///tmp/u.db"\n'
             '[session.auth]\nlookup = "users/users"\n')
    assert s.session.auth_lookup.value == "users/users"
    load('[directory.users]\ntype = "internal"\nstore = "sqlite:///tmp/u.db"\n'
         '[session.auth]\nlookup = "directory/users"\n')


def test_tls_enable_false_wins(pki):
    s = load('[server.tls]\nenable = false\ncertificate = "default"\n' + tls_section(pki))
    assert not s.listeners["smtp"].tls.enable
    # implicit TLS inherited from server.tls does not fight a listener that switches TLS off
    s = load('[server.tls]\nimplicit = true\ncertificate = "default"\n'
             '[server.listener.smtp.tls]\nenable = false\n' + tls_section(pki))
    assert not s.listeners["smtp"].tls.enable and not s.listeners["smtp"].tls.implicit
    assert s.listeners["submission"].tls.enable and s.listeners["submission"].tls.implicit


@pytest.mark.parametrize("rule", [
    '{ if = "listener", eq = "smtp", then = true }',
    '{ if = "sender-domain", eq = "example.org", then = true }',
    '{ if = "authenticated-as", eq = "", then = true }',
    '{ any-of = [ { if = "authenticated-as", ne = "" }, { if = "listener", eq = "smtp" } ], then = true }',
    '{ none-of = [ { if = "remote-ip", eq = "10.0.0.0/8" } ], then = true }',
    # issue 9 item 7: the destination is the client's choice, never a guard
    '{ if = "rcpt-domain", ends-with = ".com", then = true }',
    '{ if = "rcpt-domain", eq = "backup.example", then = true }',
    '{ if = "rcpt", eq = "postmaster@example.com", then = true }',
    '{ any-of = [ { if = "remote-ip", eq = "10.0.0.0/8" }, { if = "rcpt-domain", eq = "x.example" } ], then = true }',
    '{ if = "remote-ip", ne = "10.0.0.1", then = true }',
    '{ if = "remote-ip", starts-with = "1", then = true }',
])
def test_open_relay_rules_refused(rule):
    assert fails(f'[session.rcpt]\nrelay = [ {rule}, {{ else = false }} ]\n') == (
        "Configuration error: session.rcpt.relay[0]: this rule would relay for sessions that are neither "
        "authenticated nor from a chosen network (an open relay); add a condition on authenticated-as or "
        "remote-ip")


@pytest.mark.parametrize("rules, family", [
    ('{ if = "remote-ip", eq = "0.0.0.0/1", then = true }, { if = "remote-ip", eq = "128.0.0.0/1", then = true }', 4),
    ('{ any-of = [ { if = "remote-ip", eq = "0.0.0.0/1" }, { if = "remote-ip", eq = "128.0.0.0/1" } ], then = true }',
     4),
    # IPv4-mapped IPv6 networks are IPv4 networks
    ('{ if = "remote-ip", eq = "::ffff:0.0.0.0/97", then = true }, { if = "remote-ip", eq = "128.0.0.0/1", '
     'then = true }', 4),
    ('{ if = "remote-ip", eq = "::/1", then = true }, { if = "remote-ip", eq = "8000::/1", then = true }', 6),
    ('{ if = "remote-ip", eq = "::/0", then = true }', 6),
    ('{ if = "remote-ip", eq = "0.0.0.0/0", then = true }', 4),
    ('{ if = "listener", eq = "smtp", then = false }, { if = "remote-ip", eq = "0.0.0.0/2", then = true }, '
     '{ if = "remote-ip", eq = "64.0.0.0/2", then = true }, { all-of = [ { if = "listener", eq = "smtp" }, '
     '{ if = "remote-ip", eq = "128.0.0.0/1" } ], then = true }', 4),
])
def test_relay_networks_covering_everything_refused(rules, family):
    assert fails(f'[session.rcpt]\nrelay = [ {rules}, {{ else = false }} ]\n') == (
        "Configuration error: session.rcpt.relay: the remote-ip networks of the relaying rules together cover "
        f"every IPv{family} address (an open relay); name only your clients' networks")


@pytest.mark.parametrize("rule", [
    '{ if = "authenticated-as", ne = "", then = true }',
    '{ if = "remote-ip", eq = "10.0.0.0/8", then = true }',
    '{ all-of = [ { if = "listener", eq = "smtp" }, { if = "authenticated-as", ne = "" } ], then = true }',
    '{ all-of = [ { if = "rcpt-domain", ends-with = ".com" }, { if = "authenticated-as", ne = "" } ], then = true }',
    '{ if = "remote-ip", eq = "0.0.0.0/1", then = true }, { if = "remote-ip", eq = "128.0.0.0/2", then = true }',
    '{ if = "remote-ip", eq = "0.0.0.0/1", then = true }, { if = "remote-ip", eq = "::/1", then = true }',
    '{ all-of = [ { if = "remote-ip", eq = "0.0.0.0/0" }, { if = "remote-ip", eq = "10.0.0.0/8" } ], then = true }',
    '{ if = "remote-ip", eq = "0.0.0.0/0", then = false }, { if = "authenticated-as", ne = "", then = true }',
    '{ if = "listener", eq = "smtp", then = false }',
])
def test_guarded_relay_rules_accepted(rule):
    load(f'[session.rcpt]\nrelay = [ {rule}, {{ else = false }} ]\n')
