"""curl (libcurl, OpenSSL) submits mail through smtpgate: PLAIN and LOGIN (--login-options AUTH=...),
OAUTHBEARER (--oauth2-bearer), XOAUTH2 on a listener that offers only XOAUTH2 (curl prefers OAUTHBEARER
whenever it is offered), over STARTTLS (--ssl-reqd) and smtps://, with and without --sasl-ir, and
--sasl-authzid. Exit 67 = login denied.

(curl sends no initial response for the OAuth mechanisms even with --sasl-ir: a JWT makes the AUTH line
longer than the 512 octets RFC 5321 allows a command line, and curl checks that.)"""
from __future__ import annotations

import time

import pytest

from tests.fixtures.oauth_server import OAuthServer
from tests.fixtures.server import RunningServer
from tests.support import need_binary

from .common import (LIST_PASS, LIST_USER, OAUTH_USER, RCPT, WRONG, assert_auth_logged, assert_nothing_spooled,
                     assert_spooled, auth_log, message, new_marker, run)

pytestmark = [pytest.mark.service("curl"), pytest.mark.timeout(60)]

LOGIN_DENIED = 67
TRANSPORTS = {"starttls": ("smtp", "submission", ["--ssl-reqd"]), "implicit": ("smtps", "submissions", [])}


def curl(srv: RunningServer, transport: str, user: str, *args: str, marker: str, listener: str | None = None):
    scheme, default_listener, flags = TRANSPORTS[transport]
    msg = srv.tmp / f"msg-{marker}.eml"
    msg.write_bytes(message(marker, user))
    try:
        return run([need_binary("curl"), "--verbose", "--silent", "--show-error", "--max-time", "15",
                    f"{scheme}://127.0.0.1:{srv.port(listener or default_listener)}/client.test",
                    *flags, "--cacert", srv.ca_file,
                    "--mail-from", user, "--mail-rcpt", RCPT, "--upload-file", str(msg), *args])
    finally:
        msg.unlink()


def sent(proc) -> list[str]:
    """What curl sent (``> `` lines of --verbose)."""
    return [line[2:] for line in proc.stderr.splitlines() if line.startswith("> ")]


def received(proc) -> list[str]:
    return [line[2:] for line in proc.stderr.splitlines() if line.startswith("< ")]


# ------------------------------------------------------------------------------ PLAIN / LOGIN

@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_password_accepted(srv: RunningServer, mech: str, transport: str) -> None:
    marker = new_marker()
    proc = curl(srv, transport, LIST_USER, "--user", f"{LIST_USER}:{LIST_PASS}",
                "--login-options", f"AUTH={mech}", marker=marker)
    assert proc.returncode == 0, proc.stderr
    assert f"AUTH {mech}" in sent(proc)                       # no initial response without --sasl-ir
    assert "235 2.7.0 Authentication succeeded." in received(proc)
    assert_spooled(srv, LIST_USER, marker)
    assert_auth_logged(srv, mech, "success")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_wrong_password(srv: RunningServer, mech: str, transport: str) -> None:
    proc = curl(srv, transport, LIST_USER, "--user", f"{LIST_USER}:{WRONG}",
                "--login-options", f"AUTH={mech}", marker=new_marker())
    assert proc.returncode == LOGIN_DENIED, proc.stderr
    assert "535 5.7.8 Authentication credentials invalid." in received(proc)
    assert not any(line.startswith("MAIL FROM") for line in sent(proc))
    assert_nothing_spooled(srv)
    assert_auth_logged(srv, mech, "invalid")


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_sasl_ir(srv: RunningServer, mech: str) -> None:
    marker = new_marker()
    proc = curl(srv, "implicit", LIST_USER, "--user", f"{LIST_USER}:{LIST_PASS}",
                "--login-options", f"AUTH={mech}", "--sasl-ir", marker=marker)
    assert proc.returncode == 0, proc.stderr
    auth = next(line for line in sent(proc) if line.startswith("AUTH "))
    assert auth.startswith(f"AUTH {mech} ") and len(auth.split()) == 3     # initial response on the line
    assert_spooled(srv, LIST_USER, marker)
    if mech == "LOGIN":    # the username came as initial response: only the password prompt follows
        assert "334 VXNlcm5hbWU6" not in received(proc) and "334 UGFzc3dvcmQ6" in received(proc)


def test_sasl_authzid_same_user(srv: RunningServer) -> None:
    marker = new_marker()
    proc = curl(srv, "implicit", LIST_USER, "--user", f"{LIST_USER}:{LIST_PASS}", "--login-options", "AUTH=PLAIN",
                "--sasl-authzid", LIST_USER, "--sasl-ir", marker=marker)
    assert proc.returncode == 0, proc.stderr
    assert_spooled(srv, LIST_USER, marker)


