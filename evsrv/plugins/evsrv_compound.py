"""
The C{virtual:} and C{flatstore:} transports as plugins (built in: enabled
when the ini has no C{[transports] enabled}).
"""

from evsrv.transports.flatstore import flatstoreTransport
from evsrv.transports.virtual import virtualTransport

__all__ = ["virtualTransport", "flatstoreTransport"]
