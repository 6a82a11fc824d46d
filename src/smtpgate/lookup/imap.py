"""``remote/<id>`` with ``protocol = "imap"``: verify credentials by logging in to an IMAP server.

When the server offers ``ID`` (RFC 2971), the SMTP client's address and port and the local address and
port it reached go first (``x-originating-ip``/``-port``, ``x-connected-ip``/``-port``): Dovecot honours
them from ``login_trusted_networks`` so its per-IP auth penalty hits the attacker, not every user.

The client's own credentials are presented to the remote (RFC 9051/3501): ``AUTHENTICATE PLAIN`` (with
SASL-IR when offered, RFC 4959), else the ``LOGIN`` command; bearer tokens go out as ``AUTHENTICATE
OAUTHBEARER`` (RFC 7628) or ``XOAUTH2``, whichever the server offers. The tagged reply decides:

* ``OK``                        -> VALID (account = the user name the client gave)
* ``NO`` / ``BAD``              -> INVALID
* ``NO [UNAVAILABLE]`` and the other RFC 5530 codes that say "not now" or "not like this" rather than
  "wrong credentials" (SERVERBUG, INUSE, LIMIT, PRIVACYREQUIRED) -> UNAVAILABLE, so a sick remote never
  turns into failed logins that count toward ``errors.total``
* anything else (refused, TLS failure, BYE, garbage, timeout) -> UNAVAILABLE

A small hand-written client rather than ``imaplib``: imaplib blocks (it would need a thread per login)
and we need only greeting, CAPABILITY, STARTTLS, one login command and LOGOUT.
"""
from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass, field
from typing import Callable

from smtpgate.lookup.base import AuthResult, Credentials, Outcome, unavailable
from smtpgate.lookup.remote import RemoteAuthLookup, oauth_initial_response
from smtpgate.net.stream import LineStream, RemoteProtocolError

log = logging.getLogger("smtpgate.lookup.imap")

# Codes after NO that mean the remote could not decide, not that the credentials are wrong.
_UNAVAILABLE_CODES = frozenset({"UNAVAILABLE", "SERVERBUG", "INUSE", "LIMIT", "PRIVACYREQUIRED"})
_MAX_LITERAL = 64 * 1024          # servers never need more for the responses we read
_MAX_UNTAGGED = 1000              # untagged lines tolerated while waiting for one tagged reply
_LITERAL_AT_END = re.compile(rb"\{(\d{1,9})\}$")
_QUOTABLE = re.compile(r"[\x01-\x09\x0b\x0c\x0e-\x7f]*")   # 7-bit, no CR/LF/NUL (RFC 3501 QUOTED-CHAR)


@dataclass(slots=True)
class _Tagged:
    status: str                   # OK | NO | BAD
    code: str                     # first atom of the response code ("" when none), upper case
    text: str
    untagged: list[bytes] = field(default_factory=list)


def _parse_status(rest: bytes) -> tuple[str, str, str]:
    """``OK [CODE args] text`` -> ("OK", "CODE", text)."""
    status, _, tail = rest.partition(b" ")
    code = b""
    if tail.startswith(b"["):
        inner, _, tail = tail[1:].partition(b"]")
        code = inner.split(b" ", 1)[0]
        tail = tail.lstrip()
    return (status.upper().decode("ascii", "replace"), code.upper().decode("ascii", "replace"),
            tail.decode("utf-8", "replace")[:200])


def _capabilities(words: bytes) -> frozenset[str]:
    return frozenset(w.upper() for w in words.decode("ascii", "replace").split())


def _caps_from_untagged(lines: list[bytes]) -> frozenset[str] | None:
    for line in lines:
        if line[:13].upper() == b"* CAPABILITY ":
            return _capabilities(line[13:])
    return None


def _caps_from_code(rest: bytes) -> frozenset[str] | None:
    """Capabilities carried in ``[CAPABILITY ...]`` (greeting, or the OK after STARTTLS/login)."""
    m = re.match(rb"(?i)\w+ \[CAPABILITY ([^\]]*)\]", rest)
    return _capabilities(m.group(1)) if m else None


