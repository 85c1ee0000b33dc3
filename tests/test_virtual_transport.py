"""
The virtual: transport: policy logic on fakes (RecordingTransport, Clock),
then end to end through a real server with real UDP and UNIX receivers.
"""

import json
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionRefusedError as Refused
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from evsrv.evi import EventInterface
from evsrv.interfaces import BadSocket
from evsrv.util.statistics import Statistics
from evsrv.testing import RecordingTransport
from evsrv.transports.stream import StreamTransport, tcpTransport
from evsrv.transports.virtual import VirtualKey, VirtualTransport
from tests.conftest import BASE_INI, DatagramCollector
from tests.test_evi import result_of


class Fixture:
    def __init__(self, failover_timeout=30.0):
        self.clock = Clock()
        self.statistics = Statistics()
        self.a = RecordingTransport("a")
        self.b = RecordingTransport("b")
        self.virtual = VirtualTransport("virtual", self.statistics, self.clock, failover_timeout)
        self.evi = EventInterface(self.clock, {"a": self.a, "b": self.b,
                                               "virtual": self.virtual}, self.statistics)
        self.virtual.events.bind(self.evi)
        self.evi.publish("E_TEST")

    def subscribe(self, socket_text):
        return result_of(self.evi.subscribe("E_TEST", socket_text))

    def raise_(self, *values):
        return self.evi.raise_event("E_TEST", list(values))

    def received(self, transport):
        return [(str(params[0].value) if params else None, sock)
                for _, params, sock in transport.delivered]

    def stat(self, name):
        return self.statistics.value(name)


@pytest.fixture
def fx():
    return Fixture()


# -- parsing -------------------------------------------------------------------

def test_listing_is_normalised_and_members_in_listing_form(fx):
    sub = fx.subscribe("virtual: \tFAILOVER   a:1\tb:2 ")
    assert sub.socket == "virtual:FAILOVER a:1 b:2"
    assert [m.text for m in sub.address.members] == ["a:1", "b:2"]


def test_bare_unix_path_member_is_listed_as_unix():
    statistics = Statistics()
    from evsrv.transports.datagram import UNIXTransport
    unix = UNIXTransport("unix", "json", statistics)
    virtual = VirtualTransport("virtual", statistics, Clock())
    evi = EventInterface(Clock(), {"unix": unix, "virtual": virtual}, statistics)
    virtual.events.bind(evi)
    evi.publish("E_TEST")
    sub = result_of(evi.subscribe("E_TEST", "virtual:PARALLEL /tmp/x.sock unix:/tmp/y.sock"))
    assert sub.socket == "virtual:PARALLEL unix:/tmp/x.sock unix:/tmp/y.sock"


def test_parallel_key_ignores_order_and_keeps_first_listing(fx):
    first = fx.subscribe("virtual:PARALLEL a:1 b:2")
    again = fx.subscribe("virtual:PARALLEL b:2 a:1")
    assert again is first and fx.evi.store.size == 1
    assert first.socket == "virtual:PARALLEL a:1 b:2"
    found = result_of(fx.evi.find_subscriber("E_TEST", "virtual:PARALLEL b:2 a:1"))
    assert found is first


@pytest.mark.parametrize("policy", ["FAILOVER", "ROUND-ROBIN"])
def test_ordered_policies_key_keeps_order(fx, policy):
    fx.subscribe(f"virtual:{policy} a:1 b:2")
    fx.subscribe(f"virtual:{policy} b:2 a:1")
    fx.subscribe(f"virtual:{policy} a:1 b:2")  # a refresh
    assert fx.evi.store.size == 2


def test_policies_and_member_counts_make_distinct_keys():
    assert VirtualKey("PARALLEL", ["a:1", "b:2"]) != VirtualKey("FAILOVER", ["a:1", "b:2"])
    assert VirtualKey("PARALLEL", ["a:1"]) != VirtualKey("PARALLEL", ["a:1", "a:1"])
    assert VirtualKey("PARALLEL", ["a:1", "b:2"]) != "virtual:PARALLEL a:1 b:2"


@pytest.mark.parametrize("text, reason", [
    ("virtual:", "POLICY one of"),
    ("virtual:failover a:1", "POLICY one of"),      # case-sensitive, as OpenSIPS
    ("virtual:RANDOM a:1", "POLICY one of"),
    ("virtual:FAILOVER", "at least one member"),
    ("virtual:FAILOVER a:1 nope:2", "member 2 'nope:2': unknown or disabled transport"),
    ("virtual:FAILOVER a:1 a:", "member 2 'a:': a: empty destination"),
    ("virtual:FAILOVER a:1 virtual:PARALLEL", "cannot be virtual"),
])
def test_bad_virtual_sockets_are_refused_at_subscribe(fx, text, reason):
    failure = result_of(fx.evi.subscribe("E_TEST", text))
    assert failure.check(BadSocket)
    assert reason in str(failure.value)
    assert fx.evi.store.size == 0


