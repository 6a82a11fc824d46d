"""What the sans-IO session yields to ask the abuse guard (answered by the transport, which holds the
:class:`~smtpgate.abuse.guard.Guard`; session tests answer them with plain values, no store needed).

    gate = yield AuthGate(ip, login, secret, wait)   # before the lookup sees the credentials
    banned = yield AuthDone(gate.ticket, "invalid")  # after the verdict ("success" | "invalid" | "tempfail")
    banned = yield Offence("abuse", ip)              # relay attempt, unknown local recipient
    allowed = yield RateCheck("mail", vars)          # [[session.throttle]] rates keyed on MAIL/RCPT values
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, unsafe_hash=True)
class AuthGate:
    remote_ip: Any                      # the session's remote-ip
    login: str                          # the claimed user name ("" when the mechanism gives none)
    secret: str | None = field(repr=False)  # password/token, only to fingerprint it (never stored or logged)
    wait: float = 0.0                   # session.auth.errors.wait; the answer may grow it


@dataclass(slots=True, unsafe_hash=True)
class GateAnswer:
    verdict: str                        # "ok" (ask the lookup) | "locked" (answer as invalid, no lookup)
                                        # | "banned" (the address is banned: fail and close)
    wait: float                         # the delay before a failure reply (progressive wait)
    ticket: Any = None                  # hand back in AuthDone
    spread: bool = False                # the address failed often lately: spread its wait (wait-spread)


OPEN = GateAnswer("ok", 0.0)           # what a session without a guard behaves as


@dataclass(slots=True, unsafe_hash=True)
class AuthDone:
    ticket: Any
    outcome: str                        # "success" | "invalid" | "tempfail"   (answer: bool, banned now)


@dataclass(slots=True, unsafe_hash=True)
class Offence:
    kind: str                           # "abuse" | "loiter" | "scan"
    remote_ip: Any                      # answer: bool, banned now (close the session)


@dataclass(slots=True, unsafe_hash=True)
class RateCheck:
    stage: str                          # "mail" | "rcpt"
    vars: Any                           # the session's if-block variables (answer: bool, allowed)
