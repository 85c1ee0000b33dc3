"""
The tcp: and jsonrpc: transports: unit tests on a MemoryReactorClock, and
end-to-end tests through a real server against real TCP receivers.
"""

import json
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from evsrv import encoding
from evsrv.evi import EventInterface
from evsrv.evi.notification import Notification, Outcome
from evsrv.evi.params import make_params
from evsrv.interfaces import BadSocket
from evsrv.util.statistics import Statistics
from evsrv.config import ConfigError
from evsrv.transports.kit import ByteBudget
from evsrv.transports.stream import ReplyParser, StreamTransport, tcpTransport
from tests.conftest import BASE_INI, make_config
from tests.test_evi import result_of

BODY_27 = b'{"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4","n":5}}'


def settings(**overrides):
    values = {key: coerce(default) for key, (default, coerce, _) in tcpTransport.options.items()}
    values.update(overrides)
    return values


def make_evi(clock=None, scheme="tcp", max_queued_bytes=None, **overrides):
    clock = clock or MemoryReactorClock()
    statistics = Statistics()
    body = "json" if scheme == "tcp" else "jsonrpc24"
    budget = None if max_queued_bytes is None else ByteBudget(max_queued_bytes, statistics)
    transport = StreamTransport(scheme, scheme, body, settings(**overrides), statistics, clock,
                                budget)
    evi = EventInterface(clock, {scheme: transport}, statistics)
    evi.publish("E_TEST")
    evi.publish("E_OTHER")
    return evi, clock, transport


def counters(evi, name="tcp"):
    stats = evi.statistics.get([f"evi_{name}:"])
    return tuple(stats[f"evi_{name}:notifications_{k}"] for k in ("sent", "failed", "dropped"))


def connect(clock, index=-1):
    """
    Complete the C{index}-th connect the transport asked the fake reactor
    for. @return: C{(protocol, StringTransport)}.
    """
    host, port, factory, timeout, _ = clock.tcpClients[index]
    protocol = factory.buildProtocol(None)
    wire = StringTransport()
    protocol.makeConnection(wire)
    return protocol, wire


def refuse(clock, index=-1):
    _, _, factory, _, _ = clock.tcpClients[index]
    factory.clientConnectionFailed(clock.connectors[index], Failure(ConnectionRefusedError()))


def objects(data: bytes) -> list:
    """
    Back-to-back JSON objects, parsed the way a receiver must.
    """
    decoder = json.JSONDecoder()
    text, pos, out = data.decode(), 0, []
    while pos < len(text):
        value, pos = decoder.raw_decode(text, pos)
        out.append(value)
    return out


# -- unit: parsing, bodies, the reply parser -------------------------------------

@pytest.mark.parametrize("socket_text,listing,address", [
    ("tcp:127.0.0.1:7000", "tcp:127.0.0.1:7000", ("127.0.0.1", 7000, None)),
    ("tcp:127.0.0.1:7000/notify", "tcp:127.0.0.1:7000/notify", ("127.0.0.1", 7000, "notify")),
    ("tcp:[::1]:7000/a.b", "tcp:[::1]:7000/a.b", ("::1", 7000, "a.b")),
])
def test_parse_and_listing(socket_text, listing, address):
    evi, _, _ = make_evi()
    sub = result_of(evi.subscribe("E_TEST", socket_text))
    assert (sub.socket, sub.address) == (listing, address)


@pytest.mark.parametrize("socket_text", [
    "tcp:127.0.0.1", "tcp:127.0.0.1:", "tcp:127.0.0.1:0", "tcp:127.0.0.1:70000",
    "tcp:127.0.0.1:7x", "tcp:127.0.0.1:7000/", "tcp::7000", "tcp:127.0.0.1:7000/a b"])
def test_bad_sockets(socket_text):
    evi, _, _ = make_evi()
    assert result_of(evi.subscribe("E_TEST", socket_text)).check(BadSocket)