class _Imap:
    """Command/response framing for one connection (tags, literals, continuations)."""

    def __init__(self, stream: LineStream) -> None:
        self.stream = stream
        self._n = 0
        self.bye = False

    async def response_line(self) -> bytes:
        """One logical response line, with any server literals inlined."""
        line = await self.stream.read_line()
        parts = [line]
        while (m := _LITERAL_AT_END.search(parts[-1])) is not None:
            size = int(m.group(1))
            if size > _MAX_LITERAL:
                raise RemoteProtocolError("remote sent an over-long literal")
            parts.append(await self.stream.read_exactly(size))
            parts.append(await self.stream.read_line())
        return b"".join(parts)

    async def command(self, line: bytes, on_continuation: Callable[[bytes], bytes] | None = None) -> _Tagged:
        """Send ``<tag> line`` and read until its tagged reply. ``on_continuation`` receives the text
        of each ``+`` request and returns the next line to send (without CRLF); a continuation nobody
        asked for is a protocol error."""
        self._n += 1
        tag = b"S%d" % self._n
        await self.stream.send(tag + b" " + line + b"\r\n")
        untagged: list[bytes] = []
        while True:
            resp = await self.response_line()
            if resp.startswith(tag + b" "):
                status, code, text = _parse_status(resp[len(tag) + 1:])
                if status not in ("OK", "NO", "BAD"):
                    raise RemoteProtocolError("malformed tagged response")
                return _Tagged(status, code, text, untagged)
            if resp.startswith(b"+"):
                if on_continuation is None:
                    raise RemoteProtocolError("unexpected continuation request")
                await self.stream.send(on_continuation(resp[2:] if resp.startswith(b"+ ") else resp[1:])
                                       + b"\r\n")
                continue
            if resp.startswith(b"* "):
                if resp[2:6].upper() == b"BYE " or resp[2:].upper() == b"BYE":
                    self.bye = True
                if len(untagged) >= _MAX_UNTAGGED:
                    raise RemoteProtocolError("too many untagged responses")
                untagged.append(resp)
                continue
            raise RemoteProtocolError("unexpected response line")


def _astring_segments(values: list[bytes], nonsync_ok: Callable[[int], bool]) -> list[bytes]:
    """Render ``values`` as IMAP astrings joined by spaces, split into the lines to send: a value that
    cannot be quoted goes out as a literal; a synchronising literal ends the current line (the server's
    ``+`` must come before its bytes)."""
    segments: list[bytes] = []
    current = b""
    for i, value in enumerate(values):
        sep = b" " if i else b""
        text = value.decode("utf-8")
        if _QUOTABLE.fullmatch(text):
            current += sep + b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        elif nonsync_ok(len(value)):
            current += sep + b"{%d+}\r\n" % len(value) + value
        else:
            segments.append(current + sep + b"{%d}" % len(value))
            current = value
    segments.append(current)
    return segments


