"""Issue 9 item 9, over real sockets: SMTPUTF8 (RFC 6531) offered, required for non-ASCII addresses and
passed to the next hop; a recipient given twice is stored once; ``\\r\\n.\\n`` inside DATA keeps its dot;
the spooled envelope keeps only the effective ``AUTH=`` value."""
from __future__ import annotations

import base64
import uuid
from pathlib import Path

from smtpgate.delivery.spool import read_message
from tests.fixtures.dovecot import DovecotServer, dovecot, dovecot_session  # noqa: F401
from tests.fixtures.server import SERVER_HEAD, listeners, run_server
from tests.smtpclient import Raw

CONFIG = SERVER_HEAD + listeners("smtp", "submission", "lmtp", options={"lmtp": 'protocol = "lmtp"'}) + """
[session.auth]
mechanisms = [ { if = "listener", eq = "submission", then = ["plain"] }, { else = [] } ]
lookup = "list/users"
allow-plain-text = true
[session.auth.errors]
wait = "1ms"

[session.rcpt.lookup]
domains = "list/domains"

[list]
users = ["john@local.test:secret", "jöhn@local.test:secret"]
domains = ["local.test", "example.test"]
"""

NEEDS_UTF8_MAIL = "553 5.6.7 Non-ASCII sender address requires the SMTPUTF8 parameter"
NEEDS_UTF8_RCPT = "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8 in MAIL FROM"


def spooled(srv) -> list[tuple[dict, bytes]]:
    return sorted((read_message(str(f)) for f in srv.spool_files()), key=lambda m: m[0]["received_at"])


def ehlo(port: int) -> Raw:
    c = Raw(port)
    reply = c.cmd("EHLO client.test")
    assert reply.startswith("250")
    return c


