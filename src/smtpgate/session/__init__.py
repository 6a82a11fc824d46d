"""The SMTP session, sans-IO: ``machine`` holds the state machine; one module per stage."""
from . import machine
from .machine import ListenerContext, Session, TlsInfo

machine._init()

__all__ = ["ListenerContext", "Session", "TlsInfo"]