def test_key_is_host_text_port_and_method():
    evi, _, _ = make_evi()
    for text in ("tcp:127.0.0.1:7000", "tcp:127.0.0.1:7000/a", "tcp:127.0.0.1:7000/b",
                 "tcp:127.0.0.1:7000", "tcp:127.0.0.10:7000"):
        result_of(evi.subscribe("E_TEST", text))
    assert evi.store.size == 4  # exact keys (§9 D7), the repeated one refreshed


def test_reply_parser_splits_anywhere():
    stream = (b'{"id":1,"result":"OK"} \n{"id":2,"error":{"code":1,"message":"x}\\"{"}}'
              b'[1,2]{"id":3,"result":"\xc3\xa9"}')
    expected = [{"id": 1, "result": "OK"}, {"id": 2, "error": {"code": 1, "message": 'x}"{'}},
                [1, 2], {"id": 3, "result": "\u00e9"}]
    for cut in range(len(stream) + 1):
        parser = ReplyParser()
        got = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert got == expected, cut


@pytest.mark.parametrize("garbage", [b"hello", b'{"id":1,x}', b"]", b'{"a":1}}'])
def test_reply_parser_refuses_garbage(garbage):
    parser = ReplyParser()
    with pytest.raises(ValueError):
        parser.feed(garbage)
        parser.feed(b"{}")  # '{"a":1}}': the stray brace only shows with more data


def test_reply_parser_bounds_an_unfinished_reply():
    parser = ReplyParser(limit=100)
    parser.feed(b'{"id":1,"result":"' + b"x" * 70)
    with pytest.raises(ValueError):
        parser.feed(b"x" * 20)


def test_vector_34_bytes_back_to_back_and_method():
    evi, clock, transport = make_evi()
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    d = evi.raise_event("E_TEST", {"ip": "1.2.3.4", "n": 5})
    assert not d.called and clock.tcpClients  # queued while connecting
    _, wire = connect(clock)
    assert result_of(d).delivered == 1
    result_of(evi.raise_event("E_TEST", {"ip": "1.2.3.4", "n": 5}))
    assert wire.value() == BODY_27 + BODY_27
    result_of(evi.subscribe("E_OTHER", "tcp:127.0.0.1:7000/notify"))
    wire.clear()
    result_of(evi.raise_event("E_OTHER", {"ip": "1.2.3.4", "n": 5}))
    assert wire.value() == b'{"jsonrpc":"2.0","method":"notify","params":{"ip":"1.2.3.4","n":5}}'
    assert len(clock.tcpClients) == 1  # one connection per address, shared


def test_vector_34_event_param():
    evi, clock, _ = make_evi(event_param="event")
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000/notify"))
    evi.raise_event("E_TEST", {"ip": "1.2.3.4", "n": 5})
    _, wire = connect(clock)
    result_of(evi.raise_event("E_TEST", {"ip": "1.2.3.4", "n": 5}))
    result_of(evi.raise_event("E_TEST"))
    result_of(evi.raise_event("E_TEST", ["a"]))
    assert objects(wire.value()) == [
        {"jsonrpc": "2.0", "method": "notify",
         "params": {"event": "E_TEST", "ip": "1.2.3.4", "n": 5}}] * 2 + [
        {"jsonrpc": "2.0", "method": "notify"},
        {"jsonrpc": "2.0", "method": "notify", "params": ["E_TEST", "a"]}]
    assert wire.value().startswith(
        b'{"jsonrpc":"2.0","method":"notify","params":{"event":"E_TEST","ip":"1.2.3.4","n":5}}')


def test_vector_38_bytes():
    evi, clock, _ = make_evi(scheme="jsonrpc")
    result_of(evi.subscribe("E_TEST", "jsonrpc:127.0.0.1:7000"))
    evi.raise_event("E_TEST", {"ip": "1.2.3.4"})
    _, wire = connect(clock)
    result_of(evi.raise_event("E_TEST"))
    assert wire.value() == (b'{"id":null,"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4"}}'
                            b'{"id":null,"jsonrpc":"2.0","method":"E_TEST","params":{}}')
    assert counters(evi, "jsonrpc") == (2, 0, 0)


