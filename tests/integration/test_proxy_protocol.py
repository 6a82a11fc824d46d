"""PROXY protocol v1/v2 on listeners with ``proxy.trusted-networks``, over real sockets and through a real
HAProxy: required from trusted peers, ignored (garbage SMTP) from others, and the header's client is the
session's remote-ip everywhere (if-blocks, logs, the Received header), its destination the local-ip/port.
Attacker and client sources are distinct loopback addresses (127.0.0.x)."""
from __future__ import annotations

import json
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest

from smtpgate.config.errors import ConfigError
from smtpgate.config.load import load_text
from smtpgate.protocol.proxy import V2_SIGNATURE
from tests.fixtures.haproxy import run_haproxy
from tests.fixtures.server import SERVER_HEAD, run_server
from tests.smtpclient import Raw, client_tls

# The proxy (and the test, standing in for it) connects from 127.0.0.1; clients of their own from 127.0.0.2+.
CONFIG = SERVER_HEAD + """
[server.listener.smtp]
bind = ["127.0.0.1:0"]
proxy.trusted-networks = ["127.0.0.1/32", "::1"]

[server.listener.submissions]
bind = ["127.0.0.1:0"]
tls.implicit = true
proxy.trusted-networks = ["127.0.0.1"]

[server.listener.plain]
bind = ["127.0.0.1:0"]

[session.rcpt]
relay = [ { if = "remote-ip", eq = "192.0.2.0/24", then = true }, { else = false } ]

[session.auth]
mechanisms = ["plain"]
allow-plain-text = true
lookup = "list/users"
errors.wait = "1ms"

[list]
users = ["john:secret"]
"""


def connect(port: int, source: str = "127.0.0.1", prefix: bytes = b"", tls: ssl.SSLContext | None = None,
            greet: bool = True) -> Raw:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    if prefix:
        sock.sendall(prefix)
    raw = Raw.__new__(Raw)
    raw.sock = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
    raw.buf = b""
    if greet:
        raw.greeting = raw.reply()
    return raw


def v2(src: str, dst: str, sport: int, dport: int, command: int = 1) -> bytes:
    if command == 0:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def send_mail(raw: Raw, rcpt: str = "a@example.org") -> str:
    assert raw.cmd("EHLO client.test").startswith("250")
    assert raw.cmd("MAIL FROM:<x@client.test>").startswith("250")
    reply = raw.cmd(f"RCPT TO:<{rcpt}>")
    if not reply.startswith("250"):
        return reply
    assert raw.cmd("DATA").startswith("354")
    return raw.cmd("Subject: t\r\n\r\nhello\r\n.")


def spooled(srv) -> list[tuple[dict, bytes]]:
    out = []
    for path in srv.spool_files():
        env, _, body = path.read_bytes().partition(b"\n")
        out.append((json.loads(env), body))
    return out


