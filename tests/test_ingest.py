"""
The ingest: OpenSIPS event_datagram and event_stream notifications taken
and raised in evsrv (spec §4.0, §4.1, §4.4, §8 vectors 27, 28, 34), the
rules on what is taken (events, bad input, floods, allow lists, loops),
reliable-mode acknowledgements, and the stream splitter.
"""

import json
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport

from evsrv.evi import Limits, Param
from evsrv.ingest import IngestController, ingest_params
from evsrv.ingest.listeners import IngestStreamProtocol
from evsrv.mi.jsonrpc import loads
from evsrv.testing import memory_evi
from evsrv.util.jsonstream import OVERSIZE, ObjectSplitter, StreamError
from evsrv.util.netlist import NetworkList
from evsrv.util.statistics import Statistics
from tests.conftest import until

VECTOR_27 = b'{"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4","n":5}}'
VECTOR_28 = b'{"jsonrpc":"2.0","method":"E_TEST","params":["a","7"]}'


def controller(*events, **settings):
    statistics = Statistics()
    evi, clock, transport = memory_evi(*events, statistics=statistics,
                                       limits=settings.pop("limits", None))
    ingest = IngestController(evi, clock, statistics, **settings)
    return ingest, evi, clock, transport, statistics


def subscribe(evi, event, socket="test:a"):
    evi.publish(event)
    results = []
    evi.subscribe(event, socket).addBoth(results.append)
    assert results and not hasattr(results[0], "getErrorMessage"), results


# -- the splitter --------------------------------------------------------------

STREAM = (b'{"jsonrpc":"2.0","method":"E_A","params":{"s":"} { [ \\" \\\\"}}'
          b'\n {"id":7,"jsonrpc":"2.0","method":"E_B","params":[1,[2,{"x":"\xc3\xa9"}]]}'
          b'{"jsonrpc":"2.0","method":"E_C"}')


def test_splitter_cuts_back_to_back_objects_however_the_stream_is_cut():
    whole = ObjectSplitter(1000).feed(STREAM)
    assert [json.loads(o)["method"] for o in whole] == ["E_A", "E_B", "E_C"]
    assert b"".join(whole) == STREAM.replace(b"\n ", b"")
    for cut in range(1, len(STREAM)):
        splitter = ObjectSplitter(1000)
        assert splitter.feed(STREAM[:cut]) + splitter.feed(STREAM[cut:]) == whole, cut
    splitter = ObjectSplitter(1000)
    one_by_one = [o for i in range(len(STREAM)) for o in splitter.feed(STREAM[i:i + 1])]
    assert one_by_one == whole


def test_splitter_skips_an_object_over_the_limit_and_stays_in_step():
    big = b'{"method":"E_BIG","params":["' + b"x" * 500 + b'"]}'
    splitter = ObjectSplitter(100)
    out = []
    for i in range(0, len(big), 7):
        out += splitter.feed(big[i:i + 7])
        assert splitter.pending <= 100
    out += splitter.feed(b'{"method":"E_OK"}')
    assert out == [OVERSIZE, b'{"method":"E_OK"}']
    assert ObjectSplitter(100).feed(big + b"{}") == [OVERSIZE, b"{}"]


@pytest.mark.parametrize("garbage", [b"hello", b'{"a":1}]', b"[1,2]", b'"s"'])
def test_splitter_refuses_what_is_not_an_object(garbage):
    with pytest.raises(StreamError):
        ObjectSplitter(100).feed(garbage)


# -- parameters ----------------------------------------------------------------

def test_params_named_unnamed_and_ints_stay_ints():
    assert ingest_params(loads('{"ip":"1.2.3.4","n":5,"n":-6}')) == (
        Param("ip", "1.2.3.4"), Param("n", 5), Param("n", -6))
    assert ingest_params(loads('["a",7]')) == (Param(None, "a"), Param(None, 7))
    assert ingest_params(None) == ()
    assert ingest_params(loads("{}")) == ingest_params(loads("[]")) == ()