def test_encoding_of_the_24_body_with_an_id():
    assert encoding.jsonrpc24_notification_with_id("E_TEST", (), notification_id=7) == \
        b'{"id":7,"jsonrpc":"2.0","method":"E_TEST","params":{}}'


# -- unit: down, backoff, bounded queue, expiry --------------------------------------

def test_queue_while_down_drops_oldest_and_backs_off():
    evi, clock, transport = make_evi(queue_size=3, reconnect_delay=1.0,
                                     reconnect_max_delay=4.0, queue_timeout=100.0)
    sub = result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    reports = [evi.raise_event("E_TEST", [str(i)]) for i in range(5)]
    dropped = [result_of(d) for d in reports[:2]]
    assert [(r.delivered, r.dropped) for r in dropped] == [(0, 1), (0, 1)]
    assert "queue full" in dropped[0].errors[0][1]
    assert not any(d.called for d in reports[2:])
    refuse(clock)
    delays = []
    for attempt in range(4):
        call, = [c for c in clock.getDelayedCalls() if c.func.__name__ == "_connect"]
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
        if attempt < 3:
            refuse(clock)
    assert delays == [1.0, 2.0, 4.0, 4.0]  # doubling, capped
    _, wire = connect(clock)
    assert [o["params"] for o in objects(wire.value())] == [["2"], ["3"], ["4"]]
    assert [result_of(d).delivered for d in reports[2:]] == [1, 1, 1]
    assert (sub.sent, sub.dropped) == (3, 2)
    assert counters(evi) == (3, 0, 2)
    assert evi.statistics.get(["evi_tcp:connections"]) == {"evi_tcp:connections": 1}


def test_waiting_too_long_counts_as_failed():
    evi, clock, _ = make_evi(queue_timeout=5.0, reconnect_delay=1.0)
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    d = evi.raise_event("E_TEST")
    refuse(clock)
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    report = result_of(d)
    assert (report.failed, report.delivered) == (1, 0)
    assert report.errors[0][1].startswith("not sent within 5.0 s")
    # nothing left to send: the retry finds an empty queue and goes idle
    refuse(clock) if len(clock.tcpClients) > 1 else None
    assert all(not c.active() or c.func.__name__ == "_connect" for c in clock.getDelayedCalls())


def test_queued_notifications_are_charged_to_the_byte_budget():
    size = len(b'{"jsonrpc":"2.0","method":"E_TEST","params":["0"]}')
    evi, clock, transport = make_evi(max_queued_bytes=3 * size, queue_size=10)
    sub = result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    reports = [evi.raise_event("E_TEST", [str(i)]) for i in range(4)]  # connecting: queued
    stats = evi.statistics
    assert stats.value("evi_tcp:queued_bytes") == stats.value("evi:queued_bytes") == 3 * size
    report = result_of(reports[3])  # the one that did not fit
    assert report.dropped == 1 and report.errors == [
        ("tcp:127.0.0.1:7000", f"byte budget of {3 * size} bytes full "
                               "([limits] max_queued_bytes)")]
    _, wire = connect(clock)
    assert [o["params"] for o in objects(wire.value())] == [["0"], ["1"], ["2"]]
    assert stats.value("evi:queued_bytes") == 0  # written: given back
    assert (sub.sent, sub.dropped) == (3, 1) and counters(evi) == (3, 0, 1)
    d = evi.raise_event("E_TEST", ["x" * (10 * size)])  # written at once: never held
    assert result_of(d).delivered == 1


def test_reliable_unanswered_stay_charged_until_their_reply():
    evi, clock, transport = make_evi(max_queued_bytes=10 ** 6, reliable=True)
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    d = evi.raise_event("E_TEST", ["a"])
    protocol, wire = connect(clock)
    charged = len(wire.value())
    assert evi.statistics.value("evi_tcp:queued_bytes") == charged
    protocol.connectionLost(Failure(ConnectionDone()))  # sent again later: still held
    assert evi.statistics.value("evi_tcp:queued_bytes") == charged
    clock.advance(transport.reconnect_delay)
    protocol, wire = connect(clock)
    protocol.dataReceived(b'{"jsonrpc":"2.0","result":"ok","id":1}')
    assert result_of(d).delivered == 1 and evi.statistics.value("evi_tcp:queued_bytes") == 0
    transport.stopService()


