"""
The xmlrpc: transport: unit tests on a MemoryReactorClock (the bytes on
the wire, kept and repeated connections, limits, timeouts), and end-to-end
tests through a real server against Python's own xmlrpc.server (a peer we
did not write; HTTP/1.0 as it comes, and HTTP/1.1 keeping connections
open), a server that accepts and never answers, one whose answer never
ends, and a port that refuses (a virtual: FAILOVER moving on at once).
"""

import socket
import subprocess
import sys
import threading
import xmlrpc.client
from pathlib import Path
from socketserver import ThreadingMixIn
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, NoRouteError
from twisted.internet.error import TimeoutError as TCPTimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from evsrv.evi import EventInterface
from evsrv.evi.params import make_params
from evsrv.interfaces import BadSocket
from evsrv.transports.kit import ByteBudget
from evsrv.util.statistics import Statistics
from evsrv.transports.xmlrpc import (
    ANSWER_LIMIT, HEAD_LIMIT, IDLE_TIMEOUT, XMLRPCTransport, xmlrpc_arguments, xmlrpc_body,
    xmlrpc_params, xmlrpcTransport)
from tests.conftest import until
from tests.test_evi import result_of


def make_evi(max_queued_bytes=None, **overrides):
    clock = MemoryReactorClock()
    values = {k: coerce(default) for k, (default, coerce, _) in xmlrpcTransport.options.items()}
    values.update(overrides)
    statistics = Statistics()
    budget = None if max_queued_bytes is None else ByteBudget(max_queued_bytes, statistics)
    transport = XMLRPCTransport("xmlrpc", values, statistics, clock, budget)
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
    ("xmlrpc:127.0.0.1:8081:opensips_event",
     ("127.0.0.1", 8081, None, "opensips_event", "127.0.0.1")),
    ("xmlrpc:127.0.0.1:8081/RPC2/x:ns.method",
     ("127.0.0.1", 8081, "/RPC2/x", "ns.method", "127.0.0.1")),
    ("xmlrpc:127.0.0.1:1/:m", ("127.0.0.1", 1, "/", "m", "127.0.0.1")),
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


def connect(clock, index=-1):
    """
    Complete the connection attempt C{clock.tcpClients[index]} on a
    StringTransport: C{(protocol, wire)}, the request already written.
    """
    _, _, factory, _, _ = clock.tcpClients[index]
    protocol = factory.buildProtocol(None)
    wire = StringTransport()
    protocol.makeConnection(wire)
    return protocol, wire


def answer(protocol, value=True, status=b"200 OK", version=b"HTTP/1.1"):
    """
    An XML-RPC method response with a Content-Length (HTTP/1.1: the
    connection stays open).
    """
    body = xmlrpc.client.dumps((value,), methodresponse=True).encode()
    protocol.dataReceived(b"%s %s\r\nContent-Length: %d\r\n\r\n%s"
                          % (version, status, len(body), body))


def test_request_bytes_on_the_wire():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081/hook:opensips_event"))
    d = evi.raise_event("E_TEST", {"n": 5})
    host, port, factory, timeout, _ = clock.tcpClients[0]
    assert (host, port, timeout) == ("127.0.0.1", 8081, 2.0)
    protocol, wire = connect(clock)
    # the body is what twisted.web.xmlrpc.Proxy sent before (its template
    # around xmlrpc.client.dumps); the head is HTTP/1.1 with OpenSIPS' Host
    # (HOST:PORT as written) and User-Agent
    body = (b'<?xml version="1.0"?>\n<methodCall>\n<methodName>opensips_event</methodName>\n'
            b'<params>\n<param>\n<value><string>E_TEST</string></value>\n</param>\n'
            b'<param>\n<value><struct>\n<member>\n<name>n</name>\n'
            b'<value><int>5</int></value>\n</member>\n</struct></value>\n</param>\n'
            b'</params>\n\n</methodCall>\n')
    assert wire.value() == (
        b"POST /hook HTTP/1.1\r\nContent-Length: %d\r\nHost: 127.0.0.1:8081\r\n"
        b"User-Agent: OpenSIPS XMLRPC Notifier\r\nContent-Type: text/xml; charset=utf-8\r\n"
        b"\r\n" % len(body) + body)
    params, method = xmlrpc.client.loads(body)
    assert (method, params) == ("opensips_event", ("E_TEST", {"n": 5}))
    answer(protocol)
    assert result_of(d).delivered == 1
    assert counters(evi) == (1, 0, 0)


