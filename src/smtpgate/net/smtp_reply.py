"""Reading an SMTP/LMTP server's reply (RFC 5321 §4.2), for the remote lookup and the next hop."""
from __future__ import annotations

from .stream import LineStream, RemoteProtocolError

_MAX_REPLY_LINES = 100


async def read_reply(stream: LineStream) -> tuple[int, list[str]]:
    """One (possibly multi-line) reply: its code and the text of each line."""
    code: int | None = None
    texts: list[str] = []
    while True:
        line = await stream.read_line()
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
            raise RemoteProtocolError("malformed reply")
        this = int(line[:3])
        if code is not None and this != code:
            raise RemoteProtocolError("inconsistent codes in a multi-line reply")
        code = this
        texts.append(line[4:].decode("utf-8", "replace"))
        if line[3:4] != b"-":
            return code, texts
        if len(texts) >= _MAX_REPLY_LINES:
            raise RemoteProtocolError("over-long multi-line reply")