# -- FAILOVER -------------------------------------------------------------------

def test_failover_goes_to_next_member_and_skips_the_failed_one(fx):
    sub = fx.subscribe("virtual:FAILOVER a:1 b:2")
    a_member = sub.address.members[0]
    fx.a.fail.add("a:1")
    report = result_of(fx.raise_(1))
    assert (report.delivered, report.failed) == (1, 0)
    assert fx.received(fx.b) == [("1", "b:2")]
    assert a_member.subscription.failed == 1
    # skipped for failover_timeout: not even tried
    result_of(fx.raise_(2))
    assert a_member.subscription.failed == 1
    assert fx.received(fx.b)[-1] == ("2", "b:2")
    assert (fx.stat("evi_virtual:notifications_sent"), fx.stat("evi_virtual:failovers")) == (2, 1)
    assert (sub.sent, sub.failed) == (2, 0)
    # recovery: after failover_timeout the first member is tried again
    fx.a.fail.clear()
    fx.clock.advance(29.9)
    result_of(fx.raise_(3))
    assert fx.received(fx.b)[-1] == ("3", "b:2")
    fx.clock.advance(0.1)
    result_of(fx.raise_(4))
    assert fx.received(fx.a) == [("4", "a:1")]
    assert len(fx.received(fx.b)) == 3


def test_failover_member_failing_again_after_timeout_is_skipped_again(fx):
    sub = fx.subscribe("virtual:FAILOVER a:1 b:2")
    fx.a.fail.add("a:1")
    result_of(fx.raise_(1))
    fx.clock.advance(30)
    result_of(fx.raise_(2))  # a tried again, fails again
    result_of(fx.raise_(3))  # skipped
    assert sub.address.members[0].subscription.failed == 2
    assert [v for v, _ in fx.received(fx.b)] == ["1", "2", "3"]


def test_a_failing_member_is_logged_once_per_spell_and_when_it_delivers_again(fx):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        fx.subscribe("virtual:FAILOVER a:1 b:2")
        fx.a.fail.add("a:1")
        for _ in range(3):
            result_of(fx.raise_(1))
            fx.clock.advance(30)  # tried again each time, failing again
        fx.a.fail.clear()
        result_of(fx.raise_(2))
        result_of(fx.raise_(3))
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("member") == "a:1"]
    assert lines == [
        "virtual:FAILOVER a:1 b:2: member a:1 failed (refused by test); skipped for 30.0 s",
        "virtual:FAILOVER a:1 b:2: member a:1 delivers again"]


def test_failover_asynchronous_member_failure(fx, logged_errors):
    fx.a.asynchronous = True
    fx.subscribe("virtual:FAILOVER a:1 b:2")
    fx.a.fail.add("a:1")
    d = fx.raise_(1)
    reports = []
    d.addCallback(reports.append)
    assert not reports and fx.received(fx.b) == []  # waiting for a's verdict
    fx.a.settle()
    assert fx.received(fx.b) == [("1", "b:2")]
    assert (reports[0].delivered, reports[0].failed) == (1, 0)


def test_failover_asynchronous_success_stops_there(fx):
    fx.a.asynchronous = True
    fx.subscribe("virtual:FAILOVER a:1 b:2")
    reports = []
    fx.raise_(1).addCallback(reports.append)
    fx.a.settle()
    assert fx.received(fx.a) == [("1", "a:1")] and fx.received(fx.b) == []
    assert reports[0].delivered == 1


def test_failover_member_deferred_errback_counts_as_failure(fx):
    class Broken(RecordingTransport):
        def deliver(self, notification, subscriptions):
            d = Deferred()
            reactor_calls.append(d)
            return d
    reactor_calls = []
    broken = Broken("a")
    fx.evi.transports["a"] = broken
    fx.subscribe("virtual:FAILOVER a:1 b:2")
    reports = []
    fx.raise_(1).addCallback(reports.append)
    reactor_calls[0].errback(ConnectionRefusedError("peer said no"))
    assert fx.received(fx.b) == [("1", "b:2")] and reports[0].delivered == 1


def test_all_members_failing_fails_the_virtual_delivery(fx):
    sub = fx.subscribe("virtual:FAILOVER a:1 b:2")
    fx.a.fail.add("a:1")
    fx.b.fail.add("b:2")
    report = result_of(fx.raise_(1))
    assert (report.delivered, report.failed) == (0, 1)
    assert report.errors == [("virtual:FAILOVER a:1 b:2",
                              "a:1: refused by test; b:2: refused by test")]
    assert sub.failed == 1 and "b:2: refused by test" in sub.last_error
    assert fx.stat("evi_virtual:notifications_failed") == 1
    # both skipped now, but still tried as a last resort: nothing is lost
    fx.b.fail.clear()
    report = result_of(fx.raise_(2))
    assert report.delivered == 1 and fx.received(fx.b) == [("2", "b:2")]


