"""``remote/<id>`` with ``protocol = "smtp"`` or ``"lmtp"``: verify credentials with the remote's AUTH.

The client's own credentials go to the remote (RFC 4954): EHLO (LHLO for LMTP), STARTTLS when
``tls.starttls``, then ``AUTH PLAIN <initial response>`` (else ``AUTH LOGIN``); bearer tokens as
``AUTH OAUTHBEARER`` / ``AUTH XOAUTH2`` with the RFC 7628 error acknowledgement. Replies:

* ``235``                                   -> VALID
* ``535`` and other ``5xx`` about the account -> INVALID
* ``5xx`` that refuse *our request* rather than the credentials (500-504 syntax/sequence/mechanism,
  530 "STARTTLS first", 534 "mechanism too weak", 538 "encryption required") -> UNAVAILABLE: they mean
  the remote is configured differently from us, and turning them into 535 would lock out every user
* ``4xx``, garbage, refused, TLS failure, timeout -> UNAVAILABLE

When the remote offers XCLIENT (Postfix, Dovecot), the SMTP client's address goes first (``ADDR``,
``PORT``, and ``DESTADDR``/``DESTPORT`` where offered), so the remote's per-IP auth penalty hits the
client rather than smtpgate -- as IMAP ``ID`` does for ``remote/imap``.

Hand-written rather than aiosmtplib: aiosmtplib has no LHLO (LMTP) and its STARTTLS/AUTH helpers
re-issue EHLO on their own; the dialogue here is a dozen lines either way, and sharing
:class:`~smtpgate.net.stream.LineStream` with the IMAP lookup keeps timeouts, STARTTLS-injection
protection and connection accounting identical.
"""
from __future__ import annotations

import base64
import logging

from smtpgate.config.model import RemoteSettings
from smtpgate.lookup.base import AuthResult, Credentials, Outcome, unavailable
from smtpgate.lookup.remote import RemoteAuthLookup, oauth_initial_response
from smtpgate.net.smtp_reply import read_reply
from smtpgate.net.stream import LineStream

log = logging.getLogger("smtpgate.lookup.remote_smtp")

_NOT_ABOUT_CREDENTIALS = frozenset({500, 501, 502, 503, 504, 530, 534, 538})


def _extensions(texts: list[str]) -> dict[str, list[str]]:
    """EHLO/LHLO keywords (upper case) -> parameters; ``AUTH=PLAIN LOGIN`` (pre-RFC 4954) counts as AUTH."""
    ext: dict[str, list[str]] = {}
    for text in texts[1:]:
        words = text.split()
        if not words:
            continue
        key = words[0].upper()
        params = [w.upper() for w in words[1:]]
        if key.startswith("AUTH="):
            params.insert(0, key[5:])
            key = "AUTH"
        ext.setdefault(key, []).extend(params)
    return ext


def _short(texts: list[str]) -> str:
    return " ".join(texts)[:200]