@pytest.mark.parametrize("ir", [True, False], ids=["sasl-ir", "no-ir"])
def test_sasl_authzid_other_user_denied(srv: RunningServer, ir: bool) -> None:
    """PLAIN with an authzid the lookup does not grant: 535 although the password is right."""
    proc = curl(srv, "implicit", LIST_USER, "--user", f"{LIST_USER}:{LIST_PASS}", "--login-options", "AUTH=PLAIN",
                "--sasl-authzid", "boss@example.org", *(["--sasl-ir"] if ir else []), marker=new_marker())
    assert proc.returncode == LOGIN_DENIED, proc.stderr
    assert "535 5.7.8 Authentication credentials invalid." in received(proc)
    assert_nothing_spooled(srv)
    assert_auth_logged(srv, "PLAIN", "invalid")


# ------------------------------------------------------------------------------ OAUTHBEARER / XOAUTH2

def _expired(idp: OAuthServer) -> str:
    now = int(time.time())
    return idp.mint(iat=now - 7200, exp=now - 3600)


@pytest.mark.parametrize("transport,listener", [("starttls", "oauth"), ("implicit", "oauths")])
def test_oauthbearer_accepted(srv: RunningServer, oauth_idp: OAuthServer, transport: str, listener: str) -> None:
    marker = new_marker()
    proc = curl(srv, transport, OAUTH_USER, "--user", f"{OAUTH_USER}:", "--oauth2-bearer", oauth_idp.mint(),
                marker=marker, listener=listener)
    assert proc.returncode == 0, proc.stderr
    assert "AUTH OAUTHBEARER" in sent(proc)
    assert_spooled(srv, OAUTH_USER, marker)
    assert_auth_logged(srv, "OAUTHBEARER", "success")


@pytest.mark.parametrize("token", ["expired", "wrong-audience"])
def test_oauthbearer_rejected(srv: RunningServer, oauth_idp: OAuthServer, token: str) -> None:
    bad = _expired(oauth_idp) if token == "expired" else oauth_idp.mint(aud="some-other-client")
    proc = curl(srv, "implicit", OAUTH_USER, "--user", f"{OAUTH_USER}:", "--oauth2-bearer", bad,
                marker=new_marker(), listener="oauths")
    assert proc.returncode == LOGIN_DENIED, proc.stderr
    replies = received(proc)
    assert any(r.startswith("334 ey") for r in replies)           # base64 of '{"status":...}'
    assert "535 5.7.8 Authentication credentials invalid." in replies
    assert_nothing_spooled(srv)
    assert_auth_logged(srv, "OAUTHBEARER", "invalid")


def test_curl_prefers_oauthbearer_over_xoauth2(srv: RunningServer, oauth_idp: OAuthServer) -> None:
    """Why the XOAUTH2 tests use a listener offering only XOAUTH2: AUTH=XOAUTH2 is ignored otherwise."""
    proc = curl(srv, "implicit", OAUTH_USER, "--user", f"{OAUTH_USER}:", "--oauth2-bearer", oauth_idp.mint(),
                "--login-options", "AUTH=XOAUTH2", marker=new_marker(), listener="oauths")
    assert proc.returncode == 0, proc.stderr
    assert "AUTH OAUTHBEARER" in sent(proc)


def test_xoauth2_accepted(srv: RunningServer, oauth_idp: OAuthServer) -> None:
    marker = new_marker()
    proc = curl(srv, "implicit", OAUTH_USER, "--user", f"{OAUTH_USER}:", "--oauth2-bearer", oauth_idp.mint(),
                marker=marker, listener="xoauth2")
    assert proc.returncode == 0, proc.stderr
    assert "AUTH XOAUTH2" in sent(proc)
    assert_spooled(srv, OAUTH_USER, marker)
    assert_auth_logged(srv, "XOAUTH2", "success")


@pytest.mark.parametrize("token", ["expired", "wrong-audience"])
def test_xoauth2_rejected(srv: RunningServer, oauth_idp: OAuthServer, token: str) -> None:
    """curl does not answer XOAUTH2's error challenge: it gives up (exit 67) and closes the connection."""
    bad = _expired(oauth_idp) if token == "expired" else oauth_idp.mint(aud="some-other-client")
    proc = curl(srv, "implicit", OAUTH_USER, "--user", f"{OAUTH_USER}:", "--oauth2-bearer", bad,
                marker=new_marker(), listener="xoauth2")
    assert proc.returncode == LOGIN_DENIED, proc.stderr
    assert any(r.startswith("334 ey") for r in received(proc))
    assert not any(line.startswith("MAIL FROM") for line in sent(proc))
    assert_nothing_spooled(srv)


def test_xoauth2_rejected_is_logged_when_client_hangs_up(srv: RunningServer, oauth_idp: OAuthServer) -> None:
    proc = curl(srv, "implicit", OAUTH_USER, "--user", f"{OAUTH_USER}:", "--oauth2-bearer", _expired(oauth_idp),
                marker=new_marker(), listener="xoauth2")
    assert proc.returncode == LOGIN_DENIED, proc.stderr
    deadline = time.monotonic() + 2      # the server notices the hang-up asynchronously
    while not auth_log(srv) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert_auth_logged(srv, "XOAUTH2", "invalid")
