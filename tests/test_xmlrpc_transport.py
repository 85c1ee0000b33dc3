"""
The xmlrpc: transport: unit tests on a MemoryReactorClock, and end-to-end
tests through a real server against Python's own xmlrpc.server (a peer we
did not write) and a server that accepts and never answers.
"""

import socket
import threading
import xmlrpc.client
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from evsrv.evi import EventInterface
from evsrv.evi.params import make_params
from evsrv.interfaces import BadSocket
from evsrv.statistics import Statistics
from evsrv.transports.xmlrpc import XMLRPCTransport, xmlrpc_arguments, xmlrpcTransport
from tests.test_evi import result_of


def make_evi(**overrides):
    clock = MemoryReactorClock()
    values = {k: coerce(default) for k, (default, coerce, _) in xmlrpcTransport.options.items()}
    values.update(overrides)
    statistics = Statistics()
    transport = XMLRPCTransport("xmlrpc", values, statistics, clock)
    evi = EventInterface(clock, {"xmlrpc": transport}, statistics)
    evi.publish("E_TEST")
    return evi, clock, transport


def counters(evi):
    stats = evi.statistics.get(["evi_xmlrpc:"])
    return tuple(stats[f"evi_xmlrpc:notifications_{k}"] for k in ("sent", "failed", "dropped"))


class Warnings:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        if "socket" in event and "reason" in event:
            self.events.append(event)


@pytest.fixture
def warnings_seen():
    seen = Warnings()
    globalLogPublisher.addObserver(seen)
    yield seen
    globalLogPublisher.removeObserver(seen)


# -- unit -----------------------------------------------------------------------

@pytest.mark.parametrize("socket_text,address", [
    ("xmlrpc:127.0.0.1:8081:opensips_event", ("127.0.0.1", 8081, None, "opensips_event")),
    ("xmlrpc:127.0.0.1:8081/RPC2/x:ns.method", ("127.0.0.1", 8081, "/RPC2/x", "ns.method")),
    ("xmlrpc:127.0.0.1:1/:m", ("127.0.0.1", 1, "/", "m")),
])
def test_parse_and_listing_keeps_the_path(socket_text, address):
    evi, _, _ = make_evi()
    sub = result_of(evi.subscribe("E_TEST", socket_text))
    assert (sub.socket, sub.address) == (socket_text, address)


@pytest.mark.parametrize("socket_text", [
    "xmlrpc:127.0.0.1:8081", "xmlrpc:127.0.0.1:8081:", "xmlrpc:127.0.0.1::m",
    "xmlrpc:127.0.0.1:0:m", "xmlrpc:127.0.0.1:99999:m", "xmlrpc::8081:m",
    "xmlrpc:[::1]:8081:m", "xmlrpc:127.0.0.1:8081:a<b", "xmlrpc:127.0.0.1:8081/a b:m",
    "xmlrpc:127.0.0.1:80x:m"])
def test_bad_sockets(socket_text):
    evi, _, _ = make_evi()
    assert result_of(evi.subscribe("E_TEST", socket_text)).check(BadSocket)


def test_resubscribe_identity_includes_path_and_method():
    evi, _, _ = make_evi()
    for text in ("xmlrpc:127.0.0.1:8081:m", "xmlrpc:127.0.0.1:8081:m",
                 "xmlrpc:127.0.0.1:8081/p:m", "xmlrpc:127.0.0.1:8081:n"):
        result_of(evi.subscribe("E_TEST", text))
    assert evi.store.size == 3  # OpenSIPS >= 2.2 would hold 4 (never matches, §9 D7)


def test_arguments_layout():
    params = make_params([("ip", "1.2.3.4"), ("n", 5), (None, "bare"), (None, -1),
                          ("big", 2 ** 40), ("bad", "a\x01b\udcff")])
    assert xmlrpc_arguments("E_TEST", params) == (
        "E_TEST", {"ip": "1.2.3.4"}, {"n": 5}, "bare", -1, {"big": "1099511627776"},
        {"bad": "a\ufffdb\ufffd"})
    # and it marshals to valid XML-RPC
    xmlrpc.client.loads(xmlrpc.client.dumps(xmlrpc_arguments("E_TEST", params), "m"))


