"""Sans-IO parsing of command arguments: paths (RFC 5321 §4.1.2), ESMTP parameters, xtext (RFC 3461).

Address parsing is strict on purpose: relay decisions depend on the domain it returns, so anything
ambiguous (two '@', unbalanced quotes, control characters) is a syntax error, never a guess.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# Non-ASCII is accepted alike for every script (RFC 6531 style), not just for Latin-1.
_U8 = "\u0080-\U0010ffff"
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U8}]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U8}]|\\[\x20-\x7e])*"'
_LABEL = rf"[A-Za-z0-9{_U8}](?:[A-Za-z0-9\-{_U8}]*[A-Za-z0-9{_U8}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]"
_MAILBOX = re.compile(rf"^(?P<local>{_DOT_ATOM}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})$")
_ROUTE = re.compile(rf"^@(?:{_DOMAIN}|{_LITERAL})(?:,@(?:{_DOMAIN}|{_LITERAL}))*:")
_PARAM_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")


class ParseError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str          # lower-cased, trailing dot removed; "" for the null path

    @property
    def text(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else ""

    @property
    def lower(self) -> str:
        return f"{self.local.lower()}@{self.domain}" if self.domain else ""

    @property
    def quoted_local(self) -> bool:
        return self.local.startswith('"')


NULL_PATH = Address("", "")


def parse_path_and_params(arg: str, prefix: str) -> tuple[Address, dict[str, str | None]]:
    """``arg`` is what follows the verb, e.g. ``FROM:<a@b> SIZE=10``; ``prefix`` is ``FROM:``/``TO:``."""
    addr, params_text = split_path(arg, prefix)
    return addr, parse_params(params_text)


def split_path(arg: str, prefix: str) -> tuple[Address, str]:
    """The path and the unparsed parameter text, so a caller can judge the address before the parameters
    (RCPT: a relay attempt is answered as one whatever parameters it carries)."""
    if arg[:len(prefix)].upper() != prefix:
        raise ParseError("syntax")
    rest = arg[len(prefix):].lstrip(" ")
    if not rest.startswith("<"):
        raise ParseError("syntax")
    end = _closing_bracket(rest)
    path, params_text = rest[1:end], rest[end + 1:]
    if params_text and not params_text.startswith(" "):
        raise ParseError("syntax")
    return parse_path(path), params_text


def _closing_bracket(text: str) -> int:
    in_quote = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and in_quote:
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
        elif ch == ">" and not in_quote:
            return i
    raise ParseError("syntax")


def parse_path(path: str) -> Address:
    if path == "":
        return NULL_PATH
    m = _ROUTE.match(path)
    if m:  # RFC 5321 §4.1.2: source routes are accepted and ignored
        path = path[m.end():]
    m = _MAILBOX.match(path)
    if not m:
        raise ParseError("address")
    local, domain = m.group("local"), m.group("domain")
    if len(local.encode()) > 64 or len(domain.encode()) > 255:    # RFC 5321 §4.5.3.1: octets
        raise ParseError("address")
    if domain.startswith("[") and not _valid_literal(domain[1:-1]):
        raise ParseError("address")
    return Address(local, domain.rstrip(".").lower())


def _valid_literal(text: str) -> bool:
    try:
        if text[:5].lower() == "ipv6:":
            return ipaddress.ip_address(text[5:]).version == 6
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def parse_params(text: str) -> dict[str, str | None]:
    """``KEY[=value]`` items (RFC 5321 §4.1.2 esmtp-param); ``KEY=`` gives ``""`` for the caller to refuse
    with the reply that parameter deserves (``AUTH=`` -> 501 5.5.4, unknown keys -> 555)."""
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _PARAM_KEY.match(key):
            raise ParseError("param")
        ukey = key.upper()
        if ukey in params:
            raise ParseError("param")
        params[ukey] = value if eq else None
    return params


_DIGITS = re.compile(r"[0-9]{1,20}")


def ascii_number(value: str | None, max_digits: int = 20) -> int | None:
    """A decimal number of 1..``max_digits`` ASCII digits (RFC 5321/1870 ``1*20DIGIT``), else None.

    Every number a client sends goes through here: ``str.isdigit()`` also accepts ``²`` and ``①``, and
    ``int()`` accepts ``٤``, ``_``, spaces and signs -- none of which is a DIGIT on the wire."""
    if value is None or len(value) > max_digits or not _DIGITS.fullmatch(value):
        return None
    return int(value)


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: ``+XX`` hex escapes (upper-case hex) of UTF-8 octets; raises ParseError on malformed
    input."""
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "+":
            hexpart = value[i + 1:i + 3]
            if len(hexpart) != 2 or not all(c in "0123456789ABCDEF" for c in hexpart):
                raise ParseError("xtext")
            out.append(int(hexpart, 16))
            i += 3
            continue
        if not ("!" <= ch <= "~") or ch == "=":
            raise ParseError("xtext")
        out.append(ord(ch))
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("xtext") from None


def xtext_encode(value: str) -> str:
    return "".join(c if ("!" <= c <= "~" and c not in "+=") else "".join(f"+{b:02X}" for b in c.encode())
                   for c in value)