def test_default_path_and_a_fragment_sign_in_the_path():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081/a#b:m"))
    evi.raise_event("E_TEST")
    lines = sorted(connect(clock, i)[1].value().split(b"\r\n", 1)[0] for i in range(2))
    # a raw "#" would start a URI fragment, which HTTP clients do not send
    assert lines == [b"POST /RPC2 HTTP/1.1", b"POST /a%23b HTTP/1.1"]


def test_connections_are_kept_and_bounded_by_max_in_flight():
    evi, clock, transport = make_evi(max_in_flight=2)
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    reports = [evi.raise_event("E_TEST", [i]) for i in range(5)]
    assert len(clock.tcpClients) == 2
    (p1, w1), (p2, w2) = connect(clock, 0), connect(clock, 1)
    for _ in range(2):
        for protocol, wire in ((p1, w1), (p2, w2)):
            wire.clear()
            answer(protocol)  # the next waiting call goes on this connection
    w1.clear()
    answer(p1)
    assert [result_of(d).delivered for d in reports] == [1] * 5
    assert len(clock.tcpClients) == 2  # 5 calls, 2 connections
    assert (w1.value(), w2.value()) == (b"", b"")  # nothing left to send
    # idle connections are closed after IDLE_TIMEOUT
    clock.advance(IDLE_TIMEOUT - 0.1)
    assert not (w1.disconnecting or w2.disconnecting)
    clock.advance(0.1)
    assert w1.disconnecting and w2.disconnecting
    transport.stopService()


def test_many_answers_on_one_connection_each_count_from_zero():
    n = (HEAD_LIMIT + ANSWER_LIMIT) // 100  # together well over the limit of one answer
    evi, clock, transport = make_evi(max_in_flight=1, queue_size=n)
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    reports = [evi.raise_event("E_TEST", [i]) for i in range(n)]
    protocol, wire = connect(clock)
    for _ in range(n):
        answer(protocol)  # the next call goes out on it at once
    assert [result_of(d).delivered for d in reports] == [1] * n
    assert len(clock.tcpClients) == 1 and not wire.disconnecting
    transport.stopService()


def test_an_http10_answer_closes_its_connection():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    first = evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    answer(protocol, version=b"HTTP/1.0")  # Content-Length, but HTTP/1.0: no keep-alive
    assert result_of(first).delivered == 1
    assert wire.disconnecting  # not kept for the next call, which would fail on it
    protocol.connectionLost(Failure(ConnectionDone()))
    second = evi.raise_event("E_TEST")
    assert len(clock.tcpClients) == 2
    answer(connect(clock)[0], version=b"HTTP/1.0")
    assert result_of(second).delivered == 1


def test_stop_closes_idle_connections():
    evi, clock, transport = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    answer(protocol)
    assert not wire.disconnecting
    transport.stopService()
    assert wire.disconnecting
    assert not clock.getDelayedCalls()  # the idle timer went with it


def test_reused_connection_closed_before_an_answer_is_sent_again():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    evi.raise_event("E_TEST", [1])
    p1, w1 = connect(clock)
    answer(p1)
    w1.clear()
    d = evi.raise_event("E_TEST", [2])
    assert len(clock.tcpClients) == 1 and w1.value().startswith(b"POST /RPC2")  # reused
    # the receiver had closed it (its keep-alive timeout) before reading
    p1.connectionLost(Failure(ConnectionDone()))
    assert not d.called and len(clock.tcpClients) == 2
    p2, w2 = connect(clock)
    assert xmlrpc.client.loads(w2.value().split(b"\r\n\r\n", 1)[1])[0] == ("E_TEST", 2)
    answer(p2)
    assert result_of(d).delivered == 1
    assert counters(evi) == (2, 0, 0)


def test_new_connection_closed_without_an_answer_fails():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    d = evi.raise_event("E_TEST")
    protocol, _ = connect(clock)
    protocol.connectionLost(Failure(ConnectionDone()))
    report = result_of(d)
    assert report.errors[0][1] == "connection closed without an answer"
    assert len(clock.tcpClients) == 1  # not sent again: the receiver may have seen it


