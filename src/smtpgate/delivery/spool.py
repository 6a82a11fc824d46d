"""The local spool: a message is accepted only once it is on disk for good.

Layout (Maildir-like, so a partially written file is never visible as a message)::

    <queue.path>/tmp/<id>   written and fsynced here first
    <queue.path>/new/<id>   then renamed (atomic on POSIX) and the directory fsynced

Each file is one JSON line with the envelope, then the message exactly as received (with our
``Received:`` header on top). ``read_message(path)`` parses it back.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from ..protocol import replies as R
from ..protocol.commands import xtext_encode
from .base import Delivery, Envelope, RcptResult


class Spool(Delivery):
    def __init__(self, path: str):
        self.path = path
        self.tmp = os.path.join(path, "tmp")
        self.new = os.path.join(path, "new")

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._prepare)

    def _prepare(self) -> None:
        os.makedirs(self.tmp, mode=0o700, exist_ok=True)
        os.makedirs(self.new, mode=0o700, exist_ok=True)
        # Leftovers in tmp/ were never acknowledged with 250: they are not messages.
        for name in os.listdir(self.tmp):
            try:
                os.unlink(os.path.join(self.tmp, name))
            except OSError:
                pass

    async def deliver(self, envelope: Envelope) -> list[RcptResult]:
        loop = asyncio.get_running_loop()
        try:
            name = await loop.run_in_executor(None, self._write, envelope)
        except OSError as exc:
            import logging
            logging.getLogger("smtpgate.spool").error("spool write failed: %s", exc.strerror)
            return [RcptResult.from_reply(R.SPOOL_FAILED)] * len(envelope.rcpt_to)
        return [RcptResult(250, f"2.0.0 Ok: queued as {name}")] * len(envelope.rcpt_to)

    def _write(self, env: Envelope) -> str:
        name = f"{int(time.time())}.{env.queue_id}"
        header = json.dumps({
            "mail_from": env.mail_from, "rcpt_to": env.rcpt_to, "authenticated_as": env.authenticated_as,
            "auth_param": env.auth_param, "helo": env.helo, "remote_ip": env.remote_ip,
            "listener": env.listener, "tls": env.tls, "queue_id": env.queue_id,
            "received_at": env.received_at, "size": len(env.data),
            "params": _effective_params(env),
        }, separators=(",", ":")).encode()
        tmp_path = os.path.join(self.tmp, name)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(header + b"\n" + env.data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp_path)
            raise
        os.close(fd)
        os.rename(tmp_path, os.path.join(self.new, name))
        dfd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return name


def _effective_params(env: Envelope) -> dict[str, str | None]:
    """MAIL parameters as they apply: ``AUTH=`` is what was kept (RFC 4954 §5, xtext), ``<>`` when the
    client's claim was not trusted -- never the client's raw claim."""
    params = dict(env.mail_params)
    if "AUTH" in params:
        params["AUTH"] = "<>" if env.auth_param in (None, "<>") else xtext_encode(env.auth_param)
    return params


def read_message(path: str) -> tuple[dict[str, Any], bytes]:
    with open(path, "rb") as fh:
        raw = fh.read()
    header, _, message = raw.partition(b"\n")
    envelope = json.loads(header)
    if envelope.get("size") != len(message):
        raise ValueError(f"{path}: truncated message")
    return envelope, message
