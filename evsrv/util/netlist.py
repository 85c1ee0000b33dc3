# -*- test-case-name: tests.test_netlist -*-
"""
Lists of IP networks, as the ini writes them (C{127.0.0.0/8, ::1}), for the
MI access lists and the destination policy.

An IPv4-mapped IPv6 address (C{::ffff:10.0.0.1}, what a dual-stack socket
reports for an IPv4 peer) is matched as the IPv4 address it carries, so it
can neither slip past a deny entry nor miss an allow entry. That is the only
IPv6 spelling a L{NetworkList} turns into IPv4: a mapped address is not an
IPv6 destination at all (the socket sends plain IPv4), whereas the other
IPv6 forms that carry an IPv4 address (L{embedded_ipv4}) are real IPv6
addresses routed through a translator or a tunnel. Matching those as their
IPv4 address would let an MI source such as C{64:ff9b::7f00:1} (some IPv4
host behind a NAT64, not this host) pass a loopback allow list, so the
destination policy, which must judge them by both addresses, asks for the
embedded address itself.
"""

import ipaddress

LOOPBACK = "127.0.0.0/8, ::1"

# IPv6 prefixes whose addresses carry an IPv4 address, with the name the
# policy's refusals show. Each has the IPv4 address in the last 32 bits
# except 6to4 and Teredo, taken apart in embedded_ipv4.

# RFC 4291 2.5.5.1, deprecated but still sent through by Linux's sit tunnel
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
# RFC 8215 local use. The RFC leaves the operator free to carve any RFC 6052
# prefix length out of it, and with a /48 to /64 prefix the IPv4 address sits
# in the middle, around the reserved octet; the address alone does not say
# which length the translator uses. Only the /96 reading (the last 32 bits,
# the layout of the well-known prefix) is taken: reading every layout would
# turn the zero bits of a /96 address into 0.0.0.x and refuse them all.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_6TO4 = ipaddress.IPv6Network("2002::/16")  # RFC 3056, the IPv4 address in bits 16-47
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380, a server and an inverted client
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

_LAST_32 = (
    (_TRANSLATED, "IPv4-translated ::ffff:0:0:0/96"),
    (_NAT64, "NAT64 64:ff9b::/96"),
    (_NAT64_LOCAL, "NAT64 local-use 64:ff9b:1::/48, last 32 bits"),
)


def ip_address(text: str):
    """
    The address of C{text} (a scope C{%eth0} is ignored), IPv4-mapped IPv6
    turned into IPv4.

    @raise ValueError: not an IP address.
    """
    address = ipaddress.ip_address(text.partition("%")[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def embedded_ipv4(address) -> tuple:
    """
    The IPv4 addresses an IPv6 address carries, where packets sent to it
    end up through a translator or a tunnel.

    @param address: an C{ipaddress} address; IPv4 carries nothing.
    @return: C{(IPv4Address, how)} pairs, C{how} naming the form (for the
        refusal text); empty when the address carries no IPv4 address.
        C{::} and C{::1} are not IPv4-compatible: they are the unspecified
        and the loopback address.
    """
    if address.version != 6:
        return ()
    if address in _MAPPED:
        return ((address.ipv4_mapped, "IPv4-mapped ::ffff:0:0/96"),)
    if address in _COMPATIBLE:
        if int(address) <= 1:
            return ()
        return ((ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "IPv4-compatible ::/96"),)
    for network, how in _LAST_32:
        if address in network:
            return ((ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), how),)
    if address in _6TO4:
        return ((address.sixtofour, "6to4 2002::/16"),)
    if address in _TEREDO:
        server, client = address.teredo
        # a relay sends the packets to the client's public address, and may
        # reach it through its server first (indirect bubbles): both judged
        return ((client, "Teredo client 2001::/32"), (server, "Teredo server 2001::/32"))
    return ()


class NetworkList:
    """
    An ordered set of networks; C{address in networks} for text or
    C{ipaddress} addresses. Non-IP text is never contained.
    """
    __slots__ = ("networks", "_cache")

    _CACHE_SIZE = 4096  # answers kept, so a busy MI source costs one dict lookup

    def __init__(self, networks=()):
        self.networks = tuple(networks)
        self._cache = {}

    @classmethod
    def parse(cls, text: str) -> "NetworkList":
        """
        Comma- or newline-separated networks or addresses; C{any} means
        every IPv4 and IPv6 address, C{none} (or nothing) none.

        @raise ValueError: naming the bad entry.
        """
        networks = []
        for item in text.replace("\n", ",").split(","):
            item = item.strip()
            if not item or item == "none":
                continue
            if item == "any":
                networks += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
                continue
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network such as 10.0.0.0/8 or ::1") \
                    from None
            if network.version == 6 and network.network_address.ipv4_mapped is not None \
                    and network.prefixlen >= 96:
                network = ipaddress.ip_network(
                    f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
            networks.append(network)
        return cls(networks)

    def first(self, address):
        """
        The first network that contains C{address} (text or an C{ipaddress}
        address, IPv4-mapped matched as IPv4), so a refusal can name the
        entry that matched; C{None} if none does or it is not an address.
        """
        cached = self._cache.get(address)
        if cached is not None:
            return None if cached is False else cached  # False: known to match nothing
        try:
            ip = address if not isinstance(address, str) else ip_address(address)
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        found = next((network for network in self.networks if ip in network), None)
        if len(self._cache) >= self._CACHE_SIZE:
            self._cache.clear()  # bounded: a spoofed-source flood cannot grow it
        self._cache[address] = found if found is not None else False
        return found

    def __contains__(self, address) -> bool:
        return self.first(address) is not None

    def __bool__(self):
        return bool(self.networks)

    def __eq__(self, other):
        return isinstance(other, NetworkList) and self.networks == other.networks

    def __repr__(self):
        return f"NetworkList({self})"

    def __str__(self):
        return ", ".join(str(n) for n in self.networks) or "none"
