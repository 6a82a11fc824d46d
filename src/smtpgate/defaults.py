"""The embedded default: what ``smtpgate serve`` runs with no ``--config``.

Unprivileged loopback ports (2525 plain SMTP for inbound, 5870 submission with STARTTLS, 4650
submissions with implicit TLS), a self-signed certificate generated on first run, smtpgate's own SQLite
user store and a local spool, all under the data directory (``--data-dir``, default ``./smtpgate-data``).
"""
from __future__ import annotations

import datetime
import os
import sys

DEFAULT_DATA_DIR = "smtpgate-data"

TEMPLATE = """\
# smtpgate embedded default (generated; copy it to start your own configuration)
[server]
hostname = "{hostname}"

[server.listener.smtp]
bind = ["127.0.0.1:2525"]

[server.listener.submission]
bind = ["127.0.0.1:5870"]

[server.listener.submissions]
bind = ["127.0.0.1:4650"]
tls.implicit = true

[server.tls]
enable = true
certificate = "default"

[certificate.default]
cert = "file://{data}/tls/cert.pem"
private-key = "file://{data}/tls/key.pem"

[directory.users]
type = "internal"
store = "sqlite://{data}/users.db"

# Submission: AUTH only once the session is encrypted (STARTTLS on 5870, implicit TLS on 4650), as
# Stalwart's own default does; before that, EHLO offers STARTTLS and no AUTH at all. SCRAM does not reveal
# the password, but the login name and the whole message would still cross the network in clear.
[session.auth]
mechanisms = [ {{ if = "listener", eq = "smtp", then = [] }},
               {{ if = "tls", eq = false, then = [] }},
               {{ else = ["plain", "login", "scram-sha-256", "scram-sha-1"] }} ]
lookup = [ {{ if = "listener", ne = "smtp", then = "directory/users" }},
           {{ else = false }} ]
require = [ {{ if = "listener", ne = "smtp", then = true }},
            {{ else = false }} ]

[session.auth.errors]
total = 3
wait = "5s"
wait-growth = "1s"        # + 1 s per recent failed login of the client's address, up to wait-max
wait-max = "30s"

# At most 20 connections at once per client address; auto-ban (server.auto-ban.*) is on by default.
[[session.throttle]]
key = ["remote-ip"]
concurrency = 20

[session.rcpt.lookup]
domains = "list/domains"

[list]
domains = {domains}

[queue]
path = "{data}/spool"
"""


#: What earlier builds generated, and what replaces it in a file that still has it word for word:
#: SCRAM offered on submission before STARTTLS, and "localhost" listed twice.
_OLD_BLOCKS = (
    ('mechanisms = [ { if = "listener", ne = "smtp", then = ["plain", "login", "scram-sha-256", "scram-sha-1"] },\n'
     '               { else = [] } ]\n',
     'mechanisms = [ { if = "listener", eq = "smtp", then = [] },\n'
     '               { if = "tls", eq = false, then = [] },\n'
     '               { else = ["plain", "login", "scram-sha-256", "scram-sha-1"] } ]\n'),
    ('domains = ["localhost", "localhost"]\n', 'domains = ["localhost"]\n'),
)


def _upgrade(path: str) -> None:
    """Fix a generated file of an older version in place (only the exact generated lines are touched)."""
    with open(path) as fh:
        text = fh.read()
    if not text.startswith("# smtpgate embedded default (generated"):
        return
    new = text
    for old, fixed in _OLD_BLOCKS:
        new = new.replace(old, fixed)
    if new != text:
        tmp = path + ".new"
        with open(tmp, "w") as fh:
            fh.write(new)
        os.replace(tmp, path)
        print(f"smtpgate: updated {path}: no AUTH offered before TLS on submission", file=sys.stderr)


def render(data: str, hostname: str = "localhost") -> str:
    """The configuration text for a data directory (absolute) and host name."""
    domains = list(dict.fromkeys(["localhost", hostname.lower()]))  # no duplicate when hostname is localhost
    return TEMPLATE.format(data=data, hostname=hostname,
                           domains="[" + ", ".join(f'"{d}"' for d in domains) + "]")


def ensure(data_dir: str, hostname: str = "localhost") -> str:
    """Create the data directory, certificate and config if missing; return the config path."""
    data = os.path.abspath(data_dir)
    os.makedirs(os.path.join(data, "tls"), mode=0o700, exist_ok=True)
    cert, key = os.path.join(data, "tls", "cert.pem"), os.path.join(data, "tls", "key.pem")
    if not (os.path.exists(cert) and os.path.exists(key)):
        write_self_signed(cert, key, hostname)
    path = os.path.join(data, "smtpgate.toml")
    if not os.path.exists(path):
        with open(path, "w") as fh:
            fh.write(render(data, hostname))
    else:
        _upgrade(path)
    return path


def write_self_signed(cert_path: str, key_path: str, hostname: str) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName([x509.DNSName(hostname), x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
