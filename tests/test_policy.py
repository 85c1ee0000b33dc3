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
from evsrv.interfaces import BadSocket, DestinationRefused, IEventTransport
from evsrv.netlist import NetworkList
from evsrv.policy import DestinationPolicy
from evsrv.server import EvsrvService, module_factories, transport_factories
from evsrv.statistics import Statistics
from evsrv.testing import RecordingTransport
from evsrv.transports import rabbitmq
from evsrv.transports.factories import TransportFactory
from evsrv.transports.rabbitmq import RabbitMQTransport
from tests.amqp_tools import drain, pika_connection, require_broker, unique
from tests.conftest import BASE_INI

DEFAULT_DENY = NetworkList.parse(DEFAULT_DENIED_DESTINATIONS)


# -- the check ---------------------------------------------------------------------


@implementer(IEventTransport)
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
])
def test_default_deny_list(address, network):
    with pytest.raises(DestinationRefused) as caught:
        check(policy(), address)
    shown = address.partition("%")[0].replace("::ffff:", "")
    assert str(caught.value) == (f"net:{address}: destination {shown} is refused by "
                                 f"[policy] deny_destinations ({network})")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.0.2.1", "::1", "2001:db8::1",
                                     "223.255.255.255", "1.0.0.0"])
def test_default_allows_the_rest(address):
    destination = check(policy(), address)
    assert destination.address == (address,)


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
    for address in ("169.254.169.254", "0.0.0.0", "10.0.0.1"):
        try:
            check(p, address)
        except DestinationRefused:
            pass
    assert statistics.get(["policy:"]) == {"policy:destinations_refused": 2}


def test_open_policy_checks_nothing():
    p = policy(deny="")
    assert p.open
    check(p, "169.254.169.254")
    assert p.warn_unchecked([RecordingTransport()]) == []


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
    warned = [t for t in log_capture.warnings() if "peer_hosts" in t]
    assert warned == [
        "transport rec does not tell where it sends (no peer_hosts method): [policy] "
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
    proc = server_process(ini())
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