@pytest.mark.parametrize("status,reason", [
    (b"500 Internal Server Error", "HTTP 500 Internal Server Error"),
    (b"204 No Content", "HTTP 204 No Content"),
])
def test_http_error_fails_with_the_status(status, reason):
    evi, clock, _ = make_evi()
    sub = result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    d = evi.raise_event("E_TEST")
    protocol, _ = connect(clock)
    protocol.dataReceived(b"HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n" % status)
    assert result_of(d).errors[0][1] == reason
    assert sub.last_error == reason and counters(evi) == (0, 1, 0)


def test_http10_answer_ending_with_the_connection_is_complete():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    d = evi.raise_event("E_TEST")
    protocol, _ = connect(clock)
    body = xmlrpc.client.dumps((True,), methodresponse=True).encode()
    protocol.dataReceived(b"HTTP/1.0 200 OK\r\n\r\n" + body)  # no Content-Length
    protocol.connectionLost(Failure(ConnectionDone()))
    assert result_of(d).delivered == 1


def test_an_endless_body_is_cut_at_the_limit():
    evi, clock, _ = make_evi()
    sub = result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    d = evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
    chunk = b"x" * 4096
    for _ in range(ANSWER_LIMIT // len(chunk)):
        protocol.dataReceived(chunk)
    assert not d.called
    protocol.dataReceived(b"x")
    assert result_of(d).errors[0][1] == f"answer larger than {ANSWER_LIMIT} bytes"
    assert wire.producerState == "stopped"  # (a TCP connection closes: see the e2e test)
    assert sub.failed == 1
    protocol.dataReceived(chunk)  # what was already on its way is ignored
    protocol.connectionLost(Failure(ConnectionDone()))
    assert counters(evi) == (0, 1, 0)


def test_endless_headers_are_cut_at_the_limit():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    d = evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Padding: " + b"p" * 1000 + b"\r\n"
    for _ in range((HEAD_LIMIT + ANSWER_LIMIT) // len(line) + 1):
        protocol.dataReceived(line)
    assert result_of(d).errors[0][1] == f"answer headers larger than {HEAD_LIMIT} bytes"
    assert wire.disconnecting


def test_a_body_that_trickles_past_the_timeout_fails_and_is_cut():
    evi, clock, _ = make_evi(timeout=3.0)
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    d = evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(29):
        clock.advance(0.1)
        protocol.dataReceived(b"<")  # a byte now and then: the deadline still holds
    assert not d.called
    clock.advance(0.1)
    assert result_of(d).errors[0][1] == "no answer within 3.0 s"
    assert wire.producerState == "stopped"
    protocol.connectionLost(Failure(ConnectionDone()))
    assert counters(evi) == (0, 1, 0) and not clock.getDelayedCalls()


def test_stop_while_an_answer_is_read_drops_and_cuts():
    evi, clock, transport = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    d = evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n<")
    transport.stopService()
    assert result_of(d).dropped == 1 and wire.producerState == "stopped"
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize("text,reason", [
    (b"not xml", "bad answer: ExpatError: syntax error: line 1, column 0"),
    (xmlrpc.client.dumps(xmlrpc.client.Fault(3, "no such method"), methodresponse=True).encode(),
     "fault 3: no such method"),
])
def test_fault_and_bad_answer_fail(text, reason):
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    d = evi.raise_event("E_TEST")
    protocol, _ = connect(clock)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(text), text))
    assert result_of(d).errors[0][1] == reason


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


def test_calls_in_flight_and_waiting_are_charged_to_the_byte_budget():
    body = len(xmlrpc_body("m", xmlrpc_params(("E_TEST", "a" * 1000))))
    limit = 2 * body + body // 2  # room for two: one in flight, one waiting
    evi, clock, transport = make_evi(max_queued_bytes=limit, max_in_flight=1)
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    first = evi.raise_event("E_TEST", ["a" * 1000])
    protocol, wire = connect(clock)
    assert len(wire.value().split(b"\r\n\r\n", 1)[1]) == body  # the body held for the call
    assert evi.statistics.value("evi_xmlrpc:queued_bytes") == body
    second = evi.raise_event("E_TEST", ["b" * 1000])
    third = evi.raise_event("E_TEST", ["c" * 1000])
    assert evi.statistics.value("evi:queued_bytes") == 2 * body
    assert result_of(third).errors == [
        ("xmlrpc:127.0.0.1:8081:m", f"byte budget of {limit} bytes full "
                                    "([limits] max_queued_bytes)")]
    answer(protocol)
    assert result_of(first).delivered == 1
    assert evi.statistics.value("evi:queued_bytes") == body  # the second, now in flight
    wire.clear()
    answer(protocol)
    assert result_of(second).delivered == 1 and evi.statistics.value("evi:queued_bytes") == 0
    assert counters(evi) == (2, 0, 1)
    transport.stopService()


