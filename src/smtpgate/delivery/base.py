"""What the DATA stage hands over, and what it gets back.

A delivery answers with one :class:`RcptResult` per recipient (LMTP reports each; SMTP listeners send
the first non-success, or success when all succeeded -- the whole message is accepted or not).
A ``250`` reaches the client only when the message is durable: fsynced in the spool, or accepted by the
next hop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Envelope:
    mail_from: str                       # "" for the null path
    rcpt_to: list[str]
    data: bytes                          # Received header + message, CRLF line endings, unstuffed
    mail_params: dict[str, str | None] = field(default_factory=dict)
    authenticated_as: str | None = None
    auth_param: str | None = None        # MAIL FROM AUTH= value kept (RFC 4954 §5), "<>" if untrusted
    helo: str = ""
    remote_ip: str = ""
    listener: str = ""
    tls: str | None = None               # e.g. "TLSv1.3"
    queue_id: str = ""
    received_at: float = field(default_factory=time.time)
    # True when the client hears one reply per recipient (an LMTP listener). Otherwise the message is one
    # unit for the client, and a delivery should not accept it for some recipients while refusing others.
    per_recipient: bool = False


@dataclass(frozen=True, slots=True)
class RcptResult:
    code: int
    text: str                            # "2.0.0 Ok: queued as ..." (enhanced code first)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @classmethod
    def from_reply(cls, reply: bytes) -> "RcptResult":
        """From a pre-encoded reply of ``protocol.replies`` (``b"451 4.3.0 ...\\r\\n"``)."""
        code, _, text = reply.decode().rstrip("\r\n").partition(" ")
        return cls(int(code), text)

    def line(self) -> bytes:
        # The text may come from an application or a next hop: it must not end the reply early.
        text = self.text.replace("\r", " ").replace("\n", " ")
        return f"{self.code} {text}\r\n".encode("utf-8", "replace")


class Delivery:
    """Interface: ``await deliver(envelope) -> list[RcptResult]`` (one per envelope recipient)."""

    async def deliver(self, envelope: Envelope) -> list[RcptResult]:
        raise NotImplementedError

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
