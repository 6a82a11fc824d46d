"""The replies of the abuse guard (pre-encoded, like ``protocol.replies``)."""
from ..protocol.replies import reply

BANNED = reply(421, "4.7.0 Your address is temporarily blocked, try again later")
TOO_MANY_CONCURRENT = reply(421, "4.7.0 Too many concurrent connections, try again later")
RATE_LIMITED = reply(451, "4.4.5 Rate limit exceeded, try again later.")
RATE_LIMITED_CLOSE = reply(421, "4.4.5 Rate limit exceeded, try again later.")
NOT_SMTP = reply(421, "4.7.0 This is an SMTP server, closing connection")
