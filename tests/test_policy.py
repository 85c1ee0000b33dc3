"""
The destination policy ([policy] allow_destinations / deny_destinations):
the check itself, then end to end through the MI from real sockets, with the
spoof-style sockets someone reaching the MI would try.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from zope.interface import implementer

from evsrv import ctl
from evsrv.config import DEFAULT_DENIED_DESTINATIONS, parse_config
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import BadSocket, DestinationRefused, IEventTransport, IPeerHosts
from evsrv.util.netlist import NetworkList
from evsrv.evi.policy import DestinationPolicy
from evsrv.server import EvsrvService, module_factories, transport_factories
from evsrv.util.statistics import Statistics
from evsrv.testing import RecordingTransport
from evsrv.transports import rabbitmq
from evsrv.transports.factories import TransportFactory
from evsrv.transports.rabbitmq import RabbitMQTransport
from tests.amqp_tools import drain, pika_connection, require_broker, unique
from tests.conftest import BASE_INI

DEFAULT_DENY = NetworkList.parse(DEFAULT_DENIED_DESTINATIONS)


# -- the check ---------------------------------------------------------------------


@implementer(IEventTransport, IPeerHosts)
class AddressTransport:
    """
    C{net:ADDR,ADDR...}: peer_hosts gives the comma-separated addresses.
    """
    name = "net"
    schemes = ("net",)

    def parse(self, scheme, rest):
        return Destination(f"net:{rest}", tuple(rest.split(",")))

    @staticmethod
    def peer_hosts(destination):
        return destination.address

    def deliver(self, notification, subscriptions):
        raise AssertionError("not used")


def policy(allow="any", deny=DEFAULT_DENY, statistics=None):
    allow = NetworkList.parse(allow) if isinstance(allow, str) else allow
    deny = NetworkList.parse(deny) if isinstance(deny, str) else deny
    return DestinationPolicy(allow, deny, statistics)


def check(p, rest, transport=None):
    transport = transport or AddressTransport()
    return p.check(transport.parse("net", rest), transport)


@pytest.mark.parametrize("address, network", [
    ("169.254.169.254", "169.254.0.0/16"), ("0.0.0.0", "0.0.0.0/8"), ("224.0.0.1", "224.0.0.0/3"),
    ("255.255.255.255", "224.0.0.0/3"), ("ff02::1", "ff00::/8"), ("fe80::1", "fe80::/10"),
    ("fe80::1%eth0", "fe80::/10"), ("::", "::/128"),
    ("::ffff:169.254.169.254", "169.254.0.0/16"),  # IPv4-mapped: matched as the IPv4 address
    # metadata services outside link-local
    ("100.100.100.200", "100.100.100.200/32"), ("192.0.0.192", "192.0.0.192/32"),
    ("168.63.129.16", "168.63.129.16/32"), ("fd00:ec2::254", "fd00:ec2::254/128"),
    ("fd00:ec2::23", "fd00:ec2::23/128"), ("fd20:ce::254", "fd20:ce::254/128"),
    ("fd00:c1::a9fe:a9fe", "fd00:c1::a9fe:a9fe/128"),
    ("fd00:a9fe:a9fe::1", "fd00:a9fe:a9fe::1/128"), ("fd00:42::42", "fd00:42::42/128"),
    ("::ffff:100.100.100.200", "100.100.100.200/32"),
])
def test_default_deny_list(address, network):
    with pytest.raises(DestinationRefused) as caught:
        check(policy(), address)
    shown = address.partition("%")[0].replace("::ffff:", "")
    assert str(caught.value) == (f"net:{address}: destination {shown} is refused by "
                                 f"[policy] deny_destinations ({network})")


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "192.0.2.1", "::1", "2001:db8::1", "223.255.255.255", "1.0.0.0",
    # beside the metadata addresses
    "100.100.100.201", "192.0.0.193", "fd00:ec2::253", "fd20:ce::253", "fd00:42::43",
    # spellings of allowed IPv4 addresses
    "64:ff9b::a14:5", "64:ff9b:1::a14:5", "::ffff:0:a14:5", "::a14:5", "2002:a14:5::1",
    "2001:0:4136:e378:8000:63bf:f5eb:fffa",  # Teredo, client 10.20.0.5
])
def test_default_allows_the_rest(address):
    destination = check(policy(), address)
    assert destination.address == (address,)


def test_the_default_deny_list_has_the_metadata_addresses():
    for address in ("169.254.169.254", "100.100.100.200", "192.0.0.192", "168.63.129.16",
                    "fd00:ec2::254", "fd00:ec2::23", "fd20:ce::254", "fd00:c1::a9fe:a9fe",
                    "fd00:a9fe:a9fe::1", "fd00:42::42"):
        assert address in DEFAULT_DENY, address
    assert DEFAULT_DENY == NetworkList.parse(
        "0.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3, ::/128, fe80::/10, ff00::/8, 100.100.100.200, "
        "192.0.0.192, 168.63.129.16, fd00:ec2::254, fd00:ec2::23, fd20:ce::254, "
        "fd00:c1::a9fe:a9fe, fd00:a9fe:a9fe::1, fd00:42::42")


# (address as written, as shown, the IPv4 address it carries, how, the deny entry)
EMBEDDED_SPELLINGS = [
    ("::169.254.169.254", "::a9fe:a9fe", "169.254.169.254", "IPv4-compatible ::/96",
     "169.254.0.0/16"),
    ("::a9fe:a9fe", "::a9fe:a9fe", "169.254.169.254", "IPv4-compatible ::/96", "169.254.0.0/16"),
    ("::2", "::2", "0.0.0.2", "IPv4-compatible ::/96", "0.0.0.0/8"),
    ("::ffff:0:a9fe:a9fe", "::ffff:0:a9fe:a9fe", "169.254.169.254",
     "IPv4-translated ::ffff:0:0:0/96", "169.254.0.0/16"),
    ("64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe", "169.254.169.254", "NAT64 64:ff9b::/96",
     "169.254.0.0/16"),
    ("64:ff9b::169.254.169.254", "64:ff9b::a9fe:a9fe", "169.254.169.254", "NAT64 64:ff9b::/96",
     "169.254.0.0/16"),
    ("64:ff9b::6464:64c8", "64:ff9b::6464:64c8", "100.100.100.200", "NAT64 64:ff9b::/96",
     "100.100.100.200/32"),
    ("64:ff9b::", "64:ff9b::", "0.0.0.0", "NAT64 64:ff9b::/96", "0.0.0.0/8"),
    ("64:ff9b:1::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe", "169.254.169.254",
     "NAT64 local-use 64:ff9b:1::/48, last 32 bits", "169.254.0.0/16"),
    ("64:ff9b:1:abcd::c000:c0", "64:ff9b:1:abcd::c000:c0", "192.0.0.192",
     "NAT64 local-use 64:ff9b:1::/48, last 32 bits", "192.0.0.192/32"),
    ("2002:a9fe:a9fe::1", "2002:a9fe:a9fe::1", "169.254.169.254", "6to4 2002::/16",
     "169.254.0.0/16"),
    ("2002:e000:1::", "2002:e000:1::", "224.0.0.1", "6to4 2002::/16", "224.0.0.0/3"),
    ("2001:0:4136:e378:8000:63bf:5601:5601", "2001:0:4136:e378:8000:63bf:5601:5601",
     "169.254.169.254", "Teredo client 2001::/32", "169.254.0.0/16"),
    ("2001:0:a9fe:a9fe:8000:63bf:f5eb:fffa", "2001:0:a9fe:a9fe:8000:63bf:f5eb:fffa",
     "169.254.169.254", "Teredo server 2001::/32", "169.254.0.0/16"),
]


@pytest.mark.parametrize("address, shown, ipv4, how, network", EMBEDDED_SPELLINGS)
def test_embedded_ipv4_spellings_of_denied_addresses(address, shown, ipv4, how, network):
    with pytest.raises(DestinationRefused) as caught:
        check(policy(), address)
    assert str(caught.value) == (f"net:{address}: destination {shown} carries {ipv4} ({how}), "
                                 f"which is refused by [policy] deny_destinations ({network})")


def test_an_ipv6_deny_entry_still_matches_the_ipv6_address():
    # the IPv6 address is judged first, so its own entry is the one named
    p = policy(deny="64:ff9b::/96, 10.0.0.0/8")
    with pytest.raises(DestinationRefused) as caught:
        check(p, "64:ff9b::a00:1")
    assert str(caught.value).endswith(
        "destination 64:ff9b::a00:1 is refused by [policy] deny_destinations (64:ff9b::/96)")
    assert check(p, "2002:c000:201::1").address == ("2002:c000:201::1",)


def test_a_denied_embedded_address_wins_over_allow():
    p = policy(allow="64:ff9b::/96, 2002::/16, 10.0.0.0/8", deny="10.0.0.7/32")
    assert check(p, "64:ff9b::a00:1").address == ("64:ff9b::a00:1",)
    for address in ("64:ff9b::a00:7", "2002:a00:7::1"):
        with pytest.raises(DestinationRefused, match=r"carries 10\.0\.0\.7 .* deny_destinations "
                                                     r"\(10\.0\.0\.7/32\)"):
            check(p, address)


def test_allow_judges_the_ipv6_address_and_the_ipv4_address_it_carries():
    # 64:ff9b::7f00:1 is 127.0.0.1 as seen by a NAT64 translator, not this
    # host's loopback: allowing 127.0.0.1 does not allow the translator ...
    with pytest.raises(DestinationRefused) as caught:
        check(policy(allow="127.0.0.1/32"), "64:ff9b::7f00:1")
    assert str(caught.value) == ("net:64:ff9b::7f00:1: destination 64:ff9b::7f00:1 is refused by "
                                 "[policy] allow_destinations (not in 127.0.0.1/32)")
    # ... and allowing the translator does not allow every IPv4 address behind it
    with pytest.raises(DestinationRefused) as caught:
        check(policy(allow="64:ff9b::/96, 10.0.0.0/8"), "64:ff9b::7f00:1")
    assert str(caught.value) == (
        "net:64:ff9b::7f00:1: destination 64:ff9b::7f00:1 carries 127.0.0.1 (NAT64 64:ff9b::/96), "
        "which is refused by [policy] allow_destinations (not in 64:ff9b::/96, 10.0.0.0/8)")
    # both named: allowed
    both = policy(allow="64:ff9b::/96, 127.0.0.1/32")
    assert check(both, "64:ff9b::7f00:1").address == ("64:ff9b::7f00:1",)
    # an IPv4-mapped address is only its IPv4 address
    assert check(policy(allow="127.0.0.1/32"), "::ffff:7f00:1").address == ("::ffff:7f00:1",)


def test_allow_judges_every_ipv4_address_a_teredo_address_carries():
    teredo = "2001:0:4136:e378:8000:63bf:f5eb:fffa"  # server 65.54.227.120, client 10.20.0.5
    with pytest.raises(DestinationRefused, match=r"carries 65\.54\.227\.120 \(Teredo server"):
        check(policy(allow="2001::/32, 10.20.0.0/16"), teredo)
    assert check(policy(allow="2001::/32, 10.20.0.0/16, 65.54.227.120"), teredo).address == \
        (teredo,)


def test_deny_wins_over_allow_and_any_address_refuses():
    p = policy(allow="10.0.0.0/8", deny="10.0.0.7/32")
    assert check(p, "10.0.0.1,10.9.9.9").key == "net:10.0.0.1,10.9.9.9"
    with pytest.raises(DestinationRefused, match=r"10\.0\.0\.7 is refused by \[policy\] "
                                                 r"deny_destinations \(10\.0\.0\.7/32\)"):
        check(p, "10.0.0.1,10.0.0.7")


def test_allow_list_mode():
    p = policy(allow="127.0.0.1/32, 2001:db8::/32")
    check(p, "127.0.0.1")
    check(p, "::ffff:127.0.0.1")
    check(p, "2001:db8::5")
    with pytest.raises(DestinationRefused) as caught:
        check(p, "10.1.2.3")
    assert str(caught.value) == ("net:10.1.2.3: destination 10.1.2.3 is refused by [policy] "
                                 "allow_destinations (not in 127.0.0.1/32, 2001:db8::/32)")
    with pytest.raises(DestinationRefused, match="allow_destinations"):
        check(p, "127.0.0.2")
    with pytest.raises(DestinationRefused, match="allow_destinations"):
        check(p, "::1")


def test_a_name_is_never_accepted_as_an_address():
    # a transport that hands over an unresolved name fails closed
    with pytest.raises(DestinationRefused, match="'example.com' is not an IP address"):
        check(policy(), "example.com")


def test_address_less_destinations_and_unchecked_transports_pass():
    closed = policy(allow="none")
    transport = RecordingTransport("rec")  # no peer_hosts: not checked
    destination = transport.parse("rec", "x")
    assert closed.check(destination, transport) is destination

    class NoNetwork(AddressTransport):
        @staticmethod
        def peer_hosts(destination):
            return ()
    t = NoNetwork()
    destination = t.parse("net", "whatever")
    assert closed.check(destination, t) is destination


def test_refusals_are_counted():
    statistics = Statistics()
    p = policy(statistics=statistics)
    assert statistics.get(["policy:"]) == {"policy:destinations_refused": 0}
    for address in ("169.254.169.254", "0.0.0.0", "64:ff9b::a9fe:a9fe"):
        with pytest.raises(DestinationRefused):
            check(p, address)
    assert check(p, "10.0.0.1").address == ("10.0.0.1",)
    assert statistics.get(["policy:"]) == {"policy:destinations_refused": 3}


def test_open_policy_checks_nothing():
    p = policy(deny="")
    assert p.open
    for address in ("169.254.169.254", "64:ff9b::a9fe:a9fe"):
        assert check(p, address).address == (address,)
    assert p.warn_unchecked([RecordingTransport()]) == []
    # not even asked where it sends: a name (refused by any other policy) passes
    assert check(p, "example.com").address == ("example.com",)

    class Unreadable(AddressTransport):
        @staticmethod
        def peer_hosts(destination):
            raise AssertionError("an open policy does not look")
    assert check(p, "10.0.0.1", Unreadable()).address == ("10.0.0.1",)
    # anything allowed or denied makes a policy that checks
    assert not policy(deny="10.0.0.0/8").open
    assert not policy(allow="10.0.0.0/8", deny="").open


def test_the_transports_the_policy_cannot_check_are_named_once(log_capture):
    from evsrv.testing import RecordingTransport as Rec
    assert policy().warn_unchecked([Rec("a"), AddressTransport(), Rec("a"), Rec("b")]) == ["a", "b"]
    assert len([t for t in log_capture.warnings() if "does not tell where it sends" in t]) == 2


def test_refused_is_a_bad_socket():
    # callers that only know BadSocket still refuse the subscription
    assert issubclass(DestinationRefused, BadSocket)


# -- the warning for transports that cannot be checked ------------------------------------


class LogCapture:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def warnings(self):
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn]


@pytest.fixture
def log_capture():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


def test_one_warning_per_unchecked_transport_at_start(tmpdir_short, log_capture):
    factories = dict(transport_factories())
    factories["rec"] = TransportFactory(
        "rec", ("rec", "rec2"), {}, lambda settings, context: RecordingTransport("rec"),
        builtin=False)
    text = BASE_INI.replace("unix = mi.sock", "unix =") + \
        "[transports]\nenabled = udp, unix, tcp, xmlrpc, virtual, flatstore, route, rec\n"
    config = parse_config(text, "<test>", tmpdir_short, factories, module_factories())
    service = EvsrvService(config, reactor, factories=factories)
    warned = [t for t in log_capture.warnings() if "IPeerHosts" in t]
    assert warned == [
        "transport rec does not tell where it sends (no IPeerHosts): [policy] "
        "allow_destinations and deny_destinations are not applied to its subscribers"]
    # every built-in transport says where it sends
    assert DestinationPolicy.unchecked(service.transports.values()) == ["rec"]


def test_every_builtin_transport_says_where_it_sends(tmpdir_short):
    text = BASE_INI.replace("unix = mi.sock", "unix =")
    config = parse_config(text, "<test>", tmpdir_short, transport_factories(),
                          module_factories())
    service = EvsrvService(config, reactor)
    assert {"udp", "unix", "tcp", "jsonrpc", "xmlrpc", "rabbitmq", "virtual",
            "flatstore"} <= set(service.transports)
    assert DestinationPolicy.unchecked(service.transports.values()) == []


# -- rabbitmq: resolved at subscribe time, connected to that address --------------------------


class ResolvingClock(Clock):
    """
    A clock with a resolver whose answers the test changes (DNS rebinding).
    """

    def __init__(self, answers):
        super().__init__()
        self.answers = answers
        self.asked = []

    def resolve(self, name, timeout=(1, 3, 11, 45)):
        self.asked.append(name)
        answer = self.answers[name]
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


def test_rabbitmq_pins_the_address_resolved_when_subscribing(monkeypatch):
    made = []

    class RecordingEndpoint:
        def __init__(self, reactor, host, port, timeout):
            made.append((host, port))
    monkeypatch.setattr(rabbitmq, "HostnameEndpoint", RecordingEndpoint)
    clock = ResolvingClock({"broker.example": "192.0.2.10"})
    transport = RabbitMQTransport("rabbitmq", clock, Statistics())
    first = transport.admit(transport.parse("rabbitmq", "broker.example/q").result)
    conn = first.address.connection
    assert (conn.key.host, conn.key.address) == ("broker.example", "192.0.2.10")
    assert transport.peer_hosts(first) == ("192.0.2.10",)

    # the name now points elsewhere: the existing connection does not follow
    clock.answers["broker.example"] = "169.254.169.254"
    conn._endpoint()
    assert made == [("192.0.2.10", 5672)]
    # a new subscription resolving elsewhere is checked on its own and never
    # rides on (or redirects) the first one's connection
    second = transport.admit(transport.parse("rabbitmq", "broker.example/other").result)
    assert second.address.connection is not conn
    assert transport.peer_hosts(second) == ("169.254.169.254",)
    with pytest.raises(DestinationRefused, match="169.254.169.254"):
        policy().check(second, transport)
    # same name, same answer: shared as before
    third = transport.admit(transport.parse("rabbitmq", "broker.example/third").result)
    assert third.address.connection is second.address.connection
    assert clock.asked == ["broker.example"] * 3


def test_rabbitmq_tls_verifies_the_name_not_the_address(monkeypatch):
    monkeypatch.setattr(rabbitmq, "HostnameEndpoint", lambda reactor, host, port, timeout: host)
    names = []
    monkeypatch.setattr(rabbitmq, "wrapClientTLS", lambda options, endpoint: (options, endpoint))
    clock = ResolvingClock({"broker.example": "192.0.2.10"})
    transport = RabbitMQTransport("rabbitmq", clock, Statistics())
    monkeypatch.setattr(transport, "_check_tls", lambda: None)
    monkeypatch.setattr(transport, "tls_options", lambda name: names.append(name) or name)
    conn = transport.admit(transport.parse("rabbitmq", "broker.example/tls?q").result).address.connection
    observed = conn._endpoint()
    assert observed._endpoint == ("broker.example", "192.0.2.10")
    assert names == ["broker.example"]


def test_rabbitmq_literal_addresses_need_no_resolver():
    clock = ResolvingClock({})
    transport = RabbitMQTransport("rabbitmq", clock, Statistics())
    v4 = transport.parse("rabbitmq", "192.0.2.1/q")
    v6 = transport.parse("rabbitmq", "[2001:db8::1]:5000/q")
    assert transport.peer_hosts(v4) == ("192.0.2.1",)
    assert transport.peer_hosts(v6) == ("2001:db8::1",)
    assert clock.asked == []


def test_rabbitmq_unresolvable_name_is_a_bad_socket():
    clock = ResolvingClock({"nowhere.invalid": DNSLookupError("nowhere.invalid")})
    transport = RabbitMQTransport("rabbitmq", clock, Statistics())
    failure = []
    transport.parse("rabbitmq", "nowhere.invalid/q").addErrback(failure.append)
    assert failure[0].check(BadSocket)
    assert failure[0].getErrorMessage().startswith("cannot resolve 'nowhere.invalid'")
    assert transport.connections == {}


# -- end to end: MI JSON-RPC and 1.x text over UDP to a real server ---------------------------


def ini(policy_text="", extra=""):
    return BASE_INI + (f"[policy]\n{policy_text}\n" if policy_text else "") + extra


@pytest.fixture
def mi_client(udp_collector):
    """
    C{mi(server, method, params)}: one JSON-RPC request in a UDP datagram to
    the server's MI; a Deferred firing with the decoded reply.
    """
    collector = udp_collector()

    def mi(server, method, params=None):
        request = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            request["params"] = params
        d = collector.request(json.dumps(request).encode(), server.mi_udp_address())
        return d.addCallback(lambda reply: json.loads(reply[0]))

    def text(server, data: bytes):
        return collector.request(data, server.mi_udp_address()).addCallback(lambda r: r[0])
    mi.text = text
    return mi


REFUSED_BY_DEFAULT = [
    ("udp:169.254.169.254:80", "169.254.169.254", "169.254.0.0/16"),
    ("udp:0.0.0.0:9", "0.0.0.0", "0.0.0.0/8"),
    ("udp:224.0.0.1:9", "224.0.0.1", "224.0.0.0/3"),
    ("udp:255.255.255.255:9", "255.255.255.255", "224.0.0.0/3"),
    ("udp:[ff02::1]:9", "ff02::1", "ff00::/8"),
    ("tcp:169.254.169.254:80", "169.254.169.254", "169.254.0.0/16"),
    ("xmlrpc:169.254.169.254:80:latest", "169.254.169.254", "169.254.0.0/16"),
    ("rabbitmq:169.254.169.254/q", "169.254.169.254", "169.254.0.0/16"),
]


@pytest_twisted.inlineCallbacks
def test_default_deny_end_to_end(server_factory, mi_client):
    server = server_factory(ini())
    for socket_text, address, network in REFUSED_BY_DEFAULT:
        reply = yield mi_client(server, "event_subscribe", ["E_TEST", socket_text, 60])
        listed = socket_text.replace("rabbitmq:", "rabbitmq:guest@")
        assert reply == {"jsonrpc": "2.0", "id": 1, "error": {
            "code": 403, "message": "Destination not allowed",
            "data": f"{listed}: destination {address} is refused by [policy] "
                    f"deny_destinations ({network})"}}, socket_text
    assert server.evi.store.size == 0
    stats = yield mi_client(server, "get_statistics", [["policy:destinations_refused"]])
    assert stats["result"] == {"policy:destinations_refused": len(REFUSED_BY_DEFAULT)}
    # and the refused rabbitmq broker was never contacted
    assert server.transports["rabbitmq"].connections == {}  # none taken by a refused socket


@pytest_twisted.inlineCallbacks
def test_exact_errors_json_rpc_and_text_mi(server_factory, mi_client):
    server = server_factory(ini())
    data = json.dumps({"jsonrpc": "2.0", "method": "event_subscribe", "id": 7,
                       "params": {"event": "E_TEST", "socket": "udp:169.254.169.254:80"}})
    raw = yield mi_client.text(server, data.encode())
    assert raw == (b'{"jsonrpc":"2.0","error":{"code":403,"message":"Destination not allowed",'
                   b'"data":"udp:169.254.169.254:80: destination 169.254.169.254 is refused by '
                   b'[policy] deny_destinations (169.254.0.0/16)"},"id":7}')
    raw = yield mi_client.text(server, b":event_subscribe:\nE_TEST\nudp:169.254.169.254:80\n")
    assert raw == b"403 Forbidden\n"
    raw = yield mi_client.text(server, b":event_subscribe:\nE_TEST\nudp:224.0.0.1:9\n60\n")
    assert raw == b"403 Forbidden\n"
    # a lookup of a refused socket: no such subscriber, as for any unknown one
    reply = yield mi_client(server, "subscribers_list", ["E_TEST", "udp:169.254.169.254:80"])
    assert reply["error"] == {"code": 404, "message": "Subscriber does not exist"}


def with_e_x(text):
    # the issue's own command subscribes E_X: published here beside E_TEST
    assert "publish = E_TEST, E_OTHER\n" in text
    return text.replace("publish = E_TEST, E_OTHER\n", "publish = E_TEST, E_OTHER, E_X\n")


NAT64_METADATA = ("udp:[64:ff9b::a9fe:a9fe]:5000: destination 64:ff9b::a9fe:a9fe carries "
                  "169.254.169.254 (NAT64 64:ff9b::/96), which is refused by [policy] "
                  "deny_destinations (169.254.0.0/16)")


@pytest_twisted.inlineCallbacks
def test_embedded_ipv4_spellings_refused_end_to_end(server_factory, mi_client):
    server = server_factory(with_e_x(ini()))
    # the command as an operator types it (no expiry)
    reply = yield mi_client(server, "event_subscribe", ["E_X", "udp:[64:ff9b::a9fe:a9fe]:5000"])
    assert reply == {"jsonrpc": "2.0", "id": 1, "error": {
        "code": 403, "message": "Destination not allowed", "data": NAT64_METADATA}}
    raw = yield mi_client.text(server, b":event_subscribe:\nE_X\nudp:[64:ff9b::a9fe:a9fe]:5000\n")
    assert raw == b"403 Forbidden\n"
    sockets = [f"udp:[{address}]:5000" for address, *_ in EMBEDDED_SPELLINGS] + [
        "tcp:[2002:a9fe:a9fe::1]:80", "rabbitmq:[::ffff:0:a9fe:a9fe]:5672/q",
        "virtual:PARALLEL udp:127.0.0.1:9 udp:[64:ff9b:1::a9fe:a9fe]:9",
        "udp:[fd00:ec2::254]:80", "udp:100.100.100.200:80", "udp:[64:ff9b::c000:c0]:80"]
    for socket_text in sockets:
        reply = yield mi_client(server, "event_subscribe", ["E_X", socket_text, 60])
        error = reply.get("error", {})
        assert (error.get("code"), error.get("message")) == (403, "Destination not allowed"), \
            (socket_text, reply)
        assert " is refused by [policy] deny_destinations (" in error["data"], reply
    assert server.evi.store.size == 0
    assert server.transports["rabbitmq"].connections == {}
    assert not server.transports["tcp"]._peers
    stats = yield mi_client(server, "get_statistics", [["policy:destinations_refused"]])
    assert stats["result"] == {"policy:destinations_refused": len(sockets) + 2}


@pytest_twisted.inlineCallbacks
def test_allow_list_and_an_embedded_address_end_to_end(server_factory, mi_client):
    server = server_factory(with_e_x(ini("allow_destinations = 127.0.0.1/32, 64:ff9b::/96")))
    reply = yield mi_client(server, "event_subscribe", ["E_X", "udp:[64:ff9b::a00:1]:9", 60])
    assert reply["error"] == {
        "code": 403, "message": "Destination not allowed",
        "data": "udp:[64:ff9b::a00:1]:9: destination 64:ff9b::a00:1 carries 10.0.0.1 (NAT64 "
                "64:ff9b::/96), which is refused by [policy] allow_destinations (not in "
                "127.0.0.1/32, 64:ff9b::/96)"}
    reply = yield mi_client(server, "event_subscribe", ["E_X", "udp:[2002:7f00:1::1]:9", 60])
    assert reply["error"]["data"] == (
        "udp:[2002:7f00:1::1]:9: destination 2002:7f00:1::1 is refused by [policy] "
        "allow_destinations (not in 127.0.0.1/32, 64:ff9b::/96)")
    assert server.evi.store.size == 0


@pytest_twisted.inlineCallbacks
def test_denied_network_refused_while_the_rest_receives(server_factory, mi_client,
                                                        udp_collector):
    server = server_factory(ini("deny_destinations = 127.0.0.2/32"))
    receiver = udp_collector()
    host, port = receiver.address
    reply = yield mi_client(server, "event_subscribe", ["E_TEST", "udp:127.0.0.2:9", 60])
    assert reply["error"]["code"] == 403
    assert reply["error"]["data"] == ("udp:127.0.0.2:9: destination 127.0.0.2 is refused by "
                                      "[policy] deny_destinations (127.0.0.2/32)")
    reply = yield mi_client(server, "event_subscribe", ["E_TEST", f"udp:{host}:{port}", 60])
    assert reply["result"] == "OK"
    reply = yield mi_client(server, "raise_event", ["E_TEST", ["hello"]])
    assert reply["result"] == "OK"
    data, _ = yield receiver.next()
    assert json.loads(data) == {"jsonrpc": "2.0", "method": "E_TEST", "params": ["hello"]}
    # replacing the default list: link-local is allowed now
    reply = yield mi_client(server, "event_subscribe", ["E_TEST", "udp:169.254.1.1:9", 60])
    assert reply["result"] == "OK"


SPOOFS = [
    "udp:localhost:9",                 # a name resolving into the denied network
    "udp:127.1:9",                     # short dotted form (inet_aton)
    "udp:2130706433:9",                # 127.0.0.1 as one number
    "udp:0x7f.1:9",                    # hex
    "udp:[::ffff:127.0.0.1]:9",        # IPv4-mapped IPv6
    "udp:[::ffff:7f00:1]:9",           # the same, in hex
    "virtual:PARALLEL udp:10.0.0.1:9 udp:127.0.0.1:9",  # one denied member
    "virtual:FAILOVER udp:10.0.0.1:9 tcp:localhost:9",
    "tcp:localhost:9",
    "jsonrpc:localhost:9/method",
    "xmlrpc:localhost:8080:method",
    "rabbitmq:localhost/queue",
    "rabbitmq:user:pw@localhost:5672/exchange=x?key",
]


@pytest_twisted.inlineCallbacks
def test_spoof_style_sockets_are_all_refused(server_factory, mi_client):
    server = server_factory(ini("deny_destinations = 127.0.0.0/8"))
    for socket_text in SPOOFS:
        reply = yield mi_client(server, "event_subscribe", ["E_TEST", socket_text, 60])
        assert "result" not in reply, socket_text
        error = reply["error"]
        if error["code"] == 400:
            # a form the resolver does not take is a bad socket: also refused
            assert socket_text in ("udp:2130706433:9", "udp:0x7f.1:9"), reply
            assert error["data"].startswith("cannot resolve"), reply
            continue
        assert (error["code"], error["message"]) == (403, "Destination not allowed"), reply
        assert "destination 127.0.0.1 is refused by [policy] deny_destinations (127.0.0.0/8)" \
            in error["data"], reply
    assert server.evi.store.size == 0
    # nothing was contacted: no stream peer, no xmlrpc destination, no broker connection
    assert not server.transports["tcp"]._peers and not server.transports["jsonrpc"]._peers
    assert not server.transports["xmlrpc"]._destinations
    assert server.transports["rabbitmq"].connections == {}  # none taken by a refused socket
    # a raise has nobody to go to
    reply = yield mi_client(server, "raise_event", ["E_TEST"])
    assert reply["error"]["code"] == 480


@pytest_twisted.inlineCallbacks
def test_allow_list_mode_end_to_end(server_factory, mi_client, udp_collector):
    server = server_factory(ini("allow_destinations = 127.0.0.1/32"))
    receiver = udp_collector()
    reply = yield mi_client(server, "event_subscribe", ["E_TEST", "udp:10.1.2.3:9", 60])
    assert reply["error"] == {"code": 403, "message": "Destination not allowed",
                              "data": "udp:10.1.2.3:9: destination 10.1.2.3 is refused by "
                                      "[policy] allow_destinations (not in 127.0.0.1/32)"}
    reply = yield mi_client(server, "event_subscribe", ["E_TEST", "udp:127.0.0.2:9", 60])
    assert reply["error"]["code"] == 403
    reply = yield mi_client(server, "event_subscribe",
                            ["E_TEST", "udp:localhost:%d" % receiver.address[1], 60])
    assert reply["result"] == "OK"
    reply = yield mi_client(server, "raise_event", ["E_TEST"])
    assert reply["result"] == "OK"
    data, _ = yield receiver.next()
    assert data == b'{"jsonrpc":"2.0","method":"E_TEST"}'


SCRIPT = '@event_route("E_TEST")\ndef on_test(event):\n    pass\n'


@pytest_twisted.inlineCallbacks
def test_address_less_transports_are_unaffected(server_factory, mi_client, tmpdir_short):
    script = tmpdir_short / "routes.py"
    script.write_text(SCRIPT)
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmpdir_short / "rx.sock")
    receiver.bind(path)
    receiver.settimeout(5)
    try:
        # nothing on the network is allowed at all
        server = server_factory(ini("allow_destinations = none", f"[script]\npath = {script}\n"))
        for socket_text in (f"unix:{path}", "flatstore:events.log", "route:E_TEST",
                            f"virtual:PARALLEL unix:{path} flatstore:events.log"):
            reply = yield mi_client(server, "event_subscribe", ["E_TEST", socket_text, 60])
            assert reply["result"] == "OK", (socket_text, reply)
        reply = yield mi_client(server, "event_subscribe", ["E_TEST", "udp:127.0.0.1:9", 60])
        assert reply["error"]["code"] == 403
        reply = yield mi_client(server, "raise_event", ["E_TEST"])
        assert reply["result"] == "OK"
        assert receiver.recv(100) == b'{"jsonrpc":"2.0","method":"E_TEST"}'
    finally:
        receiver.close()
    stats = yield mi_client(server, "get_statistics", [["policy:"]])
    assert stats["result"] == {"policy:destinations_refused": 1}


@pytest_twisted.inlineCallbacks
def test_rabbitmq_name_resolved_and_pinned_end_to_end(server_factory, mi_client):
    require_broker()
    server = server_factory(ini(extra="[transport:rabbitmq]\nstop_timeout = 1\n"))
    connection = pika_connection()
    channel = connection.channel()
    queue = unique()
    channel.queue_declare(queue, auto_delete=False)
    try:
        reply = yield mi_client(server, "event_subscribe", ["E_TEST", f"rabbitmq:localhost/{queue}",
                                                            60])
        assert reply["result"] == "OK"
        (conn,) = server.transports["rabbitmq"].connections.values()
        assert (conn.key.host, conn.key.address) == ("localhost", "127.0.0.1")
        report = yield server.evi.raise_event("E_TEST", {"n": 1})
        assert report.delivered == 1
        bodies = [json.loads(body) for body, _, _ in drain(channel, queue)]
        assert bodies == [{"jsonrpc": "2.0", "method": "E_TEST", "params": {"n": 1}}]
    finally:
        channel.queue_delete(queue)
        connection.close()


# -- real clients against a real process -----------------------------------------------------


def test_official_client_and_evsrv_ctl_see_the_refusal(server_process, capsys):
    proc = server_process(with_e_x(ini()))
    host, port = proc.udp
    opensips_mi = Path(sys.executable).parent / "opensips-mi"
    if opensips_mi.exists():
        result = subprocess.run(
            [str(opensips_mi), "-t", "datagram", "-i", host, "-p", str(port),
             "event_subscribe", "E_TEST", "udp:169.254.169.254:80", "30"],
            capture_output=True, text=True, timeout=20, cwd=str(proc.ini.parent))
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stdout.splitlines() == [
            "ERROR:  Error executing command: 403: Destination not allowed "
            "(udp:169.254.169.254:80: destination 169.254.169.254 is refused by [policy] "
            "deny_destinations (169.254.0.0/16))"]
    status = ctl.main(["-a", f"{host}:{port}", "event_subscribe", "E_TEST",
                       "udp:[ff02::1]:9"])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err == ("error 403: Destination not allowed (udp:[ff02::1]:9: destination ff02::1 "
                   "is refused by [policy] deny_destinations (ff00::/8))\n")
    assert "refused: udp:[ff02::1]:9: destination ff02::1" in proc.log()
    status = ctl.main(["-a", f"{host}:{port}", "event_subscribe", "E_X",
                       "udp:[64:ff9b::a9fe:a9fe]:5000"])
    out, err = capsys.readouterr()
    assert (status, out, err) == (1, "", f"error 403: Destination not allowed ({NAT64_METADATA})\n")