class ImapLookup(RemoteAuthLookup):
    """Authenticates by logging in to the remote IMAP server; see the module docstring."""

    protocols = ("imap",)

    async def _converse(self, stream: LineStream, creds: Credentials) -> AuthResult:
        imap = _Imap(stream)
        greeting = await imap.response_line()
        kind = greeting[:8].upper()
        if kind.startswith(b"* BYE"):
            return unavailable(f"{self.where}: remote refused the connection: "
                               f"{greeting[6:].decode('utf-8', 'replace')[:200]}")
        if kind.startswith(b"* PREAUTH"):
            return unavailable(f"{self.where}: remote pre-authenticates connections; it cannot verify logins")
        if not kind.startswith(b"* OK"):
            raise RemoteProtocolError("unexpected greeting")
        caps = _caps_from_code(greeting[2:])
        log.debug("%s: connected to %s (tls=%s)", self.name, self.where, stream.tls)

        if self.settings.tls.starttls and not stream.tls:
            if caps is None:
                caps = await self._capability(imap)
            if "STARTTLS" not in caps:
                return unavailable(f"{self.where}: remote offers no STARTTLS")
            reply = await imap.command(b"STARTTLS")
            if reply.status != "OK":
                return unavailable(f"{self.where}: STARTTLS refused: {reply.text}")
            await self._upgrade(stream)
            log.debug("%s: STARTTLS done", self.name)
            caps = None                           # pre-TLS capabilities must be forgotten (RFC 3501)
        if caps is None:
            caps = await self._capability(imap)
        if "ID" in caps and creds.origin is not None:
            await self._forward_origin(imap, creds)

        if creds.kind == "token":
            reply = await self._login_token(imap, caps, creds)
        else:
            reply = await self._login_password(imap, caps, creds)
        if isinstance(reply, AuthResult):
            result = reply
        elif reply.status == "OK":
            result = AuthResult(Outcome.VALID, account=creds.username)
        elif reply.status == "NO" and reply.code in _UNAVAILABLE_CODES:
            result = unavailable(f"{self.where}: remote answered NO [{reply.code}] {reply.text}")
        elif imap.bye:
            result = unavailable(f"{self.where}: remote closed the session during login")
        else:
            result = AuthResult(Outcome.INVALID, reason=f"{self.where}: {reply.status} {reply.text}")
        log.debug("%s: login answered %s", self.name, result.outcome.value)

        if not imap.bye:
            try:
                await stream.send(b"L LOGOUT\r\n")   # polite; the reply is not worth a round trip
            except OSError:
                pass
        return result

    async def _forward_origin(self, imap: _Imap, creds: Credentials) -> None:
        """RFC 2971 ``ID`` with the fields Dovecot reads from a trusted peer (``login_trusted_networks``):
        its auth penalty, logs and ``%{rip}`` then see the SMTP client, not smtpgate, so one attacker's
        bad passwords do not slow every other user's login. An untrusted server ignores them; the answer
        does not matter either way."""
        o = creds.origin
        assert o is not None
        fields = (("x-originating-ip", o.client_ip), ("x-originating-port", str(o.client_port)),
                  ("x-connected-ip", o.local_ip), ("x-connected-port", str(o.local_port)))
        body = " ".join(f'"{k}" "{v}"' for k, v in fields if _QUOTABLE.fullmatch(v) and '"' not in v
                        and "\\" not in v)
        log.debug("%s: ID with the client's address", self.name)
        await imap.command(b"ID (" + body.encode("ascii") + b")")

    async def _capability(self, imap: _Imap) -> frozenset[str]:
        reply = await imap.command(b"CAPABILITY")
        caps = _caps_from_untagged(reply.untagged)
        if reply.status != "OK" or caps is None:
            raise RemoteProtocolError("CAPABILITY failed")
        return caps

    async def _login_password(self, imap: _Imap, caps: frozenset[str], creds: Credentials) -> _Tagged | AuthResult:
        user, password = creds.username.encode(), creds.secret.encode()
        if "AUTH=PLAIN" in caps:
            log.debug("%s: AUTHENTICATE PLAIN", self.name)
            message = base64.b64encode(b"\0" + user + b"\0" + password)
            if "SASL-IR" in caps:
                return await imap.command(b"AUTHENTICATE PLAIN " + message)
            return await imap.command(b"AUTHENTICATE PLAIN", _one_shot(message))
        if "LOGINDISABLED" in caps:
            return unavailable(f"{self.where}: remote refuses LOGIN on this connection (LOGINDISABLED); "
                               "use tls.implicit or tls.starttls")
        log.debug("%s: LOGIN", self.name)
        nonsync = ("LITERAL+" in caps, "LITERAL-" in caps)
        segments = _astring_segments([user, password],
                                     lambda n: nonsync[0] or (nonsync[1] and n <= 4096))
        rest = iter(segments[1:])

        def next_segment(_challenge: bytes) -> bytes:
            try:
                return next(rest)
            except StopIteration:
                raise RemoteProtocolError("unexpected continuation request") from None

        return await imap.command(b"LOGIN " + segments[0], next_segment if len(segments) > 1 else None)

    async def _login_token(self, imap: _Imap, caps: frozenset[str], creds: Credentials) -> _Tagged | AuthResult:
        mech = next((m for m in ("OAUTHBEARER", "XOAUTH2") if f"AUTH={m}" in caps), None)
        if mech is None:
            return unavailable(f"{self.where}: remote offers no OAUTHBEARER/XOAUTH2")
        log.debug("%s: AUTHENTICATE %s", self.name, mech)
        message = base64.b64encode(oauth_initial_response(mech, creds, self.settings.address,
                                                          self.settings.port))
        # After a rejected token the server sends its error as a challenge; the client must answer
        # (OAUTHBEARER: %x01, RFC 7628 §3.2.3; XOAUTH2: an empty line) before the tagged NO arrives.
        error_ack = b"AQ==" if mech == "OAUTHBEARER" else b""
        if "SASL-IR" in caps:
            return await imap.command(b"AUTHENTICATE " + mech.encode() + b" " + message, _one_shot(error_ack))
        return await imap.command(b"AUTHENTICATE " + mech.encode(), _one_shot(message, error_ack))


def _one_shot(*answers: bytes) -> Callable[[bytes], bytes]:
    """Continuation handler answering each ``+`` with the next of ``answers``, then giving up."""
    pending = list(answers)

    def answer(_challenge: bytes) -> bytes:
        if not pending:
            raise RemoteProtocolError("unexpected continuation request")
        return pending.pop(0)

    return answer

