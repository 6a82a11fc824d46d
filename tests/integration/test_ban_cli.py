"""``smtpgate ban list|add|del`` as an operator runs it, against the in-memory store's bans.json (with a
running server that picks the change up) and against Redis (unique prefix)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from smtpgate.abuse.banfile import BanFile
from tests.fixtures.redis import keys_with_prefix, redis_prefix  # noqa: F401
from tests.fixtures.server import SERVER_HEAD, listeners, run_server
from tests.smtpclient import Raw


def smtpgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smtpgate", *args], capture_output=True, text=True, timeout=60)


def write_config(tmp: Path, extra: str = "") -> Path:
    path = tmp / "smtpgate.toml"
    path.write_text('[server.listener.smtp]\nbind = "127.0.0.1:0"\n[queue]\npath = "spool"\n' + extra)
    return path


def test_add_list_del_on_the_ban_file(tmp_path):
    cfg = str(write_config(tmp_path))
    r = smtpgate("ban", "add", "192.0.2.44", "--for", "2h", "--reason", "spam run", "--config", cfg)
    assert r.returncode == 0 and r.stdout.startswith("ban 192.0.2.44 reason=spam run until="), r
    r = smtpgate("ban", "add", "2001:db8:7:8::99", "--config", cfg)
    assert "ban 2001:db8:7:8::/64 " in r.stdout               # IPv6: the whole /64
    r = smtpgate("ban", "list", "--json", "--config", cfg)
    bans = {json.loads(line)["address"]: json.loads(line) for line in r.stdout.splitlines()}
    assert set(bans) == {"192.0.2.44", "2001:db8:7:8::/64"}
    assert bans["192.0.2.44"]["reason"] == "spam run"
    assert 7100 < bans["192.0.2.44"]["until"] - time.time() <= 7200
    r = smtpgate("ban", "del", "2001:db8:7:8::/64", "--config", cfg)
    assert r.returncode == 0 and r.stdout.startswith("unban 2001:db8:7:8::/64"), r
    r = smtpgate("ban", "del", "2001:db8:7:8::/64", "--config", cfg)
    assert r.returncode == 1 and "is not banned" in r.stderr
    r = smtpgate("ban", "add", "not-an-ip", "--config", cfg)
    assert r.returncode == 1 and r.stderr.startswith("smtpgate ban: not an IP address") and "Traceback" not in r.stderr
    r = smtpgate("ban", "add", "192.0.2.1", "--for", "soon", "--config", cfg)
    assert r.returncode == 1 and "invalid duration" in r.stderr
    assert set(BanFile(str(tmp_path / "bans.json")).load()) == {"192.0.2.44"}


def test_a_running_server_follows_the_cli_within_a_second(tmp_path):
    config = SERVER_HEAD + listeners("smtp")
    with run_server(config, tmp_path) as srv:
        cfg = tmp_path / "cli.toml"
        # What the CLI needs of the server's configuration: the same queue.path (-> the same bans.json).
        cfg.write_text(f'[server.listener.x]\nbind = "127.0.0.1:0"\n[queue]\npath = "{tmp_path}/spool"\n')
        port = srv.port("smtp")
        assert smtpgate("ban", "add", "127.0.0.1", "--config", str(cfg)).returncode == 0
        deadline = time.monotonic() + 1.5
        refused = False
        while time.monotonic() < deadline and not refused:
            c = Raw(port)
            refused = c.greeting.startswith("421 4.7.0")
            c.close()
            time.sleep(0.1)
        assert refused, "the server did not apply the CLI's ban within 1.5 s"
        assert smtpgate("ban", "del", "127.0.0.1", "--config", str(cfg)).returncode == 0
        time.sleep(1.2)
        c = Raw(port)
        assert c.greeting.startswith("220 ")
        c.close()
        lines = "\n".join(srv.logs)
        assert "ban 127.0.0.1 reason=manual" in lines and "unban 127.0.0.1 (was: reason=manual" in lines


def test_add_list_del_on_redis(tmp_path, redis_prefix):
    cfg = str(write_config(tmp_path, f'[store.shared]\ntype = "redis"\nurls = ["redis://127.0.0.1:6379"]\n'
                                     f'prefix = "{redis_prefix}"\n[storage]\nlookup = "shared"\n'))
    r = smtpgate("ban", "add", "198.51.100.9", "--for", "10m", "--config", cfg)
    assert r.returncode == 0 and "redis store 'shared'" in r.stdout, r
    r = smtpgate("ban", "list", "--config", cfg)
    assert r.stdout.startswith("198.51.100.9 ") and "manual" in r.stdout
    assert all(ttl > 0 for ttl in keys_with_prefix(redis_prefix).values())
    r = smtpgate("ban", "del", "198.51.100.9", "--config", cfg)
    assert r.returncode == 0
    assert smtpgate("ban", "list", "--json", "--config", cfg).stdout == ""


def test_redis_unreachable_is_one_line_and_exit_1(tmp_path):
    from tests.support import free_port
    cfg = str(write_config(tmp_path, f'[store.r]\ntype = "redis"\nurls = ["redis://127.0.0.1:{free_port()}"]\n'
                                     '[storage]\nlookup = "r"\n'))
    r = smtpgate("ban", "add", "198.51.100.9", "--config", cfg)
    assert r.returncode == 1 and r.stderr.startswith("smtpgate ban: cannot reach redis store 'r'"), r
    assert "Traceback" not in r.stderr
