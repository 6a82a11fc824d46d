"""Python's smtplib and aiosmtplib log in to smtpgate (each run in its own process by ``pyclients``).

Their ``login()`` tries CRAM-MD5, PLAIN, LOGIN in turn, so one wrong password costs as many counted
failures as the server offers of those mechanisms: three on the list listeners, which is
``errors.total = 3`` -> the third 535 is followed by ``421 4.3.0`` and the connection is closed. The user
store offers no CRAM-MD5: two failures, and the session is still usable.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.server import RunningServer

from .common import (CLIENT_TIMEOUT, LIST_PASS, LIST_USER, RCPT, STORE_PASS, STORE_USER, WRONG, assert_auth_logged,
                     assert_nothing_spooled, assert_spooled, auth_log, message, new_marker)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ["smtplib", "aiosmtplib"]
TLS = {"starttls": "submission", "implicit": "submissions"}
TOO_MANY = "4.3.0 Too many authentication errors, disconnecting."


def client(srv: RunningServer, library: str, tls: str, user: str, *steps: list, listener: str | None = None) -> list:
    cfg = {"library": library, "port": srv.port(listener or TLS[tls]), "tls": tls, "ca": srv.ca_file,
           "user": user, "steps": [list(s) for s in steps]}
    proc = subprocess.run([sys.executable, "-m", "tests.interop.pyclients", json.dumps(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def send_step(marker: str, sender: str) -> list:
    return ["send", sender, RCPT, message(marker, sender).decode()]


@pytest.mark.parametrize("tls", TLS)
@pytest.mark.parametrize("library", LIBRARIES)
def test_login_and_send(srv: RunningServer, library: str, tls: str) -> None:
    marker = new_marker()
    login, send = client(srv, library, tls, LIST_USER, ["login", LIST_PASS], send_step(marker, LIST_USER))
    assert login == {"ok": [235, "2.7.0 Authentication succeeded."]}
    assert send["ok"][0] == 250
    assert_spooled(srv, LIST_USER, marker)
    assert_auth_logged(srv, "CRAM-MD5", "success")          # the libraries' first choice


@pytest.mark.parametrize("mech", ["CRAM-MD5", "PLAIN", "LOGIN"])
@pytest.mark.parametrize("library", LIBRARIES)
def test_each_mechanism(srv: RunningServer, library: str, mech: str) -> None:
    marker = new_marker()
    bad, good, send = client(srv, library, "implicit", LIST_USER, ["auth", mech, WRONG], ["auth", mech, LIST_PASS],
                             send_step(marker, LIST_USER))
    assert bad["code"] == 535 and bad["error"] == "SMTPAuthenticationError"
    assert good == {"ok": [235, "2.7.0 Authentication succeeded."]}
    assert send["ok"][0] == 250
    assert_spooled(srv, LIST_USER, marker)
    assert_auth_logged(srv, mech, "invalid", "success")


@pytest.mark.parametrize("library", LIBRARIES)
def test_wrong_password_three_failures_then_421(srv: RunningServer, library: str) -> None:
    login, noop = client(srv, library, "starttls", LIST_USER, ["login", WRONG], ["noop"])
    assert login["error"] == "SMTPAuthenticationError" and login["code"] == 535
    if library == "smtplib":
        assert noop == {"ok": [421, TOO_MANY]}                # smtplib reads the 421 as NOOP's reply
    else:
        assert noop["error"] == "SMTPServerDisconnected"     # aiosmtplib sees the connection closed
    assert [line.split(" mechanism=")[1].split(" ")[0] for line in auth_log(srv)] == ["CRAM-MD5", "PLAIN", "LOGIN"]
    assert [line.split(" failures=")[1].split(" ")[0] for line in auth_log(srv)] == ["1", "2", "3"]
    assert all(" result=invalid " in line for line in auth_log(srv))
    assert_nothing_spooled(srv)


@pytest.mark.parametrize("library", LIBRARIES)
def test_two_failures_leave_the_session_usable(srv: RunningServer, library: str) -> None:
    """The user store offers PLAIN and LOGIN only: two failures < errors.total, the right password still works."""
    marker = new_marker()
    bad, noop, good, send = client(srv, library, "starttls", STORE_USER, ["login", WRONG], ["noop"],
                                   ["login", STORE_PASS], send_step(marker, STORE_USER), listener="users")
    assert bad["error"] == "SMTPAuthenticationError" and bad["code"] == 535
    assert noop["ok"][0] == 250
    assert good == {"ok": [235, "2.7.0 Authentication succeeded."]}
    assert send["ok"][0] == 250
    assert_spooled(srv, STORE_USER, marker)
    assert_auth_logged(srv, "PLAIN", "invalid", "success")
    assert_auth_logged(srv, "LOGIN", "invalid")


@pytest.mark.parametrize("library", LIBRARIES)
def test_no_mail_without_auth(srv: RunningServer, library: str) -> None:
    marker = new_marker()
    bad, send = client(srv, library, "implicit", LIST_USER, ["auth", "PLAIN", WRONG], send_step(marker, LIST_USER))
    assert bad["code"] == 535
    assert send["code"] == 530 and "5.7.0 Authentication required." in send["text"]
    assert_nothing_spooled(srv)

