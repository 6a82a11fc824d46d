"""The abuse policy over the in-memory store, with a hand-driven clock: no sockets, no Redis."""
from __future__ import annotations

import logging
import time

import pytest

from smtpgate.abuse import replies
from smtpgate.abuse.banfile import BanFile
from smtpgate.abuse.guard import Guard
from smtpgate.abuse.memory import MemoryStore
from smtpgate.abuse.store import drive
from smtpgate.config.load import load_text

HEAD = """
[server.listener.smtp]
bind = "127.0.0.1:0"
[server.listener.submission]
bind = "127.0.0.1:0"
"""


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def make(extra: str = "", tmp_path=None) -> tuple[Guard, Clock]:
    settings = load_text(HEAD + extra, base_dir=str(tmp_path) if tmp_path else None)
    clock = Clock()
    store = MemoryStore(str(tmp_path / "bans.json") if tmp_path else None, clock=clock)
    return Guard(settings.abuse, store, clock=clock), clock


def gate(g: Guard, ip: str, login: str, secret: str | None, wait: float = 5.0):
    return drive(g.auth_gate(ip, login, secret, wait))


def done(g: Guard, answer, outcome: str) -> bool:
    return drive(g.auth_done(answer.ticket, outcome))


def test_failed_logins_ban_the_address_at_the_rate_and_no_guess_passes_it(caplog):
    caplog.set_level(logging.WARNING, "smtpgate.abuse")
    g, _ = make('[server.auto-ban]\nauth.rate = "3/1h"\nauth.period = "10m"\n')
    reached_lookup = 0
    for i in range(10):
        answer = gate(g, "192.0.2.1", f"user{i}", f"guess{i}")
        if answer.verdict != "ok":
            assert answer.verdict == "banned"
            break
        reached_lookup += 1
        banned = done(g, answer, "invalid")
        assert banned == (reached_lookup == 3)
    assert reached_lookup == 3
    assert g.admit("192.0.2.1", "smtp").refusal == replies.BANNED
    assert g.admit("192.0.2.2", "smtp").refusal is None
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("ban 192.0.2.1 reason=auth counts=auth:3 period=600s") for line in lines), lines


def test_parallel_sessions_cannot_exceed_the_rate_because_attempts_are_reserved_before_the_lookup():
    g, _ = make('[server.auto-ban]\nauth.rate = "5/1h"\n')
    answers = [gate(g, "192.0.2.1", "bob", f"p{i}") for i in range(50)]   # 50 sessions, all at once
    assert sum(a.verdict == "ok" for a in answers) == 5


def test_the_same_wrong_credentials_retried_count_once():
    g, _ = make('[server.auto-ban]\nauth.rate = "3/1h"\n')
    for _ in range(20):                         # a phone with an old saved password
        answer = gate(g, "192.0.2.1", "bob", "old-password")
        assert answer.verdict == "ok"
        assert done(g, answer, "invalid") is False
    answer = gate(g, "192.0.2.1", "bob", "new-guess")
    assert answer.verdict == "ok"


def test_success_and_tempfail_do_not_count():
    g, _ = make('[server.auto-ban]\nauth.rate = "3/1h"\n')
    for i in range(10):
        done(g, gate(g, "192.0.2.1", "bob", f"right{i}"), "success")
        done(g, gate(g, "192.0.2.1", "bob", f"down{i}"), "tempfail")
    assert drive(g.store.peek(["a:ip:192.0.2.1"]))[0] == [0]
    assert g.admit("192.0.2.1", "smtp").refusal is None


def test_a_distributed_attack_locks_the_login_but_not_its_owner():
    g, _ = make('[server.auto-ban]\nauth.rate = "3/1h"\n')
    done(g, gate(g, "198.51.100.7", "bob@example.org", "right"), "success")    # the owner's usual address
    for i in range(3):                                        # three attackers, one guess each
        answer = gate(g, f"192.0.2.{i + 1}", "bob@example.org", f"guess{i}")
        assert answer.verdict == "ok"
        done(g, answer, "invalid")
    assert gate(g, "192.0.2.50", "Bob@Example.org", "another").verdict == "locked"   # a new attacker
    assert gate(g, "198.51.100.7", "bob@example.org", "right").verdict == "ok"        # the owner
    assert gate(g, "192.0.2.50", "alice@example.org", "x").verdict == "ok"           # other logins


def test_allowed_addresses_are_never_counted_banned_or_locked():
    g, _ = make('[server.auto-ban]\nauth.rate = "2/1h"\n[server]\nallowed-ip = ["192.0.2.0/24"]\n')
    for i in range(10):
        answer = gate(g, "192.0.2.9", "bob", f"p{i}")
        assert answer.verdict == "ok"
        assert done(g, answer, "invalid") is False
    assert g.admit("192.0.2.9", "smtp").refusal is None