def test_smtputf8_offered_and_required(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = Raw(srv.port("smtp"))
        assert "250-SMTPUTF8" in c.cmd("EHLO client.test").split("\r\n")
        assert c.cmd("MAIL FROM:<jöhn@remote.test>") == NEEDS_UTF8_MAIL
        assert c.cmd("MAIL FROM:<john@rémote.test>") == NEEDS_UTF8_MAIL
        assert c.cmd("RCPT TO:<x@local.test>") == "503 5.5.1 Send MAIL first"   # nothing was started
        assert c.cmd("MAIL FROM:<john@remote.test> SMTPUTF8=yes").startswith("555 ")  # the keyword has no value
        assert c.cmd("MAIL FROM:<john@remote.test>") == "250 2.1.0 Sender OK"
        assert c.cmd("RCPT TO:<zoë@local.test>") == NEEDS_UTF8_RCPT
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("MAIL FROM:<jöhn@remote.test> SMTPUTF8 BODY=8BITMIME") == "250 2.1.0 Sender OK"
        assert c.cmd("RCPT TO:<zoë@local.test>") == "250 2.1.5 Recipient OK"
        assert c.cmd("DATA").startswith("354")
        assert c.cmd("Subject: grüße\r\n\r\nhi\r\n.\r\n".encode()).startswith("250 2.0.0")
        c.close()
        (env, msg), = spooled(srv)
        assert env["mail_from"] == "jöhn@remote.test" and env["rcpt_to"] == ["zoë@local.test"]
        assert "SMTPUTF8" in env["params"]
        assert "Subject: grüße".encode() in msg
        assert b"\r\n\twith UTF8SMTP id " in msg     # RFC 6531 §3.7.3 (UTF8SMTPSA when TLS and AUTH)


def test_duplicate_recipients_stored_once(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = ehlo(srv.port("smtp"))
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        for r in ("x@local.test", "y@local.test", "x@local.test", "x@LOCAL.test", "<@relay.test:x@local.test>"):
            path = r if r.startswith("<") else f"<{r}>"
            assert c.cmd(f"RCPT TO:{path}") == "250 2.1.5 Recipient OK", r
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(b"Subject: dup\r\n\r\nx\r\n.\r\n").startswith("250 2.0.0")
        c.close()

        # LMTP still answers once per accepted RCPT (RFC 2033 §4.2), and stores once.
        c = Raw(srv.port("lmtp"))
        assert c.cmd("LHLO client.test").startswith("250")
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        for _ in range(3):
            assert c.cmd("RCPT TO:<z@local.test>") == "250 2.1.5 Recipient OK"
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: dup\r\n\r\nx\r\n.\r\n")
        assert [c.reply()[:3] for _ in range(3)] == ["250", "250", "250"]
        c.close()
        (first, _), (second, _) = spooled(srv)
        assert first["rcpt_to"] == ["x@local.test", "y@local.test"]
        assert second["rcpt_to"] == ["z@local.test"]


def test_crlf_dot_lf_keeps_its_dot(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = ehlo(srv.port("smtp"))
        assert c.cmd("MAIL FROM:<a@remote.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@local.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(b"Subject: dots\r\n\r\nline\r\n.\nnext\r\n.\rcr\r\n..stuffed\r\n.\r\n").startswith("250 2.0.0")
        assert c.cmd("NOOP").startswith("250")
        c.close()
        (_, msg), = spooled(srv)
        assert msg.endswith(b"\r\n\r\nline\r\n.\nnext\r\n.\rcr\r\n.stuffed\r\n")


def test_spooled_auth_param_is_the_effective_one(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        c = ehlo(srv.port("submission"))
        assert c.cmd("AUTH PLAIN " + base64.b64encode(b"\0john@local.test\0secret").decode()).startswith("235")
        for auth in ("AUTH=john@local.test", "AUTH=ce+6F@local.test", "AUTH=<>", "AUTH=other@local.test"):
            assert c.cmd(f"MAIL FROM:<john@local.test> {auth}").startswith("250"), auth
            assert c.cmd("RCPT TO:<x@local.test>").startswith("250")
            assert c.cmd("DATA").startswith("354")
            assert c.cmd(b"Subject: a\r\n\r\nx\r\n.\r\n").startswith("250 2.0.0")
        c.close()
        envs = [env for env, _ in spooled(srv)]
        assert [e["auth_param"] for e in envs] == ["john@local.test", "<>", "<>", "<>"]
        # the client's claim is not kept anywhere in the envelope
        assert [e["params"]["AUTH"] for e in envs] == ["john@local.test", "<>", "<>", "<>"]
        assert all("other" not in str(e) and "ceo" not in str(e) for e in envs)


HOP = SERVER_HEAD.replace("mx.test", "hop.test") + listeners("smtp") + """
[session.rcpt.lookup]
domains = "list/domains"
[list]
domains = ["example.test"]
"""


def test_smtputf8_passed_to_smtp_next_hop(tmp_path: Path) -> None:
    with run_server(HOP, tmp_path / "hop") as hop:
        config = CONFIG + f"""
[remote.hop]
address = "127.0.0.1"
port = {hop.port("smtp")}
protocol = "smtp"
timeout = "5s"
[queue.outbound]
next-hop = "remote/hop"
"""
        with run_server(config, tmp_path / "front") as srv:
            c = ehlo(srv.port("smtp"))
            assert c.cmd("MAIL FROM:<jöhn@remote.test> SMTPUTF8").startswith("250")
            assert c.cmd("RCPT TO:<zoë@example.test>").startswith("250")
            assert c.cmd("DATA").startswith("354")
            assert c.cmd("Subject: grüße\r\n\r\nhi\r\n.\r\n".encode()).startswith("250 2.0.0")
            c.close()
            assert srv.spool_files() == []
        (env, _), = spooled(hop)
        assert env["mail_from"] == "jöhn@remote.test" and env["rcpt_to"] == ["zoë@example.test"]
        assert "SMTPUTF8" in env["params"]


def test_smtputf8_and_an_lmtp_next_hop_without_it(tmp_path: Path, dovecot: DovecotServer) -> None:
    """Dovecot 2.3's LMTP does not offer SMTPUTF8: a message that needs it is refused for good (RFC 6531
    §3.2), one that only asked for it but is all ASCII is delivered."""
    config = CONFIG + f"""
[remote.dovecot]
address = "127.0.0.1"
port = {dovecot.lmtp_port}
protocol = "lmtp"
timeout = "5s"
[queue.outbound]
next-hop = "remote/dovecot"
"""
    token = uuid.uuid4().hex
    with run_server(config, tmp_path) as srv:
        c = ehlo(srv.port("smtp"))
        assert c.cmd("MAIL FROM:<jöhn@remote.test> SMTPUTF8").startswith("250")
        assert c.cmd("RCPT TO:<alice@example.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(f"Subject: {token}\r\n\r\nhi\r\n.\r\n".encode()) == \
            "550 5.6.7 Next hop does not support SMTPUTF8"
        assert c.cmd("MAIL FROM:<john@remote.test> SMTPUTF8").startswith("250")
        assert c.cmd("RCPT TO:<alice@example.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(f"Subject: {token}\r\n\r\nhi\r\n.\r\n".encode()).startswith("250 2.0.0")
        c.close()
    root = dovecot.maildir_root / "alice@example.test"
    msgs = [p.read_bytes() for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()]
    assert len([m for m in msgs if token.encode() in m]) == 1
