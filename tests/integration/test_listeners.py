"""Listeners and TLS over real sockets: a Stalwart-style three-listener setup, STARTTLS per RFC 3207
(with Python's ssl and with ``openssl s_client``), implicit TLS, IPv6, TLS versions, connection limits."""
from __future__ import annotations

import select
import socket
import ssl
import subprocess
import time

import pytest

from tests.fixtures.server import run_server
from tests.smtpclient import Raw, client_tls
from tests.support import need_binary

CONFIG = """
[server]
hostname = "mx.test"

[server.listener."smtp"]
bind = ["127.0.0.1:0"]
protocol = "smtp"

[server.listener."submission"]
bind = ["127.0.0.1:0"]
hostname = "submit.test"

[server.listener."submissions"]
bind = ["127.0.0.1:0"]
tls.implicit = true

[server.listener."plain"]
bind = ["127.0.0.1:0"]
tls.enable = false

[server.listener."limited"]
bind = ["127.0.0.1:0"]
max-connections = 2

[server.tls]
enable = true
implicit = false
certificate = "default"

[certificate."default"]
cert = "file://{pki_cert}"
private-key = "file://{pki_key}"

[session.auth]
mechanisms = [ { if = "listener", ne = "smtp", then = ["plain", "login"] },
               { else = [] } ]
lookup = [ { if = "listener", ne = "smtp", then = "list/users" },
           { else = false } ]
require = [ { if = "listener", ne = "smtp", then = true },
            { else = false } ]

[session.auth.errors]
total = 3
wait = "10ms"

[list]
users = ["john@example.org:secret"]

[queue]
path = "{tmp}/spool"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with run_server(CONFIG, tmp_path_factory.mktemp("listeners")) as running:
        yield running


def caps(ehlo: str) -> list[str]:
    return [line[4:] for line in ehlo.split("\r\n")[1:]]


def nothing_pending(sock: socket.socket, wait: float = 0.3) -> bool:
    ready, _, _ = select.select([sock], [], [], wait)
    return not ready


# --- capabilities per listener -------------------------------------------------------------------
def test_smtp_listener(srv):
    c = Raw(srv.port("smtp"))
    assert c.greeting == "220 mx.test smtpgate at your service"
    ehlo = c.cmd("EHLO client.test")
    assert ehlo.split("\r\n")[0] == "250-mx.test says hello"
    assert caps(ehlo) == ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "SIZE 26214400", "STARTTLS",
                         "HELP"]
    c.close()


def test_submission_listener_before_and_after_starttls(srv):
    c = Raw(srv.port("submission"))
    assert c.greeting == "220 submit.test smtpgate at your service"
    before = caps(c.cmd("EHLO client.test"))
    assert "STARTTLS" in before and not any(x.startswith("AUTH") for x in before)
    assert c.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
    c.starttls(client_tls(srv.ca_file))
    assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    after = caps(c.cmd("EHLO client.test"))
    assert "AUTH PLAIN LOGIN" in after and "STARTTLS" not in after
    c.close()


def test_implicit_tls_listener_never_offers_starttls(srv):
    c = Raw(srv.port("submissions"), tls=client_tls(srv.ca_file))
    assert c.greeting == "220 mx.test smtpgate at your service"
    ehlo = caps(c.cmd("EHLO client.test"))
    assert "AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo
    assert c.cmd("STARTTLS") == "503 5.5.1 TLS already active"
    c.close()


def test_implicit_tls_listener_refuses_cleartext(srv):
    with socket.create_connection(("127.0.0.1", srv.port("submissions")), timeout=5) as s:
        s.sendall(b"EHLO client.test\r\n")
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        assert b"250" not in data and b"220" not in data


def test_listener_without_tls(srv):
    c = Raw(srv.port("plain"))
    ehlo = caps(c.cmd("EHLO client.test"))
    assert "STARTTLS" not in ehlo
    assert c.cmd("STARTTLS") == "502 5.5.1 STARTTLS not available"
    c.close()


# --- STARTTLS (RFC 3207) -------------------------------------------------------------------------
def test_cleartext_pipelined_after_starttls_is_not_executed(srv):
    c = Raw(srv.port("submission"))
    c.cmd("EHLO client.test")
    c.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<evil@attacker.test>\r\n")
    assert c.reply() == "220 2.0.0 Ready to start TLS"
    assert c.buf == b"" and nothing_pending(c.sock)       # NOOP not answered in cleartext either
    c.starttls(client_tls(srv.ca_file))
    # The first reply inside TLS must answer HELP (sent inside TLS), not the injected NOOP / MAIL.
    assert c.cmd("HELP").startswith("214 2.0.0 ")
    assert c.cmd("NOOP") == "250 2.0.0 OK"
    c.close()


def _handshake_then_send(sock: socket.socket, ctx: ssl.SSLContext, first: bytes) -> tuple[ssl.SSLObject, list]:
    """Finish a client handshake and put ``first`` in the *same* packet as the client's last handshake
    message: the server sees its first TLS command at the very moment the handshake completes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    tls.write(first)
    sock.sendall(outgoing.read())
    return tls, [incoming, outgoing]