def test_failover_timeout_zero_never_skips():
    fx = Fixture(failover_timeout=0)
    sub = fx.subscribe("virtual:FAILOVER a:1 b:2")
    fx.a.fail.add("a:1")
    for n in range(3):
        result_of(fx.raise_(n))
    assert sub.address.members[0].subscription.failed == 3


def test_member_transport_bug_is_a_member_failure(fx, logged_errors):
    def boom(notification, subscriptions):
        raise RuntimeError("bug")
    fx.a.deliver = boom
    fx.subscribe("virtual:FAILOVER a:1 b:2")
    report = result_of(fx.raise_(1))
    assert report.delivered == 1 and fx.received(fx.b) == [("1", "b:2")]
    assert len(logged_errors.flush(RuntimeError)) == 1


# -- a tcp member (the real stream transport on a fake reactor) -------------------

class StreamFixture(Fixture):
    """
    L{Fixture} with a C{tcp} member transport on a L{MemoryReactorClock}
    (connects are completed or refused by the test) and a queue_timeout
    long enough that only fail_fast can explain a prompt failover.
    """

    def __init__(self, failover_timeout=30.0):
        super().__init__(failover_timeout)
        self.clock = MemoryReactorClock()
        self.virtual.clock = self.clock
        self.evi.clock = self.clock
        values = {k: c(d) for k, (d, c, _) in tcpTransport.options.items()}
        values.update(queue_timeout=60.0, reconnect_delay=1.0)
        self.tcp = StreamTransport("tcp", "tcp", "json", values, self.statistics, self.clock)
        self.evi.transports["tcp"] = self.tcp

    def refuse(self):
        _, _, factory, _, _ = self.clock.tcpClients[-1]
        factory.clientConnectionFailed(self.clock.connectors[-1], Failure(Refused()))


@pytest.fixture
def sfx():
    fixture = StreamFixture()
    yield fixture
    fixture.tcp.stopService()
    fixture.clock.advance(0)


@pytest.mark.parametrize("policy", ["FAILOVER", "ROUND-ROBIN"])
def test_refused_tcp_member_fails_over_on_the_refusal(sfx, policy):
    sub = sfx.subscribe(f"virtual:{policy} tcp:127.0.0.1:7000 b:2")
    d = sfx.raise_(1)
    assert not d.called and sfx.received(sfx.b) == []  # the connect's outcome first
    sfx.refuse()
    report = result_of(d)
    assert (report.delivered, report.failed) == (1, 0)
    assert sfx.received(sfx.b) == [("1", "b:2")]
    assert "refused" in sub.address.members[0].subscription.last_error
    assert sfx.stat("evi_virtual:failovers") == 1 and sfx.stat("evi_tcp:queued") == 0


def test_tcp_member_in_backoff_fails_over_at_once():
    sfx = StreamFixture(failover_timeout=0)  # never skipped: tried at every raise
    try:
        # a plain subscriber (of another event) keeps the destination backing off
        sfx.evi.publish("E_OTHER")
        result_of(sfx.evi.subscribe("E_OTHER", "tcp:127.0.0.1:7000"))
        plain = sfx.evi.raise_event("E_OTHER")
        sfx.refuse()
        sfx.subscribe("virtual:FAILOVER tcp:127.0.0.1:7000 b:2")
        for n in range(3):
            report = result_of(sfx.raise_(n))  # settled at once: nothing waits
            assert report.delivered == 1
        assert sfx.received(sfx.b) == [("0", "b:2"), ("1", "b:2"), ("2", "b:2")]
        # no extra connect for them, and the plain one still waits its turn
        assert len(sfx.clock.tcpClients) == 1 and not plain.called
    finally:
        sfx.tcp.stopService()
        sfx.clock.advance(0)


def test_last_member_to_try_is_not_asked_to_fail_fast(sfx):
    # nowhere else to go: it waits for the reconnect like a plain subscriber
    sfx.b.fail.add("b:2")
    sfx.subscribe("virtual:FAILOVER b:2 tcp:127.0.0.1:7000")
    d = sfx.raise_(1)
    sfx.refuse()
    assert not d.called
    sfx.clock.advance(1.0)  # reconnect_delay
    host, port, factory, _, _ = sfx.clock.tcpClients[-1]
    factory.buildProtocol(None).makeConnection(StringTransport())
    report = result_of(d)
    assert (report.delivered, report.failed) == (1, 0)


def test_parallel_tcp_member_waits_like_a_plain_subscriber(sfx):
    sfx.subscribe("virtual:PARALLEL tcp:127.0.0.1:7000 b:2")
    d = sfx.raise_(1)
    sfx.refuse()
    assert not d.called and sfx.received(sfx.b) == [("1", "b:2")]
    sfx.clock.advance(60)
    report = result_of(d)
    assert report.failed == 1 and "not sent within 60.0 s" in report.errors[0][1]


