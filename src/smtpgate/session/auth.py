"""The AUTH stage (RFC 4954; SPEC §4): advertisement, the SASL dialogue, ``session.auth.*``.

Where each key acts:
  ``session.auth.mechanisms``       -> :func:`configured`   (evaluated at every EHLO and AUTH)
  ``session.auth.allow-plain-text`` -> :func:`_usable`
  ``session.auth.lookup``           -> ``params.auth_lookup``  (connect stage, evaluated at session start)
  ``session.auth.require``          -> ``params.auth_require`` (machine.COMMANDS ``requires_auth``: 530 5.7.0)
  ``session.auth.errors.total``     -> :func:`_reply_failure`  (disconnect with 421 once reached)
  ``session.auth.errors.wait``      -> :func:`_count_failure`  (the awaited ``Sleep`` before every counted
                                       failure reply -- the one place it is applied)

Order of checks for ``AUTH <mech> [ir]`` (first that applies wins): AUTH disabled (503) -> already
authenticated (503) [:func:`refusal`, the table's guard] -> inside a mail transaction (503) -> no EHLO yet
(503) [the table's states, then :func:`auth` for HELO-not-EHLO] -> missing mechanism (501)
-> unknown / not offered / lookup can't verify it (504) -> cleartext-sensitive without TLS (538) ->
initial response to a server-first mechanism (501 5.7.0) -> the exchange itself. "Not usable" (504) is
decided before the TLS rule (538): 538 promises that the mechanism would work over TLS.
"""
from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Generator

from .. import sasl
from ..lookup.base import AuthResult, Credentials, Origin, Outcome
from ..protocol import replies as R
from ..protocol.reader import TOO_LONG
from ..sasl.base import Challenge, Failure, NeedSecret, Success, Verify
from .abuse import Attempt
from .requests import UNAVAILABLE, Authenticate, Compute, GetSecret, ReadLine, Sleep

if TYPE_CHECKING:
    from .machine import Session


def configured(s: "Session") -> tuple[str, ...]:
    return s.ctx.settings.session.auth_mechanisms.evaluate(s.vars)


def _usable(s: "Session", name: str, allow_plain: bool | None = None) -> bool:
    """May ``name`` run in this session now? (lookup capability, TLS rule, channel binding)."""
    lookup = s.params.auth_lookup
    if lookup is None or sasl.required_capability(name) not in lookup.capabilities:
        return False
    if name.endswith("-PLUS") and (s.tls is None or s.tls.channel_binding is None):
        return False
    if s.tls is None and sasl.cleartext_sensitive(name):
        if allow_plain is None:
            allow_plain = s.ctx.settings.session.auth_allow_plain_text.evaluate(s.vars)
        return bool(allow_plain)
    return True


def advertised(s: "Session") -> list[str]:
    if s.auth_account is not None or s.params.auth_lookup is None:
        return []
    allow_plain = s.ctx.settings.session.auth_allow_plain_text.evaluate(s.vars)
    return [m for m in configured(s) if _usable(s, m, allow_plain)]


def refusal(s: "Session") -> bytes | None:
    """What refuses AUTH before the session's state is even looked at (SPEC §4.2 order)."""
    if s.params.auth_lookup is None or not configured(s):
        return R.AUTH_DISABLED
    if s.auth_account is not None:
        return R.AUTH_ALREADY
    return None


def auth(s: "Session", arg: str) -> Generator | None:
    """Reached in the GREETED state, not yet authenticated, with AUTH enabled (machine.COMMANDS)."""
    if not s.esmtp:
        s.reply(R.BAD_SEQUENCE_EHLO)        # HELO, not EHLO: the client never saw AUTH offered
        return None
    parts = arg.split(" ") if arg else []
    if not parts or len(parts) > 2 or not parts[0]:
        s.reply(R.AUTH_SYNTAX)
        return None
    mechs = configured(s)
    name = parts[0].upper()
    # 504 for what could never run here (unknown, not configured, the lookup cannot verify it, -PLUS
    # without channel binding) before 538, which tells the client that TLS would make it work.
    if name not in mechs or name not in sasl.MECHANISM_NAMES or not _usable(s, name, allow_plain=True):
        s.reply(R.AUTH_UNSUPPORTED)
        return None
    if s.tls is None and sasl.cleartext_sensitive(name) and \
            not s.ctx.settings.session.auth_allow_plain_text.evaluate(s.vars):
        s.reply(R.AUTH_ENCRYPTION_REQUIRED)
        return None
    initial = parts[1] if len(parts) == 2 else None
    mech = sasl.create(name, hostname=s.ctx.hostname,
                       channel_binding=s.tls.channel_binding if s.tls is not None else None,
                       plus_advertised=f"{name}-PLUS" in mechs and _usable(s, f"{name}-PLUS"),
                       scram_decoy=getattr(s.params.auth_lookup, "scram_decoy", None))
    if initial is not None and mech.server_first:
        s.reply(R.AUTH_NO_INITIAL)
        return None
    return _exchange(s, name, mech, initial)


