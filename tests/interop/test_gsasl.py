"""GNU gsasl (libgsasl + GnuTLS) authenticates to smtpgate with SCRAM-SHA-1 and SCRAM-SHA-256, with and
without -PLUS channel binding, against a plaintext list and against SCRAM keys from smtpgate's own store.

smtpgate offers -PLUS only on TLS 1.2 (tls-unique; Python's ssl has no tls-exporter), hence the TLS-1.2-only
listeners ``tls12`` / ``users12``. gsasl's exit status 0 means it also checked the server's final
``v=`` signature, i.e. the server proved it knows the password (mutual authentication). gsasl has no
implicit-TLS mode and cannot submit mail, so success here is: 235, exit 0, the server's log line.
"""
from __future__ import annotations

import pytest

from tests.fixtures.server import RunningServer
from tests.support import need_binary

from .common import (LIST_PASS, LIST_USER, STORE_PASS, STORE_USER, WRONG, assert_auth_logged, assert_nothing_spooled,
                     b64decode_lines, run)

pytestmark = [pytest.mark.service("gsasl"), pytest.mark.timeout(60)]

ACCOUNTS = {"list": (LIST_USER, LIST_PASS, "submission", "tls12"),
            "store": (STORE_USER, STORE_PASS, "users", "users12")}


def gsasl(srv: RunningServer, listener: str, user: str, password: str, *args: str, tls: bool = True):
    tls_args = ["--starttls", f"--x509-ca-file={srv.ca_file}"] if tls else ["--no-starttls"]
    return run([need_binary("gsasl"), "--smtp", "--connect", f"127.0.0.1:{srv.port(listener)}", *tls_args,
                "-a", user, "-p", password, *args], stdin=b"")


def auth_command(proc) -> str:
    return next(line for line in proc.stdout.splitlines() if line.startswith("AUTH "))


def client_first(proc) -> bytes:
    """The client-first-message (GS2 header + n=user,r=nonce) gsasl sent."""
    return next(m for m in b64decode_lines(proc.stdout) if b",n=" in m and b",r=" in m)


def advertised(proc) -> list[str]:
    return next(line for line in proc.stdout.splitlines() if line.startswith("250-AUTH ")).split()[1:]


@pytest.mark.parametrize("account", ACCOUNTS)
def test_plus_negotiated(srv: RunningServer, account: str) -> None:
    """Left to choose, gsasl picks SCRAM-SHA-256-PLUS and binds to the TLS channel (tls-unique)."""
    user, password, _, listener = ACCOUNTS[account]
    proc = gsasl(srv, listener, user, password)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"} <= set(advertised(proc))
    assert auth_command(proc) == "AUTH SCRAM-SHA-256-PLUS"
    assert client_first(proc).startswith(b"p=tls-unique,,n=")
    assert "235 2.7.0 Authentication succeeded." in proc.stdout
    assert_auth_logged(srv, "SCRAM-SHA-256-PLUS", "success")


@pytest.mark.parametrize("account", ACCOUNTS)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
def test_plus(srv: RunningServer, account: str, mech: str) -> None:
    user, password, _, listener = ACCOUNTS[account]
    proc = gsasl(srv, listener, user, password, "-m", mech)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert auth_command(proc) == f"AUTH {mech}"
    assert client_first(proc).startswith(b"p=tls-unique,,")
    assert_auth_logged(srv, mech, "success")

    proc = gsasl(srv, listener, user, WRONG, "-m", mech)
    assert proc.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid." in proc.stdout
    assert_auth_logged(srv, mech, "success", "invalid")


@pytest.mark.parametrize("account", ACCOUNTS)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
@pytest.mark.parametrize("where", ["tls13", "tls12-plus-offered"])
def test_without_channel_binding_over_tls(srv: RunningServer, account: str, mech: str, where: str) -> None:
    """--no-cb: GS2 flag 'n'. Also where -PLUS is offered: a client without binding support may do that."""
    user, password, tls13_listener, tls12_listener = ACCOUNTS[account]
    listener = tls13_listener if where == "tls13" else tls12_listener
    proc = gsasl(srv, listener, user, password, "--no-cb", "-m", mech)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert auth_command(proc) == f"AUTH {mech}"
    assert client_first(proc).startswith(b"n,,n=")
    assert_auth_logged(srv, mech, "success")
    if where == "tls13":
        assert not any(m.endswith("-PLUS") for m in advertised(proc))

    proc = gsasl(srv, listener, user, WRONG, "--no-cb", "-m", mech)
    assert proc.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid." in proc.stdout
    assert_auth_logged(srv, mech, "success", "invalid")


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_cleartext(srv: RunningServer, mech: str) -> None:
    """SCRAM never puts the password on the wire, so it is offered without TLS."""
    proc = gsasl(srv, "smtp", LIST_USER, LIST_PASS, "-m", mech, tls=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "STARTTLS" not in proc.stdout.splitlines()
    assert client_first(proc).startswith(b"n,,n=")
    assert_auth_logged(srv, mech, "success")

    proc = gsasl(srv, "smtp", LIST_USER, WRONG, "-m", mech, tls=False)
    assert proc.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid." in proc.stdout
    assert_auth_logged(srv, mech, "success", "invalid")


def test_plus_refused_on_tls13(srv: RunningServer) -> None:
    """No channel binding on TLS 1.3 here: -PLUS is neither offered nor accepted."""
    proc = gsasl(srv, "submission", LIST_USER, LIST_PASS, "-m", "SCRAM-SHA-256-PLUS")
    assert proc.returncode != 0
    assert "504 5.5.4 Authentication mechanism not supported." in proc.stdout + proc.stderr
    assert_nothing_spooled(srv)


def test_unknown_user(srv: RunningServer) -> None:
    """Same failure as a wrong password (fake salt, no 'unknown user' error)."""
    proc = gsasl(srv, "tls12", "nobody@example.org", LIST_PASS, "-m", "SCRAM-SHA-256-PLUS")
    assert proc.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid." in proc.stdout
    assert_auth_logged(srv, "SCRAM-SHA-256-PLUS", "invalid")
