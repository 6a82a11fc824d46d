"""Server-side TLS contexts (TLS 1.2 minimum) and what a finished handshake tells the session."""
from __future__ import annotations

import os
import ssl
import tempfile

from ..config.model import CertificateSettings, ListenerTls
from ..sasl.base import ChannelBinding
from ..session.requests import TlsInfo

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(cert: CertificateSettings, tls: ListenerTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls.ignore_client_order:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_COMPRESSION
    configure(ctx, cert, tls)
    return ctx


def configure(ctx: ssl.SSLContext, cert: CertificateSettings, tls: ListenerTls) -> None:
    """Give ``ctx`` the certificate and protocol range of ``tls``: at creation, and again in place when a
    reload rotates the certificate (sessions keep the context object they hold)."""
    versions = sorted(_VERSIONS[p] for p in tls.protocols)
    ctx.minimum_version, ctx.maximum_version = versions[0], versions[-1]
    # load_cert_chain only reads files: inline PEM goes through a private temporary directory.
    with tempfile.TemporaryDirectory() as tmp:
        cpath, kpath = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cpath, "w") as fh:
            fh.write(cert.cert_pem)
        with os.fdopen(os.open(kpath, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(cert.key_pem)
        ctx.load_cert_chain(cpath, kpath)


def tls_info(ssl_object) -> TlsInfo | None:
    if ssl_object is None:
        return None
    version = ssl_object.version() or "TLS"
    cipher = (ssl_object.cipher() or ("unknown",))[0]
    binding = None
    # tls-unique (RFC 5929) is only sound before TLS 1.3; Python's ssl module does not expose the
    # keying-material exporter that tls-exporter (RFC 9266) needs, so -PLUS is offered on TLS 1.2 only.
    if version == "TLSv1.2":
        try:
            data = ssl_object.get_channel_binding("tls-unique")
        except (ValueError, ssl.SSLError):
            data = None
        if data:
            binding = ChannelBinding("tls-unique", data)
    return TlsInfo(version, cipher, binding)
