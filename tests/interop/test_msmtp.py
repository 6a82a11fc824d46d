"""msmtp (GnuTLS + GNU SASL; OAUTHBEARER/XOAUTH2 built in) submits mail through smtpgate.

PLAIN, LOGIN and SCRAM-SHA-256 against a plaintext list and against smtpgate's own user store (SCRAM keys,
no plaintext), OAUTHBEARER and XOAUTH2 against the JWKS provider stand-in; STARTTLS and implicit TLS, the
server certificate verified with --tls-trust-file. Exit 77 = AUTH failed. On a rejected token msmtp
answers the server's JSON error challenge with an empty line, and the server then says 535.
"""
from __future__ import annotations

import base64
import json
import socket
import ssl
import time

import pytest

from tests.fixtures.oauth_server import OAuthServer
from tests.fixtures.server import RunningServer
from tests.support import need_binary

from .common import (LIST_PASS, LIST_USER, OAUTH_USER, RCPT, STORE_PASS, STORE_USER, WRONG, assert_auth_logged,
                     assert_nothing_spooled, assert_spooled, message, new_marker, run)

pytestmark = [pytest.mark.service("msmtp"), pytest.mark.timeout(60)]

AUTH_FAILED = 77          # EX_NOPERM
UNAVAILABLE = 69          # EX_UNAVAILABLE: the server does not offer the method
TRANSPORTS = {"starttls": "on", "implicit": "off"}      # value of --tls-starttls


def msmtp(srv: RunningServer, listener: str, transport: str, auth: str, user: str, secret: str, marker: str):
    # The secret goes through a file: tokens are long, and nothing should depend on shell quoting.
    secret_file = srv.tmp / f"secret-{marker}"
    secret_file.write_text(secret)
    try:
        return run([need_binary("msmtp"), "--file=/dev/null", "--debug", "--host=127.0.0.1",
                    f"--port={srv.port(listener)}", "--timeout=15", "--domain=client.test",
                    "--tls=on", f"--tls-starttls={TRANSPORTS[transport]}", f"--tls-trust-file={srv.ca_file}",
                    f"--auth={auth}", f"--user={user}", f"--passwordeval=cat {secret_file}",
                    f"--from={user}", "--", RCPT],
                   stdin=message(marker, user))
    finally:
        secret_file.unlink()


def transcript(proc) -> list[str]:
    """The SMTP lines msmtp --debug shows: '<-- reply' and '--> command'."""
    return [line for line in proc.stdout.splitlines() if line.startswith(("<-- ", "--> ", "-->"))]


LISTENERS = {"starttls": "submission", "implicit": "submissions"}
STORE_LISTENER = "users"       # STARTTLS only; SCRAM keys from the internal store


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("auth", ["plain", "login", "scram-sha-256"])
def test_list_accepted(srv: RunningServer, auth: str, transport: str) -> None:
    marker = new_marker()
    proc = msmtp(srv, LISTENERS[transport], transport, auth, LIST_USER, LIST_PASS, marker)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"--> AUTH {auth.upper()}" in proc.stdout
    assert_spooled(srv, LIST_USER, marker)
    assert_auth_logged(srv, auth.upper(), "success")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("auth", ["plain", "login", "scram-sha-256"])
def test_list_wrong_password(srv: RunningServer, auth: str, transport: str) -> None:
    proc = msmtp(srv, LISTENERS[transport], transport, auth, LIST_USER, WRONG, new_marker())
    assert proc.returncode == AUTH_FAILED, proc.stdout + proc.stderr
    assert "535 5.7.8 Authentication credentials invalid." in proc.stderr
    assert "--> MAIL FROM" not in proc.stdout
    assert_nothing_spooled(srv)
    assert_auth_logged(srv, auth.upper(), "invalid")


