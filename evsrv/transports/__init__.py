"""
Built-in transports. Each one is enabled through a plugin in
L{evsrv.plugins} and configured from its C{[transport:NAME]} ini section.
"""

from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address

from evsrv.interfaces import BadSocket
from evsrv.transports.kit import DEFAULT_MAX_QUEUED_BYTES, ByteBudget
from evsrv.util.statistics import Statistics


class LateBinding:
    """
    A part of the server made after the transports, for the transports that
    need it: the L{EventInterface} is made from the transports, yet
    C{virtual:} parses its members' sockets through it and flatstore looks
    up its subscriptions. The server makes the binding before the
    transports, hands it to them in the L{TransportContext}, and L{bind}s it
    once the part exists: the one two-phase step of the assembly
    (L{evsrv.server}). Until then L{get} returns C{None}: read it when it is
    needed (parsing a socket, an MI command), never while being built.

    @ivar what: what it binds, for the error of a second L{bind}.
    """

    def __init__(self, what="the event interface"):
        self.what = what
        self._target = None

    def bind(self, target) -> None:
        """
        Bind the part, once.

        @raise RuntimeError: it is already bound to another one.
        """
        if self._target is not None and self._target is not target:
            raise RuntimeError(f"{self.what} is already bound")
        self._target = target

    def get(self):
        """
        @return: the bound part, or C{None} before L{bind}.
        """
        return self._target


@dataclass
class TransportContext:
    """
    What a transport factory gets besides its own settings.

    @ivar reactor: the reactor (or a fake in tests).
    @ivar statistics: where the transport registers its counters.
    @ivar base_dir: directory relative paths are taken from.
    @ivar event_interface: a L{LateBinding} of the L{EventInterface}, bound
        by the server once it exists (after every transport is built): for
        transports that parse other sockets (C{virtual:}) or read the
        subscriptions. Keep the binding; call its C{get()} when needed.
    @ivar script: a L{LateBinding} of the routing script's runner, bound
        once it is loaded (the C{route:} transport delivers to it); never
        bound without a C{[script]}.
    @ivar max_queued_bytes: C{[limits] max_queued_bytes} (0: no limit).
    @ivar budget: the L{ByteBudget} every transport that holds
        notifications charges them to; made from C{max_queued_bytes}, with
        its C{evi:queued_bytes} gauge, unless given.
    """
    reactor: object
    statistics: Statistics = field(default_factory=Statistics)
    base_dir: Path = field(default_factory=Path.cwd)
    event_interface: LateBinding = field(default_factory=LateBinding)
    script: LateBinding = field(default_factory=lambda: LateBinding("the routing script"))
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    budget: ByteBudget = None

    def __post_init__(self):
        if self.budget is None:
            self.budget = ByteBudget(self.max_queued_bytes, self.statistics)

    @property
    def evi(self):
        """
        The L{EventInterface} once bound, else C{None} (the same as
        C{event_interface.get()}, for transports that read it here).
        """
        return self.event_interface.get()


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


# How long a subscribe may wait for a name to resolve. The system resolver
# (getaddrinfo in a thread) has no deadline of its own, and a name it cannot
# even encode fails inside Twisted without ever answering: past this, the
# subscribe is answered "cannot resolve" whatever the resolver does later.
RESOLVE_DEADLINE = 5.0

_MAX_NAME = 253   # RFC 1035: a name in text form, without the root dot
_MAX_LABEL = 63
# What a DNS host name may hold once IDNA-encoded: letters, digits and
# hyphens (RFC 1123), plus the underscore real deployments use (container
# and service names); anything else is a typo or an attack.
_LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def check_host_name(host: str) -> str:
    """
    Check a host name before anything tries to resolve it.

    @return: its ASCII form (IDNA for a name that is not ASCII), without a
        trailing root dot.
    @raise BadSocket: saying what is wrong: empty, or a label that is empty
        (C{a..b}), longer than 63 characters or holds characters a host name
        cannot have, a name longer than 253 characters, or one IDNA cannot
        encode.
    """
    shown = repr(host[:80])
    name = host[:-1] if host.endswith(".") else host
    if not name:
        raise BadSocket(f"empty host name in {shown}")
    if len(name) > 4 * _MAX_NAME:
        # cheap refusal before any encoding work on a huge text
        raise BadSocket(f"host name longer than {_MAX_NAME} characters: {shown}")
    if name.isascii():
        ascii_name = name.lower()
    else:
        try:
            ascii_name = name.encode("idna").decode("ascii").lower()
        except UnicodeError as e:
            raise BadSocket(f"host name {shown} cannot be encoded (IDNA): {e}") from None
    if len(ascii_name) > _MAX_NAME:
        raise BadSocket(f"host name longer than {_MAX_NAME} characters: {shown}")
    for label in ascii_name.split("."):
        if not label:
            raise BadSocket(f"empty label in host name {shown}")
        if len(label) > _MAX_LABEL:
            raise BadSocket(f"label longer than {_MAX_LABEL} characters in host name {shown}")
        if not _LABEL_CHARACTERS.issuperset(label):
            bad = next(c for c in label if c not in _LABEL_CHARACTERS)
            raise BadSocket(f"character {bad!r} not allowed in host name {shown}")
        if label[0] == "-" or label[-1] == "-":
            raise BadSocket(f"label starting or ending with '-' in host name {shown}")
    return ascii_name


def resolve_once(reactor, host: str, make, deadline: float = RESOLVE_DEADLINE):
    """
    The address a destination uses, fixed at subscribe time: C{make(host)}
    for an IP literal, else C{make(ip)} once C{host} resolved. Sending only to
    this address is what lets the [policy] check the address really used (a
    later DNS answer cannot redirect a subscription).

    The name is checked (L{check_host_name}) before it reaches the resolver,
    and the resolution ends within C{deadline} seconds: a resolver that
    hangs, or never answers, cannot leave a subscribe unanswered.

    @return: what C{make} returns, or a Deferred of it; fails with
        L{BadSocket} when the name is not a host name, does not resolve, or
        does not resolve in time.
    """
    if isIPAddress(host) or isIPv6Address(host):
        return make(host)
    name = check_host_name(host)

    def unresolved(failure):
        if failure.check(defer.TimeoutError):
            reason = f"no answer within {deadline:g} s"
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        raise BadSocket(f"cannot resolve {host[:80]!r}: {reason}")
    try:
        d = reactor.resolve(name, timeout=(1, 2))
    except Exception:  # a resolver bug must still answer the subscribe
        d = defer.fail()
    if not d.called:
        # a late answer after the deadline is ignored (the Deferred is cancelled)
        d.addTimeout(deadline, reactor)
    return d.addCallbacks(make, unresolved)
