"""Every fixed reply smtpgate sends, in one table, with its enhanced status code (RFC 3463/2034).

Replies are pre-encoded bytes: the session appends them to its output without formatting work.
"""
from __future__ import annotations


def reply(code: int, text: str) -> bytes:
    return f"{code} {text}\r\n".encode()


def multiline(code: int, lines: list[str]) -> bytes:
    out = [f"{code}-{line}\r\n" for line in lines[:-1]]
    out.append(f"{code} {lines[-1]}\r\n")
    return "".join(out).encode()


# --- generic -----------------------------------------------------------------------------------
NOOP = reply(250, "2.0.0 OK")
RSET = reply(250, "2.0.0 Reset state")
QUIT = reply(221, "2.0.0 Bye")
HELP = reply(214, "2.0.0 See RFC 5321 (commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT)")
VRFY = reply(252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")
SYNTAX = reply(500, "5.5.2 Syntax error, command unrecognized")
LINE_TOO_LONG = reply(500, "5.5.6 Line too long")
NOT_IMPLEMENTED = reply(502, "5.5.1 Command not implemented")
BAD_SEQUENCE_EHLO = reply(503, "5.5.1 Send EHLO first")
BAD_SEQUENCE_MAIL = reply(503, "5.5.1 Send MAIL first")
NESTED_MAIL = reply(503, "5.5.1 Sender already specified")
NUL_BYTE = reply(500, "5.5.2 Invalid character (NUL) in command")
NON_ASCII = reply(500, "5.5.2 Invalid characters in command")
TIMEOUT = reply(421, "4.4.2 Idle timeout, closing connection")
DURATION = reply(421, "4.4.2 Session too long, closing connection")
TRANSFER = reply(421, "4.7.0 Transfer limit reached, closing connection")
TOO_MANY_ERRORS = reply(421, "4.7.0 Too many errors, closing connection.")
SHUTDOWN = reply(421, "4.3.2 Server shutting down")
TOO_MANY_CONNECTIONS = reply(421, "4.7.0 Too many connections, try again later")
INTERNAL = reply(451, "4.3.0 Internal error, try again later")

# --- EHLO / HELO -------------------------------------------------------------------------------
EHLO_SYNTAX = reply(501, "5.5.4 Syntax: EHLO domain")
HELO_SYNTAX = reply(501, "5.5.4 Syntax: HELO domain")
LHLO_REQUIRED = reply(500, "5.5.1 LMTP requires LHLO")

# --- STARTTLS (RFC 3207) -----------------------------------------------------------------------
STARTTLS_READY = reply(220, "2.0.0 Ready to start TLS")
STARTTLS_ACTIVE = reply(503, "5.5.1 TLS already active")
STARTTLS_UNAVAILABLE = reply(502, "5.5.1 STARTTLS not available")
STARTTLS_SYNTAX = reply(501, "5.5.4 Syntax: STARTTLS")

# --- AUTH (RFC 4954; SPEC §4.2) ----------------------------------------------------------------
AUTH_OK = reply(235, "2.7.0 Authentication succeeded.")
AUTH_EMPTY_CHALLENGE = b"334 \r\n"
AUTH_INVALID = reply(535, "5.7.8 Authentication credentials invalid.")
AUTH_CANCELLED = reply(501, "5.7.0 Authentication cancelled.")
AUTH_BAD_BASE64 = reply(501, "5.5.2 Invalid base64 data.")
AUTH_MALFORMED = reply(501, "5.5.2 Malformed authentication data.")
AUTH_LINE_TOO_LONG = reply(500, "5.5.6 Authentication Exchange line is too long.")
AUTH_SYNTAX = reply(501, "5.5.2 Syntax error, expected: AUTH mechanism [initial-response]")
AUTH_UNSUPPORTED = reply(504, "5.5.4 Authentication mechanism not supported.")
AUTH_ENCRYPTION_REQUIRED = reply(538, "5.7.11 Encryption required for requested authentication mechanism.")
AUTH_DISABLED = reply(503, "5.5.1 AUTH not allowed.")
AUTH_ALREADY = reply(503, "5.5.1 Already authenticated.")
AUTH_IN_TRANSACTION = reply(503, "5.5.1 AUTH not permitted during a mail transaction.")
AUTH_NO_INITIAL = reply(501, "5.7.0 Initial response not allowed for this mechanism.")
AUTH_TEMPFAIL = reply(454, "4.7.0 Temporary authentication failure.")
AUTH_TOO_MANY = reply(421, "4.3.0 Too many authentication errors, disconnecting.")
AUTH_REQUIRED = reply(530, "5.7.0 Authentication required.")

# --- MAIL / RCPT (SPEC §6) ---------------------------------------------------------------------
MAIL_OK = reply(250, "2.1.0 Sender OK")
MAIL_SYNTAX = reply(501, "5.5.4 Syntax: MAIL FROM:<address> [parameters]")
MAIL_BAD_ADDRESS = reply(501, "5.1.7 Bad sender address syntax")
MAIL_BAD_PARAM = reply(555, "5.5.4 Unsupported MAIL FROM parameter")
MAIL_BAD_AUTH_PARAM = reply(501, "5.5.4 Malformed AUTH= parameter")
MAIL_TOO_BIG = reply(552, "5.3.4 Message size exceeds fixed maximum message size")
MAIL_NOT_OWNED = reply(550, "5.7.1 Sender address not owned by authenticated user.")
MAIL_TEMPFAIL = reply(451, "4.3.0 Sender check temporarily unavailable, try again later")
# RFC 6531 §3.5: a non-ASCII address needs the SMTPUTF8 MAIL parameter.
MAIL_NEEDS_SMTPUTF8 = reply(553, "5.6.7 Non-ASCII sender address requires the SMTPUTF8 parameter")
RCPT_NEEDS_SMTPUTF8 = reply(553, "5.6.7 Non-ASCII recipient address requires SMTPUTF8 in MAIL FROM")
TOO_MANY_MESSAGES = reply(452, "4.5.3 Too many messages in this session")
RCPT_OK = reply(250, "2.1.5 Recipient OK")
RCPT_SYNTAX = reply(501, "5.5.4 Syntax: RCPT TO:<address> [parameters]")
RCPT_BAD_ADDRESS = reply(501, "5.1.3 Bad recipient address syntax")
RCPT_BAD_PARAM = reply(555, "5.5.4 Unsupported RCPT TO parameter")
RCPT_RELAY_DENIED = reply(550, "5.7.1 Relay access denied.")
RCPT_UNKNOWN = reply(550, "5.1.1 Recipient address rejected: user unknown")
RCPT_TOO_MANY = reply(452, "4.5.3 Too many recipients")
RCPT_TEMPFAIL = reply(451, "4.3.0 Recipient lookup temporarily unavailable, try again later")

# --- DATA --------------------------------------------------------------------------------------
DATA_GO = reply(354, "Start mail input; end with <CRLF>.<CRLF>")
DATA_NO_RCPT = reply(554, "5.5.1 No valid recipients")
DATA_SYNTAX = reply(501, "5.5.4 Syntax: DATA")
DATA_TOO_BIG = reply(552, "5.3.4 Message size exceeds fixed maximum message size")

# --- delivery results (RcptResult.from_reply) -------------------------------------------------------
DELIVERY_FAILED = reply(451, "4.3.0 Delivery failed, try again later")
SPOOL_FAILED = reply(451, "4.3.0 Could not store message, try again later")
NEXTHOP_FAILED = reply(451, "4.4.1 Next hop unavailable, try again later")
