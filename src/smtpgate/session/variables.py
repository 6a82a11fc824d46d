"""The values if-blocks test (``config.ifblock.VARIABLES``), kept current by the stages."""
from __future__ import annotations

from typing import Any


class SessionVariables:
    """One per session: ``remote-ip``, ``helo-domain``, ``sender``... as attributes, because every
    compiled if-block condition reads them directly (``ctx.remote_ip``)."""
    __slots__ = ("listener", "remote_ip", "local_ip", "local_port", "tls", "helo_domain",
                 "authenticated_as", "sender", "sender_domain", "rcpt", "rcpt_domain")

    def __init__(self, listener: str, remote_ip: Any, local_ip: Any, local_port: int, tls: bool):
        self.listener = listener
        self.remote_ip = remote_ip
        self.local_ip = local_ip
        self.local_port = local_port
        self.tls = tls
        self.helo_domain = None
        self.authenticated_as = None
        self.sender = None
        self.sender_domain = None
        self.rcpt = None
        self.rcpt_domain = None
