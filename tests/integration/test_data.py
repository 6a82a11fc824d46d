"""DATA and the limits around it (SPEC §6, issue 5): SIZE=, actual size (enforced while reading, memory
bounded), max-recipients, messages per session, dot-unstuffing, the Received header, LMTP replies."""
from __future__ import annotations

import base64
import ssl
import threading
import time
from pathlib import Path


from smtpgate.delivery.spool import read_message
from tests.fixtures.server import SERVER_HEAD, listeners, run_server
from tests.smtpclient import Raw, client_tls

TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"

CONFIG = SERVER_HEAD + listeners("smtp", "submission", "submissions", "lmtp", implicit=("submissions",),
                                 options={"lmtp": 'protocol = "lmtp"'}) + """
[session.auth]
mechanisms = [ { if = "listener", ne = "smtp", then = ["plain"] }, { else = [] } ]
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
wait = "1ms"

[session.rcpt]
max-recipients = 3
[session.rcpt.lookup]
domains = "list/domains"
addresses = [ { if = "listener", eq = "lmtp", then = "list/mailboxes" }, { else = false } ]

[session.data.limits]
size = [ { if = "listener", eq = "smtp", then = 10000 }, { else = 1048576 } ]
messages = 2

[list]
users = ["john@local.test:secret"]
domains = ["local.test"]
mailboxes = ["a@local.test", "b@local.test", "c@local.test"]
"""


def ehlo(port: int, tls: ssl.SSLContext | None = None) -> Raw:
    c = Raw(port, tls=tls)
    assert c.cmd("EHLO client.test").startswith("250")
    return c


def auth(c: Raw) -> None:
    ir = base64.b64encode(b"\0john@local.test\0secret").decode()
    assert c.cmd(f"AUTH PLAIN {ir}").startswith("235")


def transaction(c: Raw, body: bytes, rcpts: tuple[str, ...] = ("x@local.test",), sender: str = "a@remote.test",
                params: str = "") -> str:
    assert c.cmd(f"MAIL FROM:<{sender}>{params}").startswith("250")
    for r in rcpts:
        assert c.cmd(f"RCPT TO:<{r}>").startswith("250"), r
    assert c.cmd("DATA").startswith("354")
    return c.cmd(body)


def spooled(srv) -> list[tuple[dict, bytes]]:
    return sorted((read_message(str(f)) for f in srv.spool_files()), key=lambda m: m[0]["received_at"])


