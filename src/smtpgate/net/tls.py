"""Client side of TLS for everything smtpgate connects to (remote IMAP/SMTP/LMTP, LDAP, next hop).

One place decides how certificates are checked: verified against ``tls.ca-file`` (or the system store)
with hostname/IP matching, unless ``tls.allow-invalid-certs`` turns off both the chain and the name check.
TLS 1.2 is the floor, as on the server side.
"""
from __future__ import annotations

import ssl

from ..config.model import TlsClientSettings


def client_context(settings: TlsClientSettings) -> ssl.SSLContext:
    """An SSLContext for connecting to a remote described by ``settings``.

    Raises ``ValueError`` (no secrets involved, safe to show) when ``ca_file`` cannot be loaded, so a
    broken path is reported at startup rather than as every lookup being "unavailable".
    """
    try:
        ctx = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load CA file {settings.ca_file!r}: {exc.strerror or exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.allow_invalid_certs:
        ctx.check_hostname = False        # must be switched off before verify_mode
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
