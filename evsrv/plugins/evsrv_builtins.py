"""
The built-in transports as plugins.
"""

from evsrv.transports.factories import routeTransport, unixTransport, udpTransport

__all__ = ["udpTransport", "unixTransport", "routeTransport"]
