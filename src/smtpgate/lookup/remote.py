"""What every ``remote/<id>`` lookup shares -- "log in to the remote with the client's own
credentials": :class:`RemoteAuthLookup` (slots, deadline, connection lifecycle), the credential checks
no remote could accept, and the OAuth initial responses. The network plumbing is in ``smtpgate.net``.
"""
from __future__ import annotations

import asyncio
import logging
import re

from ..config.model import RemoteSettings
from ..net.errors import describe_error
from ..net.stream import LineStream, RemoteProtocolError
from ..net.tls import client_context
from .base import AuthResult, Capability, Credentials, Lookup, Outcome, unavailable

log = logging.getLogger("smtpgate.lookup.remote")

_TOKEN_RE = re.compile(r"[\x21-\x7e]+")   # RFC 6750 b64token is narrower; this keeps SASL framing safe


class RemoteAuthLookup(Lookup):
    """Base for ``remote/<id>`` lookups: one fresh connection per authentication (a logged-in IMAP or
    SMTP session cannot be reset to "not authenticated"), at most ``concurrency`` at a time, the whole
    operation -- waiting for a slot included -- bounded by ``timeout`` so the SMTP client always gets an
    answer in time. Subclasses implement :meth:`_converse` on an open :class:`LineStream`.

    PLAIN authzids are not forwarded: to a remote server an authzid means "master user" login, whose
    policy smtpgate cannot see, so the remote only ever verifies the authcid and ``may_act_for`` stays
    empty (the AUTH stage then refuses authzid != authcid).
    """

    capabilities = Capability.PASSWORD | Capability.TOKEN
    protocols: tuple[str, ...] = ()

    def __init__(self, settings: RemoteSettings, *, name: str | None = None) -> None:
        if settings.protocol not in self.protocols:
            raise ValueError(f"{type(self).__name__} cannot speak {settings.protocol!r}")
        self.settings = settings
        self.name = name or f"remote/{settings.id}"
        tls = settings.tls
        self._ssl = client_context(tls) if (tls.implicit or tls.starttls) else None
        self._slots = asyncio.Semaphore(max(1, settings.concurrency))
        self.where = f"{settings.protocol} {settings.address}:{settings.port}"

    async def authenticate(self, creds: Credentials) -> AuthResult:
        bad = _malformed(creds)
        if bad:
            return AuthResult(Outcome.INVALID, reason=f"{self.where}: {bad}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            result = unavailable(f"{self.where}: all {self.settings.concurrency} connections busy for "
                                 f"{self.settings.timeout:g}s")
        else:
            try:
                if deadline - loop.time() < self.settings.timeout / 10:
                    # The slot came free only as (or just before) the deadline passed: a login needs several
                    # round trips, so a connection now would not finish and would only load the remote.
                    result = unavailable(f"{self.where}: no connection slot within {self.settings.timeout:g}s")
                else:
                    result = await self._attempt(creds, deadline)
            finally:
                self._slots.release()
        log.debug("%s: %s for %r via %s in %.0f ms%s", self.name, result.outcome.value, creds.username,
                  creds.mechanism, (loop.time() - started) * 1000, f" ({result.reason})" if result.reason else "")
        return result

    async def _attempt(self, creds: Credentials, deadline: float) -> AuthResult:
        s = self.settings
        stream: LineStream | None = None
        clean = False
        try:
            async with asyncio.timeout_at(deadline):
                stream = await LineStream.connect(s.address, s.port, self._ssl if s.tls.implicit else None)
                result = await self._converse(stream, creds)
                clean = True
        except TimeoutError:     # before OSError: TimeoutError is one
            result = unavailable(f"{self.where}: no answer within {s.timeout:g}s")
        except (RemoteProtocolError, OSError) as exc:   # ssl.SSLError is an OSError
            result = unavailable(f"{self.where}: {describe_error(exc)}")
        except Exception as exc:  # a bug here must not become a traceback for the SMTP client
            log.error("%s: unexpected %s while talking to %s", self.name, type(exc).__name__, self.where)
            log.debug("%s: details", self.name, exc_info=True)
            result = unavailable(f"{self.where}: internal error ({type(exc).__name__})")
        finally:
            # Outside the deadline on purpose: an answer already obtained must not be lost to a slow
            # close, and the slot is held until the socket is really gone. Bounded by close() itself.
            if stream is not None:
                await stream.close(graceful=clean)
        return result

    async def _converse(self, stream: LineStream, creds: Credentials) -> AuthResult:
        raise NotImplementedError

    async def _upgrade(self, stream: LineStream) -> None:
        assert self._ssl is not None
        await stream.start_tls(self._ssl)


def _malformed(creds: Credentials) -> str:
    """Credentials no remote could accept, or that would break the framing we send them in."""
    if "\0" in creds.username or "\0" in creds.secret:
        return "NUL in credentials"
    if creds.kind == "token":
        if not creds.username:
            # The remote would accept the token for whoever it belongs to, but would not tell us who:
            # without a claimed user there is no account to authenticate as.
            return "bearer token without a user name cannot be checked against a remote server"
        if "\x01" in creds.username or not _TOKEN_RE.fullmatch(creds.secret):
            return "malformed bearer token or user name"
    elif not creds.username:
        return "empty user name"
    return ""


def oauth_initial_response(mechanism: str, creds: Credentials, host: str, port: int) -> bytes:
    """The client's first SASL message for OAUTHBEARER (RFC 7628) or XOAUTH2 carrying ``creds``."""
    user, token = creds.username, creds.secret
    if mechanism == "OAUTHBEARER":
        saslname = user.replace("=", "=3D").replace(",", "=2C")   # RFC 5801 gs2 escaping
        return (f"n,a={saslname},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01").encode()
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
