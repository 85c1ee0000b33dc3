"""
Built-in transports. Each one is enabled through a plugin in
L{evsrv.plugins} and configured from its C{[transport:NAME]} ini section.
"""

from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.abstract import isIPAddress, isIPv6Address

from evsrv.interfaces import BadSocket
from evsrv.statistics import Statistics


@dataclass
class TransportContext:
    """
    What a transport factory gets besides its own settings.

    @ivar reactor: the reactor (or a fake in tests).
    @ivar statistics: where the transport registers its counters.
    @ivar base_dir: directory relative paths are taken from.
    @ivar evi: the L{EventInterface}, set once it exists (after every
        transport is built): for transports that parse other sockets
        (C{virtual:}) or raise events themselves. Use it lazily.
    """
    reactor: object
    statistics: Statistics = field(default_factory=Statistics)
    base_dir: Path = field(default_factory=Path.cwd)
    evi: object = None


def choice(*allowed):
    """
    An ini coercer accepting one of C{allowed}.
    """
    def coerce(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value
    return coerce


class TransportCounters:
    """
    The per-transport statistics every transport keeps (group C{evi_NAME}).
    """
    __slots__ = ("sent", "failed", "dropped")

    def __init__(self, statistics: Statistics, name: str):
        group = f"evi_{name}"
        self.sent = statistics.counter(group, "notifications_sent")
        self.failed = statistics.counter(group, "notifications_failed")
        self.dropped = statistics.counter(group, "notifications_dropped")


def resolve_once(reactor, host: str, make):
    """
    The address a destination uses, fixed at subscribe time: C{make(host)}
    for an IP literal, else C{make(ip)} once C{host} resolved. Sending only to
    this address is what lets the [policy] check the address really used (a
    later DNS answer cannot redirect a subscription).

    @return: what C{make} returns, or a Deferred of it; fails with
        L{BadSocket} when the name does not resolve.
    """
    if isIPAddress(host) or isIPv6Address(host):
        return make(host)

    def unresolved(failure):
        raise BadSocket(f"cannot resolve {host[:80]!r}: {failure.getErrorMessage()}")
    return reactor.resolve(host, timeout=(1, 2)).addCallbacks(make, unresolved)


def parse_host_port(text: str):
    """
    An ini coercer for C{HOST:PORT} (HOST may be empty or C{[v6]}).
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