# -- ROUND-ROBIN ----------------------------------------------------------------------

def test_round_robin_cycles_in_declaration_order():
    fx = Fixture()
    c = RecordingTransport("c")
    fx.evi.transports["c"] = c
    fx.subscribe("virtual:ROUND-ROBIN a:1 b:2 c:3")
    for n in range(6):
        assert result_of(fx.raise_(n)).delivered == 1
    assert [v for v, _ in fx.received(fx.a)] == ["0", "3"]
    assert [v for v, _ in fx.received(fx.b)] == ["1", "4"]
    assert [v for v, _ in fx.received(c)] == ["2", "5"]


def test_round_robin_failed_member_does_not_swallow_its_share():
    fx = Fixture()
    c = RecordingTransport("c")
    fx.evi.transports["c"] = c
    sub = fx.subscribe("virtual:ROUND-ROBIN a:1 b:2 c:3")
    fx.b.fail.add("b:2")
    for n in range(7):
        assert result_of(fx.raise_(n)).delivered == 1  # every raise delivered (OS#1510)
    a = [int(v) for v, _ in fx.received(fx.a)]
    cc = [int(v) for v, _ in fx.received(c)]
    assert sorted(a + cc) == list(range(7))
    # raise 1 was b's: it went on to c; b is skipped since, a and c take turns
    assert a == [0, 3, 5] and cc == [1, 2, 4, 6]
    assert sub.address.members[1].subscription.failed == 1
    assert sub.sent == 7 and sub.failed == 0


def test_round_robin_cursor_moves_at_dispatch_for_raises_in_flight(fx):
    fx.a.asynchronous = True
    fx.b.asynchronous = True
    fx.subscribe("virtual:ROUND-ROBIN a:1 b:2")
    reports = []
    for n in range(4):
        fx.raise_(n).addCallback(reports.append)
    assert not reports
    fx.a.settle()
    fx.b.settle()
    assert [v for v, _ in fx.received(fx.a)] == ["0", "2"]
    assert [v for v, _ in fx.received(fx.b)] == ["1", "3"]
    assert [r.delivered for r in reports] == [1, 1, 1, 1]


def test_round_robin_asynchronous_failure_moves_on(fx):
    fx.a.asynchronous = True
    fx.subscribe("virtual:ROUND-ROBIN a:1 b:2")
    fx.a.fail.add("a:1")
    reports = []
    fx.raise_(0).addCallback(reports.append)
    fx.a.settle()
    assert fx.received(fx.b) == [("0", "b:2")] and reports[0].delivered == 1
    result_of(fx.raise_(1))   # b's turn
    result_of(fx.raise_(2))   # a's turn, but a is skipped
    assert [v for v, _ in fx.received(fx.b)] == ["0", "1", "2"]
    fx.clock.advance(30)
    fx.a.fail.clear()
    d = fx.raise_(3)           # cursor on a again, recovered
    fx.a.settle()
    assert result_of(d).delivered == 1 and fx.received(fx.a) == [("3", "a:1")]


def test_refresh_keeps_the_round_robin_cursor(fx):
    sub = fx.subscribe("virtual:ROUND-ROBIN a:1 b:2")
    result_of(fx.raise_(0))
    assert fx.subscribe("virtual:ROUND-ROBIN a:1 b:2") is sub
    result_of(fx.raise_(1))
    assert fx.received(fx.b) == [("1", "b:2")]


# -- PARALLEL ---------------------------------------------------------------------

def test_parallel_delivers_to_all_members(fx):
    sub = fx.subscribe("virtual:PARALLEL a:1 b:2 a:3")
    report = result_of(fx.raise_(1))
    assert (report.subscribers, report.delivered) == (1, 1)
    assert fx.received(fx.a) == [("1", "a:1"), ("1", "a:3")]
    assert fx.received(fx.b) == [("1", "b:2")]
    assert sub.sent == 1
    # members are counted by their own transports' subscriptions
    assert [m.subscription.sent for m in sub.address.members] == [1, 1, 1]


def test_parallel_first_failure_does_not_abort_the_rest(fx):
    sub = fx.subscribe("virtual:PARALLEL a:1 b:2")
    fx.a.fail.add("a:1")
    report = result_of(fx.raise_(1))
    assert fx.received(fx.b) == [("1", "b:2")]
    assert (report.delivered, report.failed) == (0, 1)
    assert sub.last_error == "a:1: refused by test"
    # PARALLEL never skips: a is tried at every raise
    result_of(fx.raise_(2))
    assert sub.address.members[0].subscription.failed == 2


