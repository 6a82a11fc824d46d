"""DATA: read the message within ``session.data.limits.size``, prepend ``Received:``, hand it to the
delivery, and answer only once the message is durable (SPEC §6). LMTP answers once per recipient."""
from __future__ import annotations

import email.utils
import secrets
from typing import TYPE_CHECKING, Generator

from ..delivery.base import Envelope, RcptResult
from ..protocol import replies as R
from .requests import Deliver, ReadData

if TYPE_CHECKING:
    from .machine import Session


def data(s: "Session", arg: str) -> Generator:
    """Reached only with recipients and no argument (machine.COMMANDS)."""
    max_size = s.ctx.settings.session.data_max_size.evaluate(s.vars)
    s.reply(R.DATA_GO)
    s.data_started()
    result = yield ReadData(max_size)
    if result is None:
        s.close()
        return
    rcpts = list(s.rcpts)
    if result.too_big:
        s.reset_transaction()
        s.reply(R.DATA_TOO_BIG)
        return
    queue_id = secrets.token_hex(8).upper()
    # A recipient given twice is delivered once (dict: first-seen order); LMTP still answers every RCPT.
    unique = list(dict.fromkeys(r.text for r in rcpts))
    env = Envelope(
        mail_from=s.mail_from.text, rcpt_to=unique,
        data=received_header(s, queue_id) + result.body,
        mail_params=dict(s.mail_params), authenticated_as=s.auth_account, auth_param=s.auth_param,
        helo=s.helo or "", remote_ip=str(s.vars.remote_ip), listener=s.ctx.listener.id,
        tls=s.tls.version if s.tls else None, queue_id=queue_id, per_recipient=s.ctx.lmtp)
    results = yield Deliver(env, s.ctx.settings.next_hop.evaluate(s.vars))
    s.reset_transaction()
    s.messages += 1
    if not isinstance(results, list) or len(results) != len(unique):
        results = [RcptResult.from_reply(R.DELIVERY_FAILED)] * len(unique)
    by_rcpt = dict(zip(unique, results))
    results = [by_rcpt[r.text] for r in rcpts]
    if s.ctx.lmtp:
        for r in results:
            s.reply(r.line())
        return
    failed = next((r for r in results if not r.ok), None)
    s.reply((failed or results[0]).line())


def received_header(s: "Session", queue_id: str) -> bytes:
    """RFC 5321 §4.4 trace header; ``with`` per RFC 3848 (ESMTP, ESMTPA, ESMTPS, ESMTPSA, LMTP...)."""
    if s.ctx.lmtp:
        proto = "LMTP" + ("S" if s.tls else "") + ("A" if s.auth_account else "")
    elif s.esmtp:
        proto = "ESMTP" + ("S" if s.tls else "") + ("A" if s.auth_account else "")
    else:
        proto = "SMTP"
    if "SMTPUTF8" in s.mail_params and proto != "SMTP":
        proto = "UTF8" + proto.removeprefix("E")   # RFC 6531 §3.7.3: UTF8SMTPSA, UTF8LMTP, ...
    ip = s.vars.remote_ip
    iptext = f"IPv6:{ip}" if ip is not None and ip.version == 6 else str(ip)
    helo = _clean(s.helo or "unknown")
    parts = [f"Received: from {helo} ([{iptext}])\r\n\tby {s.ctx.hostname} (smtpgate)"]
    if s.tls:
        parts.append(f" ({s.tls.version} cipher {s.tls.cipher})")
    parts.append(f"\r\n\twith {proto} id {queue_id}")
    if s.auth_account:
        parts.append(f"\r\n\t(authenticated as {_clean(s.auth_account)})")
    if len(s.rcpts) == 1:
        parts.append(f"\r\n\tfor <{_clean(s.rcpts[0].text)}>")
    parts.append(f";\r\n\t{email.utils.formatdate(localtime=False)}\r\n")
    return "".join(parts).encode("utf-8", "replace")


def _clean(text: str) -> str:
    return "".join(ch if " " < ch <= "~" or ord(ch) > 127 else "?" for ch in text)[:255]
