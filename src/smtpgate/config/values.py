"""Scalar value parsers shared by the schema: durations, sizes, booleans, binds, lookup references.

Each parser takes (key, raw) and returns the Python value or raises ConfigError with the key path.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from .errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {None: 0.001, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PORT = re.compile(r"^[0-9]{1,5}$")
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|k|mb|m|gb|g)?\s*$", re.I)
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def boolean(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    raise ConfigError(key, f"expected true or false, got {_show(raw)}")


def integer(key: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(key, f"expected an integer, got {_show(raw)}")
    if raw < 0:
        raise ConfigError(key, "must not be negative")
    return raw


def positive_int(key: str, raw: Any) -> int:
    value = integer(key, raw)
    if value == 0:
        raise ConfigError(key, "must be greater than 0")
    return value


def duration(key: str, raw: Any) -> float:
    """Seconds. Stalwart syntax: "500ms", "5s", "1m", "2h", "1d"; a bare number is milliseconds."""
    if isinstance(raw, bool):
        raise ConfigError(key, f"expected a duration such as \"5s\", got {_show(raw)}")
    if isinstance(raw, (int, float)):
        seconds = float(raw) / 1000.0
    elif isinstance(raw, str):
        m = _DURATION.match(raw)
        if not m:
            raise ConfigError(key, f"invalid duration {raw!r} (use e.g. \"500ms\", \"5s\", \"1m\", \"2h\", \"1d\")")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(key, f"expected a duration such as \"5s\", got {_show(raw)}")
    if seconds <= 0:
        raise ConfigError(key, "duration must be greater than 0")
    return seconds


def fraction(key: str, raw: Any) -> float:
    """A share between 0 and 1: a number (0.25) or a percentage string ("25%")."""
    value: float | None = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str) and raw.strip().endswith("%"):
        try:
            value = float(raw.strip()[:-1]) / 100.0
        except ValueError:
            value = None
    if value is None or not 0.0 <= value <= 1.0:
        raise ConfigError(key, f"expected a share between 0 and 1 such as 0.25 or \"25%\", got {_show(raw)}")
    return value


def size(key: str, raw: Any) -> int:
    """Bytes: an integer or "10MB"-style string."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw <= 0:
            raise ConfigError(key, "must be greater than 0")
        return raw
    if isinstance(raw, str):
        m = _SIZE.match(raw)
        if m:
            value = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower() or None]
            if value > 0:
                return value
    raise ConfigError(key, f"expected a size in bytes (e.g. 26214400 or \"25MB\"), got {_show(raw)}")


def string(key: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise ConfigError(key, f"expected a string, got {_show(raw)}")
    return raw


def nonempty_string(key: str, raw: Any) -> str:
    value = string(key, raw)
    if not value.strip():
        raise ConfigError(key, "must not be empty")
    return value


def string_list(key: str, raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(key, f"expected a list of strings, got {_show(raw)}")
    return list(raw)


def bind_address(key: str, raw: str) -> tuple[str, int]:
    """"ip:port" or "[v6]:port" -> (host, port)."""
    if not isinstance(raw, str):
        raise ConfigError(key, f"expected \"ip:port\", got {_show(raw)}")
    text = raw.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ConfigError(key, f"invalid bind address {raw!r} (expected \"[::1]:587\")")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(key, f"invalid bind address {raw!r} (expected \"ip:port\"; IPv6 as \"[::1]:587\")")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(key, f"invalid IP address {host!r} in bind address") from None
    if not _PORT.match(port) or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"invalid port {port!r} in bind address")
    # Normalised text, so "[0::1]:25" and "[::1]:25" are recognised as the same bind.
    return str(ip), int(port)


def binds(key: str, raw: Any) -> list[tuple[str, int]]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ConfigError(key, "at least one bind address is required")
    return [bind_address(key, item) for item in items]


def _show(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return repr(raw)
    if isinstance(raw, list):
        return "an array"
    if isinstance(raw, dict):
        return "a table"
    return repr(raw)