def test_parallel_waits_for_asynchronous_members(fx):
    fx.b.asynchronous = True
    fx.b.fail.add("b:2")
    fx.subscribe("virtual:PARALLEL a:1 b:2")
    reports = []
    fx.raise_(1).addCallback(reports.append)
    assert fx.received(fx.a) == [("1", "a:1")] and not reports
    fx.b.settle()
    assert (reports[0].delivered, reports[0].failed) == (0, 1)


def test_virtual_and_plain_subscribers_together(fx):
    fx.subscribe("a:plain")
    fx.subscribe("virtual:FAILOVER b:1 a:2")
    fx.b.fail.add("b:1")
    report = result_of(fx.raise_("x"))
    assert (report.subscribers, report.delivered, report.failed) == (2, 2, 0)
    assert sorted(fx.received(fx.a)) == [("x", "a:2"), ("x", "a:plain")]


# -- end to end: a real server, real UDP and UNIX receivers -------------------------

VIRTUAL_INI = BASE_INI + """\
[transport:virtual]
failover_timeout = %s
"""


class MI:
    """
    JSON-RPC over the server's real UDP MI socket.
    """

    def __init__(self, server, collector):
        self.address = server.mi_udp_address()
        self.collector = collector
        self.ids = 0

    @pytest_twisted.inlineCallbacks
    def __call__(self, method, *params):
        self.ids += 1
        request = {"jsonrpc": "2.0", "method": method, "id": self.ids}
        if params:
            request["params"] = list(params)
        data, _ = yield self.collector.request(json.dumps(request).encode(), self.address)
        reply = json.loads(data)
        return reply.get("result", reply.get("error"))


@pytest.fixture
def unix_collectors(tmpdir_short):
    """
    Factory of L{DatagramCollector}s on UNIX datagram sockets in tmpdir_short.
    """
    ports = []

    def make(name):
        collector = DatagramCollector()
        path = str(tmpdir_short / name)
        ports.append(reactor.listenUNIXDatagram(path, collector))
        collector.path = path
        return collector
    yield make
    for port in ports:
        pytest_twisted.blockon(maybeDeferred(port.stopListening))


def udp_socket(collector):
    return "udp:%s:%d" % collector.address


def payload(n):
    return b'{"jsonrpc":"2.0","method":"E_TEST","params":{"n":%d}}' % n


@pytest_twisted.inlineCallbacks
def test_e2e_parallel_to_real_udp_receivers(server_factory, udp_collector):
    server = server_factory(VIRTUAL_INI % 30)
    mi = MI(server, udp_collector())
    r1, r2 = udp_collector(), udp_collector()
    sock = f"virtual:PARALLEL {udp_socket(r1)}  {udp_socket(r2)}"
    assert (yield mi("event_subscribe", "E_TEST", sock, 60)) == "OK"
    listing = yield mi("subscribers_list", "E_TEST")
    assert listing["Event"]["Subscribers"] == [
        {"socket": f"virtual:PARALLEL {udp_socket(r1)} {udp_socket(r2)}",
         "expire": 60, "ttl": 60}]
    assert (yield mi("raise_event", "E_TEST", '{"n":1}')) == "OK"
    for r in (r1, r2):
        data, _ = yield r.next()
        assert data == payload(1)
    stats = yield mi("get_statistics", ["evi_virtual:", "evi_udp:notifications_sent"])
    assert stats["evi_virtual:notifications_sent"] == 1
    assert stats["evi_udp:notifications_sent"] == 2


@pytest_twisted.inlineCallbacks
def test_e2e_bad_member_is_a_400_with_the_reason(server_factory, udp_collector):
    server = server_factory(VIRTUAL_INI % 30)
    mi = MI(server, udp_collector())
    error = yield mi("event_subscribe", "E_TEST", "virtual:FAILOVER udp:127.0.0.1:9 udp:x", 60)
    assert error["code"] == 400 and error["message"] == "Bad parameter value"
    assert "virtual member 2 'udp:x'" in error["data"]
    assert (yield mi("subscribers_list", "E_TEST")) == {"Event": {}}