def test_blocked_addresses_are_refused_at_connect():
    g, _ = make('[server.blocked-ip]\n"203.0.113.0/24" = ""\n"2001:db8::/32" = ""\n')
    assert g.admit("203.0.113.77", "smtp").refusal == replies.BANNED
    assert g.admit("::ffff:203.0.113.77", "smtp").refusal == replies.BANNED
    assert g.admit("2001:db8::1", "smtp").refusal == replies.BANNED
    assert g.admit("203.0.114.1", "smtp").refusal is None


def test_ipv6_clients_are_counted_per_prefix():
    g, _ = make('[server.auto-ban]\nauth.rate = "2/1h"\nipv6-prefix = 64\n')
    done(g, gate(g, "2001:db8:1:2::1", "a", "x"), "invalid")
    assert done(g, gate(g, "2001:db8:1:2:ffff::9", "b", "y"), "invalid") is True
    assert g.admit("2001:db8:1:2::abcd", "smtp").refusal == replies.BANNED
    assert g.admit("2001:db8:1:3::1", "smtp").refusal is None


def test_progressive_wait_grows_with_the_address_failures_and_is_capped():
    g, _ = make('[session.auth.errors]\nwait = "1s"\nwait-growth = "2s"\nwait-max = "6s"\n'
                '[server.auto-ban]\nauth.rate = "100/1h"\n')
    waits = []
    for i in range(6):
        answer = gate(g, "192.0.2.1", "u", f"p{i}", wait=1.0)
        waits.append(answer.wait)
        done(g, answer, "invalid")
    assert waits == [1.0, 3.0, 5.0, 6.0, 6.0, 6.0]
    assert gate(g, "192.0.2.2", "u", "z", wait=1.0).wait == 1.0      # another address: no growth


def test_progressive_wait_works_without_auto_ban():
    g, _ = make('[session.auth.errors]\nwait-growth = "1s"\n[server.auto-ban]\nauth.rate = false\n')
    for i in range(3):
        answer = gate(g, "192.0.2.1", "u", f"p{i}", wait=0.5)
        assert answer.verdict == "ok"
        done(g, answer, "invalid")
    assert gate(g, "192.0.2.1", "u", "p9", wait=0.5).wait == 3.5


def test_concurrency_throttle_at_connect_and_release():
    g, _ = make('[[session.throttle]]\nkey = ["remote-ip"]\nconcurrency = 2\n')
    t1, t2 = g.admit("192.0.2.1", "smtp"), g.admit("192.0.2.1", "smtp")
    assert t1.refusal is None and t2.refusal is None
    assert g.admit("192.0.2.1", "smtp").refusal == replies.TOO_MANY_CONCURRENT
    assert g.admit("192.0.2.2", "smtp").refusal is None
    g.release(t1)
    assert g.admit("192.0.2.1", "smtp").refusal is None


def test_connect_rate_throttle_with_match():
    g, clock = make('[[session.throttle]]\nkey = ["remote-ip", "listener"]\nrate = "2/1s"\n'
                    'match = { if = "listener", eq = "smtp" }\n')
    assert [g.admit("192.0.2.1", "smtp").refusal for _ in range(3)] == [None, None, replies.RATE_LIMITED_CLOSE]
    assert all(g.admit("192.0.2.1", "submission").refusal is None for _ in range(5))   # match
    clock.now += 1.01
    assert g.admit("192.0.2.1", "smtp").refusal is None


class V:
    def __init__(self, **kw):
        self.listener, self.remote_ip, self.local_ip, self.local_port, self.tls = "smtp", None, None, 25, False
        self.helo_domain = self.authenticated_as = self.sender = self.sender_domain = None
        self.rcpt = self.rcpt_domain = None
        self.__dict__.update(kw)


def test_mail_and_rcpt_rate_throttles():
    g, _ = make('[[session.throttle]]\nkey = ["sender-domain"]\nrate = "2/1m"\n'
                '[[session.throttle]]\nkey = ["authenticated-as", "rcpt-domain"]\nrate = "1/1m"\n')
    assert g.has_mail_rates and g.has_rcpt_rates
    v = V(sender="a@example.org", sender_domain="example.org")
    assert [drive(g.rate("mail", v)) for _ in range(3)] == [True, True, False]
    assert drive(g.rate("mail", V(sender="b@other.org", sender_domain="other.org"))) is True
    r = V(authenticated_as="bob", rcpt="x@gmail.com", rcpt_domain="gmail.com")
    assert [drive(g.rate("rcpt", r)) for _ in range(2)] == [True, False]
    # a key without a value in this session: the throttle does not apply (unauthenticated here)
    anon = V(rcpt="x@gmail.com", rcpt_domain="gmail.com")
    assert all(drive(g.rate("rcpt", anon)) for _ in range(5))


def test_offences_ban_at_their_rate():
    g, _ = make('[server.auto-ban]\nabuse.rate = "3/1d"\nabuse.period = "1h"\nscan.rate = false\n')
    assert [drive(g.offence("abuse", "192.0.2.1")) for _ in range(3)] == [False, False, True]
    assert g.admit("192.0.2.1", "smtp").refusal == replies.BANNED
    assert all(drive(g.offence("scan", "192.0.2.2")) is False for _ in range(100))   # disabled


