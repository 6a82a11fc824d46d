"""Issue 12 items 1 and 4 over real sockets: /metrics scraped and parsed with prometheus_client's parser
after real SMTP sessions, /healthz and /readyz, the token-protected JSON API, and the MTA log lines
(connect, auth, reject, message, disconnect with a command tally, the masked debug dialogue; the
too-many-errors refusal, matched by the fail2ban filter)."""
from __future__ import annotations

import base64
import hashlib
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.process import SmtpgateProcess
from tests.fixtures.server import SERVER_HEAD, RunningServer, listeners, run_server
from tests.fixtures.auth_session import make_user_store, plain_ir
from tests.smtpclient import Raw, client_tls
from tests.support import free_port, need_binary

FILTER = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban" / "filter.d" / "smtpgate.conf"

TOKEN = "t0ken-5a1f-never-log-me"
TOKEN_HASH = "{SHA256}" + base64.b64encode(hashlib.sha256(TOKEN.encode()).digest()).decode()
PW = "Pw-0b5e-never-log-me"
WRONG = "Wrong-0b5e-never-log-me"
STORE_PW = "store-pw-0b5e"

CONFIG = SERVER_HEAD + listeners("submission", "strict", "authreq", "cached") + f"""
[server.listener.mgmt]
bind = ["127.0.0.1:0"]
protocol = "http"

[server.management]
token = "{TOKEN_HASH}"

[session.auth]
mechanisms = ["plain", "login"]
lookup = [ {{ if = "listener", eq = "cached", then = "directory/store" }}, {{ else = "list/users" }} ]
require = [ {{ if = "listener", eq = "authreq", then = true }}, {{ else = false }} ]
allow-plain-text = [ {{ if = "listener", eq = "strict", then = false }}, {{ else = true }} ]
must-match-sender = true

[session.auth.errors]
total = 5
wait = "1ms"

[session.data.limits]
size = 100000

[list]
users = ["john@example.org:{PW}"]

[directory.store]
type = "internal"
store = "sqlite://{{tmp}}/users.db"
cache.entries = 100
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("observe")
    make_user_store(tmp / "users.db", {"mary@example.org": STORE_PW})
    with run_server(CONFIG, tmp, dialogue=True) as running:
        yield running


def http(srv: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{srv.port('mgmt')}", timeout=10)


def scrape(srv: RunningServer) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(sample name, sorted labels): value}, parsed by prometheus_client."""
    with http(srv) as client:
        resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


MESSAGE = "Subject: hello\r\n\r\n" + "x" * 1000 + "\r\n.\r\n"


def send_message(c: Raw, sender: str, rcpt: str) -> str:
    assert c.cmd(f"MAIL FROM:<{sender}>").startswith("250 ")
    assert c.cmd(f"RCPT TO:<{rcpt}>").startswith("250 ")
    assert c.cmd("DATA").startswith("354 ")
    c.send(MESSAGE)
    return c.reply()


# --- /metrics --------------------------------------------------------------------------------------------

