"""Where each key and each if-block rule sits in the TOML text (line numbers for ``smtpgate explain``).

``tomllib`` gives values without positions, so this is a small positional pass over the text that has
already been parsed successfully: it knows tables, array-of-tables, dotted and quoted keys, inline tables,
arrays and the four string forms, and skips everything else (numbers, dates, booleans) up to the next
delimiter. It never validates -- ``config.load`` does that.

Result: ``{"session.auth.mechanisms": 12, "session.auth.mechanisms[0]": 12, "session.auth.mechanisms[1]": 13}``
-- key paths as ``config.load`` flattens them, array elements as ``<key>[<index>]`` (the index an if-block
rule has in the error messages). A line is that of the key's first character, or of an element's
first character (a rule's opening ``{``). Precision: exact for everything written in the file, including
keys set through a dotted key (``auth.mechanisms = ...`` under ``[session]``) or an inline table; a key
given twice is a TOML error, so there is no ambiguity.
"""
from __future__ import annotations

import bisect

_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.out: dict[str, int] = {}
        self._line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        self._aot: dict[str, int] = {}

    def line(self, pos: int | None = None) -> int:
        return bisect.bisect_right(self._line_starts, self.pos if pos is None else pos)

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def skip_space(self, newlines: bool) -> None:
        t = self.text
        while self.pos < len(t):
            ch = t[self.pos]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.pos += 1
            elif ch == "#":
                end = t.find("\n", self.pos)
                self.pos = len(t) if end < 0 else end
            else:
                return

    # -- keys ---------------------------------------------------------------------------------------
    def key(self) -> list[str]:
        parts = []
        while True:
            self.skip_space(False)
            ch = self.peek()
            if ch in ('"', "'"):
                parts.append(self.string())
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE:
                    self.pos += 1
                parts.append(self.text[start:self.pos])
            self.skip_space(False)
            if self.peek() == ".":
                self.pos += 1
                continue
            return parts

    def string(self) -> str:
        t = self.text
        quote = t[self.pos]
        if t.startswith(quote * 3, self.pos):
            end = t.find(quote * 3, self.pos + 3)
            while end >= 0 and quote == '"' and _escaped(t, end):
                end = t.find(quote * 3, end + 1)
            end = len(t) if end < 0 else end + 3
            while end < len(t) and t[end] == quote:   # up to two quotes may end the content
                end += 1
            value = t[self.pos + 3:end - 3]
            self.pos = end
            return value
        i = self.pos + 1
        buf = []
        while i < len(t) and t[i] != quote:
            if quote == '"' and t[i] == "\\":
                buf.append(t[i:i + 2])
                i += 2
                continue
            buf.append(t[i])
            i += 1
        self.pos = i + 1
        return "".join(buf)

    # -- values -------------------------------------------------------------------------------------
    def value(self, path: str) -> None:
        self.skip_space(False)
        ch = self.peek()
        if ch == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip_space(True)
                if self.peek() == "]":
                    self.pos += 1
                    return
                if self.peek() == ",":
                    self.pos += 1
                    continue
                element = f"{path}[{index}]"
                self.out[element] = self.line()
                self.value(element)
                index += 1
        elif ch == "{":
            self.pos += 1
            while True:
                self.skip_space(True)
                if self.peek() == "}":
                    self.pos += 1
                    return
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.keyval(path)
        elif ch in ('"', "'"):
            self.string()
        else:
            t = self.text
            while self.pos < len(t) and t[self.pos] not in ",]}\n#":
                self.pos += 1

    def keyval(self, prefix: str) -> None:
        line = self.line()
        parts = self.key()
        path = ".".join(([prefix] if prefix else []) + parts)
        for i in range(1, len(parts) + 1):   # "auth.mechanisms = ..." also places the table session.auth
            sub = ".".join(([prefix] if prefix else []) + parts[:i])
            self.out.setdefault(sub, line)
        self.skip_space(False)
        if self.peek() == "=":
            self.pos += 1
        self.value(path)

    def document(self) -> dict[str, int]:
        prefix = ""
        t = self.text
        while True:
            self.skip_space(True)
            if self.pos >= len(t):
                return self.out
            if t.startswith("[[", self.pos):
                line = self.line()
                self.pos += 2
                name = ".".join(self.key())
                self.pos = t.find("]]", self.pos) + 2
                index = self._aot.get(name, 0)
                self._aot[name] = index + 1
                prefix = f"{name}[{index}]"
                self.out.setdefault(prefix, line)
            elif t[self.pos] == "[":
                line = self.line()
                self.pos += 1
                prefix = ".".join(self.key())
                self.pos = t.find("]", self.pos) + 1
                self.out.setdefault(prefix, line)
            else:
                self.keyval(prefix)


def _escaped(text: str, pos: int) -> bool:
    n = 0
    while pos - 1 - n >= 0 and text[pos - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


def key_lines(text: str) -> dict[str, int]:
    """Key path (and ``key[i]`` for array elements) -> 1-based line number. Best effort: a text this
    pass cannot follow gives what it found so far, never an exception."""
    scanner = _Scanner(text)
    try:
        return scanner.document()
    except (IndexError, ValueError):
        return scanner.out