def test_params_other_values_become_their_json_text():
    assert ingest_params(loads('{"f":1.5,"t":true,"z":null,"o":{"k":[1,2]},"big":1e30,'
                               '"huge":123456789012345678901234567890}')) == (
        Param("f", "1.5"), Param("t", "true"), Param("z", "null"),
        Param("o", '{"k":[1,2]}'), Param("big", "1e+30"),
        Param("huge", "123456789012345678901234567890"))


def test_params_garbled_array_of_opensips_3_6_is_an_array():
    # spec §9 D17: {"":"v1","":"v2"} was meant as ["v1","v2"]
    assert ingest_params(loads('{"":"v1","":2}')) == (Param(None, "v1"), Param(None, 2))


def test_params_neither_object_nor_array():
    with pytest.raises(ValueError):
        ingest_params("text")


# -- the controller -------------------------------------------------------------

def test_vector_27_is_raised_with_its_params_and_leaves_as_it_came():
    ingest, evi, clock, transport, stats = controller()
    subscribe(evi, "E_TEST")
    assert ingest.take(VECTOR_27, "udp:127.0.0.1:5000") is None
    [(event, params, _)] = transport.delivered
    assert (event, params) == ("E_TEST", (Param("ip", "1.2.3.4"), Param("n", 5)))
    from evsrv.encoding import json_notification
    assert json_notification(event, params) == VECTOR_27
    assert stats.get(["ingest:"])["ingest:received"] == 1


def test_an_event_taken_for_the_first_time_is_published():
    ingest, evi, *_ = controller()
    assert evi.event("E_NEW") is None
    ingest.take(b'{"jsonrpc":"2.0","method":"E_NEW"}', "udp:127.0.0.1:1")
    assert evi.event("E_NEW") is not None and ingest.published == ["E_NEW"]
    ingest.take(b'{"jsonrpc":"2.0","method":"E_NEW"}', "udp:127.0.0.1:1")
    assert ingest.published == ["E_NEW"]


def test_events_not_matching_the_patterns_are_refused_and_counted():
    ingest, evi, _, transport, stats = controller(events=["E_PIKE_*", "E_DLG_STATE_CHANGED"])
    subscribe(evi, "E_OTHER")
    ingest.take(b'{"jsonrpc":"2.0","method":"E_OTHER"}', "udp:127.0.0.1:1")
    ingest.take(b'{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"1.1.1.1"}}', "x")
    assert transport.delivered == []  # nobody subscribed to E_PIKE_BLOCKED
    assert evi.event("E_PIKE_BLOCKED") is not None
    assert stats.value("ingest:refused") == 1 and stats.value("ingest:received") == 1
    # reliable mode: an error reply, so the sender does not send it again
    assert ingest.take(b'{"id":3,"jsonrpc":"2.0","method":"E_OTHER"}', "x") == \
        b'{"jsonrpc":"2.0","error":{"code":403,"message":"Event refused"},"id":3}'


def test_publishing_is_bounded():
    ingest, evi, _, _, stats = controller(max_events=2)
    for name in ("E_1", "E_2", "E_3"):
        ingest.take(b'{"method":"%s"}' % name.encode(), "x")
    assert ingest.published == ["E_1", "E_2"] and evi.event("E_3") is None
    assert stats.value("ingest:refused") == 1 and stats.value("ingest:events") == 2


@pytest.mark.parametrize("data, reason", [
    (b"hello", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"jsonrpc":"2.0","params":{}}', "no method"),
    (b'{"jsonrpc":"1.0","method":"E_X"}', "jsonrpc"),
    (b'{"method":"E X"}', "bad event name"),
    (b'{"method":"' + b"E" * 65 + b'"}', "bad event name"),
    (b'{"method":"E_\xc3\xa9"}', "bad event name"),
    (b'{"method":7}', "bad event name"),
    (b'{"method":"E_X","params":"a=1"}', "params is a str"),
    (b'{"method":"E_X","params":["' + b"x" * 600 + b'"]}', "more than [ingest] max_size"),
])
def test_bad_input_is_counted_and_never_raised(data, reason):
    from twisted.logger import globalLogPublisher
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        ingest, evi, _, transport, stats = controller(max_size=512)
        subscribe(evi, "E_X")
        assert ingest.take(data, "udp:127.0.0.1:9") is None
        ingest.take(data, "udp:127.0.0.1:9")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert transport.delivered == []
    assert stats.value("ingest:bad_input") == 2 and stats.value("ingest:received") == 0
    warnings = [e for e in seen if e.get("log_namespace", "").startswith("evsrv.ingest")]
    assert len(warnings) == 1 and reason in warnings[0]["reason"]  # logged once