@pytest.mark.parametrize("auth", ["plain", "login", "scram-sha-256", "scram-sha-1"])
def test_user_store(srv: RunningServer, auth: str) -> None:
    """SCRAM here is verified from the stored keys alone (the store keeps no plaintext)."""
    marker = new_marker()
    proc = msmtp(srv, STORE_LISTENER, "starttls", auth, STORE_USER, STORE_PASS, marker)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_spooled(srv, STORE_USER, marker)
    assert_auth_logged(srv, auth.upper(), "success")

    proc = msmtp(srv, STORE_LISTENER, "starttls", auth, STORE_USER, WRONG, new_marker())
    assert proc.returncode == AUTH_FAILED, proc.stdout + proc.stderr
    assert len(list(srv.spool.iterdir())) == 1
    assert_auth_logged(srv, auth.upper(), "success", "invalid")


def test_cram_md5_not_offered_by_user_store(srv: RunningServer) -> None:
    proc = msmtp(srv, STORE_LISTENER, "starttls", "cram-md5", STORE_USER, STORE_PASS, new_marker())
    assert proc.returncode == UNAVAILABLE, proc.stdout + proc.stderr
    assert "does not support authentication method CRAM-MD5" in proc.stderr
    assert "--> AUTH" not in proc.stdout
    assert_nothing_spooled(srv)


OAUTH_LISTENERS = {"starttls": "oauth", "implicit": "oauths"}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("auth", ["oauthbearer", "xoauth2"])
def test_token_accepted(srv: RunningServer, oauth_idp: OAuthServer, auth: str, transport: str) -> None:
    marker = new_marker()
    proc = msmtp(srv, OAUTH_LISTENERS[transport], transport, auth, OAUTH_USER, oauth_idp.mint(), marker)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_spooled(srv, OAUTH_USER, marker)
    assert_auth_logged(srv, auth.upper(), "success")


def _expired(idp: OAuthServer) -> str:
    now = int(time.time())
    return idp.mint(iat=now - 7200, exp=now - 3600)


def _wrong_audience(idp: OAuthServer) -> str:
    return idp.mint(aud="some-other-client")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("auth", ["oauthbearer", "xoauth2"])
@pytest.mark.parametrize("token", [_expired, _wrong_audience], ids=["expired", "wrong-audience"])
def test_token_rejected(srv: RunningServer, oauth_idp: OAuthServer, auth: str, transport: str, token) -> None:
    proc = msmtp(srv, OAUTH_LISTENERS[transport], transport, auth, OAUTH_USER, token(oauth_idp), new_marker())
    assert proc.returncode == AUTH_FAILED, proc.stdout + proc.stderr
    lines = transcript(proc)
    # the error challenge (RFC 7628 §3.2.2 / Google's XOAUTH2), msmtp's empty answer, then 535
    i = next(i for i, line in enumerate(lines) if line.startswith("<-- 334 ") and len(line) > 8)
    error = json.loads(base64.b64decode(lines[i][8:]))
    assert error["status"] == ("invalid_token" if auth == "oauthbearer" else "401")
    assert lines[i + 1].rstrip() == "-->"
    assert lines[i + 2] == "<-- 535 5.7.8 Authentication credentials invalid."
    assert_nothing_spooled(srv)
    assert_auth_logged(srv, auth.upper(), "invalid")


def test_first_command_in_the_same_segment_as_tls_finished(srv: RunningServer) -> None:
    """msmtp (GnuTLS) sends EHLO right behind its TLS Finished; when both arrive in one TCP segment the
    server must still answer (it once hung here: the EHLO was buffered while the handshake completed)."""
    ctx = ssl.create_default_context(cafile=srv.ca_file)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", srv.port("submission")), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220 ")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"EHLO client.test\r\n")
        sock.sendall(outgoing.read())          # Finished + EHLO in one write
        answer = b""
        while b"\r\n250 " not in answer:
            data = sock.recv(65536)
            assert data, answer
            incoming.write(data)
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
    assert answer.startswith(b"250-mx.test says hello\r\n")
    assert b"AUTH PLAIN LOGIN" in answer
