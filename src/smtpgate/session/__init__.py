"""The SMTP session, sans-IO: ``machine`` holds the states, the command table and the pump; one module
per stage; ``requests`` is what a stage may ask of the transport."""
from .context import ListenerContext
from .machine import Session
from .requests import TlsInfo

__all__ = ["ListenerContext", "Session", "TlsInfo"]