def test_bad_input_with_an_id_gets_an_error_reply():
    ingest, *_ = controller()
    assert ingest.take(b'{"id":4,"jsonrpc":"2.0","params":[]}', "x") == \
        b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":4}'
    assert ingest.take(b'{"id":"s","method":"E_X","params":5}', "x") == \
        b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params"},"id":"s"}'
    # no usable id (null, as the 2.4 body has; or not a number): no reply
    assert ingest.take(b'{"id":null,"jsonrpc":"2.0","method":"E_X","params":{}}', "x") is None
    assert ingest.take(b'{"id":[1],"jsonrpc":"2.0","method":"E_X"}', "x") is None


def test_params_over_the_limits_are_refused():
    ingest, evi, _, transport, stats = controller(limits=Limits(max_params_bytes=10))
    subscribe(evi, "E_X")
    assert ingest.take(b'{"id":1,"method":"E_X","params":{"k":"0123456789"}}', "x") == \
        b'{"jsonrpc":"2.0","error":{"code":413,"message":"Params too large"},"id":1}'
    assert transport.delivered == [] and stats.value("ingest:refused") == 1


def test_reliable_ack_comes_once_the_raise_is_handed_to_the_transports():
    ingest, evi, _, transport, _ = controller()
    subscribe(evi, "E_TEST")
    transport.asynchronous = True  # delivery settles later: the ack does not wait for it
    reply = ingest.take(b'{"id":1,' + VECTOR_27[1:], "tcp:127.0.0.1:5")
    assert reply == b'{"jsonrpc":"2.0","result":"OK","id":1}'
    assert len(transport.delivered) == 1 and transport.pending  # handed, not settled
    transport.settle()


def test_loop_rule_an_echo_is_not_raised_again():
    ingest, evi, clock, transport, stats = controller(loop_window=2)
    subscribe(evi, "E_TEST")
    ingest.take(VECTOR_27, "udp:10.0.0.1:5000")
    # the same event coming back (evsrv's own output, through any path)
    ingest.take(VECTOR_27.replace(b":", b": "), "udp:127.0.0.1:40000")
    assert len(transport.delivered) == 1 and stats.value("ingest:echoes") == 1
    # reliable mode: acknowledged, so the sender does not try again
    assert ingest.take(b'{"id":9,' + VECTOR_27[1:], "tcp:x") == \
        b'{"jsonrpc":"2.0","result":"OK","id":9}'
    # other params, or after the window: raised
    ingest.take(VECTOR_27.replace(b"1.2.3.4", b"1.2.3.5"), "udp:10.0.0.1:5000")
    clock.advance(2.5)
    ingest.take(VECTOR_27, "udp:10.0.0.1:5000")
    assert len(transport.delivered) == 3


def test_loop_rule_off():
    ingest, evi, _, transport, stats = controller(loop_window=0)
    subscribe(evi, "E_TEST")
    for _ in range(3):
        ingest.take(VECTOR_27, "x")
    assert len(transport.delivered) == 3 and stats.value("ingest:echoes") == 0


def test_rate_per_source():
    ingest, evi, clock, *_ = controller(max_rate=2)
    assert [ingest.wait("10.0.0.1") for _ in range(2)] == [0.0, 0.0]
    assert ingest.wait("10.0.0.1") == pytest.approx(0.5)
    assert ingest.wait("10.0.0.2") == 0.0  # another source has its own
    clock.advance(0.5)
    assert ingest.wait("10.0.0.1") == 0.0
    assert controller(max_rate=0)[0].wait("10.0.0.1") == 0.0