def test_metrics_follow_real_sessions(srv):
    before = scrape(srv)
    c = Raw(srv.port("submission"))
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', WRONG)}").startswith("535 ")
    assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', PW)}").startswith("235 ")
    assert send_message(c, "john@example.org", "someone@elsewhere.example").startswith("250 ")
    assert c.cmd("QUIT").startswith("221 ")
    c.close()

    c = Raw(srv.port("submission"))                        # STARTTLS, then a relay attempt
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd("STARTTLS").startswith("220 ")
    c.starttls(client_tls(srv.ca_file))
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd("MAIL FROM:<a@example.net>").startswith("250 ")
    assert c.cmd("RCPT TO:<victim@elsewhere.example>").startswith("550 5.7.1")
    held = Raw(srv.port("strict"))                          # still open at the next scrape
    assert held.cmd("EHLO client.test").startswith("250-")
    assert held.cmd(f"AUTH PLAIN {plain_ir('john@example.org', PW)}").startswith("538 ")

    for _ in range(2):                                      # the cached store: one miss, then one hit
        m = Raw(srv.port("cached"))
        assert m.cmd("EHLO client.test").startswith("250-")
        assert m.cmd(f"AUTH PLAIN {plain_ir('mary@example.org', STORE_PW)}").startswith("235 ")
        m.close()

    mid = scrape(srv)
    assert value(mid, "smtpgate_sessions_active", listener="strict") == 1
    assert value(mid, "smtpgate_sessions_active", listener="submission") == 1
    c.close()
    held.close()

    def settled() -> bool:
        s = scrape(srv)
        return all(value(s, "smtpgate_sessions_active", listener=lst) == 0 for lst in ("submission", "strict"))
    wait_for(settled)
    after = scrape(srv)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("smtpgate_connections_total", listener="submission") == 2
    assert delta("smtpgate_connections_total", listener="strict") == 1
    assert delta("smtpgate_auth_attempts_total", listener="submission", mechanism="PLAIN", result="invalid") == 1
    assert delta("smtpgate_auth_attempts_total", listener="submission", mechanism="PLAIN", result="success") == 1
    assert delta("smtpgate_auth_attempts_total", listener="cached", mechanism="PLAIN", result="success") == 2
    assert delta("smtpgate_auth_duration_seconds_count", listener="submission", result="success") == 1
    assert delta("smtpgate_auth_duration_seconds_count", listener="submission", result="failure") == 1
    assert delta("smtpgate_auth_duration_seconds_bucket", listener="submission", result="success", le="+Inf") == 1
    assert delta("smtpgate_messages_accepted_total", listener="submission") == 1
    assert delta("smtpgate_message_bytes_accepted_total", listener="submission") > 1000
    assert delta("smtpgate_deliveries_total", next_hop="spool", outcome="accepted") == 1
    assert delta("smtpgate_tls_handshakes_total", listener="submission", kind="starttls", result="ok") == 1
    assert delta("smtpgate_refusals_total", listener="submission", reason="relay-denied") == 1
    assert delta("smtpgate_refusals_total", listener="strict", reason="encryption-required") == 1
    assert delta("smtpgate_lookup_requests_total", lookup="list/users", outcome="positive") == 1
    assert delta("smtpgate_lookup_requests_total", lookup="list/users", outcome="negative") == 1
    assert delta("smtpgate_lookup_requests_total", lookup="directory/store", outcome="positive") == 2
    assert delta("smtpgate_lookup_duration_seconds_count", lookup="directory/store") == 1   # the hit is not timed
    assert delta("smtpgate_lookup_cache_misses_total", lookup="directory/store") == 1
    assert delta("smtpgate_lookup_cache_hits_total", lookup="directory/store") == 1
    assert ("smtpgate_hash_queue_depth", ()) in after
    assert ("smtpgate_event_loop_lag_seconds", ()) in after
    assert value(after, "smtpgate_event_loop_lag_seconds") < 1.0