# -- unit: fail_fast (what a virtual FAILOVER/ROUND-ROBIN member asks for) --------------

def fail_fast(transport, clock, sub, *values):
    """
    Deliver one notification to C{sub} as a virtual member with a next
    member to go to does.
    """
    notification = Notification("E_TEST", make_params(list(values)), clock.seconds())
    return transport.deliver(notification, [sub], fail_fast=True)


def pending_timers(clock):
    return sorted(c.func.__name__ for c in clock.getDelayedCalls() if c.active())


def test_fail_fast_first_raise_fails_when_its_connect_is_refused():
    evi, clock, transport = make_evi(queue_timeout=60.0)
    sub = result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    d = fail_fast(transport, clock, sub, "0")
    assert not d.called  # not attempted yet: it waits for the connect's outcome
    refuse(clock)
    report = result_of(d)
    assert (report.delivered, report.failed) == (0, 1)
    reason = report.errors[0][1]
    assert reason.startswith("cannot connect: ") and "refused" in reason
    assert (sub.failed, sub.last_error) == (1, reason)
    assert counters(evi) == (0, 1, 0)
    # nothing queued: no reconnect and no expiry timer are left behind
    assert pending_timers(clock) == [] and evi.statistics.value("evi_tcp:queued") == 0
    # the next one tries again (a destination that came back is found)
    d = fail_fast(transport, clock, sub, "1")
    assert len(clock.tcpClients) == 2 and not d.called
    _, wire = connect(clock)
    assert result_of(d).delivered == 1
    assert objects(wire.value())[0]["params"] == ["1"]


def test_fail_fast_while_backing_off_fails_at_once_and_plain_waits():
    evi, clock, transport = make_evi(queue_timeout=5.0, reconnect_delay=1.0)
    sub = result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    plain = evi.raise_event("E_TEST", ["plain"])
    refuse(clock)
    assert not plain.called  # a plain subscriber: queued, retried with backoff
    # known down, the next connect a second away: no waiting for it
    report = fail_fast(transport, clock, sub, "fast")
    assert isinstance(report, Outcome) and report.failed == 1
    assert "refused" in report.errors[0][1] and "next in 1 s" in report.errors[0][1]
    assert len(clock.tcpClients) == 1  # and no extra connect for it
    # while a reconnect is under way, its outcome is awaited
    clock.advance(1.0)
    assert len(clock.tcpClients) == 2
    d = fail_fast(transport, clock, sub, "fast2")
    assert not d.called
    refuse(clock)
    assert result_of(d).failed == 1
    assert not plain.called
    # the plain one fails only after queue_timeout, as before
    clock.advance(3.9)
    assert not plain.called
    clock.advance(0.2)
    plain_report = result_of(plain)
    assert plain_report.failed == 1
    assert plain_report.errors[0][1].startswith("not sent within 5.0 s")
    assert counters(evi) == (0, 3, 0)
    transport.stopService()
    clock.advance(0)


def test_fail_fast_after_a_lost_connection_waits_for_the_reconnect():
    # lost (not refused) is not "known down": it waits for the reconnect,
    # whose refusal then fails it, and the unanswered one sent before
    evi, clock, transport = make_evi(reliable=True, queue_timeout=60.0, reconnect_delay=0.5)
    sub = result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    first = fail_fast(transport, clock, sub, "1")
    protocol, wire = connect(clock)
    assert objects(wire.value())[0]["params"] == ["1"] and not first.called
    protocol.connectionLost(Failure(ConnectionDone()))
    second = fail_fast(transport, clock, sub, "2")
    assert not first.called and not second.called
    clock.advance(0.5)
    refuse(clock)
    for d in (first, second):
        report = result_of(d)
        assert report.failed == 1 and report.errors[0][1].startswith("cannot connect: ")
    assert pending_timers(clock) == []


