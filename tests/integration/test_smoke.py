"""Smoke test: the three-listener Stalwart-style config, EHLO on each, AUTH PLAIN, a message spooled."""
import base64

from tests.fixtures.server import BASE_CONFIG, run_server
from tests.smtpclient import Raw, client_tls

CONFIG = BASE_CONFIG + """
[session.auth]
mechanisms = [ { if = "listener", ne = "smtp", then = ["plain", "login"]},
               { else = [] } ]
lookup = [ { if = "listener", ne = "smtp", then = "list/users" },
           { else = false } ]
require = [ { if = "listener", ne = "smtp", then = true},
            { else = false } ]
[session.auth.errors]
total = 3
wait = "5ms"
[list]
users = ["john@example.org:secret"]
"""


def test_three_listeners(tmp_path):
    with run_server(CONFIG, tmp_path) as srv:
        c = Raw(srv.port("smtp"))
        assert c.greeting == "220 mx.test smtpgate at your service"
        ehlo = c.cmd("EHLO client.test")
        assert ehlo.startswith("250-mx.test says hello")
        assert "STARTTLS" in ehlo and "AUTH" not in ehlo
        c.close()

        c = Raw(srv.port("submission"))
        ehlo = c.cmd("EHLO client.test")
        assert "STARTTLS" in ehlo and "AUTH" not in ehlo  # no PLAIN/LOGIN before TLS
        assert c.cmd("STARTTLS").startswith("220 ")
        c.starttls(client_tls(srv.ca_file))
        ehlo = c.cmd("EHLO client.test")
        assert "AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo
        ir = base64.b64encode(b"\0john@example.org\0secret").decode()
        assert c.cmd(f"AUTH PLAIN {ir}") == "235 2.7.0 Authentication succeeded."
        assert c.cmd("MAIL FROM:<john@example.org>").startswith("250")
        assert c.cmd("RCPT TO:<x@remote.example>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        reply = c.cmd("Subject: hi\r\n\r\nbody\r\n.\r\n")
        assert reply.startswith("250 2.0.0")
        c.close()
        files = list(srv.spool.iterdir())
        assert len(files) == 1
        from smtpgate.delivery.spool import read_message
        env, msg = read_message(str(files[0]))
        assert env["authenticated_as"] == "john@example.org"
        assert b"with ESMTPSA" in msg and msg.endswith(b"body\r\n")

        c = Raw(srv.port("submissions"), tls=client_tls(srv.ca_file))
        ehlo = c.cmd("EHLO client.test")
        assert "AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo
        c.close()
