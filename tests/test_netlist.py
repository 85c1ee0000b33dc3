"""
Network lists of the MI access lists and the destination policy.
"""

import ipaddress

import pytest

from evsrv.netlist import NetworkList, ip_address


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