def test_fail_fast_to_a_working_destination_is_delivered():
    evi, clock, transport = make_evi()
    sub = result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    d = fail_fast(transport, clock, sub, "a")
    _, wire = connect(clock)
    assert result_of(d).delivered == 1
    report = fail_fast(transport, clock, sub, "b")  # connected: settled at once
    assert isinstance(report, Outcome) and report.delivered == 1
    assert [o["params"] for o in objects(wire.value())] == [["a"], ["b"]]


def test_peer_that_stops_reading_pauses_the_sender():
    evi, clock, _ = make_evi(queue_size=2)
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    d0 = evi.raise_event("E_TEST", ["0"])
    protocol, wire = connect(clock)
    assert result_of(d0).delivered == 1
    protocol.pauseProducing()  # what Twisted does when its write buffer is full
    reports = [evi.raise_event("E_TEST", [str(i)]) for i in range(1, 5)]
    assert [result_of(d).dropped for d in reports[:2]] == [1, 1]
    protocol.resumeProducing()
    assert [o["params"] for o in objects(wire.value())] == [["0"], ["3"], ["4"]]
    assert counters(evi) == (3, 0, 2)


def test_remote_close_reconnects_on_next_notification():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert len(clock.tcpClients) == 1  # idle: nothing to send
    d = evi.raise_event("E_TEST")
    assert len(clock.tcpClients) == 2 and not d.called
    _, wire2 = connect(clock)
    assert result_of(d).delivered == 1
    assert wire2.value() == b'{"jsonrpc":"2.0","method":"E_TEST"}'


def test_non_reliable_discards_what_it_receives():
    evi, clock, _ = make_evi()
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    protocol.dataReceived(b"garbage that is not JSON" * 10000)
    assert not wire.disconnecting


# -- unit: reliable mode ---------------------------------------------------------------

def test_reliable_delivered_only_on_reply_and_error_is_failure():
    evi, clock, _ = make_evi(reliable=True)
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    d1 = evi.raise_event("E_TEST", {"ip": "1.2.3.4", "n": 5})
    d2 = evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    assert wire.value() == (b'{"id":1,"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4",'
                            b'"n":5}}{"id":2,"jsonrpc":"2.0","method":"E_TEST"}')
    assert not d1.called and not d2.called
    protocol.dataReceived(b'{"jsonrpc":"2.0","error":{"code":500,"message":"no"},"id":2}'
                          b'{"jsonrpc":"2.0","res')
    report2 = result_of(d2)
    assert report2.failed == 1 and "peer error" in report2.errors[0][1]
    assert not d1.called
    protocol.dataReceived(b'ult":"OK","id":1}')
    assert result_of(d1).delivered == 1
    assert counters(evi) == (1, 1, 0)


def test_reliable_jsonrpc_body_has_numeric_id():
    evi, clock, _ = make_evi(scheme="jsonrpc", reliable=True)
    result_of(evi.subscribe("E_TEST", "jsonrpc:127.0.0.1:7000/m"))
    evi.raise_event("E_TEST", ["a"])
    _, wire = connect(clock)
    assert wire.value() == b'{"id":1,"jsonrpc":"2.0","method":"m","params":["a"]}'


def test_reliable_unanswered_is_sent_again_then_fails_after_retries(logged_errors):
    warnings = []
    globalLogPublisher.addObserver(warnings.append)
    try:
        evi, clock, _ = make_evi(reliable=True, timeout=1.0, retries=2, reconnect_delay=0.5)
        result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
        d = evi.raise_event("E_TEST")
        protocol, wire = connect(clock)
        clock.advance(1.0)  # no reply in time: the connection is aborted
        assert wire.disconnecting
        protocol.connectionLost(Failure(ConnectionDone()))
        clock.advance(0.5)
        protocol2, wire2 = connect(clock)
        assert wire2.value() == wire.value() == b'{"id":1,"jsonrpc":"2.0","method":"E_TEST"}'
        clock.advance(1.0)
        protocol2.connectionLost(Failure(ConnectionDone()))
        report = result_of(d)
        assert report.failed == 1 and report.errors[0][1] == "no reply after 2 send(s)"
        timeouts = [e for e in warnings if "no reply within" in str(e.get("reason", ""))]
        assert len(timeouts) == 1  # logged once, not once per occurrence
    finally:
        globalLogPublisher.removeObserver(warnings.append)