@pytest_twisted.inlineCallbacks
def test_e2e_failover_from_missing_unix_path_then_recovery(server_factory, udp_collector,
                                                           unix_collectors, tmpdir_short):
    # a missing UNIX path fails at once; failover_timeout is short so the
    # test sees the recovery in real time (polled, with a deadline)
    server = server_factory(VIRTUAL_INI % 0.2)
    mi = MI(server, udp_collector())
    backup = udp_collector()
    primary_path = tmpdir_short / "primary.sock"
    sock = f"virtual:FAILOVER unix:{primary_path} {udp_socket(backup)}"
    assert (yield mi("event_subscribe", "E_TEST", sock, 60)) == "OK"
    for n in range(3):
        assert (yield mi("raise_event", "E_TEST", '{"n":%d}' % n)) == "OK"
        data, _ = yield backup.next()
        assert data == payload(n)
    stats = yield mi("get_statistics", ["evi_virtual:", "evi_unix:notifications_failed"])
    assert stats["evi_unix:notifications_failed"] >= 1
    assert stats["evi_virtual:notifications_sent"] == 3
    assert stats["evi_virtual:notifications_failed"] == 0
    # the primary comes up: after failover_timeout it takes the events again
    primary = unix_collectors("primary.sock")
    deadline = time.monotonic() + 5
    n = 3
    while not primary.received and time.monotonic() < deadline:
        yield deferLater(reactor, 0.05, lambda: None)
        assert (yield mi("raise_event", "E_TEST", '{"n":%d}' % n)) == "OK"
        n += 1
        yield deferLater(reactor, 0.01, lambda: None)
    assert primary.received, "the primary never got an event back"
    data, _ = yield primary.next()
    recovered_at = json.loads(data)["params"]["n"]
    # every event went to exactly one of them, none lost
    got = [recovered_at] + [json.loads(d)["params"]["n"] for d, _ in primary.received]
    while backup.received:
        got.append(json.loads(backup.received.pop(0)[0])["params"]["n"])
    assert sorted(got) == list(range(3, n))
    stats = yield mi("get_statistics", ["evi_virtual:notifications_sent",
                                        "evi_virtual:notifications_failed"])
    assert stats == {"evi_virtual:notifications_sent": n,
                     "evi_virtual:notifications_failed": 0}


@pytest_twisted.inlineCallbacks
def test_e2e_round_robin_with_a_failing_member(server_factory, udp_collector, tmpdir_short):
    server = server_factory(VIRTUAL_INI % 30)
    mi = MI(server, udp_collector())
    r1, r2 = udp_collector(), udp_collector()
    missing = tmpdir_short / "missing.sock"
    sock = f"virtual:ROUND-ROBIN {udp_socket(r1)} unix:{missing} {udp_socket(r2)}"
    assert (yield mi("event_subscribe", "E_TEST", sock, 60)) == "OK"
    for n in range(6):
        assert (yield mi("raise_event", "E_TEST", '{"n":%d}' % n)) == "OK"
    got = {"r1": [], "r2": []}
    seen = []
    deadline = time.monotonic() + 5
    while len(seen) < 6 and time.monotonic() < deadline:
        for name, r in (("r1", r1), ("r2", r2)):
            while r.received:
                got[name].append(json.loads(r.received.pop(0)[0])["params"]["n"])
                seen.append(got[name][-1])
        if len(seen) < 6:
            yield deferLater(reactor, 0.01, lambda: None)
    # r1, (missing -> r2), r2, r1, (missing skipped -> r2), r1 ...
    assert sorted(seen) == list(range(6))
    assert got == {"r1": [0, 3, 5], "r2": [1, 2, 4]}
    stats = yield mi("get_statistics", ["evi_virtual:", "evi_unix:notifications_failed"])
    assert stats["evi_unix:notifications_failed"] == 1
    assert stats["evi_virtual:notifications_sent"] == 6
    assert stats["evi_virtual:failovers"] == 1


@pytest_twisted.inlineCallbacks
def test_e2e_unsubscribe_and_expire_zero(server_factory, udp_collector):
    server = server_factory(VIRTUAL_INI % 30)
    mi = MI(server, udp_collector())
    r1 = udp_collector()
    sock = f"virtual:PARALLEL {udp_socket(r1)} {udp_socket(r1)}"
    assert (yield mi("event_subscribe", "E_TEST", sock, 60)) == "OK"
    assert (yield mi("event_subscribe", "E_TEST", sock, 0)) == "OK"
    assert (yield mi("subscribers_list", "E_TEST")) == {"Event": {}}


# -- end to end over TCP (the stream transport: reliable replies, timeouts) ------

class TCPPeer:
    """
    A TCP receiver in the test's reactor that parses the back-to-back JSON
    objects; when C{reply}, it answers each one with a JSON-RPC result
    (the stream transport's reliable mode), else it never answers.
    """

    def __init__(self, reply):
        self.reply = reply
        self.received = []
        self.protocols = []
        self.port = None


def tcp_peer_protocol(peer):
    from twisted.internet.protocol import Protocol

    class PeerProtocol(Protocol):
        def connectionMade(self):
            self.buffer = ""
            self.lost = Deferred()
            peer.protocols.append(self)

        def dataReceived(self, data):
            self.buffer += data.decode()
            decoder = json.JSONDecoder()
            while self.buffer:
                try:
                    obj, end = decoder.raw_decode(self.buffer)
                except ValueError:
                    return
                self.buffer = self.buffer[end:]
                peer.received.append(obj)
                if peer.reply and "id" in obj:
                    self.transport.write(json.dumps(
                        {"jsonrpc": "2.0", "result": "OK", "id": obj["id"]}).encode())

        def connectionLost(self, reason):
            self.lost.callback(None)
    return PeerProtocol


