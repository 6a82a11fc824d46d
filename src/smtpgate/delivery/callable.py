"""Hand-off to the embedding application: an async callable decides the reply for each message.

    async def handle(envelope: Envelope) -> list[RcptResult] | RcptResult | None: ...

``None`` or a single result applies to every recipient. An exception, or an answer that is not one
result per recipient, becomes a ``451`` (nothing is acknowledged that the application did not accept).
``envelope.per_recipient`` says whether the client hears each result (LMTP) or only the first refusal.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

from ..protocol import replies as R
from .base import Delivery, Envelope, RcptResult

Handler = Callable[[Envelope], Awaitable["list[RcptResult] | RcptResult | None"]]


class CallableDelivery(Delivery):
    def __init__(self, handler: Handler):
        self.handler = handler

    async def deliver(self, envelope: Envelope) -> list[RcptResult]:
        try:
            result = await self.handler(envelope)
        except Exception:  # noqa: BLE001
            logging.getLogger("smtpgate.delivery").exception("application delivery handler failed")
            return [RcptResult.from_reply(R.DELIVERY_FAILED)] * len(envelope.rcpt_to)
        if result is None:
            result = RcptResult(250, f"2.0.0 Ok: accepted as {envelope.queue_id}")
        if isinstance(result, RcptResult):
            result = [result] * len(envelope.rcpt_to)
        try:
            results = list(result)
        except TypeError:
            results = []
        if len(results) != len(envelope.rcpt_to) or not all(
                isinstance(r, RcptResult) and 200 <= r.code < 600 for r in results):
            logging.getLogger("smtpgate.delivery").error(
                "application delivery handler returned %s for %d recipients; answering 451",
                type(result).__name__, len(envelope.rcpt_to))
            return [RcptResult.from_reply(R.DELIVERY_FAILED)] * len(envelope.rcpt_to)
        return results
