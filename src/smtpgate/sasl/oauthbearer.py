"""OAUTHBEARER (RFC 7628): an OAuth 2.0 bearer token inside a GS2-style message::

    client-resp = gs2-header %x01 *(key "=" value %x01) %x01      e.g.
    n,a=user@example.com,^Ahost=mx.example.com^Aport=587^Aauth=Bearer vF9dft4qmT^A^A

State machine::

    start(None) ─► Challenge(b"") ─► respond(msg) ─┐
    start(msg) ────────────────────────────────────┴► Verify ─► verified()
        VALID       ─► Success | Failure("invalid") (authzid not permitted)
        UNAVAILABLE ─► Failure("unavailable")
        INVALID     ─► Challenge(JSON error) ─► respond(%x01 or empty) ─► Failure("invalid")
                                               respond(anything else)  ─► Failure("malformed")

RFC 7628 §3.2.3 says the client MUST answer the error challenge with a single %x01; we also accept an
empty response because real clients (msmtp) send one (SPEC §4.3). Anything else breaks the protocol,
hence "malformed" (501) rather than 535 -- the attempt counts as a failure either way.

The GS2 channel-binding flag may be ``n`` or ``y``; ``p=`` is malformed because OAUTHBEARER has no
channel binding. The authzid (``a=``, with ``=2C``/``=3D`` escapes) is the user the client claims and is
passed to the lookup as the username; the lookup binds token and user. As defence in depth a claimed user
must also be the account the lookup returned, one of its addresses, or listed in ``may_act_for``.
"""
from __future__ import annotations

import re

from ..lookup.base import Credentials
from ._common import Malformed, TokenMechanism, utf8
from .base import Action, Failure, Verify

KVSEP = "\x01"
_KEY = re.compile(r"[A-Za-z]+")
_VALUE = re.compile(r"[\x21-\x7e \t\r\n]*")
# RFC 7628 §3.1 / RFC 6750 §2.1: "Bearer" 1*SP b64token; the scheme name is case-insensitive (RFC 7235).
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")


def unescape_saslname(value: str) -> str:
    """RFC 5801 saslname: "," and "=" travel as =2C and =3D; any other "=" is malformed."""
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "=":
            esc = value[i:i + 3]
            if esc == "=2C":
                out.append(",")
            elif esc == "=3D":
                out.append("=")
            else:
                raise Malformed("bad escape in authzid")
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_kvpairs(pairs: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise Malformed("bad key=value pair")
        if key in result:
            raise Malformed(f"duplicate key {key!r}")
        result[key] = value
    return result


def bearer_token(kv: dict[str, str]) -> str:
    auth = kv.get("auth")
    if auth is None:
        raise Malformed("no auth=Bearer <token>")
    m = _BEARER.fullmatch(auth)
    if m is None:
        raise Malformed("auth value is not 'Bearer <token>'")
    return m.group(1)


def parse(message: bytes) -> tuple[str, dict[str, str]]:
    """Return (authzid, key/values) of an OAUTHBEARER client response, or raise Malformed."""
    text = utf8(message, "message")
    flag, sep1, rest = text.partition(",")
    authz, sep2, body = rest.partition(",")
    if not sep1 or not sep2:
        raise Malformed("bad GS2 header")
    if flag.startswith("p="):
        raise Malformed("channel binding is not supported by OAUTHBEARER")
    if flag not in ("n", "y"):
        raise Malformed("bad GS2 channel-binding flag")
    if authz:
        if not authz.startswith("a=") or len(authz) == 2:
            raise Malformed("bad GS2 authzid")
        authzid = unescape_saslname(authz[2:])
    else:
        authzid = ""
    # body = kvsep *(kvpair kvsep) kvsep: at least two separators, first and last.
    if len(body) < 2 or body[0] != KVSEP or body[-1] != KVSEP:
        raise Malformed("message not framed by ^A")
    inner = body[1:-1]
    if inner and not inner.endswith(KVSEP):
        raise Malformed("message not framed by ^A")
    kv = parse_kvpairs(inner[:-1].split(KVSEP) if inner else [])
    return authzid, kv


class OAuthBearer(TokenMechanism):
    name = "OAUTHBEARER"
    # RFC 7628 §3.2.2: the failure is reported in a challenge, the client acknowledges it.
    error_fields = {"status": "invalid_token", "schemes": "bearer"}
    bad_ack = "expected ^A after the error challenge"

    def _message(self, data: bytes) -> Action:
        try:
            self._user, kv = parse(data)
            token = bearer_token(kv)
        except Malformed as exc:
            return self._end(Failure("malformed", str(exc), self._user))
        self._state = "verify"
        return Verify(Credentials(mechanism=self.name, username=self._user, secret=token, kind="token"))