class SmtpAuthLookup(RemoteAuthLookup):
    """Authenticates with the remote SMTP/LMTP server's AUTH; see the module docstring."""

    protocols = ("smtp", "lmtp")

    def __init__(self, settings: RemoteSettings, *, name: str | None = None, helo_name: str = "localhost"):
        super().__init__(settings, name=name)
        self.helo_name = helo_name.encode("ascii", "replace")   # server.hostname

    async def _command(self, stream: LineStream, line: bytes) -> tuple[int, list[str]]:
        await stream.send(line + b"\r\n")
        return await read_reply(stream)

    async def _hello(self, stream: LineStream) -> dict[str, list[str]] | AuthResult:
        verb = b"LHLO " if self.settings.protocol == "lmtp" else b"EHLO "
        code, texts = await self._command(stream, verb + self.helo_name)
        if code != 250:
            return unavailable(f"{self.where}: {verb.decode().strip()} refused: {code} {_short(texts)}")
        return _extensions(texts)

    async def _converse(self, stream: LineStream, creds: Credentials) -> AuthResult:
        code, texts = await read_reply(stream)
        if code != 220:
            return unavailable(f"{self.where}: remote refused the connection: {code} {_short(texts)}")
        log.debug("%s: connected to %s (tls=%s)", self.name, self.where, stream.tls)
        ext = await self._hello(stream)
        if isinstance(ext, AuthResult):
            return ext

        if self.settings.tls.starttls and not stream.tls:
            if "STARTTLS" not in ext:
                return unavailable(f"{self.where}: remote offers no STARTTLS")
            code, texts = await self._command(stream, b"STARTTLS")
            if code != 220:
                return unavailable(f"{self.where}: STARTTLS refused: {code} {_short(texts)}")
            await self._upgrade(stream)
            log.debug("%s: STARTTLS done", self.name)
            ext = await self._hello(stream)      # capabilities may differ inside TLS (RFC 3207)
            if isinstance(ext, AuthResult):
                return ext

        if "XCLIENT" in ext and creds.origin is not None:
            ext = await self._forward_origin(stream, ext, creds)
            if isinstance(ext, AuthResult):
                return ext

        mechanisms = ext.get("AUTH")
        if mechanisms is None:
            hint = ""
            if "STARTTLS" in ext and not stream.tls:
                hint = " before TLS (set tls.starttls)"
            elif self.settings.protocol == "lmtp":
                hint = " (LMTP servers rarely do)"
            return unavailable(f"{self.where}: remote offers no AUTH{hint}")
        result = await self._login(stream, set(mechanisms), creds)
        log.debug("%s: AUTH answered %s", self.name, result.outcome.value)
        try:
            await stream.send(b"QUIT\r\n")    # polite; the 221 is not worth a round trip
        except OSError:
            pass
        return result

    async def _forward_origin(self, stream: LineStream, ext: dict[str, list[str]],
                              creds: Credentials) -> dict[str, list[str]] | AuthResult:
        """XCLIENT (Postfix's, also Dovecot's submission and LMTP) with the SMTP client's address, as IMAP
        ``ID`` does for ``remote/imap``: the remote's per-IP protections then see the client. Servers
        honour it only from their trusted networks; a refusal changes nothing and the login goes on."""
        o = creds.origin
        assert o is not None
        offered = set(ext["XCLIENT"])
        ip = f"IPV6:{o.client_ip}" if ":" in o.client_ip else o.client_ip
        attrs = [f"{k}={v}" for k, v in (("ADDR", ip), ("PORT", str(o.client_port)),
                                         ("DESTADDR", o.local_ip), ("DESTPORT", str(o.local_port)))
                 if k in offered and all(c.isalnum() or c in ".:" for c in v)]
        if not attrs:
            return ext
        code, texts = await self._command(stream, b"XCLIENT " + " ".join(attrs).encode("ascii"))
        if code != 220:
            log.debug("%s: XCLIENT answered %d %s", self.name, code, _short(texts))
            return ext
        return await self._hello(stream)          # XCLIENT starts a new session (greeting, then EHLO)

    async def _login(self, stream: LineStream, mechanisms: set[str], creds: Credentials) -> AuthResult:
        if creds.kind == "token":
            mech = next((m for m in ("OAUTHBEARER", "XOAUTH2") if m in mechanisms), None)
            if mech is None:
                return unavailable(f"{self.where}: remote offers no OAUTHBEARER/XOAUTH2")
            message = oauth_initial_response(mech, creds, self.settings.address, self.settings.port)
            # A rejected token comes back as a 334 error challenge that the client must acknowledge
            # (OAUTHBEARER: %x01, RFC 7628 §3.2.3; XOAUTH2: an empty line) before the final reply.
            first = b"AUTH " + mech.encode() + b" " + base64.b64encode(message)
            answers = [b"AQ==" if mech == "OAUTHBEARER" else b""]
        elif "PLAIN" in mechanisms:
            mech = "PLAIN"
            plain = b"\0" + creds.username.encode() + b"\0" + creds.secret.encode()
            first, answers = b"AUTH PLAIN " + base64.b64encode(plain), []
        elif "LOGIN" in mechanisms:
            mech = "LOGIN"
            first = b"AUTH LOGIN"
            answers = [base64.b64encode(creds.username.encode()), base64.b64encode(creds.secret.encode())]
        else:
            return unavailable(f"{self.where}: remote offers neither PLAIN nor LOGIN")
        log.debug("%s: AUTH %s", self.name, mech)

        code, texts = await self._command(stream, first)
        while code == 334:
            if not answers:
                # Cancel the exchange so the session ends cleanly; the remote asked for more than the
                # mechanism has to say.
                await self._command(stream, b"*")
                return unavailable(f"{self.where}: unexpected AUTH {mech} challenge")
            code, texts = await self._command(stream, answers.pop(0))
        if code == 235:
            return AuthResult(Outcome.VALID, account=creds.username)
        if 500 <= code < 600 and code not in _NOT_ABOUT_CREDENTIALS:
            return AuthResult(Outcome.INVALID, reason=f"{self.where}: {code} {_short(texts)}")
        return unavailable(f"{self.where}: AUTH {mech} answered {code} {_short(texts)}")