def test_metrics_scraped_with_curl(srv):
    curl = need_binary("curl")
    out = subprocess.run([curl, "-fsS", f"http://127.0.0.1:{srv.port('mgmt')}/metrics"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    names = {f.name for f in text_string_to_metric_families(out.stdout)}
    assert {"smtpgate_connections", "smtpgate_auth_attempts", "smtpgate_sessions_active"} <= names


# --- health ------------------------------------------------------------------------------------------------

def test_healthz_and_readyz(srv):
    with http(srv) as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert body["checks"] == {"lookup directory/store": "ok", "lookup list/users": "ok", "spool": "ok"}


def test_readyz_503_when_a_lookup_is_down_and_when_the_spool_is_not_writable(tmp_path):
    dead = free_port()                         # nothing listens here
    config = SERVER_HEAD + listeners("submission") + f"""
[server.listener.mgmt]
bind = ["127.0.0.1:0"]
protocol = "http"
[session.auth]
lookup = [ {{ if = "listener", eq = "submission", then = "remote/imap" }}, {{ else = "list/users" }} ]
[list]
users = ["john@example.org:x"]
[remote.imap]
address = "127.0.0.1"
port = {dead}
protocol = "imap"
lookup = true
timeout = "2s"
"""
    with run_server(config, tmp_path / "srv") as srv:
        with http(srv) as client:
            resp = client.get("/readyz")
            assert resp.status_code == 503
            body = resp.json()
            assert body["ready"] is False and body["failing"] == ["lookup remote/imap"]
            assert body["checks"]["lookup list/users"] == "ok" and body["checks"]["spool"] == "ok"
            assert str(dead) in body["checks"]["lookup remote/imap"]
            assert client.get("/healthz").status_code == 200          # alive, just not ready
            # The API is off without a token.
            assert client.get("/api/users").status_code == 403
            # The spool directory replaced by a file: not writable, whoever we run as.
            spool = Path(srv.server.settings.queue_path)
            shutil.rmtree(spool)
            spool.write_text("not a directory")
            body = client.get("/readyz").json()
            assert body["failing"] == ["lookup remote/imap", "spool"]


# --- the JSON API ------------------------------------------------------------------------------------------

def test_api_needs_the_token(srv):
    with http(srv) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}):
            resp = client.get("/api/users", headers=headers)
            assert resp.status_code == 401, headers
            assert resp.json() == {"error": "unauthorized"}
            assert resp.headers["www-authenticate"].startswith("Bearer")
        assert client.post("/api/users", json={"name": "x", "password": "y"}).status_code == 401
        assert client.get("/api/users", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert TOKEN not in "\n".join(srv.logs)


def _auth(srv: RunningServer, user: str, password: str) -> str:
    c = Raw(srv.port("cached"))
    assert c.cmd("EHLO client.test").startswith("250-")
    reply = c.cmd(f"AUTH PLAIN {plain_ir(user, password)}")
    c.close()
    return reply[:3]


def test_api_manages_the_user_store(srv):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with http(srv) as client:
        resp = client.post("/api/users", headers=auth,
                           json={"name": "paul@example.org", "password": "first-pw", "addresses": ["p@example.org"]})
        assert resp.status_code == 201, resp.text
        users = {u["name"]: u for u in client.get("/api/users", headers=auth).json()["users"]}
        assert users["paul@example.org"] == {"name": "paul@example.org", "disabled": False,
                                             "addresses": ["paul@example.org", "p@example.org"]}
        assert _auth(srv, "paul@example.org", "first-pw") == "235"

        assert client.put("/api/users/paul@example.org/password", headers=auth,
                          json={"password": "second-pw"}).status_code == 200
        assert _auth(srv, "paul@example.org", "first-pw") == "535"        # not served from the cache
        assert _auth(srv, "paul@example.org", "second-pw") == "235"

        assert client.post("/api/users/paul@example.org/disable", headers=auth).status_code == 200
        assert _auth(srv, "paul@example.org", "second-pw") == "535"
        listed = {u["name"]: u for u in client.get("/api/users", headers=auth).json()["users"]}
        assert listed["paul@example.org"]["disabled"] is True
        assert client.post("/api/users/paul@example.org/enable", headers=auth).status_code == 200
        assert _auth(srv, "paul@example.org", "second-pw") == "235"

        bad = client.post("/api/users", headers=auth, json={"name": "paul@example.org", "password": "x"})
        assert bad.status_code == 400 and "error" in bad.json()
        assert client.post("/api/users", headers=auth, content=b"[1,2]").status_code == 400
        assert client.delete("/api/users/paul@example.org", headers=auth).status_code == 200
        missing = client.put("/api/users/paul@example.org/password", headers=auth, json={"password": "x"})
        assert missing.status_code == 404 and missing.json() == {"error": "no such user: paul@example.org"}
        assert _auth(srv, "paul@example.org", "second-pw") == "535"
    text = "\n".join(srv.logs)
    assert "first-pw" not in text and "second-pw" not in text


def test_api_token_from_a_file(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = SERVER_HEAD + listeners("submission") + f"""
[server.listener.mgmt]
bind = ["127.0.0.1:0", "[::1]:0"]
protocol = "http"
[server.management]
token = "file://{tmp_path}/token"
"""
    with run_server(config, tmp_path / "srv") as srv:
        for port in srv.server.ports("mgmt"):
            for host in ("127.0.0.1", "[::1]"):
                try:
                    resp = httpx.get(f"http://{host}:{port}/api/users", timeout=10,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
                except httpx.ConnectError:
                    continue                    # each port is bound on one of the two addresses
                # No internal directory configured: the token is accepted, the store is missing.
                assert resp.status_code == 404 and "internal" in resp.json()["error"]
                assert httpx.get(f"http://{host}:{port}/api/users", timeout=10).status_code == 401


# --- log lines ---------------------------------------------------------------------------------------------

SID = r"(?P<sid>[0-9A-F]{12})"
CONNECT = re.compile(rf"INFO smtpgate\.session: connect session={SID} listener=(?P<listener>\S+) "
                     r"remote=127\.0\.0\.1 port=(?P<port>\d+) tls=(?P<tls>\S+)$")
REJECT = re.compile(rf"INFO smtpgate\.session: reject session={SID} listener=(?P<listener>\S+) remote=127\.0\.0\.1 "
                    r"port=\d+ command=(?P<command>[A-Z]+) reason=(?P<reason>\S+) reply=\"(?P<reply>[^\"]*)\"$")
MESSAGE_LINE = re.compile(rf"INFO smtpgate\.message: message session={SID} queue_id=(?P<qid>[0-9A-F]+) "
                          r"listener=submission remote=127\.0\.0\.1 from=\"<john@example\.org>\" rcpts=2 "
                          r"size=(?P<size>\d+) user=\"john@example\.org\" tls=TLSv1\.[23] next_hop=spool "
                          r"result=accepted reply=\"250 2\.0\.0 Ok: queued as (?P<file>\S+)\"$")
DISCONNECT = re.compile(rf"INFO smtpgate\.session: disconnect session={SID} listener=(?P<listener>\S+) "
                        r"remote=127\.0\.0\.1 port=\d+ (?P<tally>.*) duration=(?P<duration>\d+\.\d{3})$")


def lines_of(logs: list[str], sid: str) -> list[str]:
    return [line for line in logs if f"session={sid}" in line]


def test_log_lines_for_each_event(srv):
    start = len(srv.logs)
    c = Raw(srv.port("submission"))
    port = c.sock.getsockname()[1]
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd("STARTTLS").startswith("220 ")
    c.starttls(client_tls(srv.ca_file))
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', WRONG)}").startswith("535 ")
    assert c.cmd(f"AUTH LOGIN {b64('john@example.org')}").startswith("334 ")
    assert c.cmd(b64(PW)).startswith("235 ")
    assert c.cmd("MAIL FROM:<mary@example.org>").startswith("550 5.7.1")            # not owned
    assert c.cmd("MAIL FROM:<john@example.org> SIZE=200000").startswith("552 ")      # too big
    assert c.cmd("MAIL FROM:<john@example.org>").startswith("250 ")
    assert c.cmd("RCPT TO:<a@elsewhere.example>").startswith("250 ")
    assert c.cmd("RCPT TO:<b@elsewhere.example>").startswith("250 ")
    assert c.cmd("DATA").startswith("354 ")
    c.send(MESSAGE)
    assert c.reply().startswith("250 ")
    assert c.cmd("BOGUS").startswith("500 ")
    assert c.cmd("QUIT").startswith("221 ")
    c.close()

    r = Raw(srv.port("authreq"))
    assert r.cmd("EHLO client.test").startswith("250-")
    assert r.cmd("MAIL FROM:<x@example.net>").startswith("530 ")
    r.close()
    wait_for(lambda: sum("disconnect session=" in line for line in srv.logs[start:]) >= 2)
    logs = srv.logs[start:]

    connect = next(m for m in map(CONNECT.match, logs) if m and int(m["port"]) == port)
    sid = connect["sid"]
    assert connect["listener"] == "submission" and connect["tls"] == "no"
    mine = lines_of(logs, sid)
    assert [line.split(": ", 1)[1].split(" ", 1)[0] for line in mine if " DEBUG " not in f" {line}"] == [
        "connect", "auth", "auth", "reject", "reject", "message", "disconnect"]
    auths = [line for line in mine if "smtpgate.auth: auth " in line]
    assert auths[0].endswith(f"mechanism=PLAIN user=\"john@example.org\" result=invalid failures=1 session={sid}")
    assert auths[1].endswith(f"mechanism=LOGIN user=\"john@example.org\" result=success failures=1 session={sid}")
    rejects = [REJECT.match(line) for line in mine if "reject session=" in line]
    assert [(m["command"], m["reason"], m["reply"]) for m in rejects] == [
        ("MAIL", "sender-not-owned", "550 5.7.1 Sender address not owned by authenticated user."),
        ("MAIL", "size", "552 5.3.4 Message size exceeds fixed maximum message size")]
    message = next(MESSAGE_LINE.match(line) for line in mine if "smtpgate.message:" in line)
    assert message is not None, mine
    spooled = {p.name for p in srv.spool_files()}
    assert message["file"] in spooled
    assert int(message["size"]) > len(MESSAGE) - 5
    disconnect = DISCONNECT.match(mine[-1])
    assert disconnect is not None, mine[-1]
    assert disconnect["tally"] == ("ehlo=2 starttls=1 auth=1/2 mail=1/3 rcpt=2 data=1 quit=1 unknown=0/1 "
                                   "commands=9/13")
    assert 0 < float(disconnect["duration"]) < 30

    other = next(m for m in map(REJECT.match, logs) if m and m["listener"] == "authreq")
    assert (other["command"], other["reason"]) == ("MAIL", "auth-required")
    tally = next(m for m in map(DISCONNECT.match, logs) if m and m["sid"] == other["sid"])
    assert tally["tally"] == "ehlo=1 mail=0/1 commands=1/2"


def test_debug_dialogue_masks_secrets(srv):
    start = len(srv.logs)
    c = Raw(srv.port("submission"))
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', PW)}").startswith("235 ")
    c.close()
    c = Raw(srv.port("submission"))
    assert c.cmd("EHLO client.test").startswith("250-")
    assert c.cmd("AUTH LOGIN").startswith("334 ")
    assert c.cmd(b64("john@example.org")).startswith("334 ")
    assert c.cmd(b64(WRONG)).startswith("535 ")
    assert c.cmd("QUIT").startswith("221 ")
    c.close()
    wait_for(lambda: sum("disconnect session=" in line for line in srv.logs[start:]) >= 2)
    logs = srv.logs[start:]
    dialogue = [line for line in logs if line.startswith("DEBUG smtpgate.dialogue: ")]
    shown = [line.split(" dir=", 1)[1] for line in dialogue]
    assert 'in line="AUTH PLAIN ***"' in shown
    assert 'in line="AUTH LOGIN"' in shown
    assert 'out line="235 2.7.0 Authentication succeeded."' in shown
    assert 'out line="334 ***"' in shown                     # prompts and challenges are not shown either
    assert 'in line="EHLO client.test"' in shown and 'out line="250 HELP"' in shown
    text = "\n".join(logs)
    for secret in (PW, WRONG, b64(PW), b64(WRONG), plain_ir("john@example.org", PW), b64("john@example.org")):
        assert secret not in text


def test_https_management_listener(tmp_path):
    config = SERVER_HEAD + listeners("submission") + """
[server.listener.mgmt]
bind = "127.0.0.1:0"
protocol = "http"
tls.implicit = true
"""
    with run_server(config, tmp_path / "srv") as srv:
        url = f"https://localhost:{srv.port('mgmt')}"
        verify = ssl.create_default_context(cafile=srv.ca_file)
        resp = httpx.get(f"{url}/healthz", verify=verify, timeout=10)
        assert resp.status_code == 200 and resp.json() == {"status": "alive"}
        names = {f.name for f in text_string_to_metric_families(httpx.get(f"{url}/metrics", verify=verify,
                                                                             timeout=10).text)}
        assert "smtpgate_connections" in names
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://127.0.0.1:{srv.port('mgmt')}/healthz", timeout=10)   # no cleartext


def test_implicit_tls_handshakes_counted(tmp_path):
    config = SERVER_HEAD + listeners("submissions", implicit=("submissions",)) + """
[server.listener.mgmt]
bind = "127.0.0.1:0"
protocol = "http"
"""
    with run_server(config, tmp_path / "srv") as srv:
        ok = Raw(srv.port("submissions"), tls=client_tls(srv.ca_file))
        assert ok.greeting.startswith("220 ")
        ok.close()
        with socket.create_connection(("127.0.0.1", srv.port("submissions")), timeout=10) as raw:
            raw.sendall(b"EHLO not-tls\r\n" * 20)      # not a TLS ClientHello
            raw.settimeout(10)
            while raw.recv(4096):
                pass

        def counted() -> bool:
            s = scrape(srv)
            return value(s, "smtpgate_tls_handshakes_total", listener="submissions", kind="implicit",
                         result="failed") == 1
        wait_for(counted)
        s = scrape(srv)
        assert value(s, "smtpgate_tls_handshakes_total", listener="submissions", kind="implicit", result="ok") == 1
        assert value(s, "smtpgate_connections_total", listener="submissions") == 1     # sessions only


def test_api_bans_with_the_abuse_guard(tmp_path):
    """Add a ban through the API: the next connection from that address is refused and counted; lift it."""
    config = SERVER_HEAD + listeners("smtp") + f"""
[server.listener.mgmt]
bind = "127.0.0.1:0"
protocol = "http"
[server.management]
token = "{TOKEN_HASH}"
"""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with run_server(config, tmp_path / "srv") as srv, http(srv) as client:
        assert client.get("/api/bans", headers=auth).json() == {"bans": []}
        assert client.get("/api/bans").status_code == 401
        added = client.post("/api/bans", headers=auth, json={"ip": "127.0.0.1", "duration": "1h",
                                                             "reason": "manual"})
        assert added.status_code == 201, added.text
        ban = added.json()["ban"]
        assert ban["ip"] == "127.0.0.1" and ban["reason"] == "manual"
        assert 3500 < ban["until"] - time.time() <= 3600
        assert [b["ip"] for b in client.get("/api/bans", headers=auth).json()["bans"]] == ["127.0.0.1"]

        refused = Raw(srv.port("smtp"))
        assert refused.greeting.startswith("421 4.7.0")
        assert refused.closed()
        refused.close()
        s = scrape(srv)
        assert value(s, "smtpgate_banned_connections_total", listener="smtp") == 1
        assert value(s, "smtpgate_connections_refused_total", listener="smtp", reason="banned") == 1
        assert value(s, "smtpgate_bans_active", reason="manual") == 1
        assert value(s, "smtpgate_connections_total", listener="smtp") == 0
        assert any(re.search(r"reject session=- listener=smtp remote=127\.0\.0\.1 port=\d+ command=CONNECT "
                             r"reason=banned$", line) for line in srv.logs), srv.logs

        assert client.post("/api/bans", headers=auth, json={"ip": "not-an-ip"}).status_code == 400
        assert client.post("/api/bans", headers=auth, json={"ip": "192.0.2.1", "duration": "soon"}).status_code == 400
        assert client.delete("/api/bans/127.0.0.1", headers=auth).json() == {"lifted": "127.0.0.1"}
        assert client.delete("/api/bans/127.0.0.1", headers=auth).status_code == 404
        welcome = Raw(srv.port("smtp"))
        assert welcome.greeting.startswith("220 ")
        welcome.close()
        assert value(scrape(srv), "smtpgate_bans_active", reason="manual") == 0


def test_api_explain_evaluates_the_running_config_without_counting(srv):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with http(srv) as client:
        assert client.post("/api/explain", json={"listener": "strict", "remote-ip": "192.0.2.7"}).status_code == 401
        resp = client.post("/api/explain", headers=auth, json={"listener": "strict", "remote-ip": "192.0.2.7"})
        assert resp.status_code == 200, resp.text
        lines = resp.json()["lines"]
        at = lines.index("session.auth.allow-plain-text = false")
        assert lines[at + 1].strip() == "session.auth.allow-plain-text[0] matched"
        other = client.post("/api/explain", headers=auth,
                            json={"listener": "submission", "remote-ip": "192.0.2.7"}).json()["lines"]
        assert "session.auth.allow-plain-text = true" in other

        before = scrape(srv)
        logged = len(srv.logs)
        wrong = client.post("/api/explain", headers=auth, json={
            "listener": "submission", "remote-ip": "192.0.2.7", "user": "john@example.org", "password": WRONG})
        report = wrong.json()["lines"]
        assert any(line.strip().startswith("invalid (clients get 535 5.7.8, counted)") for line in report), report
        right = client.post("/api/explain", headers=auth, json={
            "listener": "submission", "remote-ip": "192.0.2.7", "user": "john@example.org", "password": PW})
        assert "    valid: account 'john@example.org'" in right.json()["lines"]
        after = scrape(srv)
        attempts = [k for k in after if k[0].startswith("smtpgate_auth_attempts")]
        assert all(after[k] == before.get(k, 0.0) for k in attempts), "explain must not count as an AUTH attempt"
        assert not any(" auth listener=" in line for line in srv.logs[logged:])
        assert WRONG not in "\n".join(srv.logs) and PW not in "\n".join(srv.logs)

        bad = client.post("/api/explain", headers=auth, json={"listener": "nope", "remote-ip": "192.0.2.7"})
        assert bad.status_code == 400 and "no listener 'nope'" in bad.json()["error"]
        bad = client.post("/api/explain", headers=auth, json={"listener": "strict", "remote-ip": "not-an-ip"})
        assert bad.status_code == 400 and "not an IP address" in bad.json()["error"]
        assert client.post("/api/explain", headers=auth, json={"listener": "strict"}).status_code == 400


# --- session.errors.total: one reject line, counted, matched by the fail2ban filter --------------------

def test_too_many_errors_is_a_logged_and_counted_refusal(srv):
    before = scrape(srv)
    start = len(srv.logs)
    c = Raw(srv.port("submission"))
    port = c.sock.getsockname()[1]
    assert c.cmd("EHLO client.test").startswith("250-")
    for _ in range(20):                          # session.errors.total: 20 by default
        assert c.cmd("BOGUS").startswith("500 ")
    assert c.reply() == "421 4.7.0 Too many errors, closing connection."
    assert c.closed()
    c.close()
    wait_for(lambda: any("disconnect session=" in line for line in srv.logs[start:]))
    logs = srv.logs[start:]
    sid = next(m for m in map(CONNECT.match, logs) if m and int(m["port"]) == port)["sid"]
    rejects = [REJECT.match(line) for line in lines_of(logs, sid) if "reject session=" in line]
    assert [(m["command"], m["reason"], m["reply"]) for m in rejects] == [
        ("UNKNOWN", "too-many-errors", "421 4.7.0 Too many errors, closing connection.")]
    after = scrape(srv)
    assert (value(after, "smtpgate_refusals_total", listener="submission", reason="too-many-errors")
            - value(before, "smtpgate_refusals_total", listener="submission", reason="too-many-errors")) == 1


def test_fail2ban_filter_matches_too_many_errors(tmp_path):
    """The real ``fail2ban-regex`` over a real ``smtpgate serve`` log: a session closed for too many bad
    commands is matched once; one that stays under the limit is not."""
    regex_bin = need_binary("fail2ban-regex")
    port = free_port()
    server = SmtpgateProcess(f"""
[server]
hostname = "mx.test"
[server.listener.smtp]
bind = "127.0.0.1:{port}"
[session.errors]
total = 3
[queue]
path = "{tmp_path}/spool"
""", tmp_path, port, log_level="info")
    log = server.log
    server.start()
    try:
        fuzzer = Raw(port)
        for _ in range(3):
            assert fuzzer.cmd("BOGUS").startswith("500 ")
        assert fuzzer.reply().startswith("421 4.7.0 Too many errors")
        fuzzer.close()
        clumsy = Raw(port)                   # two mistakes, then a proper end: not abuse
        assert clumsy.cmd("HELO").startswith("501 ")
        assert clumsy.cmd("BOGUS").startswith("500 ")
        assert clumsy.cmd("QUIT").startswith("221 ")
        clumsy.close()
        deadline = time.monotonic() + 10
        while log.read_text().count(" disconnect session=") < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        server.stop()
    text = log.read_text()
    assert text.count("reason=too-many-errors") == 1, text
    result = subprocess.run([regex_bin, "-o", "ip", str(log), str(FILTER)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["127.0.0.1"], result.stdout
    summary = subprocess.run([regex_bin, str(log), str(FILTER)], capture_output=True, text=True, timeout=60)
    assert re.search(r"Lines: \d+ lines, 0 ignored, 1 matched, \d+ missed", summary.stdout), summary.stdout