def test_size_parameter(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = ehlo(srv.port("smtp"))
        assert "250-SIZE 10000" in c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<a@remote.test> SIZE=10001") == TOO_BIG
        assert c.cmd("MAIL FROM:<a@remote.test> SIZE=99999999999999999999") == TOO_BIG
        assert c.cmd("RCPT TO:<x@local.test>") == "503 5.5.1 Send MAIL first"
        for bad in ("SIZE=abc", "SIZE=", "SIZE", "SIZE=-1", "SIZE=1e3"):
            assert c.cmd(f"MAIL FROM:<a@remote.test> {bad}").startswith("501 5.5.4"), bad
        assert c.cmd("MAIL FROM:<a@remote.test> SIZE=10000").startswith("250")
        c.close()
        # The limit is per listener (an if-block): 1 MiB on submission.
        c = ehlo(srv.port("submission"))
        assert c.cmd("MAIL FROM:<a@remote.test> SIZE=10001").startswith("250")
        c.close()


def test_actual_size_enforced_after_the_dot(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = ehlo(srv.port("smtp"))
        body = b"x" * 998 + b"\r\n"
        # Exactly at the limit (10000 octets of message) is accepted, one more octet is not.
        assert transaction(c, body * 10 + b".\r\n").startswith("250 2.0.0")
        assert transaction(c, b"y" + body * 10 + b".\r\n") == TOO_BIG
        # A client that declared a small SIZE= and then sends more gets the same answer.
        assert transaction(c, body * 50 + b".\r\n", params=" SIZE=100") == TOO_BIG
        # The transaction is over, the session is not: a normal message still goes through.
        assert c.cmd("RCPT TO:<x@local.test>") == "503 5.5.1 Send MAIL first"
        assert transaction(c, b"Subject: small\r\n\r\nok\r\n.\r\n").startswith("250 2.0.0")
        c.close()
        msgs = spooled(srv)
        assert len(msgs) == 2
        assert msgs[0][1].endswith(body * 10) and msgs[1][1].endswith(b"ok\r\n")


def test_size_limit_independent_of_segmentation(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = ehlo(srv.port("smtp"))
        body = b"x" * 998 + b"\r\n"
        for cut in (1, 2):
            assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
            assert c.cmd("RCPT TO:<x@local.test>").startswith("250")
            assert c.cmd("DATA").startswith("354")
            payload = body * 10 + b".\r\n"
            c.send(payload[:10000 + cut])
            time.sleep(0.1)
            c.send(payload[10000 + cut:])
            assert c.reply().startswith("250 2.0.0"), cut
        c.close()


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_oversized_message_is_not_buffered(tmp_path: Path) -> None:
    """64 MiB against a 1 MiB limit: refused after the dot, nothing spooled, and the server (same process)
    never holds more than a few MiB of it."""
    with run_server(CONFIG, tmp_path) as srv:
        c = ehlo(srv.port("submission"))
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@local.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        chunk = (b"z" * 1022 + b"\r\n") * 1024          # 1 MiB, reused: the client allocates nothing more
        base = _rss_kib()
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_kib())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            for _ in range(64):
                c.send(chunk)
            c.send(b".\r\n")
            reply = c.reply()
        finally:
            done.set()
            sampler.join()
        growth_mib = (peak[0] - base) / 1024
        assert growth_mib < 16, f"server grew by {growth_mib:.1f} MiB while receiving 64 MiB"
        assert reply == TOO_BIG
        assert c.cmd("NOOP").startswith("250")
        c.close()
        assert spooled(srv) == []


def test_max_recipients_and_messages_per_session(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = ehlo(srv.port("smtp"))
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        for r in ("a", "b", "c"):
            assert c.cmd(f"RCPT TO:<{r}@local.test>") == "250 2.1.5 Recipient OK"
        assert c.cmd("RCPT TO:<d@local.test>") == "452 4.5.3 Too many recipients"
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(b"Subject: 1\r\n\r\none\r\n.\r\n").startswith("250 2.0.0")
        assert transaction(c, b"Subject: 2\r\n\r\ntwo\r\n.\r\n").startswith("250 2.0.0")
        # limits.messages = 2: the third MAIL of this session is refused (temporarily), even after RSET.
        assert c.cmd("MAIL FROM:<a@remote.test>") == "452 4.5.3 Too many messages in this session"
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("MAIL FROM:<a@remote.test>") == "452 4.5.3 Too many messages in this session"
        c.close()
        # A new session starts counting afresh.
        c = ehlo(srv.port("smtp"))
        assert transaction(c, b"Subject: 3\r\n\r\nthree\r\n.\r\n").startswith("250 2.0.0")
        c.close()
        msgs = spooled(srv)
        assert [m[0]["rcpt_to"] for m in msgs] == [["a@local.test", "b@local.test", "c@local.test"],
                                                   ["x@local.test"], ["x@local.test"]]


def test_dot_unstuffing_and_smuggling(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = ehlo(srv.port("submission"))
        sent = (b"Subject: dots\r\n\r\n"
                b"..leading dot\r\n"
                b"...\r\n"
                b"..\r\n"
                b"mid..line.\r\n"
                b"bare\n.\nMAIL FROM:<smuggled@remote.test>\n"      # LF.LF is not the end (SMTP smuggling)
                b"cr\r.\rRCPT TO:<x@local.test>\r\n"
                b"lf-crlf\n.\r\nDATA\r\n"
                b"8bit \xc3\xa9\xff\r\n"
                b".\r\n")
        assert transaction(c, sent).startswith("250 2.0.0")
        assert c.cmd("NOOP") == "250 2.0.0 OK"          # nothing of the body was run as a command
        assert transaction(c, b".\r\n").startswith("250 2.0.0")   # empty message
        c.close()
        (env, first), (_, empty) = spooled(srv)
        headers, _, body = first.partition(b"\r\n\r\n")
        assert body == (b".leading dot\r\n"
                        b"..\r\n"
                        b".\r\n"
                        b"mid..line.\r\n"
                        b"bare\n.\nMAIL FROM:<smuggled@remote.test>\n"
                        b"cr\r.\rRCPT TO:<x@local.test>\r\n"
                        b"lf-crlf\n.\r\nDATA\r\n"
                        b"8bit \xc3\xa9\xff\r\n")
        assert headers.endswith(b"Subject: dots")
        assert empty.startswith(b"Received: ") and empty.endswith(b"\r\n") and b"Subject" not in empty


def _received(msg: bytes) -> str:
    assert msg.startswith(b"Received: ")
    end = msg.index(b"\r\n", 0)
    while msg[end + 2:end + 3] in (b"\t", b" "):
        end = msg.index(b"\r\n", end + 2)
    return msg[:end].decode()


def test_received_header(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        tls = client_tls(srv.ca_file)
        tls12 = client_tls(srv.ca_file)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2

        c = Raw(srv.port("smtp"))                          # HELO: plain SMTP
        assert c.cmd("HELO old.client.test").startswith("250")
        transaction(c, b"Subject: 1\r\n\r\n.\r\n")
        c.close()

        c = ehlo(srv.port("smtp"))                         # ESMTP
        transaction(c, b"Subject: 2\r\n\r\n.\r\n")
        c.close()

        c = ehlo(srv.port("smtp"))                         # ESMTPS (STARTTLS)
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls(tls)
        assert c.cmd("EHLO client.test").startswith("250")
        transaction(c, b"Subject: 3\r\n\r\n.\r\n")
        c.close()

        c = ehlo(srv.port("submission"))                   # ESMTPA (cleartext allowed in this config)
        auth(c)
        transaction(c, b"Subject: 4\r\n\r\n.\r\n", sender="john@local.test")
        c.close()

        c = ehlo(srv.port("submission"))                   # ESMTPSA over STARTTLS, TLS 1.2
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls(tls12)
        assert c.cmd("EHLO client.test").startswith("250")
        auth(c)
        transaction(c, b"Subject: 5\r\n\r\n.\r\n", sender="john@local.test")
        c.close()

        c = ehlo(srv.port("submissions"), tls=tls)         # ESMTPSA, implicit TLS
        auth(c)
        transaction(c, b"Subject: 6\r\n\r\n.\r\n", sender="john@local.test", rcpts=("x@remote.test",))
        c.close()

        got = [_received(m) for _, m in spooled(srv)]
        assert len(got) == 6
        for h in got:
            assert "\tby mx.test (smtpgate)" in h and "[127.0.0.1]" in h
        expect = [("from old.client.test", "with SMTP id"), ("from client.test", "with ESMTP id"),
                  ("(TLSv1.3 cipher ", "with ESMTPS id"), ("(authenticated as john@local.test)", "with ESMTPA id"),
                  ("(TLSv1.2 cipher ", "with ESMTPSA id"), ("(TLSv1.3 cipher ", "with ESMTPSA id")]
        for h, (a, b) in zip(got, expect):
            assert a in h and b in h, h
        assert "TLS" not in got[0] + got[1] + got[3]
        assert "authenticated" not in got[0] + got[1] + got[2]
        assert "(authenticated as john@local.test)" in got[4] and "(authenticated as john@local.test)" in got[5]
        assert "for <x@remote.test>" in got[5]


def test_lmtp_listener_replies_per_recipient(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = Raw(srv.port("lmtp"))
        assert c.cmd("EHLO client.test").startswith("500 5.5.1")     # LMTP speaks LHLO only
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("503")
        assert c.cmd("LHLO client.test").startswith("250-mx.test")
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        assert c.cmd("RCPT TO:<a@local.test>") == "250 2.1.5 Recipient OK"
        assert c.cmd("RCPT TO:<nobody@local.test>").startswith("550 5.1.1")
        assert c.cmd("RCPT TO:<B@LOCAL.TEST>") == "250 2.1.5 Recipient OK"
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: lmtp\r\n\r\nhi\r\n.\r\n")
        replies = [c.reply(), c.reply()]                  # one per accepted recipient, in RCPT order
        assert all(r.startswith("250 2.0.0") for r in replies), replies
        assert c.cmd("NOOP") == "250 2.0.0 OK"           # and no more than that
        c.close()
        ((env, msg),) = spooled(srv)
        assert env["rcpt_to"] == ["a@local.test", "B@local.test"] and env["listener"] == "lmtp"
        assert "with LMTP id" in _received(msg)