@pytest.fixture
def tcp_peers():
    from twisted.internet.protocol import Factory
    peers = []

    def make(reply=True, port=0):
        peer = TCPPeer(reply)
        peer.port = reactor.listenTCP(port, Factory.forProtocol(tcp_peer_protocol(peer)),
                                      interface="127.0.0.1")
        peer.address = peer.port.getHost().port
        peers.append(peer)
        return peer
    yield make
    for peer in peers:
        pytest_twisted.blockon(maybeDeferred(peer.port.stopListening))
        for protocol in peer.protocols:
            if protocol.transport.connected:
                protocol.transport.abortConnection()
            pytest_twisted.blockon(protocol.lost)


def free_tcp_port():
    """
    A loopback port nothing listens on (connections to it are refused).
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


TCP_INI = BASE_INI + """\
[transport:virtual]
failover_timeout = %s
[transport:tcp]
reliable = yes
timeout = 0.3
retries = 1
connect_timeout = 1
queue_timeout = 0.3
reconnect_delay = 0.05
reconnect_max_delay = 0.1
"""


@pytest_twisted.inlineCallbacks
def wait_for(predicate, what, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        yield deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.inlineCallbacks
def test_e2e_tcp_failover_when_first_member_refuses_then_recovers(
        server_factory, udp_collector, tcp_peers):
    server = server_factory(TCP_INI % 0.5)
    mi = MI(server, udp_collector())
    backup = udp_collector()
    port = free_tcp_port()
    sock = f"virtual:FAILOVER tcp:127.0.0.1:{port} {udp_socket(backup)}"
    assert (yield mi("event_subscribe", "E_TEST", sock, 60)) == "OK"
    # refused: the tcp member fails on the refusal (fail_fast), then UDP
    report = yield server.evi.raise_event("E_TEST", {"n": 0})
    assert (report.delivered, report.failed) == (1, 0)
    data, _ = yield backup.next()
    assert data == payload(0)
    # skipped for failover_timeout: straight to UDP, no wait
    report = yield server.evi.raise_event("E_TEST", {"n": 1})
    data, _ = yield backup.next()
    assert data == payload(1)
    stats = yield mi("get_statistics", ["evi_tcp:notifications_failed", "evi_virtual:"])
    assert stats["evi_tcp:notifications_failed"] >= 1
    assert stats["evi_virtual:notifications_sent"] == 2
    # the TCP receiver comes up on that port: after failover_timeout it is
    # the first member again and gets the events
    peer = tcp_peers(reply=True, port=port)
    n = 2
    while not peer.received:
        report = yield server.evi.raise_event("E_TEST", {"n": n})
        assert report.delivered == 1
        n += 1
        yield deferLater(reactor, 0.05, lambda: None)
        assert n < 200, "the TCP member never recovered"
    got = [obj["params"]["n"] for obj in peer.received]
    assert got == [n - 1]
    while backup.received:
        got.append(json.loads(backup.received.pop(0)[0])["params"]["n"])
    assert sorted(got) == list(range(2, n))


@pytest_twisted.inlineCallbacks
def test_e2e_tcp_failover_when_first_member_times_out(server_factory, udp_collector,
                                                      tcp_peers):
    server = server_factory(TCP_INI % 30)
    mi = MI(server, udp_collector())
    hanging = tcp_peers(reply=False)
    backup = udp_collector()
    plain = udp_collector()
    assert (yield mi("event_subscribe", "E_TEST", udp_socket(plain), 60)) == "OK"
    sock = f"virtual:FAILOVER tcp:127.0.0.1:{hanging.address} {udp_socket(backup)}"
    assert (yield mi("event_subscribe", "E_TEST", sock, 60)) == "OK"
    started = time.monotonic()
    d = server.evi.raise_event("E_TEST", {"n": 7})
    # another subscriber of the same event is not held up by the hanging one
    data, _ = yield plain.next()
    assert data == payload(7)
    assert not backup.received
    report = yield d
    assert time.monotonic() - started >= 0.25  # the reply timeout, then failover
    assert (report.subscribers, report.delivered, report.failed) == (2, 2, 0)
    data, _ = yield backup.next()
    assert data == payload(7)
    # the hanging peer did receive it, with an id, and never answered
    yield wait_for(lambda: hanging.received, "the hanging peer's copy")
    assert hanging.received[0]["method"] == "E_TEST" and "id" in hanging.received[0]
    stats = yield mi("get_statistics", ["evi_tcp:notifications_failed", "evi_virtual:"])
    assert stats["evi_tcp:notifications_failed"] == 1
    assert stats["evi_virtual:notifications_sent"] == 1
    assert stats["evi_virtual:failovers"] == 1


@pytest_twisted.inlineCallbacks
def test_e2e_tcp_round_robin_and_parallel(server_factory, udp_collector, tcp_peers):
    server = server_factory(TCP_INI % 30)
    mi = MI(server, udp_collector())
    p1, p2 = tcp_peers(), tcp_peers()
    rr = f"virtual:ROUND-ROBIN tcp:127.0.0.1:{p1.address} tcp:127.0.0.1:{p2.address}"
    assert (yield mi("event_subscribe", "E_TEST", rr, 60)) == "OK"
    for n in range(4):
        report = yield server.evi.raise_event("E_TEST", {"n": n})
        assert report.delivered == 1  # a reliable reply came back
    assert [o["params"]["n"] for o in p1.received] == [0, 2]
    assert [o["params"]["n"] for o in p2.received] == [1, 3]
    assert (yield mi("event_subscribe", "E_TEST", rr, 0)) == "OK"
    r = udp_collector()
    par = f"virtual:PARALLEL tcp:127.0.0.1:{p1.address} {udp_socket(r)}"
    assert (yield mi("event_subscribe", "E_TEST", par, 60)) == "OK"
    report = yield server.evi.raise_event("E_TEST", {"n": 9})
    assert report.delivered == 1
    assert p1.received[-1]["params"] == {"n": 9}
    data, _ = yield r.next()
    assert data == payload(9)


REFUSED_INI = BASE_INI + """\
[transport:virtual]
failover_timeout = %s
[transport:tcp]
queue_timeout = 60
reconnect_delay = 30
"""


@pytest_twisted.inlineCallbacks
def test_e2e_failover_from_a_refused_tcp_member_is_immediate(server_factory, udp_collector):
    # A queue_timeout of 60 s: the event reaching the UDP member within the
    # few seconds of next()'s deadline proves the tcp member failed on the
    # refusal itself, not when its queue entry expired.
    server = server_factory(REFUSED_INI % 30)
    backup = udp_collector()
    port = free_tcp_port()
    sock = f"virtual:FAILOVER tcp:127.0.0.1:{port} {udp_socket(backup)}"
    sub = yield server.evi.subscribe("E_TEST", sock)
    d = server.evi.raise_event("E_TEST", {"n": 0})
    data, _ = yield backup.next(timeout=5.0)
    assert data == payload(0)
    report = yield d
    assert (report.delivered, report.failed) == (1, 0)
    tcp_member = sub.address.members[0].subscription
    assert tcp_member.failed == 1 and "refused" in tcp_member.last_error.lower()
    assert server.statistics.value("evi_virtual:failovers") == 1
    assert server.statistics.value("evi_tcp:queued") == 0  # nothing left waiting


@pytest_twisted.inlineCallbacks
def test_e2e_refused_member_in_backoff_fails_at_once_plain_subscriber_waits(
        server_factory, udp_collector):
    # failover_timeout 0: the tcp member is tried at every raise. A plain
    # subscriber of the same closed port keeps the destination in backoff
    # (its notifications wait, queue_timeout 60 s, reconnect in 30 s).
    server = server_factory(REFUSED_INI % 0)
    backup = udp_collector()
    port = free_tcp_port()
    plain = yield server.evi.subscribe("E_OTHER", f"tcp:127.0.0.1:{port}")
    waiting = server.evi.raise_event("E_OTHER")
    sock = f"virtual:FAILOVER tcp:127.0.0.1:{port} {udp_socket(backup)}"
    sub = yield server.evi.subscribe("E_TEST", sock)
    for n in range(3):
        report = yield server.evi.raise_event("E_TEST", {"n": n})
        assert report.delivered == 1
        data, _ = yield backup.next(timeout=5.0)
        assert data == payload(n)
    assert sub.address.members[0].subscription.failed == 3
    # the plain subscriber: still queued, retried with backoff, not failed
    assert not waiting.called
    assert (plain.sent, plain.failed) == (0, 0)
    assert server.statistics.value("evi_tcp:queued") == 1


@pytest_twisted.inlineCallbacks
def test_e2e_failover_from_a_refused_xmlrpc_member_is_immediate(server_factory, udp_collector):
    # each XML-RPC call opens its own connection, whose refusal fails the
    # call at once: no fail_fast needed (xmlrpc timeout 60 s to prove it)
    server = server_factory(VIRTUAL_INI % 30 + "[transport:xmlrpc]\ntimeout = 60\n")
    backup = udp_collector()
    port = free_tcp_port()
    sock = f"virtual:FAILOVER xmlrpc:127.0.0.1:{port}:notify {udp_socket(backup)}"
    sub = yield server.evi.subscribe("E_TEST", sock)
    d = server.evi.raise_event("E_TEST", {"n": 0})
    data, _ = yield backup.next(timeout=5.0)
    assert data == payload(0)
    report = yield d
    assert (report.delivered, report.failed) == (1, 0)
    assert "refused" in sub.address.members[0].subscription.last_error