def too_long(s: "Session", mechanism: str = "-") -> Generator | None:
    """An ``AUTH`` command line longer than the authentication buffer (its initial response too big):
    RFC 4954 §4 fails the AUTH command with 500 5.5.6, a counted failure (SPEC §4.2). For the dispatcher,
    which alone can tell that the discarded line began with AUTH; ``mechanism`` is for the log line."""
    if s.params.auth_lookup is None or not configured(s) or s.auth_account is not None or s.mail_from is not None:
        s.reply(R.LINE_TOO_LONG)          # no AUTH exchange could have started: an ordinary long line
        return None
    return _failed(s, _Verdict(R.AUTH_LINE_TOO_LONG, mechanism.upper()[:20] or "-", "", "malformed"))


def _decode(text: bytes) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class _Verdict:
    """How an exchange failed: the reply, and what the log line says. ``counted``: the failure was
    already counted (and waited for) before the client heard of it -- the OAuth error challenge."""
    __slots__ = ("reply", "mechanism", "user", "result", "counted", "reason")

    def __init__(self, reply: bytes, mechanism: str, user: str, result: str, counted: bool = False,
                 reason: str = ""):
        self.reply, self.mechanism, self.user, self.result, self.counted = reply, mechanism, user, result, counted
        self.reason = reason        # for the log line: "locked" / "banned" (the guard refused the attempt)


def _exchange(s: "Session", name: str, mech, initial: str | None) -> Generator:
    s.auth_started()
    att = Attempt()     # cross-session counting, bans, login locks, progressive wait (session/abuse.py)
    try:
        verdict = yield from _dialogue(s, name, mech, initial, att)
        if verdict is not None:
            yield from _failed(s, verdict, att)
    finally:
        s.auth_ended()


def _failed(s: "Session", verdict: _Verdict, att: Attempt | None = None) -> Generator:
    if not verdict.counted:
        yield from _count_failure(s, verdict.mechanism, verdict.user, verdict.result, att, verdict.reason)
    _reply_failure(s, verdict.reply, att)


def _count_failure(s: "Session", mechanism: str, user: str, result: str, att: Attempt | None = None,
                   reason: str = "") -> Generator:
    """A counted authentication failure: count it, log it, tell the abuse guard, and wait
    ``session.auth.errors.wait`` (grown by the guard when ``wait-growth`` is set, lengthened at random by
    ``wait-spread`` for an address that failed often: ``Attempt.wait``; a timer of this session only)
    before the client hears anything."""
    s.auth_failures += 1
    _record_attempt(s, mechanism, user, result, reason)
    if att is not None:
        yield from att.settle(s, "invalid")
    yield Sleep(att.wait(s) if att is not None else s.params.auth_errors_wait)


def _reply_failure(s: "Session", reply: bytes, att: Attempt | None = None) -> None:
    s.reply(reply)
    if att is not None and att.close_if_banned(s):
        return
    if s.auth_failures >= s.params.auth_errors_total:
        s.close(R.AUTH_TOO_MANY)


