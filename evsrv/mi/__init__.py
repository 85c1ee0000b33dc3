"""
The management interface: JSON-RPC 2.0 (OpenSIPS 3.x) and 1.x text over UDP
and UNIX datagrams.
"""
