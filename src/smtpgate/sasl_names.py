"""The SASL mechanism names smtpgate implements, upper-case -- defined once.

A module of its own with no imports, because two layers need the list and must not import each other:
``config`` validates ``session.auth.mechanisms`` against it, and ``sasl`` implements each name.
"""
from __future__ import annotations

MECHANISM_NAMES: tuple[str, ...] = (
    "PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2", "SCRAM-SHA-256", "SCRAM-SHA-1",
    "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "CRAM-MD5",
)