def test_request_bytes_on_the_wire():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081/hook:opensips_event"))
    d = evi.raise_event("E_TEST", {"n": 5})
    host, port, factory, timeout, _ = clock.tcpClients[0]
    assert (host, port, timeout) == ("127.0.0.1", 8081, 2.0)
    protocol = factory.buildProtocol(None)
    wire = StringTransport()
    protocol.makeConnection(wire)
    head, body = wire.value().split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /hook HTTP/1.0\r\n")
    params, method = xmlrpc.client.loads(body)
    assert (method, params) == ("opensips_event", ("E_TEST", {"n": 5}))
    assert b"<value><struct>\n<member>\n<name>n</name>\n<value><int>5</int></value>" in body
    response = xmlrpc.client.dumps((True,), methodresponse=True).encode()
    protocol.dataReceived(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(response), response))
    protocol.connectionLost(Failure(ConnectionDone()))
    assert result_of(d).delivered == 1
    assert counters(evi) == (1, 0, 0)


def test_in_flight_limit_queue_and_drops():
    evi, clock, _ = make_evi(max_in_flight=2, queue_size=3)
    sub = result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    reports = [evi.raise_event("E_TEST", [i]) for i in range(7)]
    assert len(clock.tcpClients) == 2  # two calls open
    assert [result_of(d).dropped for d in reports[2:4]] == [1, 1]  # oldest waiting dropped
    assert evi.statistics.get(["evi_xmlrpc:queued"]) == {"evi_xmlrpc:queued": 3}
    # the first call is refused: the next waiting one starts
    _, _, factory, _, _ = clock.tcpClients[0]
    factory.clientConnectionFailed(clock.connectors[0], Failure(ConnectionRefusedError()))
    report = result_of(reports[0])
    assert report.failed == 1 and report.errors[0][1] == "connection refused"
    assert len(clock.tcpClients) == 3
    assert (sub.failed, sub.dropped) == (1, 2)


def test_overall_timeout_and_logged_once(warnings_seen):
    evi, clock, _ = make_evi(timeout=3.0)
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    reports = [evi.raise_event("E_TEST") for _ in range(3)]
    clock.advance(2.9)
    assert not any(d.called for d in reports)
    clock.advance(0.1)
    results = [result_of(d) for d in reports]
    assert [r.failed for r in results] == [1, 1, 1]
    assert results[0].errors[0][1] == "no answer within 3.0 s"
    assert all(c._disconnected for c in clock.connectors)  # connections closed
    assert len(warnings_seen.events) == 1
    assert warnings_seen.events[0]["socket"] == "xmlrpc:127.0.0.1:8081:m"
    assert counters(evi) == (0, 3, 0)


def test_stop_drops_waiting_and_cancels_in_flight():
    evi, clock, transport = make_evi(max_in_flight=1)
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    first, second = evi.raise_event("E_TEST"), evi.raise_event("E_TEST")
    transport.stopService()
    assert result_of(first).dropped == 1 and result_of(second).dropped == 1
    assert result_of(evi.raise_event("E_TEST")).dropped == 1


# -- end to end -----------------------------------------------------------------

class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2", "/custom/path")


@pytest.fixture
def python_xmlrpc_server():
    """
    Python's stdlib XML-RPC server in a thread; records every call.
    """
    server = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=_Handler, logRequests=False,
                                allow_none=True)
    calls = []

    def dispatch(method, params):
        if method == "fail":
            raise xmlrpc.client.Fault(42, "refused by the peer")
        calls.append((method, params))
        return True
    server._dispatch = dispatch
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    server.calls = calls
    server.port = server.server_address[1]
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


class _Silent(Protocol):
    def connectionMade(self):
        self.lost = Deferred()
        self.factory.connections.append(self)

    def connectionLost(self, reason):
        self.lost.callback(None)


@pytest.fixture
def hanging_server():
    """
    Accepts connections and never answers.
    """
    factory = Factory.forProtocol(_Silent)
    factory.noisy = False
    factory.connections = []
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.port = port.getHost().port
    yield factory
    pytest_twisted.blockon(port.stopListening())
    for c in factory.connections:
        c.transport.abortConnection()
    pytest_twisted.blockon(DeferredList([c.lost for c in factory.connections]))