def _tls_reply(sock: socket.socket, tls: ssl.SSLObject, bios: list) -> bytes:
    incoming, outgoing = bios
    data = b""
    while not data.endswith(b"\r\n"):
        try:
            data += tls.read(65536)
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError(data)
            incoming.write(chunk)
    return data


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_first_tls_command_in_the_handshake_packet_is_answered(srv, version):
    ctx = client_tls(srv.ca_file)
    ctx.maximum_version = ctx.minimum_version = getattr(ssl.TLSVersion, version)
    for _ in range(5):
        c = Raw(srv.port("submission"), timeout=5)
        c.cmd("EHLO client.test")
        assert c.cmd("STARTTLS").startswith("220")
        tls, bios = _handshake_then_send(c.sock, ctx, b"HELP\r\nNOOP\r\n")
        assert tls.version() == version.replace("_", ".")
        replies = _tls_reply(c.sock, tls, bios)
        if b"250" not in replies:
            replies += _tls_reply(c.sock, tls, bios)
        assert replies.startswith(b"214 2.0.0 ") and replies.endswith(b"250 2.0.0 OK\r\n")
        c.close()


def test_session_reset_after_starttls(srv):
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO before.test")
    assert c.cmd("MAIL FROM:<a@b.test>") == "250 2.1.0 Sender OK"
    assert c.cmd("STARTTLS").startswith("220 ")
    c.starttls(client_tls(srv.ca_file))
    assert c.cmd("MAIL FROM:<a@b.test>") == "503 5.5.1 Send EHLO first"
    assert c.cmd("RCPT TO:<x@y.test>") == "503 5.5.1 Send MAIL first"
    ehlo = c.cmd("EHLO after.test")
    assert "STARTTLS" not in caps(ehlo)
    assert c.cmd("STARTTLS") == "503 5.5.1 TLS already active"
    assert c.cmd("MAIL FROM:<a@b.test>") == "250 2.1.0 Sender OK"
    c.close()


def test_starttls_verifies_with_python_ssl(srv):
    ctx = client_tls(srv.ca_file)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    c = Raw(srv.port("submission"))
    c.cmd("EHLO client.test")
    c.cmd("STARTTLS")
    c.starttls(ctx)
    assert c.sock.getpeercert()["subjectAltName"]
    c.close()


def test_starttls_with_openssl_s_client(srv):
    openssl = need_binary("openssl")
    proc = subprocess.run(
        [openssl, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{srv.port('submission')}",
         "-CAfile", srv.ca_file, "-verify_return_error", "-verify_hostname", "localhost", "-crlf", "-quiet",
         "-name", "client.test"],
        input=b"EHLO after.test\nNOOP\nQUIT\n", capture_output=True, timeout=20)
    text = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "250-submit.test says hello" in text
    assert "250-AUTH PLAIN LOGIN" in text and "STARTTLS" not in text
    assert "250 2.0.0 OK" in text and "221 2.0.0 Bye" in text
    assert "verify return:1" in proc.stderr.decode()


def test_implicit_tls_with_openssl_s_client(srv):
    openssl = need_binary("openssl")
    proc = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{srv.port('submissions')}", "-CAfile", srv.ca_file,
         "-verify_return_error", "-crlf", "-quiet"],
        input=b"EHLO client.test\nQUIT\n", capture_output=True, timeout=20)
    text = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert text.startswith("220 mx.test ") and "250-AUTH PLAIN LOGIN" in text and "221 2.0.0 Bye" in text


