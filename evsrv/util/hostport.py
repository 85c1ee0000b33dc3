# -*- test-case-name: tests.test_config -*-
"""
C{HOST:PORT} as the ini file and the command line write it: one parser for
every listener address, source address and MI address. (Subscriber
sockets have their own, OpenSIPS-compatible syntax: L{evsrv.transports}.)
"""

import ipaddress


def _is_ip(text: str, version: int) -> bool:
    # the stdlib, not twisted.internet.abstract: evsrv-ctl imports this and
    # stays free of Twisted
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def parse_host_port(text: str, *, names=True, empty_host=False) -> tuple:
    """
    C{HOST:PORT} or C{[IPv6]:PORT} as C{(host, port)}, port 0-65535.

    @param names: whether HOST may be a name; otherwise it must be an IP
        address (IPv6 in brackets).
    @param empty_host: whether HOST may be empty (C{:0}: any address).
    @raise ValueError: saying what is wrong.
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT, got {text.strip()[:80]!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
        if not _is_ip(host, 6):
            raise ValueError(f"bad IPv6 address {host[:80]!r}")
    if not host:
        if not empty_host or bracketed:
            raise ValueError(f"expected HOST:PORT, got {text.strip()[:80]!r}")
    elif not bracketed and not names and not _is_ip(host, 4):
        raise ValueError(f"bad IPv4 address {host[:80]!r} (use [v6] for IPv6)")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port {port[:20]!r}")
    return host, int(port)
