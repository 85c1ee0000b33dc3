"""
evsrv: the OpenSIPS Event Interface as a standalone Twisted server.
"""

__version__ = "0.1.0"