def test_reliable_reply_without_id_closes_the_connection():
    evi, clock, _ = make_evi(reliable=True)
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    protocol.dataReceived(b'{"jsonrpc":"2.0","result":"OK"}')
    assert wire.disconnecting


def test_stop_drops_what_waits_and_refuses_new_work():
    evi, clock, transport = make_evi()
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    d = evi.raise_event("E_TEST")
    stopped = transport.stopService()
    assert result_of(d).dropped == 1
    assert clock.connectors[0].stoppedConnecting
    assert result_of(evi.raise_event("E_TEST")).dropped == 1
    clock.advance(0)
    assert stopped.called


# -- end to end: a real server, real TCP receivers ---------------------------------------

class Receiver(Protocol):
    def connectionMade(self):
        self.chunks = []
        self.size = 0
        self.lost = Deferred()
        self.factory.connections.append(self)
        self.factory.changed()

    @property
    def data(self):
        return b"".join(self.chunks)

    def dataReceived(self, data):
        self.chunks.append(data)
        self.size += len(data)
        self.factory.changed()

    def connectionLost(self, reason):
        self.lost.callback(None)
        self.factory.changed()

    def reply(self, obj):
        self.transport.write(json.dumps(obj).encode())


class ReceiverFactory(Factory):
    protocol = Receiver
    noisy = False

    def __init__(self):
        self.connections = []
        self._waiters = []

    def changed(self):
        waiters, self._waiters = self._waiters, []
        for predicate, d in waiters:
            if predicate():
                d.callback(None)
            else:
                self._waiters.append((predicate, d))

    def until(self, predicate, timeout=5.0):
        """
        A Deferred fired once C{predicate()} holds (checked on every event).
        """
        if predicate():
            return succeed(None)
        d = Deferred()
        self._waiters.append((predicate, d))
        return d.addTimeout(timeout, reactor)

    def received(self):
        return [o for c in self.connections for o in objects(c.data)]


