"""
The built-in transports as plugins.
"""

from evsrv.script.transport import routeTransport
from evsrv.transports.datagram import udpTransport, unixTransport

__all__ = ["udpTransport", "unixTransport", "routeTransport"]
