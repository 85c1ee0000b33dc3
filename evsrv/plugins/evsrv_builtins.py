"""
The built-in transports as plugins.
"""

from evsrv.transports.factories import unixTransport, udpTransport

__all__ = ["udpTransport", "unixTransport"]
