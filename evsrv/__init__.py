"""
evsrv: the OpenSIPS Event Interface as a standalone Twisted server.
"""

__version__ = "0.1.0"

from evsrv.util import wire  # noqa: E402,F401  registers the "evsrv-wire" codec error handler
