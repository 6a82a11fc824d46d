"""smtpgate: an SMTP server whose heart is a Stalwart-style, RFC-exact SMTP AUTH stage.

Library use::

    import smtpgate
    settings = smtpgate.load_config("smtpgate.toml")   # or smtpgate.load_config_text(text)
    async with smtpgate.Server(settings) as server:
        ...
"""
from .config.errors import ConfigError
from .config.load import load_file as load_config, load_text as load_config_text
from .delivery.base import Delivery, Envelope, RcptResult
from .delivery.callable import CallableDelivery
from .lookup.base import AuthResult, Capability, Credentials, Lookup, Outcome
from .server import Server

__version__ = "0.1.0"
__all__ = ["AuthResult", "CallableDelivery", "Capability", "ConfigError", "Credentials", "Delivery", "Envelope",
           "Lookup", "Outcome", "RcptResult", "Server", "load_config", "load_config_text"]