@pytest.mark.parametrize("reason,text", [
    (ConnectionRefusedError(), "connection refused"),
    (TCPTimeoutError(), "connect timed out"),
    (NoRouteError(), "cannot connect: No route to host."),
])
def test_connect_failures_fail_at_once(reason, text):
    evi, clock, _ = make_evi()
    sub = result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    d = evi.raise_event("E_TEST")
    _, _, factory, _, _ = clock.tcpClients[0]
    factory.clientConnectionFailed(clock.connectors[0], Failure(reason))
    assert result_of(d).errors[0][1] == text and sub.last_error == text
    assert not clock.getDelayedCalls()  # its timeout went with it


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
    assert all(c.stoppedConnecting for c in clock.connectors)  # attempts given up
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


class _Recording(SimpleXMLRPCRequestHandler):
    """
    Python's handler, speaking HTTP/1.1 (connections stay open), recording
    each request's line and headers and each connection.
    """
    protocol_version = "HTTP/1.1"
    rpc_paths = ("/RPC2",)

    def setup(self):
        super().setup()
        self.server.connections.append(self.client_address)

    def do_POST(self):
        self.server.requests.append((self.requestline, dict(self.headers)))
        super().do_POST()


class _ThreadingServer(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


@pytest.fixture
def keepalive_xmlrpc_server():
    server = _ThreadingServer(("127.0.0.1", 0), requestHandler=_Recording, logRequests=False)
    server.connections, server.requests, server.calls = [], [], []
    server.register_function(lambda *args: server.calls.append(args) or True, "notify")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    server.port = server.server_address[1]
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest_twisted.inlineCallbacks
def test_keepalive_receiver_gets_every_call_on_one_connection_with_the_name_as_host(
        server_factory, keepalive_xmlrpc_server, warnings_seen):
    server = server_factory(INI.format(timeout=5))
    port = keepalive_xmlrpc_server.port
    # a name: resolved once when subscribing; the connection goes to that
    # address, the Host header names it as written
    yield server.evi.subscribe("E_TEST", f"xmlrpc:localhost:{port}:notify")
    for n in range(5):
        report = yield server.evi.raise_event("E_TEST", {"n": n})
        assert report.delivered == 1
    assert keepalive_xmlrpc_server.calls == [("E_TEST", {"n": n}) for n in range(5)]
    assert len(keepalive_xmlrpc_server.connections) == 1
    assert keepalive_xmlrpc_server.connections[0][0] == "127.0.0.1"
    line, headers = keepalive_xmlrpc_server.requests[0]
    assert line == "POST /RPC2 HTTP/1.1"
    assert (headers["Host"], headers["User-Agent"], headers["Content-Type"]) == (
        f"localhost:{port}", "OpenSIPS XMLRPC Notifier", "text/xml; charset=utf-8")
    assert "Connection" not in headers  # HTTP/1.1: persistent
    assert not warnings_seen.events
    # (stopping the server at teardown closes the idle connection and its
    # timer: the fixtures check that no port or timer is left)


@pytest_twisted.inlineCallbacks
def test_http_error_from_python_server(server_factory, python_xmlrpc_server, warnings_seen):
    server = server_factory(INI.format(timeout=5))
    socket_text = f"xmlrpc:127.0.0.1:{python_xmlrpc_server.port}/no/such/path:m"
    sub = yield server.evi.subscribe("E_TEST", socket_text)
    report = yield server.evi.raise_event("E_TEST")
    assert report.errors == [(socket_text, "HTTP 404 Not Found")]
    assert sub.last_error == "HTTP 404 Not Found"
    assert [e["socket"] for e in warnings_seen.events] == [socket_text]


class _Endless(Protocol):
    """
    Answers any request with a 200 whose body never ends (written as fast
    as the connection takes it).
    """
    started = False

    def connectionMade(self):
        self.lost = Deferred()
        self.sent = 0
        self.factory.connections.append(self)

    def dataReceived(self, data):
        if not self.started:
            self.started = True
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
            self.transport.registerProducer(self, False)

    def resumeProducing(self):
        self.transport.write(b"<" * 65536)
        self.sent += 65536

    def stopProducing(self):
        pass

    def connectionLost(self, reason):
        self.lost.callback(None)


@pytest_twisted.inlineCallbacks
def test_endless_body_is_cut_and_the_connection_closed(server_factory, warnings_seen):
    factory = Factory.forProtocol(_Endless)
    factory.noisy = False
    factory.connections = []
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        server = server_factory(INI.format(timeout=5))
        socket_text = f"xmlrpc:127.0.0.1:{port.getHost().port}:m"
        yield server.evi.subscribe("E_TEST", socket_text)
        started = reactor.seconds()
        report = yield server.evi.raise_event("E_TEST")
        assert report.errors == [(socket_text, f"answer larger than {ANSWER_LIMIT} bytes")]
        peer, = factory.connections
        yield peer.lost  # evsrv closed it
        assert reactor.seconds() - started < 2  # at the limit, not at the timeout
    finally:
        yield port.stopListening()


FAILOVER_INI = """\
[mi]
udp = 127.0.0.1:0
[events]
publish = E_TEST
[transports]
enabled = udp, xmlrpc, virtual
[transport:xmlrpc]
connect_timeout = 2
timeout = 5
"""


@pytest_twisted.inlineCallbacks
def test_failover_to_udp_at_once_when_xmlrpc_is_refused(server_factory, udp_collector,
                                                       warnings_seen):
    server = server_factory(FAILOVER_INI)
    rx = udp_collector()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connects are refused
    member = f"xmlrpc:127.0.0.1:{closed_port}:m"
    yield server.evi.subscribe("E_TEST", f"virtual:FAILOVER {member} udp:%s:%d" % rx.address)
    started = reactor.seconds()
    d = server.evi.raise_event("E_TEST", {"n": 1})
    data, _ = yield rx.next(timeout=0.5)  # well before connect_timeout and timeout
    assert data == b'{"jsonrpc":"2.0","method":"E_TEST","params":{"n":1}}'
    report = yield d
    assert (report.delivered, report.failed) == (1, 0)
    assert reactor.seconds() - started < 0.5
    stats = server.statistics.get(["evi_xmlrpc:", "evi_virtual:"])
    assert stats["evi_xmlrpc:notifications_failed"] == 1
    assert stats["evi_virtual:failovers"] == 1
    member_warnings = [e for e in warnings_seen.events if e["socket"] == member]
    assert [e["reason"] for e in member_warnings] == ["connection refused"]
    # the refused member is skipped from now on: straight to udp
    report = yield server.evi.raise_event("E_TEST", {"n": 2})
    assert report.delivered == 1
    data, _ = yield rx.next(timeout=0.5)
    assert data == b'{"jsonrpc":"2.0","method":"E_TEST","params":{"n":2}}'
    assert server.statistics.get(["evi_xmlrpc:"])["evi_xmlrpc:notifications_failed"] == 1


def test_no_deprecated_twisted_client_is_loaded():
    # Proxy (twisted.web.xmlrpc) is built on the deprecated HTTPClient;
    # importing the transport must not load it, under -W error
    code = ("import sys, evsrv.transports.xmlrpc; "
            "assert 'twisted.web.xmlrpc' not in sys.modules, 'twisted.web.xmlrpc loaded'")
    subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code],
                   check=True, cwd=Path(__file__).resolve().parent.parent, timeout=60)


@pytest_twisted.inlineCallbacks
def test_stop_cuts_a_hanging_call_and_waits_for_its_socket(server_factory, hanging_server):
    server = server_factory(INI.format(timeout=5))
    yield server.evi.subscribe("E_TEST", f"xmlrpc:127.0.0.1:{hanging_server.port}:m")
    d = server.evi.raise_event("E_TEST")
    yield until(lambda: hanging_server.connections)
    transport = server.transports["xmlrpc"]
    stopped = transport.stopService()
    assert isinstance(stopped, Deferred)  # a socket is still closing
    report = yield d
    assert report.dropped == 1 and report.errors[0][1] == "evsrv stopping"
    yield stopped
    assert not transport._connections
    yield hanging_server.connections[0].lost
