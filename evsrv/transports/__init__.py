"""
Built-in transports. Each one is enabled through a plugin in
L{evsrv.plugins} and configured from its C{[transport:NAME]} ini section.
"""

from dataclasses import dataclass, field
from pathlib import Path

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


def parse_host_port(text: str):
    """
    An ini coercer for C{HOST:PORT} (HOST may be empty or C{[v6]}).
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
