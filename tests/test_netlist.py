"""
Network lists of the MI access lists and the destination policy.
"""

import ipaddress

import pytest

from evsrv.util.netlist import LOOPBACK, NetworkList, embedded_ipv4, ip_address


def test_membership_of_text_and_addresses():
    nets = NetworkList.parse("10.0.0.0/8, 192.168.1.1\n 2001:db8::/32")
    assert "10.255.0.1" in nets and "192.168.1.1" in nets and "192.168.1.2" not in nets
    assert "2001:db8::5" in nets and ipaddress.ip_address("10.1.1.1") in nets
    assert "not an address" not in nets and "" not in nets


def test_ipv4_mapped_addresses_match_as_ipv4():
    nets = NetworkList.parse("127.0.0.0/8")
    assert "::ffff:127.0.0.1" in nets
    assert ipaddress.ip_address("::ffff:127.0.0.1") in nets
    # and a mapped network written in the ini means the IPv4 one
    assert "10.0.0.7" in NetworkList.parse("::ffff:10.0.0.0/104")
    assert ip_address("::ffff:1.2.3.4") == ipaddress.ip_address("1.2.3.4")
    assert ip_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")


def test_any_none_and_text_forms():
    assert "8.8.8.8" in NetworkList.parse("any") and "::1" in NetworkList.parse("any")
    assert not NetworkList.parse("none") and not NetworkList.parse("")
    assert str(NetworkList.parse("10.0.0.1, ::1")) == "10.0.0.1/32, ::1/128"
    assert str(NetworkList.parse("")) == "none"
    assert NetworkList.parse("10.0.0.0/8") == NetworkList.parse("10.1.2.3/8")


@pytest.mark.parametrize("text", ["example.com", "10.0.0.0/33", "1.2.3", "10.0.0.0/8 x"])
def test_bad_entries_are_named(text):
    with pytest.raises(ValueError) as e:
        NetworkList.parse(text)
    assert "is not an IP network" in str(e.value)


def test_the_answer_cache_stays_bounded():
    nets = NetworkList.parse("10.0.0.0/8")
    for n in range(10000):
        assert f"11.0.{n // 256}.{n % 256}" not in nets
    assert len(nets._cache) <= NetworkList._CACHE_SIZE


def test_first_names_the_matching_entry_and_remembers_misses():
    nets = NetworkList.parse("10.0.0.0/8, 10.1.0.0/16, ::ffff:192.168.0.0/112")
    assert nets.first("10.1.2.3") == ipaddress.ip_network("10.0.0.0/8")  # the first, in order
    assert nets.first("::ffff:192.168.7.7") == ipaddress.ip_network("192.168.0.0/16")
    for _ in range(2):  # the second answer comes from the cache
        assert nets.first("11.0.0.1") is None and "11.0.0.1" not in nets
        assert nets.first("junk") is None
    assert nets.first(ipaddress.ip_address("10.9.9.9")) == ipaddress.ip_network("10.0.0.0/8")


V4 = ipaddress.ip_address


@pytest.mark.parametrize("text, carried", [
    ("::ffff:169.254.169.254", [("169.254.169.254", "IPv4-mapped ::ffff:0:0/96")]),
    ("::169.254.169.254", [("169.254.169.254", "IPv4-compatible ::/96")]),
    ("::a9fe:a9fe", [("169.254.169.254", "IPv4-compatible ::/96")]),
    ("::2", [("0.0.0.2", "IPv4-compatible ::/96")]),
    ("::ffff:0:a9fe:a9fe", [("169.254.169.254", "IPv4-translated ::ffff:0:0:0/96")]),
    ("::ffff:0:169.254.169.254", [("169.254.169.254", "IPv4-translated ::ffff:0:0:0/96")]),
    ("64:ff9b::a9fe:a9fe", [("169.254.169.254", "NAT64 64:ff9b::/96")]),
    ("64:ff9b::7f00:1", [("127.0.0.1", "NAT64 64:ff9b::/96")]),
    ("64:ff9b:1::a9fe:a9fe", [("169.254.169.254", "NAT64 local-use 64:ff9b:1::/48, last 32 bits")]),
    ("64:ff9b:1:ffff:ffff:ffff:a9fe:a9fe",
     [("169.254.169.254", "NAT64 local-use 64:ff9b:1::/48, last 32 bits")]),
    ("2002:a9fe:a9fe::1", [("169.254.169.254", "6to4 2002::/16")]),
    ("2002:a9fe:a9fe:ffff:ffff:ffff:ffff:ffff", [("169.254.169.254", "6to4 2002::/16")]),
    # RFC 4380: server 65.54.227.120, client 169.254.169.254 stored inverted
    ("2001:0:4136:e378:8000:63bf:5601:5601",
     [("169.254.169.254", "Teredo client 2001::/32"),
      ("65.54.227.120", "Teredo server 2001::/32")]),
])
def test_embedded_ipv4_of_every_form(text, carried):
    assert embedded_ipv4(ipaddress.ip_address(text)) == tuple((V4(a), how) for a, how in carried)


@pytest.mark.parametrize("text", [
    "::", "::1",              # unspecified and loopback, not IPv4-compatible
    "2001:db8::1", "fd00:ec2::254", "fe80::a9fe:a9fe", "::1:0:0:0",
    "64:ff9b:0:0:1::a9fe:a9fe",  # beside 64:ff9b::/96, not in it
    "64:ff9b:2::a9fe:a9fe",      # beside the local-use /48
    "::fffe:a9fe:a9fe",          # neither mapped nor translated
    "2003:a9fe:a9fe::1",
    "169.254.169.254",           # IPv4 carries nothing further
])
def test_addresses_that_carry_no_ipv4(text):
    assert embedded_ipv4(ipaddress.ip_address(text)) == ()


def test_only_mapped_addresses_match_ipv4_entries():
    # The MI allow lists: a NAT64, compatible or 6to4 source is some IPv4 host
    # elsewhere, never this host's loopback, so it must not pass LOOPBACK.
    loopback = NetworkList.parse(LOOPBACK)
    assert "::ffff:127.0.0.1" in loopback and "::1" in loopback
    for text in ("64:ff9b::7f00:1", "64:ff9b:1::7f00:1", "::127.0.0.1", "::ffff:0:7f00:1",
                 "2002:7f00:1::1"):
        assert text not in loopback, text