def test_rate_table_is_bounded(monkeypatch):
    from evsrv.ingest import controller as module
    monkeypatch.setattr(module, "MAX_BUCKETS", 3)
    ingest, *_ = controller(max_rate=1)
    for i in range(10):
        ingest.wait(f"10.0.0.{i}")
    assert len(ingest._buckets) <= 4  # three sources, then one shared bucket
    assert ingest.wait("10.0.0.99") > 0  # the shared bucket is spent


def test_allow_list():
    ingest, _, _, _, stats = controller(allow=NetworkList.parse("10.0.0.0/8"))
    assert ingest.allowed("10.1.2.3", "udp:x") and not ingest.allowed("127.0.0.1", "udp:x")
    assert stats.value("ingest:denied") == 1


# -- the stream protocol (in memory) ---------------------------------------------

def stream_protocol(**settings):
    ingest, evi, clock, transport, stats = controller(**settings)
    subscribe(evi, "E_TEST")
    protocol = IngestStreamProtocol(ingest, clock)
    wire = StringTransport()
    protocol.makeConnection(wire)
    return protocol, wire, transport, clock, stats


def test_stream_acks_in_order_and_a_peer_not_reading_pauses_us():
    protocol, wire, transport, _, _ = stream_protocol()
    assert wire.producer is protocol  # the replies pace the reading
    protocol.dataReceived(b'{"id":1,' + VECTOR_27[1:] + b'{"id":2,' + VECTOR_28[1:10])
    assert wire.value() == b'{"jsonrpc":"2.0","result":"OK","id":1}'
    protocol.pauseProducing()  # Twisted holds 64 KiB the peer has not read
    assert wire.producerState == "paused"  # we stopped reading
    protocol.dataReceived(VECTOR_28[10:] + b'{"id":3,' + VECTOR_27[1:].replace(b"5", b"6"))
    assert len(transport.delivered) == 1  # nothing taken while paused
    protocol.resumeProducing()
    assert wire.producerState == "producing"
    assert wire.value().count(b'"result":"OK"') == 3 and len(transport.delivered) == 3


def test_stream_over_the_rate_waits_instead_of_dropping():
    protocol, wire, transport, clock, stats = stream_protocol(max_rate=2, loop_window=0)
    protocol.dataReceived(VECTOR_27 * 5)
    assert len(transport.delivered) == 2 and wire.producerState == "paused"
    assert stats.value("ingest:throttled") == 1 and stats.value("ingest:flooded") == 0
    clock.advance(0.5)
    assert len(transport.delivered) == 3
    clock.advance(2)
    assert len(transport.delivered) == 5 and wire.producerState == "producing"


def test_stream_garbage_disconnects():
    protocol, wire, transport, _, stats = stream_protocol()
    protocol.dataReceived(VECTOR_27 + b"hello")
    assert wire.disconnecting or getattr(wire, "aborted", False) or wire.disconnected
    assert stats.value("ingest:bad_input") == 1


def test_stream_oversize_object_is_skipped():
    protocol, wire, transport, _, stats = stream_protocol(max_size=512)
    protocol.dataReceived(b'{"id":1,"method":"E_TEST","params":["' + b"x" * 600 + b'"]}'
                          + b'{"id":2,' + VECTOR_27[1:])
    assert wire.value() == b'{"jsonrpc":"2.0","result":"OK","id":2}'
    assert stats.value("ingest:bad_input") == 1 and len(transport.delivered) == 1


# -- real sockets ----------------------------------------------------------------

INGEST_INI = """\
[mi]
udp = 127.0.0.1:0
[ingest]
udp = 127.0.0.1:0
tcp = 127.0.0.1:0
unix = ingest.sock
"""


def listened(server, kind):
    address = server.ingest.address(kind)
    return address[1:] if kind != "unix" else address[1]


def subscribe_collector(server, event, collector):
    results = []
    server.evi.publish(event)
    server.evi.subscribe(event, "udp:%s:%d" % collector.address).addBoth(results.append)
    return results


