"""The spool's way out (issue 12 item 6): ``smtpgate spool list | show | deliver`` against a real Dovecot
LMTP server; a message leaves the spool only once the next hop took it, all-or-nothing, and two runs at
once never deliver a message twice."""
from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

from smtpgate.delivery.base import Envelope
from smtpgate.delivery.spool import Spool
from tests.fixtures.dovecot import DovecotServer, dovecot, dovecot_session  # noqa: F401
from tests.fixtures.server import run_server
from tests.smtpclient import Raw
from tests.support import free_port

SMTPGATE = str(Path(sys.executable).with_name("smtpgate"))


def config(tmp: Path, lmtp_port: int) -> str:
    return f"""
[server]
hostname = "mx.test"

[server.listener.submission]
bind = "127.0.0.1:0"

[session.auth]
mechanisms = ["plain"]
lookup = "list/users"
allow-plain-text = true

[session.rcpt.lookup]
domains = "list/domains"

[list]
users = ["john@local.test:secret"]
domains = ["local.test", "example.test"]

[queue]
path = "{tmp}/spool"

[remote.dovecot]
address = "127.0.0.1"
port = {lmtp_port}
protocol = "lmtp"
timeout = "5s"

[remote.down]
address = "127.0.0.1"
port = {free_port()}
protocol = "lmtp"
timeout = "2s"
"""


def spool(*args: str, conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SMTPGATE, "spool", *args, "--config", str(conf)], capture_output=True, text=True,
                          timeout=120)


def maildir(dovecot: DovecotServer, user: str, token: str) -> list[bytes]:
    root = dovecot.maildir_root / user
    return [p.read_bytes() for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()
            if token.encode() in p.read_bytes()]


def write_spooled(path: str, token: str, n: int, rcpts: list[str]) -> None:
    """n messages written by the server's own spool writer."""
    async def go() -> None:
        sp = Spool(path)
        await sp.start()
        for i in range(n):
            body = f"Subject: {token} #{i}\r\nMessage-ID: <{token}.{i}@local.test>\r\n\r\nhello {i}\r\n".encode()
            env = Envelope(mail_from="john@local.test", rcpt_to=rcpts, data=body, queue_id=f"{token[:8]}{i:04d}".upper())
            results = await sp.deliver(env)
            assert results[0].code == 250
    asyncio.run(go())


