"""Interop with a real SASL client: GNU gsasl in ``--client`` mode talks base64 lines on stdin/stdout,
so the mechanisms can be driven by it without any network."""
from __future__ import annotations

import base64
import subprocess

import pytest

from smtpgate.lookup.base import AuthResult, Outcome, SecretRecord
from smtpgate.sasl import create
from smtpgate.sasl.base import Challenge, NeedSecret, Success, Verify
from tests.fixtures.gsasl import gsasl_mkpasswd
from tests.support import need_binary

pytestmark = pytest.mark.timeout(30)


class GsaslClient:
    """stdout carries the mechanism name, then one base64 line per client output; prompts go to stderr."""

    def __init__(self, mech: str, user: str, password: str, *extra: str) -> None:
        gsasl = need_binary("gsasl")
        self.proc = subprocess.Popen(
            [gsasl, "--client", "-m", mech, "-a", user, "-p", password, "--no-cb", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout.readline().strip() == mech

    def output(self) -> bytes | None:
        """The client's next message, or None when it gave up (exited)."""
        line = self.proc.stdout.readline()
        return None if not line else base64.b64decode(line.strip())

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(base64.b64encode(data).decode() + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def gsasl_client():
    clients: list[GsaslClient] = []

    def make(*args: str) -> GsaslClient:
        clients.append(GsaslClient(*args))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


@pytest.mark.parametrize("mech, key", [("SCRAM-SHA-256", "SHA-256"), ("SCRAM-SHA-1", "SHA-1")])
@pytest.mark.parametrize("password, ok", [("pässwörd", True), ("wrong", False)])
def test_scram(gsasl_client, mech, key, password, ok):
    client = gsasl_client(mech, "jörg", password)
    m = create(mech, hostname="mx.example.com")
    assert m.start(client.output()) == NeedSecret("jörg")
    challenge = m.secret(SecretRecord(account="jörg@example.com", plaintext="pässwörd"))
    assert isinstance(challenge, Challenge)
    client.send(challenge.data)
    final = m.respond(client.output())
    if not ok:
        assert final.kind == "invalid"
        return
    assert isinstance(final, Success) and final.account == "jörg@example.com"
    client.send(final.final_data)
    # gsasl verifies the server signature: on success it answers with an empty message, otherwise it exits
    assert client.output() == b""


def test_scram_server_signature_is_checked_by_gsasl(gsasl_client):
    """Harness check: a forged server-final makes gsasl give up, so the test above means something."""
    client = gsasl_client("SCRAM-SHA-256", "tim", "pencil")
    m = create("SCRAM-SHA-256", hostname="h")
    m.start(client.output())
    client.send(m.secret(SecretRecord(account="tim", plaintext="pencil")).data)
    assert isinstance(m.respond(client.output()), Success)
    client.send(b"v=" + base64.b64encode(bytes(32)))
    assert client.output() is None


def test_scram_with_gsasl_made_keys(gsasl_client):
    keys = gsasl_mkpasswd("SCRAM-SHA-256", "pencil")
    client = gsasl_client("SCRAM-SHA-256", "tim", "pencil")
    m = create("SCRAM-SHA-256", hostname="h")
    m.start(client.output())
    client.send(m.secret(SecretRecord(account="tim", scram={"SHA-256": keys})).data)
    final = m.respond(client.output())
    assert isinstance(final, Success)
    client.send(final.final_data)
    assert client.output() == b""


def test_scram_authzid_refused(gsasl_client):
    client = gsasl_client("SCRAM-SHA-256", "tim", "pencil", "-z", "boss")
    assert create("SCRAM-SHA-256", hostname="h").start(client.output()).kind == "invalid"


@pytest.mark.parametrize("password, ok", [("tanstaaf", True), ("wrong", False)])
def test_cram_md5(gsasl_client, password, ok):
    client = gsasl_client("CRAM-MD5", "tim", password)
    assert client.output() == b""  # CRAM-MD5 has no initial response
    m = create("CRAM-MD5", hostname="mx.example.com")
    challenge = m.start(None)
    client.send(challenge.data)
    assert m.respond(client.output()) == NeedSecret("tim")
    done = m.secret(SecretRecord(account="tim", plaintext="tanstaaf"))
    assert isinstance(done, Success) if ok else done.kind == "invalid"


def test_plain_with_authzid(gsasl_client):
    client = gsasl_client("PLAIN", "tim", "pw", "-z", "shared@example.com")
    m = create("PLAIN", hostname="h")
    action = m.start(client.output())
    assert isinstance(action, Verify)
    assert (action.creds.authzid, action.creds.username, action.creds.secret) == ("shared@example.com", "tim", "pw")
    done = m.verified(AuthResult(Outcome.VALID, account="tim", may_act_for=frozenset({"shared@example.com"})))
    assert done == Success(account="tim", authzid="shared@example.com")


def test_login(gsasl_client):
    client = gsasl_client("LOGIN", "tim", "pw")
    m = create("LOGIN", hostname="h")
    prompt = m.start(client.output())  # gsasl sends the username as initial response
    assert prompt == Challenge(b"Password:")
    client.send(prompt.data)
    action = m.respond(client.output())
    assert isinstance(action, Verify) and (action.creds.username, action.creds.secret) == ("tim", "pw")