@pytest_twisted.inlineCallbacks
def test_udp_and_unix_datagrams_are_raised_and_delivered_byte_exact(server_factory,
                                                                     udp_collector):
    server = server_factory(INGEST_INI)
    collector = udp_collector()
    subscribe_collector(server, "E_TEST", collector)
    yield until(lambda: server.evi.probe("E_TEST"))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(VECTOR_27, listened(server, "udp"))
        data, _ = yield collector.next()
        assert data == VECTOR_27
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        unix.sendto(VECTOR_28.replace(b'"7"', b"7"), listened(server, "unix"))
        unix.close()
        data, _ = yield collector.next()
        assert data == VECTOR_28.replace(b'"7"', b"7")  # an int stays an int
        # nothing is sent back on a datagram listener, even for an id
        sender.setblocking(False)
        sender.sendto(b'{"id":1,' + VECTOR_27[1:].replace(b"5", b"8"), listened(server, "udp"))
        yield collector.next()
        yield deferLater(reactor, 0.05, lambda: None)
        with pytest.raises(BlockingIOError):
            sender.recv(100)
    finally:
        sender.close()
    assert server.statistics.value("ingest:received") == 3


class _Peer(Protocol):
    """
    A TCP client standing for event_stream.
    """

    def __init__(self):
        self.data = b""
        self.lost = Deferred()
        self.waiting = None

    def dataReceived(self, data):
        self.data += data
        if self.waiting is not None and self.waiting[0](self.data):
            d, self.waiting = self.waiting[1], None
            d.callback(self.data)

    def until(self, predicate):
        if predicate(self.data):
            return succeed(self.data)
        d = Deferred()
        self.waiting = (predicate, d)
        return d.addTimeout(5, reactor)

    def connectionLost(self, reason):
        self.lost.callback(None)


def connect(address):
    protocol = _Peer()
    factory = ClientFactory.forProtocol(lambda: protocol)
    d = Deferred()
    factory.buildProtocol = lambda addr: protocol
    protocol.connectionMade = lambda: d.callback(protocol)
    factory.clientConnectionFailed = lambda c, r: d.errback(r)
    reactor.connectTCP(*address, factory)
    return d.addTimeout(5, reactor)


@pytest_twisted.inlineCallbacks
def test_tcp_reliable_mode_gets_real_acknowledgements(server_factory, udp_collector):
    server = server_factory(INGEST_INI)
    collector = udp_collector()
    subscribe_collector(server, "E_TEST", collector)
    yield until(lambda: server.evi.probe("E_TEST"))
    peer = yield connect(listened(server, "tcp"))
    try:
        first = b'{"id":1,' + VECTOR_27[1:]
        second = b'{"id":2,' + VECTOR_28[1:]
        stream = first + second
        peer.transport.write(stream[:20])
        yield deferLater(reactor, 0.02, lambda: None)
        peer.transport.write(stream[20:])
        yield peer.until(lambda data: data.count(b"}") >= 2)
        assert peer.data == (b'{"jsonrpc":"2.0","result":"OK","id":1}'
                             b'{"jsonrpc":"2.0","result":"OK","id":2}')
        got = [(yield collector.next())[0], (yield collector.next())[0]]
        assert got == [VECTOR_27, VECTOR_28]  # the id is not part of the event
    finally:
        peer.transport.loseConnection()
        yield peer.lost


@pytest_twisted.inlineCallbacks
def test_tcp_loss_of_the_link_mid_object_then_reconnect(server_factory, udp_collector):
    server = server_factory(INGEST_INI)
    collector = udp_collector()
    subscribe_collector(server, "E_TEST", collector)
    yield until(lambda: server.evi.probe("E_TEST"))
    peer = yield connect(listened(server, "tcp"))
    peer.transport.write(b'{"id":1,' + VECTOR_27[1:30])
    peer.transport.abortConnection()
    yield peer.lost
    yield until(lambda: not server.ingest.controller.connections)
    # the half object was dropped with the connection; the sender sends again
    peer = yield connect(listened(server, "tcp"))
    peer.transport.write(b'{"id":1,' + VECTOR_27[1:])
    yield peer.until(lambda data: data.endswith(b"}"))
    assert peer.data == b'{"jsonrpc":"2.0","result":"OK","id":1}'
    data, _ = yield collector.next()
    assert data == VECTOR_27
    assert server.statistics.value("ingest:received") == 1
    peer.transport.loseConnection()
    yield peer.lost