def test_list_show_deliver_through_real_dovecot(tmp_path: Path, dovecot: DovecotServer) -> None:
    token = uuid.uuid4().hex
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(config(tmp_path, dovecot.lmtp_port))
    with run_server(conf.read_text(), tmp_path) as srv:
        c = Raw(srv.port("submission"))
        c.cmd("EHLO client.test")
        assert c.cmd("AUTH PLAIN " + base64.b64encode(b"\0john@local.test\0secret").decode()).startswith("235")
        for i in range(2):
            assert c.cmd("MAIL FROM:<john@local.test>").startswith("250")
            assert c.cmd("RCPT TO:<alice@example.test>").startswith("250")
            assert c.cmd("RCPT TO:<bob@example.test>").startswith("250")
            assert c.cmd("DATA").startswith("354")
            reply = c.cmd(f"Subject: {token} {i}\r\n\r\n..dotted line\r\nbody {i}\r\n.")  # dot-stuffed
            assert reply.startswith("250 2.0.0 Ok: queued as "), reply
        c.cmd("QUIT")
        c.close()
        names = sorted(p.name for p in srv.spool_files())
    assert len(names) == 2

    listed = spool("list", conf=conf)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and all(n in listed.stdout for n in names)
    assert "<john@local.test> -> <alice@example.test>, <bob@example.test>" in lines[0]
    as_json = [json.loads(line) for line in spool("list", "--json", conf=conf).stdout.splitlines()]
    assert {e["id"] for e in as_json} == set(names) and as_json[0]["authenticated_as"] == "john@local.test"

    queue_id = names[0].split(".", 1)[1]
    shown = spool("show", queue_id, conf=conf)         # the id from "queued as" is enough
    assert shown.returncode == 0, shown.stderr
    assert f'"queue_id": "{queue_id}"' in shown.stdout and f"Subject: {token} " in shown.stdout
    assert "..dotted" not in shown.stdout and "\n.dotted line" in shown.stdout.replace("\r\n", "\n")
    assert spool("show", "nonexistent", conf=conf).returncode == 1

    # Next hop down: nothing leaves the spool, exit status 75 (try again later).
    down = spool("deliver", "--to", "remote/down", conf=conf)
    assert down.returncode == 75, down.stdout + down.stderr
    assert len(list((tmp_path / "spool" / "new").iterdir())) == 2

    done = spool("deliver", "--to", "remote/dovecot", conf=conf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 delivered, 0 kept for retry, 0 failed permanently" in done.stdout
    assert list((tmp_path / "spool" / "new").iterdir()) == []
    for user in ("alice@example.test", "bob@example.test"):
        got = maildir(dovecot, user, token)
        assert len(got) == 2, user
        assert all(b"by mx.test (smtpgate)" in m for m in got)
        assert any(b"\n.dotted line" in m.replace(b"\r\n", b"\n") for m in got)

    bad = spool("deliver", "--to", "remote/nope", conf=conf)
    assert bad.returncode == 1 and bad.stderr.startswith("Configuration error: --to:")


def test_all_or_nothing_and_permanent_refusal(tmp_path: Path, dovecot: DovecotServer) -> None:
    token = uuid.uuid4().hex
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(config(tmp_path, dovecot.lmtp_port))
    write_spooled(str(tmp_path / "spool"), token, 1, ["alice@example.test", "nobody-here@example.test"])
    r = spool("deliver", "--to", "remote/dovecot", conf=conf)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 failed permanently" in r.stdout
    # The recipient Dovecot knows got nothing: one refusal stops the whole message.
    assert maildir(dovecot, "alice@example.test", token) == []
    failed = list((tmp_path / "spool" / "failed").iterdir())
    assert len(failed) == 2
    reason = next(p for p in failed if p.name.endswith(".reason")).read_text()
    assert "nobody-here@example.test" in reason and " 5" in reason
    assert list((tmp_path / "spool" / "new").iterdir()) == []


def test_two_concurrent_runs_never_deliver_twice(tmp_path: Path, dovecot: DovecotServer) -> None:
    token = uuid.uuid4().hex
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(config(tmp_path, dovecot.lmtp_port))
    n = 40
    write_spooled(str(tmp_path / "spool"), token, n, ["alice@example.test"])
    runs = [subprocess.Popen([SMTPGATE, "spool", "deliver", "--to", "remote/dovecot", "--config", str(conf)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in runs]
    assert all(p.returncode == 0 for p in runs), outs
    counts = [int(out.split("spool deliver to remote/dovecot: ")[1].split(" delivered")[0]) for out, _ in outs]
    assert sum(counts) == n, outs
    assert list((tmp_path / "spool" / "new").iterdir()) == []
    got = maildir(dovecot, "alice@example.test", token)
    subjects = sorted(m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].split(b"\n", 1)[0] for m in got)
    assert len(got) == n, f"{len(got)} messages in the Maildir for {n} spooled"
    assert len(set(subjects)) == n


def test_contended_claims_in_two_threads(tmp_path: Path, dovecot: DovecotServer) -> None:
    """Two runs started at the same instant (threads, each with its own event loop, next hop and file
    descriptors -- flock conflicts between descriptors as between processes): both deliver, neither
    delivers what the other did."""
    import threading

    from smtpgate.config.load import load_file
    from smtpgate.delivery.nexthop import NextHop
    from smtpgate.spoolcli import SpoolDir, deliver_one

    token = uuid.uuid4().hex
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(config(tmp_path, dovecot.lmtp_port))
    n = 30
    write_spooled(str(tmp_path / "spool"), token, n, ["alice@example.test"])
    settings = load_file(str(conf))
    start = threading.Barrier(2)
    delivered: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    async def one_run(i: int) -> None:
        hop = NextHop(settings.remotes["dovecot"], settings.hostname)
        sp = SpoolDir(settings.queue_path)
        for name in sp.ids():
            if await deliver_one(sp, name, hop, "remote/dovecot") == "delivered":
                delivered[i].append(name)
        await hop.close()

    def run(i: int) -> None:
        start.wait()
        try:
            asyncio.run(one_run(i))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert len(delivered[0]) + len(delivered[1]) == n
    assert not set(delivered[0]) & set(delivered[1])
    assert delivered[0] and delivered[1], [len(d) for d in delivered]
    assert len(maildir(dovecot, "alice@example.test", token)) == n


def test_the_documented_format_is_what_the_spool_writes(tmp_path: Path) -> None:
    """docs/spool-format.md is a contract: its field table lists exactly the fields the spool writes,
    with the documented types, and the message part is exactly ``size`` bytes after the first LF."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "spool-format.md").read_text()
    table = dict(re.findall(r"^\s*\| `(\w+)` \| ([^|]+) \|", doc, re.M))
    write_spooled(str(tmp_path / "spool"), uuid.uuid4().hex, 1, ["a@example.test", "b@example.test"])
    (path,) = (tmp_path / "spool" / "new").iterdir()
    assert re.fullmatch(r"\d+\.[0-9A-F]+", path.name)
    raw = path.read_bytes()
    header, _, message = raw.partition(b"\n")
    env = json.loads(header)
    assert set(env) == set(table), (sorted(env), sorted(table))
    types = {"string": str, "array of strings": list, "number": (int, float), "integer": int, "object": dict,
             "string or null": (str, type(None))}
    for field, kind in table.items():
        assert isinstance(env[field], types[kind.strip()]), (field, kind, env[field])
    assert env["size"] == len(message) and path.name.endswith(env["queue_id"])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
