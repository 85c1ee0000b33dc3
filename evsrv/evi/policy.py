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

Transports say where they send through L{evsrv.interfaces.IPeerHosts},
C{peer_hosts(destination)}: the IP address texts (already resolved) the
destination sends or connects to, empty for a destination that is not on
the network (a file, a UNIX socket, the routing script, a virtual group
whose members are checked on their own). A transport without it is not
checked; the server warns once at start-up for each such transport.

An IPv6 address can carry an IPv4 address, and packets sent to it end up
at that IPv4 address through a translator or a tunnel: the NAT64 prefixes
(well-known C{64:ff9b::/96}, local-use C{64:ff9b:1::/48}), IPv4-translated
C{::ffff:0:0:0/96}, IPv4-compatible C{::/96} (not C{::} and C{::1}), 6to4
C{2002::/16} and Teredo C{2001::/32} (L{evsrv.util.netlist.embedded_ipv4} says
where each keeps it). Such an address is judged as both addresses, the
IPv6 one and every IPv4 one it carries:

  - it is refused if any of them is in C{deny_destinations}, so no spelling
    of a denied IPv4 address (C{[64:ff9b::a9fe:a9fe]} for 169.254.169.254)
    gets through;
  - it is allowed only if all of them are in C{allow_destinations}. The
    IPv6 address must be listed because the packets do leave through that
    translator or tunnel; the IPv4 one because that is where they end up.
    So C{[64:ff9b::7f00:1]} is judged as 127.0.0.1 too, yet is not allowed
    by C{allow_destinations = 127.0.0.1}: it is not this host's loopback
    but whatever the translator reaches at 127.0.0.1, and the operator has
    not said that the translator may be used. Allowing either address alone
    would let one list entry vouch for a path it never named.

IPv4-mapped addresses (C{::ffff:0:0/96}) are not IPv6 destinations at all
(a dual-stack socket sends plain IPv4), so they are simply their IPv4
address, as in every L{NetworkList}. For the local-use NAT64 prefix the
IPv4 address is read from the last 32 bits, as for a /96 translation
prefix: an operator may run a shorter RFC 6052 prefix inside
C{64:ff9b:1::/48} (the IPv4 address then sits in the middle), which the
address does not reveal, and neither does a network-specific NAT64 prefix
of their own; such a translator's prefix belongs in C{deny_destinations}
(or its allowed part in C{allow_destinations}).
"""

from twisted.logger import Logger

from evsrv.interfaces import DestinationRefused, IListing, IPeerHosts
from evsrv.util.netlist import NetworkList, embedded_ipv4, ip_address

_EVERYTHING = NetworkList.parse("any")


def socket_text(destination, transport) -> str:
    """
    The listing text of a parsed destination (never a password).
    """
    key = destination.key
    if type(key) is str:
        return key
    return transport.describe(key) if IListing.providedBy(transport) else repr(key)


class DestinationPolicy:
    """
    @param allow: L{NetworkList} every destination address, and every IPv4
        address it carries, must be in.
    @param deny: L{NetworkList} no destination address, nor any IPv4
        address it carries, may be in; it wins over C{allow}.
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
        if not IPeerHosts.providedBy(transport):
            return destination  # warned about at start-up (warn_unchecked)
        for host in transport.peer_hosts(destination):
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
        # (the first entry that matches is named, so the operator sees which one)
        network = self.deny.first(ip)
        if network is not None:
            return f"destination {ip} is refused by [policy] deny_destinations ({network})"
        embedded = embedded_ipv4(ip)
        for ipv4, how in embedded:
            network = self.deny.first(ipv4)
            if network is not None:
                return (f"destination {ip} carries {ipv4} ({how}), which is refused by "
                        f"[policy] deny_destinations ({network})")
        if ip not in self.allow:
            return (f"destination {ip} is refused by [policy] allow_destinations "
                    f"(not in {self.allow})")
        for ipv4, how in embedded:
            if ipv4 not in self.allow:
                return (f"destination {ip} carries {ipv4} ({how}), which is refused by "
                        f"[policy] allow_destinations (not in {self.allow})")
        return None

    @staticmethod
    def unchecked(transports) -> list:
        """
        The names of the transports the policy cannot check (no
        L{IPeerHosts}), each once.
        """
        names = []
        for transport in transports:
            if not IPeerHosts.providedBy(transport):
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
                "transport {transport} does not tell where it sends (no IPeerHosts): "
                "[policy] allow_destinations and deny_destinations are not applied to its "
                "subscribers", transport=name)
        return names
