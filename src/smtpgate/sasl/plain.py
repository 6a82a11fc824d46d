"""PLAIN (RFC 4616): ``message = [authzid] NUL authcid NUL passwd``, each field 1..255 UTF-8 octets
(authzid may be empty).

State machine::

    start(None) ─► Challenge(b"")  ─► respond(message) ─┐
    start(message) ─────────────────────────────────────┴► Verify ─► verified() ─► Success | Failure

A non-empty authzid that names neither the authcid nor the account the lookup returned is accepted only
if the lookup lists it in ``may_act_for`` (RFC 4616 §2: the server decides whether the authcid may act
as the authzid). Passwords are passed to the lookup as sent; string preparation is the store's concern.
"""
from __future__ import annotations

from ..lookup.base import AuthResult, Credentials
from ._common import Malformed, OneMessageMechanism, for_log, grant, utf8
from .base import Action, Failure, Verify

MAX_FIELD = 255  # RFC 4616 §2: each field is at most 255 octets


def parse(message: bytes) -> tuple[str, str, str]:
    """Return (authzid, authcid, passwd) or raise Malformed."""
    fields = message.split(b"\0")
    if len(fields) != 3:
        raise Malformed("expected [authzid] NUL authcid NUL password")
    if max(map(len, fields)) > MAX_FIELD:
        raise Malformed(f"PLAIN field longer than {MAX_FIELD} octets")
    authzid_b, authcid_b, passwd_b = fields
    if not authcid_b or not passwd_b:
        raise Malformed("empty authentication identity or password")
    return utf8(authzid_b, "authzid"), utf8(authcid_b, "authcid"), utf8(passwd_b, "password")


class Plain(OneMessageMechanism):
    name = "PLAIN"

    def __init__(self) -> None:
        super().__init__()
        self._authcid = ""
        self._authzid = ""

    def _message(self, data: bytes) -> Action:
        try:
            self._authzid, self._authcid, passwd = parse(data)
        except Malformed as exc:
            fields = data.split(b"\0")
            return self._end(Failure("malformed", str(exc), for_log(fields[1]) if len(fields) == 3 else ""))
        self._state = "verify"
        return Verify(Credentials(mechanism=self.name, username=self._authcid, secret=passwd,
                                  authzid=self._authzid))

    def verified(self, result: AuthResult) -> Action:
        self._expect("verify", "verified")
        return self._end(grant(result, self._authcid, self._authzid, (self._authcid, result.account),
                               "not allowed to act for the requested authzid"))
