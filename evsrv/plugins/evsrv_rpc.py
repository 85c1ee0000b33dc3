"""
The RPC transports as plugins: C{xmlrpc:}, C{tcp:} and C{jsonrpc:}.
"""

from evsrv.transports.stream import jsonrpcTransport, tcpTransport
from evsrv.transports.xmlrpc import xmlrpcTransport

__all__ = ["xmlrpcTransport", "tcpTransport", "jsonrpcTransport"]
