"""Commands with no stage of their own: RSET, NOOP, QUIT, HELP, VRFY/EXPN, BDAT (refused)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import replies as R

if TYPE_CHECKING:
    from .machine import Session


def rset(s: "Session", arg: str) -> None:
    s.reset_transaction()
    s.reply(R.RSET)


def noop(s: "Session", arg: str) -> None:
    s.reply(R.NOOP)


def quit(s: "Session", arg: str) -> None:
    s.close(R.QUIT)


def help(s: "Session", arg: str) -> None:
    s.reply(R.HELP)


def vrfy(s: "Session", arg: str) -> None:
    # RFC 5321 §7.3: answering VRFY/EXPN truthfully helps address harvesting; 252 is the polite no.
    s.reply(R.VRFY)


def bdat(s: "Session", arg: str) -> None:
    # CHUNKING is not advertised; reached only after the authentication check (530 comes first).
    s.reply(R.NOT_IMPLEMENTED)