INI = """\
[mi]
udp = 127.0.0.1:0
[events]
publish = E_TEST
[transports]
enabled = udp, xmlrpc
[transport:xmlrpc]
timeout = {timeout}
"""


@pytest_twisted.inlineCallbacks
def test_python_xmlrpc_server_receives_the_calls(server_factory, python_xmlrpc_server,
                                                 warnings_seen):
    server = server_factory(INI.format(timeout=5))
    port = python_xmlrpc_server.port
    yield server.evi.subscribe("E_TEST", f"xmlrpc:127.0.0.1:{port}:opensips_event")
    yield server.evi.subscribe("E_TEST", f"xmlrpc:127.0.0.1:{port}/custom/path:other")
    report = yield server.evi.raise_event("E_TEST", {"ip": "1.2.3.4", "n": 5})
    assert (report.delivered, report.failed) == (2, 0)
    report = yield server.evi.raise_event("E_TEST", ["a", 7])
    assert report.delivered == 2
    report = yield server.evi.raise_event("E_TEST")
    assert report.delivered == 2
    calls = sorted(python_xmlrpc_server.calls, key=lambda c: c[0])
    assert calls == [
        ("opensips_event", ("E_TEST", {"ip": "1.2.3.4"}, {"n": 5})),
        ("opensips_event", ("E_TEST", "a", 7)),
        ("opensips_event", ("E_TEST",)),
        ("other", ("E_TEST", {"ip": "1.2.3.4"}, {"n": 5})),
        ("other", ("E_TEST", "a", 7)),
        ("other", ("E_TEST",)),
    ]
    assert not warnings_seen.events
    assert server.statistics.get(["evi_xmlrpc:"])["evi_xmlrpc:notifications_sent"] == 6


@pytest_twisted.inlineCallbacks
def test_fault_and_refused_are_failures_logged_once(server_factory, python_xmlrpc_server,
                                                    warnings_seen):
    server = server_factory(INI.format(timeout=5))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    yield server.evi.subscribe("E_TEST", f"xmlrpc:127.0.0.1:{python_xmlrpc_server.port}:fail")
    yield server.evi.subscribe("E_TEST", f"xmlrpc:127.0.0.1:{closed_port}:m")
    for _ in range(3):
        report = yield server.evi.raise_event("E_TEST", ["x"])
        assert (report.delivered, report.failed) == (0, 2)
    assert sorted(reason for _, reason in report.errors) == [
        "connection refused", "fault 42: refused by the peer"]
    assert sorted(e["socket"] for e in warnings_seen.events) == sorted([
        f"xmlrpc:127.0.0.1:{closed_port}:m",
        f"xmlrpc:127.0.0.1:{python_xmlrpc_server.port}:fail"])  # once each, not per raise
    subs = server.evi.event("E_TEST").subscriptions
    assert [s.failed for s in subs.values()] == [3, 3]


@pytest_twisted.inlineCallbacks
def test_hanging_server_times_out_while_udp_subscriber_keeps_receiving(
        server_factory, hanging_server, udp_collector, warnings_seen):
    server = server_factory(INI.format(timeout=0.5))
    rx = udp_collector()
    yield server.evi.subscribe("E_TEST", f"xmlrpc:127.0.0.1:{hanging_server.port}:m")
    yield server.evi.subscribe("E_TEST", "udp:%s:%d" % rx.address)
    reports = []
    for n in range(5):
        reports.append(server.evi.raise_event("E_TEST", {"n": n}))
        data, _ = yield rx.next(timeout=0.4)  # well before the XML-RPC timeout
        assert data == b'{"jsonrpc":"2.0","method":"E_TEST","params":{"n":%d}}' % n
    assert not any(d.called for d in reports)  # the XML-RPC calls still hang
    results = yield DeferredList(reports)
    for ok, report in results:
        assert (report.delivered, report.failed) == (1, 1)
        assert dict(report.errors) == {
            f"xmlrpc:127.0.0.1:{hanging_server.port}:m": "no answer within 0.5 s"}
    assert len(warnings_seen.events) == 1
    assert len(hanging_server.connections) >= 4  # max_in_flight calls were open at once