def test_bans_survive_a_restart_and_the_file_is_watched(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "smtpgate.abuse")
    g, clock = make('[server.auto-ban]\nscan.rate = "1/1d"\n[queue]\npath = "spool"\n', tmp_path)
    drive(g.store.start())
    assert drive(g.offence("scan", "192.0.2.5")) is True
    g.store.flush()
    g2, _ = make('[server.auto-ban]\nscan.rate = "1/1d"\n[queue]\npath = "spool"\n', tmp_path)
    drive(g2.store.start())                       # a restarted server
    assert g2.admit("192.0.2.5", "smtp").refusal == replies.BANNED
    # the CLI's way: change the file under its lock; the server notices it at its next refresh
    BanFile(str(tmp_path / "bans.json")).update(lambda bans: bans.pop("192.0.2.5"))
    drive(g2.refresh())
    assert g2.admit("192.0.2.5", "smtp").refusal is None
    assert any(r.getMessage().startswith("unban 192.0.2.5 (was: reason=scan counts=scan:1")
               for r in caplog.records)


def test_bans_expire():
    g, clock = make('[server.auto-ban]\nabuse.rate = "1/1d"\nabuse.period = "1m"\n')
    drive(g.offence("abuse", "192.0.2.1"))
    assert g.admit("192.0.2.1", "smtp").refusal == replies.BANNED
    clock.now += 61
    assert g.admit("192.0.2.1", "smtp").refusal is None


@pytest.mark.parametrize("config, key, message", [
    ('[[session.throttle]]\nkey = ["nope"]\nrate = "1/1s"\n', "session.throttle[0].key", "unknown throttle key"),
    ('[[session.throttle]]\nkey = ["remote-ip"]\n', "session.throttle[0]", "needs concurrency or rate"),
    ('[[session.throttle]]\nkey = ["sender"]\nconcurrency = 3\n', "session.throttle[0].concurrency",
     "concurrency limits connections"),
    ('[[session.throttle]]\nkey = ["remote-ip"]\nrate = "5 per second"\n', "session.throttle[0].rate",
     "invalid rate"),
    ('[[session.throttle]]\nkey = ["remote-ip"]\nrate = "1/1s"\nmatch = { if = "nope", eq = "x" }\n',
     "session.throttle[0].match[0].if", "unknown variable"),
    ('[[session.throttle]]\nkey = ["remote-ip"]\nrate = "1/1s"\nextra = 1\n', "session.throttle[0].extra",
     "unknown configuration key"),
    ('[server.auto-ban]\nauth.rate = "0/1d"\n', "server.auto-ban.auth.rate", "greater than 0"),
    ('[server.auto-ban]\nauth.period = "soon"\n', "server.auto-ban.auth.period", "invalid duration"),
    ('[server.auto-ban]\nloiter.ratee = "1/1d"\n', "server.auto-ban.loiter.ratee", "unknown configuration key"),
    ('[server]\nblocked-ip = ["300.1.1.1"]\n', "server.blocked-ip", "invalid IP"),
    ('[storage]\nlookup = "redis"\n', "storage.lookup", "unknown store"),
    ('[store.redis]\ntype = "memcached"\n', "store.redis.type", "unsupported store type"),
    ('[store.redis]\ntype = "redis"\nurls = ["http://x"]\n', "store.redis.urls", "expected redis://"),
    ('[store.redis]\ntype = "redis"\nurls = ["redis://x"]\nfoo = 1\n', "store.redis.foo", "unknown option"),
    ('[session.auth.errors]\nwait-growth = "fast"\n', "session.auth.errors.wait-growth", "invalid duration"),
    ('[server.auto-ban]\ntarpit = true\n', "server.auto-ban.tarpit", "expected a duration"),
])
def test_configuration_errors_name_the_key(config, key, message):
    from smtpgate.config.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        load_text(HEAD + config)
    assert err.value.key == key and message in err.value.reason, err.value.line()


def test_stalwart_shapes_are_accepted():
    s = load_text(HEAD + """
[[session.throttle]]
key = ["remote-ip"]
concurrency = 5
enable = true

[[session.throttle]]
key = ["sender-domain", "rcpt"]
rate = "25/1h"
match = [ { if = "authenticated-as", eq = "", then = true }, { else = false } ]

[server.auto-ban]
auth.rate = "100/1d"
auth.period = "1d"

[server.allowed-ip]
"192.0.2.0/24" = ""

[store."redis"]
type = "redis"
urls = ["redis://127.0.0.1:6379"]

[storage]
lookup = "redis"
""")
    a = s.abuse
    assert [t.stage for t in a.throttles] == ["connect", "rcpt"]
    assert a.store.urls == ["redis://127.0.0.1:6379"] and a.store.prefix == "smtpgate:"
    assert str(a.allowed[0]) == "192.0.2.0/24"
    assert str(a.autoban["auth"].rate) == "100/1d" and a.autoban["scan"].rate.count == 30
