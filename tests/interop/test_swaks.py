"""swaks (Perl, IO::Socket::SSL + Authen::SASL) submits mail through smtpgate: PLAIN, LOGIN, CRAM-MD5
over STARTTLS (-tls), implicit TLS (-tlsc) and cleartext where the listener allows it. Exit 28 = AUTH failed."""
from __future__ import annotations

import pytest

from tests.fixtures.server import RunningServer
from tests.support import missing, need_binary

from .common import (LIST_PASS, LIST_USER, RCPT, WRONG, assert_auth_logged, assert_nothing_spooled, assert_spooled,
                     new_marker, run)

pytestmark = [pytest.mark.service("swaks"), pytest.mark.timeout(60)]

AUTH_FAILED = 28

# (listener, swaks TLS flags); "smtp" is the cleartext listener with allow-plain-text = true
TRANSPORTS = {
    "starttls": ("submission", ["-tls"]),
    "implicit": ("submissions", ["-tlsc"]),
    "cleartext": ("smtp", []),
}


@pytest.fixture(scope="module", autouse=True)
def swaks_features() -> None:
    """swaks degrades silently without its Perl modules (TLS: Net::SSLeay + IO::Socket::SSL, AUTH:
    Authen::SASL, CRAM-MD5: Digest::HMAC); ask it what it can do."""
    support = run([need_binary("swaks"), "--support"])
    text = support.stdout + support.stderr
    for feature in ("TLS", "Basic AUTH", "AUTH CRAM-MD5"):
        if f"=== {feature} supported" not in text:
            missing(f"swaks without {feature} support (install libio-socket-ssl-perl libnet-ssleay-perl "
                    "libauthen-sasl-perl libdigest-hmac-perl)")


def swaks(srv: RunningServer, transport: str, mech: str, password: str, marker: str):
    listener, flags = TRANSPORTS[transport]
    tls = ["--tls-verify", "--tls-ca-path", srv.ca_file] if flags else []
    return run([need_binary("swaks"), "--server", f"127.0.0.1:{srv.port(listener)}", *flags, *tls,
                "--helo", "client.test", "--timeout", "15",
                "--auth", mech, "--auth-user", LIST_USER, "--auth-password", password,
                "--from", LIST_USER, "--to", RCPT, "--header", f"Subject: swaks {marker}", "--body", marker])


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_accepted(srv: RunningServer, mech: str, transport: str) -> None:
    marker = new_marker()
    proc = swaks(srv, transport, mech, LIST_PASS, marker)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "235 2.7.0 Authentication succeeded." in proc.stdout
    assert_spooled(srv, LIST_USER, marker, tls=transport != "cleartext")
    assert_auth_logged(srv, mech, "success")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_wrong_password(srv: RunningServer, mech: str, transport: str) -> None:
    proc = swaks(srv, transport, mech, WRONG, new_marker())
    assert proc.returncode == AUTH_FAILED, proc.stdout + proc.stderr
    assert "535 5.7.8 Authentication credentials invalid." in proc.stdout
    assert "MAIL FROM" not in proc.stdout
    assert_nothing_spooled(srv)
    assert_auth_logged(srv, mech, "invalid")


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_cleartext_not_offered_without_allow_plain_text(srv: RunningServer, mech: str) -> None:
    """On the STARTTLS listener without -tls, PLAIN/LOGIN are not advertised; swaks does not even try."""
    proc = run([need_binary("swaks"), "--server", f"127.0.0.1:{srv.port('submission')}", "--helo", "client.test",
                "--timeout", "15", "--auth", mech, "--auth-user", LIST_USER, "--auth-password", LIST_PASS,
                "--from", LIST_USER, "--to", RCPT])
    assert proc.returncode == AUTH_FAILED, proc.stdout + proc.stderr
    advertised = next(line for line in proc.stdout.splitlines() if "250-AUTH " in line).split()[2:]
    assert advertised == ["CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-1"]
    assert "requested type not available" in proc.stdout + proc.stderr
    assert_nothing_spooled(srv)