@pytest_twisted.inlineCallbacks
def test_tcp_garbage_closes_the_connection(server_factory):
    server = server_factory(INGEST_INI)
    peer = yield connect(listened(server, "tcp"))
    peer.transport.write(b"GET / HTTP/1.0\r\n\r\n")
    yield peer.lost
    assert server.statistics.value("ingest:bad_input") == 1


@pytest_twisted.inlineCallbacks
def test_allow_lists(server_factory, udp_collector):
    server = server_factory(INGEST_INI + "allow = 10.0.0.0/8\n")
    collector = udp_collector()
    subscribe_collector(server, "E_TEST", collector)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(VECTOR_27, listened(server, "udp"))
        peer = yield connect(listened(server, "tcp"))  # closed at once
        yield peer.lost
        yield until(lambda: server.statistics.value("ingest:denied") == 2)
    finally:
        sender.close()
    assert server.statistics.value("ingest:received") == 0
    assert collector.received == []


@pytest_twisted.inlineCallbacks
def test_too_many_connections(server_factory):
    server = server_factory(INGEST_INI + "max_connections = 1\n")
    first = yield connect(listened(server, "tcp"))
    yield until(lambda: len(server.ingest.controller.connections) == 1)
    second = yield connect(listened(server, "tcp"))
    yield second.lost
    assert server.statistics.value("ingest:connections_refused") == 1
    first.transport.loseConnection()
    yield first.lost


@pytest_twisted.inlineCallbacks
def test_udp_flood_is_dropped_and_counted(server_factory):
    server = server_factory(INGEST_INI + "max_rate = 1\nloop_window = 0\n")
    server.evi.publish("E_TEST")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(10):
            sender.sendto(VECTOR_27, listened(server, "udp"))
        yield until(lambda: server.statistics.value("ingest:received")
                    + server.statistics.value("ingest:flooded") == 10)
    finally:
        sender.close()
    assert server.statistics.value("ingest:received") == 1


@pytest_twisted.inlineCallbacks
def test_stop_closes_connections_and_removes_the_socket_file(server_factory, tmpdir_short):
    server = server_factory(INGEST_INI)
    peer = yield connect(listened(server, "tcp"))
    yield until(lambda: server.ingest.controller.connections)
    assert (tmpdir_short / "ingest.sock").exists()
    yield server.stopService()
    yield peer.lost
    assert not (tmpdir_short / "ingest.sock").exists()


def test_a_taken_ingest_port_fails_start_up_naming_the_key(server_factory):
    from evsrv.config import ConfigError
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(ConfigError, match=r"\[ingest\] udp: cannot listen"):
            server_factory(f"[mi]\nudp = 127.0.0.1:0\n[ingest]\n"
                           f"udp = 127.0.0.1:{taken.getsockname()[1]}\n")
    finally:
        taken.close()


@pytest_twisted.inlineCallbacks
def test_evsrv_reliable_tcp_transport_into_another_evsrvs_ingest(server_factory,
                                                                  udp_collector):
    # evsrv's own event_stream sender (reliable) is a client of the ingest
    # like OpenSIPS: every notification acknowledged, counted as delivered
    hub = server_factory(INGEST_INI)
    collector = udp_collector()
    subscribe_collector(hub, "E_TEST", collector)
    edge = server_factory("[mi]\nudp = 127.0.0.1:0\n[events]\npublish = E_TEST\n"
                          "[transport:tcp]\nreliable = yes\n")
    host, port = listened(hub, "tcp")
    yield edge.evi.subscribe("E_TEST", f"tcp:{host}:{port}")
    report = yield edge.evi.raise_event("E_TEST", {"ip": "1.2.3.4", "n": 5})
    assert report.delivered == 1
    data, _ = yield collector.next()
    assert data == VECTOR_27
