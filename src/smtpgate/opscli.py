"""Registers the operations commands (``explain``, ``spool``, ``reload``) with the main parser; each
command module adds its own sub-parser and sets ``run`` (called by ``cli.main`` with the parsed args)."""
from __future__ import annotations

from typing import Any


def add_parsers(sub: Any) -> None:
    from . import explain, reload, spoolcli
    explain.add_parser(sub)
    spoolcli.add_parser(sub)
    reload.add_parser(sub)
