"""The session's side of abuse resistance: the questions the stages ask the guard (``abuse/guard.py``),
as generators yielding the requests of ``abuse/requests.py``. Each helper is a no-op (yields nothing)
when its feature is off, so a session without throttles or auto-ban never pays for them.

    auth.py  -> :class:`Attempt` (before the lookup; the verdict afterwards: a request for a failure, a
                notice in ``Session.notices`` for a success or tempfail)
    mail.py  -> :func:`rate` ("mail")          rcpt.py -> :func:`rate` ("rcpt"), :func:`offence` ("abuse")

An answer that is not what the guard promises (None when the transport failed) counts as "no
objection": the guard's own failure never refuses a client.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Generator

from ..abuse import replies as AR
from ..abuse.requests import AuthDone, AuthGate, GateAnswer, Offence, RateCheck

if TYPE_CHECKING:
    from .machine import Session


class Attempt:
    """One AUTH attempt as the guard sees it: asked before the lookup sees the credentials (it may
    refuse: the address is banned or the login locked; it tells the wait), told the verdict once."""
    __slots__ = ("gate", "settled", "banned")

    def __init__(self) -> None:
        self.gate: GateAnswer | None = None
        self.settled = False
        self.banned = False

    def ask(self, s: "Session", login: str, secret: str | None) -> Generator:
        a = s.ctx.settings.abuse
        if a is None or not a.counts_auth or self.gate is not None:
            return
        answer = yield AuthGate(s.remote_text, login, secret, s.params.auth_errors_wait)
        if isinstance(answer, GateAnswer):
            self.gate = answer
            self.banned = answer.verdict == "banned"

    @property
    def refused(self) -> str | None:
        """"banned" / "locked" when the lookup must not be asked (the attempt fails as invalid)."""
        g = self.gate
        return g.verdict if g is not None and g.verdict != "ok" else None

    def wait(self, s: "Session") -> float:
        """The delay before this failure's reply: ``errors.wait`` (grown by the guard with ``wait-growth``),
        spread at random by ``wait-spread`` once the address has failed often lately (the guard says so)."""
        g = self.gate
        if g is None:
            return s.params.auth_errors_wait
        if g.verdict == "banned":
            return 0.0                                  # a banned client is closed at once
        if g.spread:
            return g.wait * (1.0 + s.params.auth_errors_wait_spread * s.ctx.random())
        return g.wait

    def settle(self, s: "Session", outcome: str) -> Generator:
        """``outcome``: "success" | "invalid" | "tempfail". Only a failure can earn a ban, so only a failure
        waits for the guard's answer; a success or tempfail is a notice the transport hands on after this
        step (``Session.notices``): the client's reply does not wait for the store."""
        if self.gate is None or self.settled or self.gate.ticket is None:
            return
        self.settled = True
        if outcome != "invalid":
            s.notices.append(AuthDone(self.gate.ticket, outcome))
            return
        banned = yield AuthDone(self.gate.ticket, outcome)
        self.banned = self.banned or banned is True

    def close_if_banned(self, s: "Session") -> bool:
        if self.banned:
            s.close(AR.BANNED)
        return self.banned


def rate(s: "Session", stage: str) -> Generator:
    """[[session.throttle]] rates keyed on MAIL/RCPT values; returns False (after replying 451 4.4.5)
    when one is exceeded."""
    a = s.ctx.settings.abuse
    if a is None or not (a.has_mail_rates if stage == "mail" else a.has_rcpt_rates):
        return True
    allowed = yield RateCheck(stage, s.vars)
    if allowed is False:
        s.reply(AR.RATE_LIMITED)
        return False
    return True


def offence(s: "Session", kind: str) -> Generator:
    """Count a relay attempt or an unknown local recipient (``server.auto-ban.abuse.*``); a client that
    earns a ban with it is disconnected."""
    a = s.ctx.settings.abuse
    if a is None or not a.counts_abuse or s.ctx.lmtp:
        return          # an LMTP client is the local MTA handing over mail: its unknown recipients are not abuse
    banned = yield Offence(kind, s.vars.remote_ip)
    if banned is True:
        s.close(AR.BANNED)
