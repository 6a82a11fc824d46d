"""Next hop: hand each message to ``remote/<id>`` (protocol ``lmtp`` or ``smtp``) within the session.

The client's ``250`` is sent only after the next hop accepted the message; a next hop that is down,
slow or refuses temporarily gives ``451 4.4.1`` / the remote's own 4xx, so the client keeps the message
and retries -- nothing is acknowledged that is not stored somewhere.

A message is all-or-nothing unless both sides speak per recipient: recipients are checked with RCPT
first and, unless every one is accepted, the transaction is reset and no DATA is sent -- a client on an
SMTP listener hears one reply for the whole message, so a partial delivery behind a failure reply would
be duplicated when it resends. Only an LMTP next hop serving an LMTP listener (``Envelope.per_recipient``)
passes on the accepted recipients and reports each refusal separately; after DATA an LMTP next hop
answers per recipient (RFC 2033 §4.2) and those results are passed back as they are.

Hand-written on top of the shared :class:`~smtpgate.net.stream.LineStream` rather than
aiosmtplib: aiosmtplib has no LHLO and no per-recipient DATA replies, which LMTP needs, and one dialogue
for both keeps timeouts and STARTTLS handling identical to the lookups'.
"""
from __future__ import annotations

import asyncio
import logging
import re

from ..config.model import RemoteSettings
from ..net.errors import describe_error
from ..net.smtp_reply import read_reply
from ..net.stream import LineStream, RemoteProtocolError
from ..net.tls import client_context
from ..protocol import replies as R
from .base import Delivery, Envelope, RcptResult

log = logging.getLogger("smtpgate.nexthop")

