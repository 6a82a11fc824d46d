"""observe.events and observe.metrics without sockets: line rendering and escaping, the command tally,
refusal recognition, JSON lines, and that the exposition parses back with prometheus_client."""
from __future__ import annotations

import json
import logging

from prometheus_client.parser import text_string_to_metric_families

from smtpgate.observe import metrics as M
from smtpgate.observe.events import Event, ListenerEvents, Quoted, quote
from smtpgate.observe.logsetup import JsonFormatter
from smtpgate.protocol import replies as R


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def capture(level: int = logging.INFO) -> Records:
    handler = Records()
    logger = logging.getLogger("smtpgate")
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def release(handler: Records) -> None:
    logging.getLogger("smtpgate").removeHandler(handler)
    logging.getLogger("smtpgate").setLevel(logging.NOTSET)


def test_quote_escapes_what_could_forge_fields_or_lines():
    assert quote("john@example.org") == '"john@example.org"'
    assert quote('x" result=success\n') == '"x\\" result=success\\x0a"'
    assert quote("a\\b") == '"a\\\\b"'
    assert quote("é\u2028") == '"\\xe9\\u2028"'
    assert quote("a" * 300) == '"' + "a" * 256 + '"'


def test_event_text_form():
    ev = Event("x", [("s", "abc"), ("n", 3), ("q", Quoted("a b")), ("none", None), ("f", 0.12345)])
    assert str(ev) == 'x s=abc n=3 q="a b" none=- f=0.123'


def test_session_lines_tally_and_refusals():
    handler = capture()
    try:
        le = ListenerEvents("sub", M.Metrics())
        ev = le.open("192.0.2.7", 4000)
        for line, reply in ((b"EHLO x", b"250-a\r\n250 b\r\n"), (b"MAIL FROM:<a@b>", R.AUTH_REQUIRED),
                            (b"AUTH PLAIN xxx", R.AUTH_INVALID), (b"AUTH PLAIN yyy", R.AUTH_OK),
                            (b"RCPT TO:<v@w>", R.RCPT_RELAY_DENIED), (b"xyzzy", R.SYNTAX), (b"quit", R.QUIT)):
            ev.command(line)
            ev.answered([reply])
        ev.closed()
        ev.closed()                                      # idempotent
        lines = [r.getMessage() for r in handler.records]
    finally:
        release(handler)
    sid = ev.sid
    assert lines[0] == f"connect session={sid} listener=sub remote=192.0.2.7 port=4000 tls=no"
    assert lines[1] == (f"reject session={sid} listener=sub remote=192.0.2.7 port=4000 command=MAIL "
                        'reason=auth-required reply="530 5.7.0 Authentication required."')
    assert lines[2].endswith("command=RCPT reason=relay-denied reply=\"550 5.7.1 Relay access denied.\"")
    assert lines[3].startswith(f"disconnect session={sid} listener=sub remote=192.0.2.7 port=4000 "
                               "ehlo=1 auth=1/2 mail=0/1 rcpt=0/1 quit=1 unknown=0/1 commands=3/7 duration=")
    assert len(lines) == 4
    m = le.metrics
    assert m.sessions_active.labels_("sub").value == 0
    assert m.refusals.labels_("sub", "relay-denied").value == 1
    assert m.auth_duration.labels_("sub", "success").counts[-1] + sum(
        m.auth_duration.labels_("sub", "success").counts[:-1]) == 1


def test_nothing_is_built_when_the_level_is_off():
    handler = capture(logging.WARNING)
    try:
        ev = ListenerEvents("sub").open("192.0.2.7", 4000)
        ev.command(b"RCPT TO:<v@w>")
        ev.answered([R.RCPT_RELAY_DENIED])
        ev.auth("PLAIN", "u", "invalid", 1)
        ev.closed()
    finally:
        release(handler)
    assert handler.records == []


def test_json_formatter():
    record = logging.LogRecord("smtpgate.auth", logging.INFO, "", 0,
                               Event("auth", [("user", Quoted('x"y')), ("failures", 2), ("reason", None),
                                              ("duration", 0.5)]), (), None)
    out = json.loads(JsonFormatter().format(record))
    assert out["event"] == "auth" and out["user"] == 'x"y' and out["failures"] == 2
    assert out["reason"] is None and out["duration"] == 0.5 and out["logger"] == "smtpgate.auth"
    plain = logging.LogRecord("smtpgate", logging.WARNING, "", 0, "hello %s", ("world",), None)
    assert json.loads(JsonFormatter().format(plain))["message"] == "hello world"


def test_exposition_parses_and_histograms_are_cumulative():
    m = M.Metrics()
    h = m.auth_duration.labels_("sub", "success")
    for v in (0.0005, 0.001, 0.02, 30.0):
        h.observe(v)
    m.connections.labels_("sub").inc()
    body, content_type = m.exposition()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    buckets = {s.labels["le"]: s.value for s in families["smtpgate_auth_duration_seconds"].samples
               if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 2 and buckets["0.025"] == 3 and buckets["10.0"] == 3 and buckets["+Inf"] == 4
    assert families["smtpgate_connections"].samples[0].value == 1
    assert families["smtpgate_bans_active"].samples == []          # announced, no samples yet
    assert M.NULL.connections.labels_("x").inc() is None    # the off switch accepts the same calls
