# -*- test-case-name: tests.test_netlist -*-
"""
Lists of IP networks, as the ini writes them (C{127.0.0.0/8, ::1}), for the
MI access lists and the destination policy.

An IPv4-mapped IPv6 address (C{::ffff:10.0.0.1}, what a dual-stack socket
reports for an IPv4 peer) is matched as the IPv4 address it carries, so it
can neither slip past a deny entry nor miss an allow entry.
"""

import ipaddress

LOOPBACK = "127.0.0.0/8, ::1"


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

    def __contains__(self, address) -> bool:
        cached = self._cache.get(address)
        if cached is not None:
            return cached
        try:
            ip = address if not isinstance(address, str) else ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        found = any(ip in network for network in self.networks)
        if len(self._cache) >= self._CACHE_SIZE:
            self._cache.clear()  # bounded: a spoofed-source flood cannot grow it
        self._cache[address] = found
        return found

    def __bool__(self):
        return bool(self.networks)

    def __eq__(self, other):
        return isinstance(other, NetworkList) and self.networks == other.networks

    def __repr__(self):
        return f"NetworkList({self})"

    def __str__(self):
        return ", ".join(str(n) for n in self.networks) or "none"
