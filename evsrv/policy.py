# -*- test-case-name: tests.test_policy -*-
"""
The destination policy (C{[policy] allow_destinations} and
C{deny_destinations}): which addresses a subscriber may make evsrv send to.

Whoever reaches the MI names the destinations, so without a policy evsrv
could be made to send datagrams at any host (reflection), to try TCP
connects to any port (a port scan through its connect errors) or to reach a
cloud metadata service. The check runs at subscribe time on the addresses
the transport will really use, after name resolution: every transport that
resolves a name does it once, at subscribe time, and sends to that address
from then on, so a later DNS answer cannot redirect a checked subscription.

Transports say where they send through an optional method,
C{peer_hosts(destination)}: the IP address texts (already resolved) the
destination sends or connects to, empty for a destination that is not on
the network (a file, a UNIX socket, the routing script, a virtual group
whose members are checked on their own). A transport without it is not
checked; the server warns once at start-up for each such transport.
"""

from twisted.logger import Logger

from evsrv.interfaces import DestinationRefused
from evsrv.netlist import NetworkList, ip_address

_EVERYTHING = NetworkList.parse("any")


def socket_text(destination, transport) -> str:
    """
    The listing text of a parsed destination (never a password).
    """
    key = destination.key
    if type(key) is str:
        return key
    describe = getattr(transport, "describe", None)
    return describe(key) if describe is not None else repr(key)


class DestinationPolicy:
    """
    @param allow: L{NetworkList} every destination address must be in.
    @param deny: L{NetworkList} no destination address may be in; it wins
        over C{allow}.
    @param statistics: where C{policy:destinations_refused} is counted
        (optional).
    """
    _log = Logger()

    def __init__(self, allow: NetworkList, deny: NetworkList, statistics=None):
        self.allow = allow
        self.deny = deny
        # Nothing is refused with "any" allowed and nothing denied: the
        # check then costs one attribute test per subscribe.
        self.open = allow == _EVERYTHING and not deny
        self.refused = statistics.counter("policy", "destinations_refused") \
            if statistics is not None else None

    def check(self, destination, transport):
        """
        A Deferred callback after C{transport.parse}.

        @return: C{destination}, when every address it uses is allowed.
        @raise DestinationRefused: naming the socket, the address and the
            setting that refused it.
        """
        if self.open:
            return destination
        peer_hosts = getattr(transport, "peer_hosts", None)
        if peer_hosts is None:
            return destination  # warned about at start-up (warn_unchecked)
        for host in peer_hosts(destination):
            reason = self.refusal(host)
            if reason is not None:
                if self.refused is not None:
                    self.refused.value += 1
                raise DestinationRefused(f"{socket_text(destination, transport)}: {reason}")
        return destination

    def refusal(self, host: str):
        """
        Why C{host} (an IP address text) is refused, or C{None} if it is not.
        """
        try:
            ip = ip_address(host)
        except ValueError:
            # A transport must hand over resolved addresses; a name here
            # could resolve anywhere later, so it cannot pass.
            return (f"destination {str(host)[:80]!r} is not an IP address (the [policy] "
                    f"checks resolved addresses only)")
        if ip in self.deny:
            # the first entry that matches, so the operator sees which one
            network = next((n for n in self.deny.networks if ip in n), None)
            return f"destination {ip} is refused by [policy] deny_destinations ({network})"
        if ip not in self.allow:
            return (f"destination {ip} is refused by [policy] allow_destinations "
                    f"(not in {self.allow})")
        return None

    @staticmethod
    def unchecked(transports) -> list:
        """
        The names of the transports the policy cannot check (no
        C{peer_hosts}), each once.
        """
        names = []
        for transport in transports:
            if getattr(transport, "peer_hosts", None) is None:
                name = getattr(transport, "name", None) or type(transport).__name__
                if name not in names:
                    names.append(name)
        return names

    def warn_unchecked(self, transports) -> list:
        """
        Log one warning per transport the policy cannot check (unless the
        policy refuses nothing anyway).

        @return: their names.
        """
        if self.open:
            return []
        names = self.unchecked(transports)
        for name in names:
            self._log.warn(
                "transport {transport} does not tell where it sends (no peer_hosts method): "
                "[policy] allow_destinations and deny_destinations are not applied to its "
                "subscribers", transport=name)
        return names
