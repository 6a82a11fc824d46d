"""Shared by the interop tests: one real smtpgate for all, with a listener per situation clients need.

Listeners (all on ephemeral loopback ports; ``srv.port(name)``):

=================  ===============================  ==================================================
listener           transport                        lookup / mechanisms
=================  ===============================  ==================================================
``smtp``           cleartext, allow-plain-text      ``list/users``: PLAIN LOGIN CRAM-MD5 SCRAM-*
``submission``     STARTTLS                         same
``submissions``    implicit TLS                     same
``tls12``          STARTTLS, TLS 1.2 only           same, and SCRAM-*-PLUS (tls-unique exists)
``users``          STARTTLS                         ``users/u`` (smtpgate's own store): PLAIN LOGIN SCRAM
``users12``        STARTTLS, TLS 1.2 only           same, with -PLUS
``oauth``          STARTTLS                         ``oauth/o`` (JWT via the JWKS fixture): OAUTHBEARER XOAUTH2
``oauths``         implicit TLS                     same
``xoauth2``        implicit TLS                     ``oauth/o``: XOAUTH2 only (curl prefers OAUTHBEARER)
=================  ===============================  ==================================================

``require = true`` everywhere, ``errors.total = 3``, ``errors.wait = "10ms"``. Every test gets the
server with an empty spool and log (``srv`` fixture in conftest.py), so "nothing was spooled" is a real
check.
"""
from __future__ import annotations

import asyncio
import base64
import subprocess
import uuid
from pathlib import Path

from smtpgate.delivery.spool import read_message
from smtpgate.lookup.users import UserStore
from tests.fixtures.oauth_server import AUDIENCE, ISSUER
from tests.fixtures.server import SERVER_HEAD, RunningServer, listeners

LIST_USER, LIST_PASS = "john@example.org", "s3cret-Pw"
STORE_USER, STORE_PASS = "carol@example.org", "Carol-pw.1"
OAUTH_USER = "alice@example.org"          # the fixture's default "email" claim
RCPT = "rcpt@remote.example"
WRONG = "wrong-password"
CLIENT_TIMEOUT = 20

_TLS12 = 'tls.protocols = ["TLSv1.2"]'
_LIST_MECHS = '["plain", "login", "cram-md5", "scram-sha-256", "scram-sha-1", "scram-sha-256-plus", "scram-sha-1-plus"]'

CONFIG = SERVER_HEAD + listeners(
    "smtp", "submission", "submissions", "tls12", "users", "users12", "oauth", "oauths", "xoauth2",
    implicit=("submissions", "oauths", "xoauth2"), options={"tls12": _TLS12, "users12": _TLS12}) + f"""
[list]
users = ["{LIST_USER}:{LIST_PASS}"]

[directory.u]
type = "internal"
store = "sqlite://{{tmp}}/users.db"

[directory.o]
type = "oauth"
jwks-url = "@JWKS@"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"

[session.auth]
mechanisms = [ {{ if = "listener", eq = "xoauth2", then = ["xoauth2"] }},
               {{ if = "listener", starts-with = "oauth", then = ["oauthbearer", "xoauth2"] }},
               {{ else = {_LIST_MECHS} }} ]
lookup = [ {{ if = "listener", starts-with = "oauth", then = "oauth/o" }},
           {{ if = "listener", eq = "xoauth2", then = "oauth/o" }},
           {{ if = "listener", starts-with = "users", then = "users/u" }},
           {{ else = "list/users" }} ]
require = true
allow-plain-text = [ {{ if = "listener", eq = "smtp", then = true }}, {{ else = false }} ]

[session.auth.errors]
total = 3
wait = "10ms"
"""


def add_store_user(path: Path) -> None:
    """The internal store's user, created the way `smtpgate user add` does (argon2id + SCRAM keys)."""
    async def add() -> None:
        async with UserStore(f"sqlite://{path}") as store:
            await store.add_user(STORE_USER, STORE_PASS)
    asyncio.run(add())


def clear_spool(srv: RunningServer) -> None:
    if srv.spool.is_dir():
        for path in srv.spool.iterdir():
            path.unlink()


def spooled(srv: RunningServer) -> list[tuple[dict, bytes]]:
    if not srv.spool.is_dir():
        return []
    return [read_message(str(p)) for p in sorted(srv.spool.iterdir())]


def assert_spooled(srv: RunningServer, user: str, marker: str, tls: bool = True) -> None:
    """Exactly one message, from an authenticated ``user``, carrying ``marker`` (so it is this test's)."""
    msgs = spooled(srv)
    assert len(msgs) == 1, msgs
    env, data = msgs[0]
    assert env["authenticated_as"].lower() == user.lower()
    assert env["rcpt_to"] == [RCPT]
    assert marker.encode() in data
    assert (b"with ESMTPSA" if tls else b"with ESMTPA ") in data


def assert_nothing_spooled(srv: RunningServer) -> None:
    assert spooled(srv) == []


def auth_log(srv: RunningServer) -> list[str]:
    """The server's one-line-per-attempt AUTH log records."""
    return [line for line in srv.logs if " auth listener=" in line]


def assert_auth_logged(srv: RunningServer, mechanism: str, *results: str) -> None:
    """The server logged exactly these AUTH attempts for ``mechanism``, in this order."""
    lines = [line for line in auth_log(srv) if f" mechanism={mechanism} " in line]
    assert [line.split(" result=", 1)[1].split(" ", 1)[0] for line in lines] == list(results), auth_log(srv)


def message(marker: str, sender: str) -> bytes:
    return (f"From: <{sender}>\r\nTo: <{RCPT}>\r\nSubject: interop {marker}\r\n"
            f"Message-ID: <{marker}@client.test>\r\n\r\nbody {marker}\r\n").encode()


def run(argv: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """A client as a subprocess, never allowed to hang the suite."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=CLIENT_TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def new_marker() -> str:
    """A unique word put into a test's message, so the spool check finds that test's message."""
    return uuid.uuid4().hex[:16]


def b64decode_lines(text: str) -> list[bytes]:
    """Every line of a client transcript that is pure base64 (SASL responses), decoded."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if len(line) >= 8 and len(line) % 4 == 0:
            try:
                out.append(base64.b64decode(line, validate=True))
            except ValueError:
                pass
    return out