_LINE_START_DOT = re.compile(rb"(?m)^\.")
_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class NextHop(Delivery):
    def __init__(self, remote: RemoteSettings, hostname: str):
        self.remote = remote
        self.hostname = hostname
        self.lmtp = remote.protocol == "lmtp"
        self._slots = asyncio.Semaphore(remote.concurrency)
        self._tls = client_context(remote.tls) if (remote.tls.implicit or remote.tls.starttls) else None

    async def deliver(self, envelope: Envelope) -> list[RcptResult]:
        n = len(envelope.rcpt_to)
        try:
            async with self._slots:
                async with asyncio.timeout(self.remote.timeout + len(envelope.data) / 1_000_000):
                    return await self._transaction(envelope)
        except (TimeoutError, OSError, RemoteProtocolError, Exception) as exc:  # noqa: BLE001
            reason = "timeout" if isinstance(exc, TimeoutError) else describe_error(exc)
            log.warning("next hop remote/%s failed for %s: %s", self.remote.id, envelope.queue_id, reason)
            return [RcptResult.from_reply(R.NEXTHOP_FAILED)] * n

    async def _transaction(self, env: Envelope) -> list[RcptResult]:
        r = self.remote
        stream = await LineStream.connect(r.address, r.port, self._tls if r.tls.implicit else None)
        try:
            code, _ = await read_reply(stream)
            if code != 220:
                return self._all(env, 451, "4.4.1 Next hop refused the connection")
            hello = b"LHLO " if self.lmtp else b"EHLO "
            await stream.send(hello + self.hostname.encode() + b"\r\n")
            code, texts = await read_reply(stream)
            if code != 250:
                return self._all(env, 451, "4.4.1 Next hop did not accept our greeting")
            if r.tls.starttls:
                await stream.send(b"STARTTLS\r\n")
                code, _ = await read_reply(stream)
                if code != 220:
                    return self._all(env, 451, "4.4.1 Next hop refused STARTTLS")
                await stream.start_tls(self._tls)
                await stream.send(hello + self.hostname.encode() + b"\r\n")
                code, texts = await read_reply(stream)
                if code != 250:
                    return self._all(env, 451, "4.4.1 Next hop did not accept our greeting")
            exts = {t.split(" ", 1)[0].upper() for t in texts[1:]}
            mail = f"MAIL FROM:<{env.mail_from}>"
            if "8BITMIME" in exts and (env.mail_params.get("BODY") or "").upper() == "8BITMIME":
                mail += " BODY=8BITMIME"
            if "SMTPUTF8" in env.mail_params:
                if "SMTPUTF8" in exts:
                    mail += " SMTPUTF8"
                elif _needs_smtputf8(env):
                    # RFC 6531 §3.2: never passed to a server without SMTPUTF8 (an all-ASCII one goes as is).
                    return self._all(env, 550, "5.6.7 Next hop does not support SMTPUTF8")
            if "AUTH" in exts and env.auth_param:
                from ..protocol.commands import xtext_encode
                mail += f" AUTH={xtext_encode(env.auth_param) if env.auth_param != '<>' else '<>'}"
            await stream.send(mail.encode() + b"\r\n")
            code, texts = await read_reply(stream)
            if code != 250:
                return self._all(env, _code(code), _text(texts, code))
            results: list[RcptResult | None] = []
            for rcpt in env.rcpt_to:
                await stream.send(f"RCPT TO:<{rcpt}>\r\n".encode())
                code, texts = await read_reply(stream)
                results.append(None if code in (250, 251) else RcptResult(_code(code), _text(texts, code)))
            accepted = [i for i, res in enumerate(results) if res is None]
            partial_ok = self.lmtp and env.per_recipient
            if not accepted or (not partial_ok and len(accepted) != len(results)):
                await stream.send(b"RSET\r\n")
                await read_reply(stream)
                # all-or-nothing: the accepted ones are refused too, temporarily if any refusal was. A client
                # hearing one reply gets the refusal that decided it; one hearing each recipient is told why
                # the accepted ones were not sent.
                refused = [res for res in results if res is not None]
                tmp = any(400 <= res.code < 500 for res in refused)
                if env.per_recipient:
                    collateral = RcptResult(451 if tmp else 550,
                                            "4.5.0 Message not sent: another recipient was refused" if tmp
                                            else "5.5.0 Message not sent: another recipient was refused")
                else:
                    collateral = next(res for res in refused if (400 <= res.code < 500) == tmp)
                return [res or collateral for res in results]
            await stream.send(b"DATA\r\n")
            code, texts = await read_reply(stream)
            if code != 354:
                return self._all(env, _code(code), _text(texts, code))
            await stream.send(_stuff(env.data) + b".\r\n")
            if self.lmtp:
                for i in accepted:
                    code, texts = await read_reply(stream)
                    results[i] = RcptResult(_code(code), _text(texts, code))
            else:
                code, texts = await read_reply(stream)
                results = [RcptResult(_code(code), _text(texts, code))] * len(results)
            try:
                await stream.send(b"QUIT\r\n")
                await asyncio.wait_for(read_reply(stream), 1.0)
            except (TimeoutError, OSError, RemoteProtocolError):
                pass
            return list(results)  # type: ignore[arg-type]
        finally:
            await stream.close()

    @staticmethod
    def _all(env: Envelope, code: int, text: str) -> list[RcptResult]:
        if code < 400:
            code = 451
        return [RcptResult(code, text)] * len(env.rcpt_to)


def _code(code: int) -> int:
    """A next-hop reply code as our client may hear it. The next hop closing on us (421) is not our
    client's connection closing: a plain temporary failure, like anything outside 2xx/4xx/5xx."""
    if code == 421 or not 200 <= code < 600 or 300 <= code < 400:
        return 451
    return code


def _text(texts: list[str], code: int = 451) -> str:
    code = _code(code)
    text = " ".join(t.strip() for t in texts)[:400]
    if re.match(r"^[245]\.\d{1,3}\.\d{1,3} ", text):
        return text
    return f"{code // 100}.0.0 Next hop said: {text}"


def _needs_smtputf8(env: Envelope) -> bool:
    """Non-ASCII in an envelope address or in the header section (RFC 6532 headers)."""
    if not (env.mail_from.isascii() and all(r.isascii() for r in env.rcpt_to)):
        return True
    end = env.data.find(b"\r\n\r\n")
    return not env.data[:end if end >= 0 else len(env.data)].isascii()


def _stuff(data: bytes) -> bytes:
    """CRLF line endings and dot-stuffing (RFC 5321 §4.5.2); always ends with CRLF."""
    # Bare CR / bare LF become CRLF: a next hop that took "\n.\n" for end of data could otherwise be
    # smuggled a second message (we never end DATA on them ourselves).
    data = _BARE_EOL.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LINE_START_DOT.sub(b"..", data)