@pytest.fixture
def tcp_receivers():
    made = []

    def make():
        factory = ReceiverFactory()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        factory.port = port.getHost().port
        made.append((factory, port))
        return factory
    yield make
    for factory, port in made:
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
enabled = udp, tcp, jsonrpc
[transport:tcp]
reconnect_delay = 0.05
timeout = 0.3
{extra}
"""


@pytest_twisted.inlineCallbacks
def test_real_receivers_parse_both_bodies(server_factory, tcp_receivers):
    server = server_factory(INI.format(extra=""))
    rx = tcp_receivers()
    yield server.evi.subscribe("E_TEST", f"tcp:127.0.0.1:{rx.port}")
    yield server.evi.subscribe("E_TEST", f"tcp:127.0.0.1:{rx.port}/notify")
    yield server.evi.subscribe("E_TEST", f"jsonrpc:127.0.0.1:{rx.port}")
    reports = [server.evi.raise_event("E_TEST", {"ip": "1.2.3.4", "n": n}) for n in range(50)]
    reports += [server.evi.raise_event("E_TEST", ["a", "b"])]
    results = yield DeferredList(reports)
    assert all(ok and r.delivered == 3 for ok, r in results)
    yield rx.until(lambda: len(rx.received()) == 153)
    assert len(rx.connections) == 2  # one per transport for the one address
    by_kind = {}
    for c in rx.connections:
        for o in objects(c.data):
            by_kind.setdefault((o.get("id", "absent"), o["method"]), []).append(o["params"])
    assert by_kind[("absent", "E_TEST")] == [{"ip": "1.2.3.4", "n": n} for n in range(50)] + [
        ["a", "b"]]
    assert by_kind[("absent", "notify")] == by_kind[("absent", "E_TEST")]
    assert by_kind[(None, "E_TEST")] == by_kind[("absent", "E_TEST")]
    tcp_conn = next(c for c in rx.connections if c.data.startswith(b'{"jsonrpc"'))
    assert BODY_27.replace(b'"n":5', b'"n":0') in tcp_conn.data


@pytest_twisted.inlineCallbacks
def test_reliable_resends_after_reconnect(server_factory, tcp_receivers):
    server = server_factory(INI.format(extra="reliable = yes\nretries = 3"))
    rx = tcp_receivers()
    sub = yield server.evi.subscribe("E_TEST", f"tcp:127.0.0.1:{rx.port}")
    d = server.evi.raise_event("E_TEST", {"n": 1})
    yield rx.until(lambda: rx.connections and rx.connections[0].data)
    first = rx.connections[0]
    sent = objects(first.data)
    assert sent == [{"id": sent[0]["id"], "jsonrpc": "2.0", "method": "E_TEST",
                     "params": {"n": 1}}]
    first.transport.loseConnection()  # the receiver goes away without answering
    yield rx.until(lambda: len(rx.connections) == 2 and rx.connections[1].data)
    second = rx.connections[1]
    assert objects(second.data) == sent  # the same notification, same id
    assert not d.called
    second.reply({"jsonrpc": "2.0", "result": "OK", "id": sent[0]["id"]})
    report = yield d
    assert (report.delivered, report.failed) == (1, 0)
    assert (sub.sent, sub.failed) == (1, 0)


@pytest_twisted.inlineCallbacks
def test_reliable_silent_receiver_times_out_and_gets_it_again(server_factory, tcp_receivers):
    server = server_factory(INI.format(extra="reliable = yes\nretries = 2"))
    rx = tcp_receivers()
    yield server.evi.subscribe("E_TEST", f"tcp:127.0.0.1:{rx.port}")
    d = server.evi.raise_event("E_TEST")
    yield rx.until(lambda: len(rx.connections) == 2 and rx.connections[1].data)
    assert rx.connections[0].data == rx.connections[1].data  # re-sent after the timeout
    report = yield d  # nobody ever answers: failed after 2 sends
    assert report.failed == 1 and "no reply after 2" in report.errors[0][1]


@pytest_twisted.inlineCallbacks
def test_receiver_that_stops_reading_fills_the_queue_and_mi_answers(
        server_factory, tcp_receivers, udp_collector):
    server = server_factory(INI.format(extra="queue_size = 50\nqueue_timeout = 60"))
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(1)  # never accepts, never reads: the kernel buffers fill up
    stuck_socket = f"tcp:127.0.0.1:{stuck.getsockname()[1]}"
    healthy = tcp_receivers()
    try:
        yield server.evi.subscribe("E_TEST", stuck_socket)
        healthy_sub = yield server.evi.subscribe("E_TEST", f"tcp:127.0.0.1:{healthy.port}")
        stats = server.statistics
        value = "v" * 16384
        raised = size = 0
        while stats.value("evi_tcp:notifications_dropped") == 0 and raised < 4000:
            for _ in range(10):
                server.evi.raise_event("E_TEST", {"n": raised, "v": value})
                size += len(encoding.json_notification(
                    "E_TEST", make_params({"n": raised, "v": value})))
                raised += 1
            # paced by the healthy receiver, which must get everything at once
            yield healthy.until(lambda: sum(c.size for c in healthy.connections) >= size)
        dropped = stats.value("evi_tcp:notifications_dropped")
        assert dropped > 0, f"nothing dropped after {raised} raises"
        assert stats.value("evi_tcp:queued") <= 50  # bounded
        stuck_sub = server.evi.event("E_TEST").subscriptions[stuck_socket]
        assert stuck_sub.dropped == dropped and "queue full" in stuck_sub.last_error
        assert (healthy_sub.sent, healthy_sub.dropped) == (raised, 0)
        assert [o["params"]["n"] for o in healthy.received()] == list(range(raised))
        # the MI still answers at once
        mi = udp_collector()
        reply, _ = yield mi.request(b'{"jsonrpc":"2.0","method":"which","id":1}',
                                    server.mi_udp_address())
        assert b'"result"' in reply
    finally:
        stuck.close()


@pytest_twisted.inlineCallbacks
def test_refused_destination_fails_after_queue_timeout(server_factory, logged_errors):
    server = server_factory(INI.format(extra="queue_timeout = 0.3"))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    yield server.evi.subscribe("E_TEST", f"tcp:127.0.0.1:{port}")
    report = yield server.evi.raise_event("E_TEST")
    assert report.failed == 1 and report.errors[0][1].startswith("not sent within 0.3 s")


def test_quiet_destination_is_closed_and_forgotten():
    evi, clock, transport = make_evi(idle_timeout=60.0)
    transport.startService()
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    evi.raise_event("E_TEST")
    protocol, wire = connect(clock)
    clock.advance(30)
    evi.raise_event("E_TEST")  # used again: the clock starts over
    clock.advance(30)
    assert not wire.disconnecting
    clock.advance(30)
    assert wire.disconnecting and transport._peers == {}
    protocol.connectionLost(Failure(ConnectionDone()))
    assert counters(evi) == (2, 0, 0)
    d = evi.raise_event("E_TEST")  # the next one reconnects
    assert len(clock.tcpClients) == 2
    connect(clock)
    assert result_of(d).delivered == 1
    transport.stopService()


@pytest_twisted.inlineCallbacks
def test_quiet_connection_is_closed_for_real(server_factory, tcp_receivers):
    # e.g. a subscriber that unsubscribed but keeps its end open: its file
    # descriptor is given back
    server = server_factory(INI.format(extra="idle_timeout = 0.2"))
    rx = tcp_receivers()
    yield server.evi.subscribe("E_TEST", f"tcp:127.0.0.1:{rx.port}")
    report = yield server.evi.raise_event("E_TEST", ["one"])
    assert report.delivered == 1
    yield rx.until(lambda: rx.connections and rx.connections[0].lost.called)
    assert server.transports["tcp"]._peers == {}
    report = yield server.evi.raise_event("E_TEST", ["two"])
    yield rx.until(lambda: len(rx.received()) == 2)
    assert [o["params"] for o in rx.received()] == [["one"], ["two"]]
    assert len(rx.connections) == 2


# -- idle_timeout = 0: never --------------------------------------------------------------

def test_idle_timeout_zero_parses_and_bad_values_are_refused(tmp_path):
    config = make_config(BASE_INI + "[transport:tcp]\nidle_timeout = 0\n", tmp_path)
    assert config.transports["tcp"]["idle_timeout"] == 0
    for bad in ("-1", "86401", "soon"):
        with pytest.raises(ConfigError) as e:
            make_config(BASE_INI + f"[transport:tcp]\nidle_timeout = {bad}\n", tmp_path)
        assert "idle_timeout" in str(e.value)


def test_idle_timeout_zero_never_closes_a_quiet_connection():
    evi, clock, transport = make_evi(idle_timeout=0.0)
    transport.startService()
    assert not transport._idle_sweep.running  # no sweep to run at all
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:7000"))
    d = evi.raise_event("E_TEST")
    _, wire = connect(clock)
    assert result_of(d).delivered == 1
    for _ in range(10):
        clock.advance(86400)
    assert not wire.disconnecting and len(transport._peers) == 1
    peer, = transport._peers.values()
    assert not peer.idle(clock.seconds())  # even if asked directly
    d = evi.raise_event("E_TEST")  # the same connection, days later
    assert result_of(d).delivered == 1 and len(clock.tcpClients) == 1
    transport.stopService()
    clock.advance(0)