def wait_for(pred, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    return pred()


# -- configuration ----------------------------------------------------------------------------------------

def test_config_keys() -> None:
    s = load_text('[server.listener.smtp]\nbind = "127.0.0.1:0"\nproxy.trusted-networks = ["127.0.0.1/32", "::1"]\n'
                  '[server.listener.plain]\nbind = "127.0.0.1:0"\n')
    assert s.listeners["smtp"].proxy.trusts("127.0.0.1") and s.listeners["smtp"].proxy.trusts("::ffff:127.0.0.1")
    assert s.listeners["smtp"].proxy.trusts("::1") and not s.listeners["smtp"].proxy.trusts("127.0.0.2")
    assert s.listeners["plain"].proxy is None
    g = load_text('[server.proxy]\ntrusted-networks = ["10.0.0.0/8"]\n[server.listener.a]\nbind = "127.0.0.1:0"\n'
                  '[server.listener.b]\nbind = "127.0.0.1:0"\nproxy.trusted-networks = []\n')
    assert g.listeners["a"].proxy.trusts("10.9.8.7") and g.listeners["b"].proxy is None


@pytest.mark.parametrize("value,reason", [('["10.0.0.0/33"]', "invalid network"), ('[1]', "list of strings"),
                                          ('"nonsense"', "invalid network")])
def test_config_errors(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(f'[server.listener.a]\nbind = "127.0.0.1:0"\nproxy.trusted-networks = {value}\n')
    assert "server.listener.a.proxy.trusted-networks" in str(err.value) and reason in str(err.value)


# -- direct sockets -----------------------------------------------------------------------------------------

def test_v1_and_v2_headers_name_the_client(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        port = srv.port("smtp")
        # Header and first command in one packet, as a proxy forwarding a pipelining client would send them.
        raw = connect(port, prefix=b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 25\r\n")
        assert send_mail(raw).startswith("250"), "remote-ip 192.0.2.7 in if-blocks: relay allowed"
        raw.close()
        raw = connect(port, prefix=v2("192.0.2.8", "198.51.100.2", 40002, 2525))
        assert raw.cmd("EHLO client.test").startswith("250")
        assert raw.cmd("AUTH PLAIN " + "AGpvaG4Ad3Jvbmc=").startswith("535")
        assert send_mail(raw).startswith("250")
        raw.close()
        msgs = wait_for(lambda: len(spooled(srv)) == 2 and spooled(srv))
        received = sorted(body.split(b"\r\n\tby")[0] for _, body in msgs)
        assert received == [b"Received: from client.test ([192.0.2.7])", b"Received: from client.test ([192.0.2.8])"]
        assert sorted(env["remote_ip"] for env, _ in msgs) == ["192.0.2.7", "192.0.2.8"]
        assert any("192.0.2.8" in line and "40002" in line for line in srv.logs if "AUTH" in line.upper()), srv.logs


def test_header_in_pieces_and_v2_local(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        port = srv.port("smtp")
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        header = v2("192.0.2.9", "198.51.100.3", 1, 25)
        for i in range(len(header)):          # one octet at a time
            sock.sendall(header[i:i + 1])
            time.sleep(0.002)
        raw = Raw.__new__(Raw)
        raw.sock, raw.buf = sock, b""
        assert raw.reply().startswith("220 ")
        assert send_mail(raw).startswith("250")
        raw.close()
        # LOCAL (a proxy's health check): the connection's own address stands -> 127.0.0.1, no relay.
        raw = connect(port, prefix=v2("", "", 0, 0, command=0))
        assert send_mail(raw).startswith("550 5.7.1")
        raw.close()


def test_trusted_peer_without_valid_header_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import smtpgate.config.proxy as proxy_mod
    monkeypatch.setattr(proxy_mod, "HEADER_TIMEOUT", 0.5)
    with run_server(CONFIG, tmp_path) as srv:
        port = srv.port("smtp")
        for prefix in (b"EHLO client.test\r\n", b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n", b"\r\n\r\n\x00\r\nQUIT\n\x31",
                       b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 25"):   # no CRLF: times out
            raw = connect(port, prefix=prefix, greet=False)
            assert raw.closed(timeout=5), prefix
            assert raw.buf == b""
            raw.close()
        raw = connect(port, greet=False)                # silence: closed after the header timeout
        t0 = time.monotonic()
        assert raw.closed(timeout=5) and time.monotonic() - t0 < 3
        assert sum("PROXY header from 127.0.0.1 refused" in line for line in srv.logs) == 5, srv.logs
        assert srv.server.connection_count == 0


def test_untrusted_peer_header_is_garbage_smtp(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        raw = connect(srv.port("smtp"), source="127.0.0.2")
        assert raw.greeting.startswith("220 ")
        assert raw.cmd("PROXY TCP4 192.0.2.7 198.51.100.1 40001 25").startswith("500")
        assert send_mail(raw).startswith("550 5.7.1"), "never trusted: still 127.0.0.2, no relay"
        assert raw.cmd("NOOP").startswith("250")
        # The v2 signature was made to end a non-PROXY session: CRLF CRLF NUL CRLF "QUIT" LF.
        raw.send(v2("192.0.2.7", "198.51.100.1", 1, 25))
        replies = [raw.reply()[:3] for _ in range(4)]
        assert replies == ["500", "500", "500", "221"] and raw.closed()
        raw.close()
        # A listener without trusted networks: a header is a bad command from anyone.
        raw = connect(srv.port("plain"), prefix=b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 25\r\n")
        assert raw.reply().startswith("500")
        assert send_mail(raw).startswith("550 5.7.1")


def test_implicit_tls_header_comes_before_the_handshake(tmp_path: Path) -> None:
    with run_server(CONFIG, tmp_path) as srv:
        port = srv.port("submissions")
        tls = client_tls(srv.ca_file)
        raw = connect(port, prefix=v2("192.0.2.10", "198.51.100.4", 5555, 465), tls=tls)
        assert raw.greeting.startswith("220 ")
        assert send_mail(raw).startswith("250")
        raw.close()
        raw = connect(port, prefix=b"PROXY TCP4 192.0.2.11 198.51.100.4 5556 465\r\n", tls=tls)
        assert send_mail(raw).startswith("250")
        raw.close()
        raw = connect(port, source="127.0.0.3", tls=tls)        # untrusted: plain implicit TLS
        assert send_mail(raw).startswith("550 5.7.1")
        raw.close()
        msgs = wait_for(lambda: len(spooled(srv)) == 2 and spooled(srv))
        assert sorted(env["remote_ip"] for env, _ in msgs) == ["192.0.2.10", "192.0.2.11"]
        assert all(env["tls"] for env, _ in msgs)


# -- through HAProxy ------------------------------------------------------------------------------------------

@pytest.mark.service("haproxy")
@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
def test_through_haproxy(tmp_path: Path, send_proxy: str) -> None:
    config = CONFIG.replace('eq = "192.0.2.0/24"', 'eq = "127.0.0.7"')
    with run_server(config, tmp_path / "node") as srv:
        with run_haproxy(tmp_path / "hap", {"smtp": [srv.port("smtp")], "smtps": [srv.port("submissions")]},
                         send_proxy=send_proxy) as hap:
            raw = connect(hap.port("smtp"), source="127.0.0.7")
            assert send_mail(raw).startswith("250"), "the real client 127.0.0.7 may relay"
            raw.close()
            raw = connect(hap.port("smtp"), source="127.0.0.8")
            assert send_mail(raw).startswith("550 5.7.1"), "127.0.0.8 may not"
            raw.close()
            raw = connect(hap.port("smtps"), source="127.0.0.7", tls=client_tls(srv.ca_file))
            assert send_mail(raw).startswith("250")
            raw.close()
            msgs = wait_for(lambda: len(spooled(srv)) == 2 and spooled(srv))
            assert [env["remote_ip"] for env, _ in msgs] == ["127.0.0.7", "127.0.0.7"]
            assert all(b"([127.0.0.7])" in body.split(b"\r\n")[0] for _, body in msgs)
        assert not any("refused" in line for line in srv.logs), srv.logs   # health checks send headers too


def test_guard_judges_the_client_the_header_names(tmp_path: Path) -> None:
    """Blocked, banned and throttled addresses are those of the real clients, on plain and implicit-TLS
    listeners alike -- never the proxy's (which is not blocked here)."""
    config = CONFIG.replace('hostname = "mx.test"', 'hostname = "mx.test"\nblocked-ip = ["192.0.2.66"]', 1)
    with run_server(config, tmp_path) as srv:
        raw = connect(srv.port("smtp"), prefix=v2("192.0.2.66", "198.51.100.1", 1, 25), greet=False)
        assert raw.reply().startswith("421 4.7.0"), "refused before the session, with one line"
        assert raw.closed()
        raw = connect(srv.port("smtp"), prefix=v2("192.0.2.67", "198.51.100.1", 1, 25))
        assert raw.greeting.startswith("220 ")
        raw.close()
        with pytest.raises((ssl.SSLError, OSError, EOFError)):      # implicit TLS: closed before the handshake
            connect(srv.port("submissions"), prefix=v2("192.0.2.66", "198.51.100.4", 1, 465),
                    tls=client_tls(srv.ca_file))
        raw = connect(srv.port("submissions"), prefix=v2("192.0.2.67", "198.51.100.4", 1, 465),
                      tls=client_tls(srv.ca_file))
        assert raw.greeting.startswith("220 ")
        raw.close()


def test_connections_count_toward_max_connections_from_accept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trusted peer's connection holds a max-connections slot from accept(), while its header is still
    awaited: a load balancer (or anyone in its network) cannot hold descriptors past the limit."""
    import smtpgate.config.proxy as proxy_mod
    monkeypatch.setattr(proxy_mod, "HEADER_TIMEOUT", 3.0)
    config = CONFIG.replace('proxy.trusted-networks = ["127.0.0.1/32", "::1"]',
                            'proxy.trusted-networks = ["127.0.0.1/32", "::1"]\nmax-connections = 2', 1)
    with run_server(config, tmp_path) as srv:
        port = srv.port("smtp")
        silent = [connect(port, greet=False), connect(port, prefix=b"PROXY TCP4 192.0.2", greet=False)]
        assert wait_for(lambda: srv.server.connection_count == 2)
        late = connect(port, prefix=v2("192.0.2.9", "198.51.100.1", 1, 25), greet=False)
        assert late.reply().startswith("421 4.7.0 Too many connections")
        assert late.closed()
        assert any("reason=max-connections" in line and "remote=192.0.2.9" in line for line in srv.logs), srv.logs
        for raw in silent:                          # gone before sending (the rest of) a header: slot freed
            raw.close()
        assert wait_for(lambda: srv.server.connection_count == 0)
        raw = connect(port, prefix=v2("192.0.2.9", "198.51.100.1", 1, 25))
        assert raw.greeting.startswith("220 ")
        assert srv.server.connection_count == 1
        raw.close()