def _dialogue(s: "Session", name: str, mech, initial: str | None, att: Attempt) -> Generator:
    """The SASL exchange. Returns None when it ended without a counted failure (success, tempfail, the
    client left), else the :class:`_Verdict` to count and answer."""
    lookup = s.params.auth_lookup
    user = ""
    counted = False   # this attempt's failure was already counted (OAuth error challenge, see Verify)
    if initial is None:
        action = mech.start(None)
    else:
        data = b"" if initial == "=" else _decode(initial.encode("ascii", "replace"))
        if data is None:
            return _Verdict(R.AUTH_BAD_BASE64, name, user, "malformed")
        action = mech.start(data)
    while True:
        if isinstance(action, Challenge):
            s.reply(b"334 " + base64.b64encode(action.data) + b"\r\n" if action.data else R.AUTH_EMPTY_CHALLENGE)
            line = yield ReadLine()
            if line is None:            # client went away mid-exchange
                s.close()
                return None
            # LOGIN knows its user before the lookup sees it; log that name if the exchange fails here.
            user = user or getattr(mech, "claimed_user", "")
            if line is TOO_LONG:
                return _Verdict(R.AUTH_LINE_TOO_LONG, name, user, "malformed", counted)
            if line == b"*":
                return _Verdict(R.AUTH_CANCELLED, name, user, "cancelled", counted)
            data = _decode(line)
            if data is None:
                return _Verdict(R.AUTH_BAD_BASE64, name, user, "malformed", counted)
            action = mech.respond(data)
        elif isinstance(action, Verify):
            user = action.creds.username
            # Asked (and counted) before the lookup sees the credentials: see abuse/guard.py. An attempt
            # whose client leaves before the verdict stays counted (never settled).
            yield from att.ask(s, user, action.creds.secret)
            if att.refused:
                return _Verdict(R.AUTH_INVALID, name, user, "invalid", reason=att.refused)
            result = yield Authenticate(lookup, _with_origin(s, action.creds))
            if not isinstance(result, AuthResult):
                result = AuthResult(Outcome.UNAVAILABLE, reason="lookup failed")
            if s.gone:
                # The client hung up while the lookup worked; it ran to its verdict anyway, so an attacker
                # cannot test passwords for free by disconnecting before the (delayed) answer.
                _record_attempt(s, name, user, "abandoned", f"verdict {result.outcome.value}")
                return None
            if result.outcome is Outcome.UNAVAILABLE:
                yield from att.settle(s, "tempfail")
                _record_attempt(s, name, user, "tempfail", result.reason)
                s.reply(R.AUTH_TEMPFAIL)
                return None
            action = mech.verified(result)
            if result.outcome is Outcome.INVALID and isinstance(action, Challenge):
                # OAuth error challenge (RFC 7628 §3.2.2): it already tells the client the token is bad,
                # so count, log and wait *before* sending it -- a client that hangs up instead of
                # answering must not get a free, unlogged token check.
                yield from _count_failure(s, name, user, "invalid", att)
                counted = True
        elif isinstance(action, NeedSecret):
            user = action.username
            yield from att.ask(s, user, None)
            if att.refused:
                return _Verdict(R.AUTH_INVALID, name, user, "invalid", reason=att.refused)
            record = yield GetSecret(lookup, action.username)
            if record is UNAVAILABLE:
                yield from att.settle(s, "tempfail")
                _record_attempt(s, name, user, "tempfail", "secret lookup unavailable")
                s.reply(R.AUTH_TEMPFAIL)
                return None
            if mech.secret_is_costly(record):
                action = yield Compute(mech.secret, (record,))   # e.g. PBKDF2: never on the event loop
                if action is None:
                    yield from att.settle(s, "tempfail")
                    _record_attempt(s, name, user, "tempfail", "secret processing failed")
                    s.reply(R.AUTH_TEMPFAIL)
                    return None
            else:
                action = mech.secret(record)
        elif isinstance(action, Success):
            if action.final_data is not None:
                # RFC 4954 §4: additional data with success goes in a 334; the client answers empty.
                s.reply(b"334 " + base64.b64encode(action.final_data) + b"\r\n")
                line = yield ReadLine()
                if line is None:
                    s.close()
                    return None
                if line == b"*":
                    return _Verdict(R.AUTH_CANCELLED, name, action.account, "cancelled", counted)
                if line not in (b"", b"="):
                    return _Verdict(R.AUTH_MALFORMED, name, action.account, "malformed", counted)
            if action.authzid:
                # RFC 4616 §2: a granted authzid is who the client now *is* (like a Dovecot master user
                # logging in as someone else): the session acts as that identity and owns its address only.
                account = action.authzid
                addresses = frozenset({account.lower()}) if "@" in account else frozenset()
            else:
                account = action.account
                addresses = frozenset(a.lower() for a in action.addresses)
            s.auth_account = account
            s.auth_addresses = addresses
            s.auth_mechanism = name
            s.vars.authenticated_as = account.lower()
            yield from att.settle(s, "success")
            _record_attempt(s, name, action.account, "success")
            s.reply(R.AUTH_OK)
            return None
        elif isinstance(action, Failure):
            user = action.username or user
            if action.kind == "unavailable":
                yield from att.settle(s, "tempfail")
                _record_attempt(s, name, user, "tempfail", action.detail)
                s.reply(R.AUTH_TEMPFAIL)
                return None
            if action.kind == "malformed":
                return _Verdict(R.AUTH_MALFORMED, name, user, "malformed", counted)
            return _Verdict(R.AUTH_INVALID, name, user, "invalid", counted)
        else:  # pragma: no cover - the mechanism broke its contract
            raise TypeError(f"unexpected SASL action {action!r}")


def _record_attempt(s: "Session", mech: str, user: str, result: str, reason: str = "") -> None:
    """Where every AUTH attempt's outcome is reported, once: ``success``, ``invalid``, ``tempfail``,
    ``cancelled``, ``malformed``, or ``abandoned`` (the client left before the lookup's verdict, which
    ``reason`` then gives). The hook for cross-session counters (throttles, auto-ban: issue 11)."""
    s.events.auth(mech, user, result, s.auth_failures, reason)   # the "auth ..." line and its metrics


def _with_origin(s: "Session", creds: Credentials) -> Credentials:
    """The client's and our address for the lookup (forwarded to Dovecot with IMAP ID). Built directly:
    ``dataclasses.replace`` costs as much as the rest of a cached PLAIN check (hot path, bench (a))."""
    v = s.vars
    return Credentials(creds.mechanism, creds.username, creds.secret, creds.kind, creds.authzid,
                       Origin(s.remote_text, s.remote_port, s.local_text, v.local_port))

