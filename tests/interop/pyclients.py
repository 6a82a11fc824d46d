"""The Python clients as a program, so the tests run them in their own process like any other client.

    python -m tests.interop.pyclients '<json>'

``json``: ``library`` ("smtplib" | "aiosmtplib"), ``port``, ``tls`` ("starttls" | "implicit"), ``ca``,
``user``, ``steps``: a list of ``["login", password]`` (the library's own mechanism choice: CRAM-MD5, PLAIN,
LOGIN in turn), ``["auth", MECH, password]`` (one mechanism), ``["noop"]``, ``["send", sender, rcpt, text]``.
Prints one JSON object per step: ``{"ok": [code, text]}`` or ``{"error": ExceptionName, "code": n, "text": s}``.
"""
from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import sys
from typing import Any

import aiosmtplib


def _error(exc: BaseException) -> dict[str, Any]:
    code = getattr(exc, "smtp_code", None) or getattr(exc, "code", None)
    text = getattr(exc, "smtp_error", None) or getattr(exc, "message", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return {"error": type(exc).__name__, "code": code, "text": str(text)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def run_smtplib(cfg: dict[str, Any], ctx: ssl.SSLContext) -> list[dict[str, Any]]:
    if cfg["tls"] == "implicit":
        client = smtplib.SMTP_SSL("127.0.0.1", cfg["port"], local_hostname="client.test", context=ctx, timeout=10)
    else:
        client = smtplib.SMTP("127.0.0.1", cfg["port"], local_hostname="client.test", timeout=10)
        client.starttls(context=ctx)
    client.ehlo()
    out = []
    for step in cfg["steps"]:
        try:
            if step[0] == "login":
                code, text = client.login(cfg["user"], step[1])
            elif step[0] == "auth":
                client.user, client.password = cfg["user"], step[2]
                method = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login, "CRAM-MD5": client.auth_cram_md5}
                code, text = client.auth(step[1], method[step[1]], initial_response_ok=step[1] != "CRAM-MD5")
            elif step[0] == "noop":
                code, text = client.noop()
            elif step[0] == "send":
                refused = client.sendmail(step[1], [step[2]], step[3].encode())
                code, text = 250, json.dumps(refused)
            else:
                raise ValueError(step[0])
            out.append({"ok": [code, _text(text)]})
        except (smtplib.SMTPException, OSError) as exc:
            out.append(_error(exc))
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        pass
    return out


async def run_aiosmtplib(cfg: dict[str, Any], ctx: ssl.SSLContext) -> list[dict[str, Any]]:
    implicit = cfg["tls"] == "implicit"
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=cfg["port"], local_hostname="client.test",
                             use_tls=implicit, start_tls=not implicit, tls_context=ctx, timeout=10)
    await client.connect()
    await client.ehlo()      # auth_plain() & co. do not say EHLO first (login() does)
    out = []
    for step in cfg["steps"]:
        try:
            if step[0] == "login":
                reply = await client.login(cfg["user"], step[1])
            elif step[0] == "auth":
                method = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login, "CRAM-MD5": client.auth_crammd5}
                reply = await method[step[1]](cfg["user"], step[2])
            elif step[0] == "noop":
                reply = await client.noop()
            elif step[0] == "send":
                errors, text = await client.sendmail(step[1], [step[2]], step[3].encode())
                reply = aiosmtplib.SMTPResponse(250, text) if not errors else aiosmtplib.SMTPResponse(550, str(errors))
            else:
                raise ValueError(step[0])
            out.append({"ok": [reply.code, reply.message]})
        except (aiosmtplib.SMTPException, OSError) as exc:
            out.append(_error(exc))
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        pass
    return out


def main() -> None:
    cfg = json.loads(sys.argv[1])
    ctx = ssl.create_default_context(cafile=cfg["ca"])
    if cfg["library"] == "smtplib":
        result = run_smtplib(cfg, ctx)
    else:
        result = asyncio.run(run_aiosmtplib(cfg, ctx))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