def test_tls_1_1_client_is_refused(srv):
    openssl = need_binary("openssl")

    def s_client(version: str) -> subprocess.CompletedProcess:
        # SECLEVEL=0 lets the *client* offer TLS 1.1, so any refusal comes from the server.
        return subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{srv.port('submissions')}", version,
             "-cipher", "DEFAULT:@SECLEVEL=0"], input=b"", capture_output=True, timeout=20)

    old = s_client("-tls1_1")
    out = old.stdout.decode()
    assert old.returncode != 0
    assert "CONNECTED" in out and "Cipher is (NONE)" in out      # a ClientHello went out; no session
    control = s_client("-tls1_2")                                 # the same client, one version up
    assert control.returncode == 0 and "Protocol  : TLSv1.2" in control.stdout.decode()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_python_client_fails(srv):
    ctx = client_tls(srv.ca_file)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")        # lets this client really send a TLS 1.1 ClientHello
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as exc:
        Raw(srv.port("submissions"), tls=ctx)
    assert "NO_PROTOCOLS_AVAILABLE" not in str(exc.value)


def test_tls_1_2_client_accepted(srv):
    ctx = client_tls(srv.ca_file)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c = Raw(srv.port("submissions"), tls=ctx)
    assert c.sock.version() == "TLSv1.2"
    c.close()


def test_tls_protocols_setting(tmp_path):
    cfg = CONFIG.replace('implicit = false\ncertificate = "default"',
                         'implicit = false\ncertificate = "default"\nprotocols = ["TLSv1.3"]')
    with run_server(cfg, tmp_path) as srv:
        ctx = client_tls(srv.ca_file)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            Raw(srv.port("submissions"), tls=ctx)
        c = Raw(srv.port("submissions"), tls=client_tls(srv.ca_file))
        assert c.sock.version() == "TLSv1.3"
        c.close()
        # the same applies to STARTTLS
        c = Raw(srv.port("submission"))
        c.cmd("EHLO x")
        c.cmd("STARTTLS")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            c.starttls(ctx)
        c.close()


def test_failed_starttls_handshake_does_not_hurt_others(srv):
    c = Raw(srv.port("submission"))
    c.cmd("EHLO x")
    c.cmd("STARTTLS")
    c.send(b"this is not a TLS client hello\r\n" * 10)
    assert c.closed()
    c.close()
    ok = Raw(srv.port("submission"))
    assert ok.cmd("NOOP") == "250 2.0.0 OK"
    ok.close()
    assert not [x for x in srv.logs if "Traceback" in x or x.startswith("ERROR")]


# --- IPv6 ----------------------------------------------------------------------------------------
def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_bind(tmp_path):
    cfg = CONFIG.replace('[server.listener."smtp"]\nbind = ["127.0.0.1:0"]',
                         '[server.listener."smtp"]\nbind = ["127.0.0.1:0", "[::1]:0"]')
    with run_server(cfg, tmp_path) as srv:
        ports = srv.server.ports("smtp")
        assert len(ports) == 2
        v6 = [addr for addr in srv.server.addresses("smtp") if len(addr) == 4]      # IPv6: (host, port, flow, scope)
        assert v6 and v6[0][0] == "::1"
        c = Raw(v6[0][1], host="::1")
        assert c.greeting.startswith("220 mx.test")
        assert c.cmd("EHLO [IPv6:::1]").startswith("250-mx.test")
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls(client_tls(srv.ca_file))
        assert c.cmd("NOOP") == "250 2.0.0 OK"
        c.close()


# --- connection limit ----------------------------------------------------------------------------
def test_max_connections(srv):
    port = srv.port("limited")
    first, second = Raw(port), Raw(port)
    assert first.greeting.startswith("220") and second.greeting.startswith("220")
    third = Raw(port)
    assert third.greeting == "421 4.7.0 Too many connections, try again later"
    assert third.closed()
    third.close()
    # other listeners are not affected
    other = Raw(srv.port("smtp"))
    assert other.greeting.startswith("220")
    other.close()
    first.cmd("QUIT")
    first.close()
    deadline = time.monotonic() + 5
    while True:
        again = Raw(port)
        if again.greeting.startswith("220") or time.monotonic() > deadline:
            break
        again.close()
        time.sleep(0.05)
    assert again.greeting.startswith("220")
    again.close()
    second.close()


def test_tls_client_lingering_after_quit_does_not_hold_the_session(srv):
    """After QUIT the session is over even if the TLS peer never answers close_notify."""
    c = Raw(srv.port("submissions"), tls=client_tls(srv.ca_file))
    port = c.sock.getsockname()[1]

    def registered() -> bool:
        return any(s.remote_port == port for s in srv.server.sessions())

    assert registered()
    assert c.cmd("QUIT") == "221 2.0.0 Bye"
    deadline = time.monotonic() + 2
    while registered() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not registered()
    c.close()
