"""
evsrv as a subscriber of OpenSIPS proxies ([upstream:NAME]): subscribe,
refresh, restart detection, a proxy that goes down and comes back,
unsubscribe at stop, the MI clients (UDP and HTTP), the configuration,
and one end-to-end run: a real evsrv process takes the events of a fake
OpenSIPS (tests/opensips_fake.py, written from the spec) over
event_datagram and event_stream (reliable) and delivers them to its own
subscribers through its udp and tcp transports, across a proxy restart.
"""

import json
import os
import signal

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread

from evsrv.config import ConfigError, parse_config
from evsrv.ingest import (DatagramMIClient, HTTPMIClient, MIErrorReply, MIUnavailable,
                          Upstream)
from evsrv.ingest.upstream import RETRYING, STOPPED, SUBSCRIBED, SUBSCRIBING
from evsrv.server import transport_factories
from evsrv.util.statistics import Statistics
from tests.conftest import until
from tests.opensips_fake import FakeOpenSIPS

SOCKET = "udp:127.0.0.1:9999"


@pytest.fixture
def fake():
    """
    A fake proxy on a real UDP MI, its time a task.Clock.
    """
    clock = Clock()
    proxy = FakeOpenSIPS(clock, events=["E_PIKE_BLOCKED", "E_DLG_STATE_CHANGED"])
    proxy.listen()
    yield proxy
    pytest_twisted.blockon(proxy.close())


@pytest.fixture
def upstream(fake):
    made = []

    def make(events=("E_PIKE_BLOCKED",), **settings):
        settings.setdefault("expire", 120)
        settings.setdefault("check_interval", 10)
        client = DatagramMIClient(reactor, "127.0.0.1", fake.mi_port, 2, clock=fake.clock)
        up = Upstream("p1", client, events, SOCKET, fake.clock, Statistics(), **settings)
        made.append(up)
        return up
    yield make
    for up in made:
        pytest_twisted.blockon(up.stop())


def mi_calls(fake, method):
    return [params for m, params in fake.requests if m == method]


@pytest_twisted.inlineCallbacks
def test_subscribes_at_start_with_uptime_first(fake, upstream):
    up = upstream(events=("E_PIKE_BLOCKED", "E_DLG_STATE_CHANGED"))
    assert up.state == STOPPED
    up.start()
    assert up.state == SUBSCRIBING
    yield until(lambda: up.state == SUBSCRIBED)
    assert [m for m, _ in fake.requests] == ["uptime", "event_subscribe", "event_subscribe"]
    assert fake.subscribers("E_PIKE_BLOCKED") == [(SOCKET, 120)]
    assert fake.subscribers("E_DLG_STATE_CHANGED") == [(SOCKET, 120)]
    assert up.subscribes.value == 2 and up.errors.value == 0


@pytest_twisted.inlineCallbacks
def test_checks_then_refreshes_before_expiry(fake, upstream):
    up = upstream(expire=30, check_interval=10)
    up.start()
    yield until(lambda: up.state == SUBSCRIBED)
    fake.clock.advance(10)  # a check: uptime and subscribers_list
    yield until(lambda: len(mi_calls(fake, "subscribers_list")) == 1)
    assert mi_calls(fake, "subscribers_list") == [["E_PIKE_BLOCKED", SOCKET]]
    yield until(lambda: up._timer is not None)
    fake.clock.advance(10)  # at 20 = 2/3 of 30: the refresh
    yield until(lambda: len(mi_calls(fake, "event_subscribe")) == 2)
    yield until(lambda: up._timer is not None)
    assert up.subscribes.value == 2
    # the proxy never let it lapse
    fake.clock.advance(15)
    assert fake.subscribers("E_PIKE_BLOCKED") == [(SOCKET, 30)]


@pytest_twisted.inlineCallbacks
def test_a_restart_is_noticed_by_uptime_and_subscribed_again(fake, upstream):
    up = upstream()
    up.start()
    yield until(lambda: up.state == SUBSCRIBED)
    fake.clock.advance(5)
    fake.restart()  # no downtime seen: only the start time tells
    assert fake.subscribers("E_PIKE_BLOCKED") == []
    fake.clock.advance(5)
    yield until(lambda: up.restarts.value == 1)
    yield until(lambda: fake.subscribers("E_PIKE_BLOCKED") == [(SOCKET, 120)])
    assert up.state == SUBSCRIBED


@pytest_twisted.inlineCallbacks
def test_a_restart_is_noticed_by_the_uptime_number_alone(fake, upstream):
    up = upstream()
    up.start()
    yield until(lambda: up.state == SUBSCRIBED)
    fake.clock.advance(10)
    yield until(lambda: mi_calls(fake, "subscribers_list") and up._timer is not None)
    since = fake.started_wall
    fake.restart()
    fake.started_wall = since  # an MI whose "Up since" does not change
    fake.clock.advance(10)
    yield until(lambda: up.restarts.value == 1)
    yield until(lambda: fake.subscribers("E_PIKE_BLOCKED") == [(SOCKET, 120)])


@pytest_twisted.inlineCallbacks
def test_a_vanished_subscription_is_subscribed_again(fake, upstream):
    up = upstream()
    up.start()
    yield until(lambda: up.state == SUBSCRIBED)
    fake.subscriptions["E_PIKE_BLOCKED"] = []  # someone unsubscribed us
    fake.clock.advance(10)
    yield until(lambda: fake.subscribers("E_PIKE_BLOCKED") == [(SOCKET, 120)])
    assert up.restarts.value == 1


@pytest_twisted.inlineCallbacks
def test_a_proxy_that_is_down_is_retried_with_backoff_until_it_is_back(fake, upstream):
    port = fake.mi_port
    yield fake.stop_listening()
    up = upstream(retry_min=1, retry_max=4)
    up.start()
    yield until(lambda: up.state == RETRYING)  # the kernel said refused
    assert "refused" in up.last_error and up.errors.value == 1
    delays = []
    for _ in range(4):
        delays.append(up._timer.getTime() - fake.clock.seconds())
        errors = up.errors.value
        fake.clock.advance(delays[-1])
        yield until(lambda: up.errors.value == errors + 1)
    assert delays == [1, 2, 4, 4]
    fake.listen(port)  # back
    fake.clock.advance(up._timer.getTime() - fake.clock.seconds())
    yield until(lambda: up.state == SUBSCRIBED)
    assert fake.subscribers("E_PIKE_BLOCKED") == [(SOCKET, 120)]
    assert up._timer.getTime() - fake.clock.seconds() == 10  # checks again, no backoff


@pytest_twisted.inlineCallbacks
def test_a_restart_while_down_is_counted_once_it_answers(fake, upstream):
    up = upstream(retry_min=1)
    up.start()
    yield until(lambda: up.state == SUBSCRIBED)
    port = fake.mi_port
    yield fake.stop_listening()
    fake.clock.advance(10)
    yield until(lambda: up.state == RETRYING)
    fake.restart()
    fake.listen(port)
    fake.clock.advance(1)
    yield until(lambda: up.state == SUBSCRIBED)
    assert up.restarts.value == 1
    assert fake.subscribers("E_PIKE_BLOCKED") == [(SOCKET, 120)]


@pytest_twisted.inlineCallbacks
def test_a_proxy_that_does_not_answer_times_out(fake, upstream):
    fake.mi_request = lambda data: None  # reads, never answers
    up = upstream()
    up.start()
    yield deferLater(reactor, 0.05, lambda: None)
    assert up.state == SUBSCRIBING
    fake.clock.advance(2)
    assert up.state == RETRYING and up.last_error == "subscribe: no answer in 2 s"


@pytest_twisted.inlineCallbacks
def test_an_error_reply_is_retried(fake, upstream):
    up = upstream(events=("E_NOT_AT_THIS_PROXY",))
    up.start()
    yield until(lambda: up.state == RETRYING)
    assert up.last_error == "subscribe: 400 Bad parameter value"


@pytest_twisted.inlineCallbacks
def test_stop_unsubscribes_with_expire_0(fake, upstream):
    up = upstream(events=("E_PIKE_BLOCKED", "E_DLG_STATE_CHANGED"))
    up.start()
    yield until(lambda: up.state == SUBSCRIBED)
    yield up.stop()
    assert up.state == STOPPED and up._timer is None
    assert mi_calls(fake, "event_subscribe")[-2:] == [
        ["E_PIKE_BLOCKED", SOCKET, 0], ["E_DLG_STATE_CHANGED", SOCKET, 0]]
    fake.clock.advance(1)  # OpenSIPS drops an expire 0 from the next second
    assert fake.subscribers("E_PIKE_BLOCKED") == fake.subscribers("E_DLG_STATE_CHANGED") == []


@pytest_twisted.inlineCallbacks
def test_stop_while_the_proxy_is_down_does_not_wait(fake, upstream):
    yield fake.stop_listening()
    up = upstream()
    up.start()
    yield until(lambda: up.state == RETRYING)
    yield up.stop()  # never subscribed: nothing to remove, nothing waited for
    assert up.state == STOPPED and mi_calls(fake, "event_subscribe") == []


@pytest_twisted.inlineCallbacks
def test_datagram_client_ignores_late_and_foreign_answers(fake):
    client = DatagramMIClient(reactor, "127.0.0.1", fake.mi_port, 2, clock=fake.clock)
    try:
        result = yield client.call("uptime")
        assert result["Up time"] == "0 [sec]"
        client._received(b'{"jsonrpc":"2.0","result":"x","id":999}')  # no such call: ignored
        with pytest.raises(MIErrorReply) as error:
            yield client.call("no_such_command")
        assert (error.value.code, error.value.message) == (-32601, "Method not found")
        fake.mi_request = lambda data: b"400 Parse_error"
        with pytest.raises(MIUnavailable, match="not a JSON-RPC answer"):
            yield client.call("uptime")
    finally:
        yield client.close()
    with pytest.raises(MIUnavailable, match="closed"):
        yield client.call("uptime")


# -- an evsrv as the upstream, over its HTTP MI -------------------------------------

@pytest_twisted.inlineCallbacks
def test_http_mi_client_against_an_evsrv(server_factory):
    proxy = server_factory("[mi]\nudp = 127.0.0.1:0\n[events]\npublish = E_TEST\n"
                           "[http]\nlisten = 127.0.0.1:0\n")
    # the proxy's uptime counts real seconds: so does this upstream's clock
    client = HTTPMIClient(reactor, proxy.http_mi_url(), 2)
    up = Upstream("hub", client, ["E_TEST"], SOCKET, reactor, Statistics(), expire=60,
                  check_interval=0.05)
    up.start()
    try:
        yield until(lambda: up.state == SUBSCRIBED)
        [sub] = proxy.evi.subscribers(proxy.evi.event("E_TEST"))
        assert (sub.socket, sub.expire) == (SOCKET, 60)
        checks = proxy.statistics.value("mi:requests")
        yield until(lambda: proxy.statistics.value("mi:requests") >= checks + 6)
        assert up.restarts.value == 0 and up.state == SUBSCRIBED
        with pytest.raises(MIErrorReply, match="404"):
            yield client.call("subscribers_list", ["E_TEST", "udp:127.0.0.1:1"])
    finally:
        yield up.stop()
    assert proxy.evi.subscribers(proxy.evi.event("E_TEST")) == []  # evsrv removes at once


@pytest_twisted.inlineCallbacks
def test_http_mi_client_down_and_bounded():
    client = HTTPMIClient(reactor, "http://127.0.0.1:1/mi", 2)
    with pytest.raises(MIUnavailable):
        yield client.call("uptime")
    yield client.close()


# -- the configuration ----------------------------------------------------------------

def config(text, tmp_path):
    return parse_config(text, "x.ini", tmp_path, transport_factories())


def test_upstream_sections(tmp_path):
    c = config("[ingest]\nudp = 127.0.0.1:7000\ntcp = 127.0.0.1:7001\n"
               "[upstream:edge-1]\nmi = udp:proxy1.example:8080\nevents = E_PIKE_BLOCKED\n"
               "[upstream:edge-2]\nmi = http://10.0.0.2:8888/mi\nevents = E_A, E_B\n"
               "socket = tcp\nexpire = 300\n"
               "[upstream:edge-3]\nmi = udp:10.0.0.3:8080\nevents = E_A\n"
               "socket = udp:192.0.2.1:7000\n", tmp_path)
    assert list(c.upstreams) == ["edge-1", "edge-2", "edge-3"]
    one, two, three = c.upstreams.values()
    assert (one.mi, one.events, one.socket, one.kind, one.expire) == (
        ("udp", "proxy1.example", 8080), ["E_PIKE_BLOCKED"], "", "udp", 120)
    assert (two.mi, two.socket, two.kind, two.expire) == (
        ("http", "http://10.0.0.2:8888/mi"), "", "tcp", 300)
    assert (three.socket, three.kind) == ("udp:192.0.2.1:7000", "udp")


@pytest.mark.parametrize("text, message", [
    ("[upstream:p]\nevents = E_A\n", r"\[upstream:p\] mi: required"),
    ("[upstream:p]\nmi = udp:h:1\n", r"\[upstream:p\] events: required"),
    ("[upstream:p]\nmi = tcp:h:1\nevents = E_A\n", "expected udp:HOST:PORT or http"),
    ("[upstream:p q]\nmi = udp:h:1\nevents = E_A\n", "upstream name"),
    ("[upstream:p]\nmi = udp:h:1\nevents = E_A\n", r"socket: no \[ingest\] listener"),
    ("[ingest]\ntcp = 127.0.0.1:1\n[upstream:p]\nmi = udp:h:1\nevents = E_A\nsocket = udp\n",
     r"no \[ingest\] udp listener"),
    ("[ingest]\nudp = 0.0.0.0:7000\n[upstream:p]\nmi = udp:h:1\nevents = E_A\n",
     "give the address"),
    ("[ingest]\nudp = [::1]:7000\n[upstream:p]\nmi = udp:h:1\nevents = E_A\n",
     "give the address"),
    ("[ingest]\nudp = 127.0.0.1:1\n[upstream:p]\nmi = udp:h:1\nevents = E_A\n"
     "socket = udp:[::1]:7000\n", "IPv6"),
    ("[ingest]\nudp = 127.0.0.1:1\nevents = E_PIKE_*\n[upstream:p]\nmi = udp:h:1\n"
     "events = E_A\n", r"E_A would be refused by \[ingest\] events"),
    ("[ingest]\nudp = 127.0.0.1:1\n[upstream:p]\nmi = udp:h:1\nevents = E_A\n"
     "retry_min = 5\nretry_max = 1\n", "retry_min: must not be above retry_max"),
    ("[ingest]\nevents = E_$\n", "bad pattern"),
])
def test_bad_upstream_sections(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        config(text, tmp_path)


# -- in-process: the server builds, lists and stops them ---------------------------

@pytest_twisted.inlineCallbacks
def test_server_statistics_mi_command_and_unsubscribe_at_stop(server_factory):
    clock = reactor
    proxy = FakeOpenSIPS(clock, events=["E_PIKE_BLOCKED"])
    proxy.listen()
    try:
        server = server_factory(
            "[mi]\nudp = 127.0.0.1:0\n[ingest]\nudp = 127.0.0.1:0\n"
            f"[upstream:p1]\nmi = udp:127.0.0.1:{proxy.mi_port}\nevents = E_PIKE_BLOCKED\n")
        assert server.evi.event("E_PIKE_BLOCKED") is not None  # published at start
        yield until(lambda: server.statistics.value("upstream:p1:state") == SUBSCRIBED)
        host, port = server.ingest.address("udp")[1:]
        assert proxy.subscribers("E_PIKE_BLOCKED") == [(f"udp:{host}:{port}", 120)]
        assert {k: v for k, v in server.statistics.get(["upstream:"]).items()} == {
            "upstream:p1:errors": 0, "upstream:p1:restarts": 0, "upstream:p1:state": 2,
            "upstream:p1:subscribes": 1}
        from evsrv.http.metrics import EvsrvCollector  # the /metrics families
        families = {f.name: f for f in EvsrvCollector(server.statistics, server.evi,
                                                      server.controller).collect()}
        [sample] = families["evsrv_upstream_state"].samples
        assert (sample.labels, sample.value) == ({"destination": "p1"}, 2)
        [sample] = families["evsrv_upstream_subscribes"].samples
        assert (sample.name, sample.labels, sample.value) == (
            "evsrv_upstream_subscribes_total", {"destination": "p1"}, 1)
        reply = yield server.controller.execute("upstreams", None)
        [row] = reply["Upstreams"]
        assert (row["name"], row["state"], row["mi"], row["last_error"]) == (
            "p1", "subscribed", f"udp:127.0.0.1:{proxy.mi_port}", None)
        yield server.stopService()
        yield until(lambda: proxy.requests[-1] == ("event_subscribe", [
            "E_PIKE_BLOCKED", f"udp:{host}:{port}", 0]))
    finally:
        yield proxy.close()


# -- end to end: a real evsrv process, a fake proxy --------------------------------------

class _Collector(Protocol):
    def __init__(self, store):
        self.store = store

    def dataReceived(self, data):
        self.store.append(data)


def tcp_listener():
    received = []
    factory = Factory.forProtocol(lambda: _Collector(received))
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port, received


def mi(collector, address, method, params):
    request = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
    return collector.request(request.encode(), address)


@pytest_twisted.inlineCallbacks
def test_end_to_end_a_real_evsrv_takes_a_proxys_events_across_a_restart(
        server_process, udp_collector):
    proxy = FakeOpenSIPS(reactor, events=["E_PIKE_BLOCKED", "E_DLG_STATE_CHANGED"],
                         reliable=True)
    mi_port = proxy.listen()
    tcp_port, tcp_received = tcp_listener()
    proc = None
    try:
        # the process blocks nothing of ours: it starts while our reactor waits
        proc = yield deferToThreadStart(server_process, f"""\
[mi]
udp = 127.0.0.1:0
[ingest]
udp = 127.0.0.1:0
tcp = 127.0.0.1:0
[upstream:proxy1]
mi = udp:127.0.0.1:{mi_port}
events = E_PIKE_BLOCKED
socket = udp
expire = 20
check_interval = 0.3
retry_min = 0.2
retry_max = 0.5
[upstream:proxy1-stream]
mi = udp:127.0.0.1:{mi_port}
events = E_DLG_STATE_CHANGED
socket = tcp
expire = 20
check_interval = 0.3
retry_min = 0.2
retry_max = 0.5
[store]
backend = none
""")
        yield until(lambda: proxy.subscribers("E_PIKE_BLOCKED")
                    and proxy.subscribers("E_DLG_STATE_CHANGED"), timeout=10)
        [(udp_socket, _)] = proxy.subscribers("E_PIKE_BLOCKED")
        [(tcp_socket, _)] = proxy.subscribers("E_DLG_STATE_CHANGED")
        assert udp_socket.startswith("udp:127.0.0.1:") and tcp_socket.startswith("tcp:")

        # evsrv's own subscribers: one through udp, one through tcp
        collector = udp_collector()
        local = "udp:%s:%d" % collector.address
        for event in ("E_PIKE_BLOCKED", "E_DLG_STATE_CHANGED"):
            reply, _ = yield mi(collector, proc.udp, "event_subscribe", [event, local, 60])
            assert reply == b'{"jsonrpc":"2.0","result":"OK","id":1}'
        reply, _ = yield mi(collector, proc.udp, "event_subscribe",
                            ["E_DLG_STATE_CHANGED", f"tcp:127.0.0.1:{tcp_port.getHost().port}",
                             60])
        assert reply == b'{"jsonrpc":"2.0","result":"OK","id":1}'

        pike = b'{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"1.2.3.4"}}'
        dialog = (b'{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"id":"1","db_id":'
                  b'"2","hash_entry":3,"hash_id":4,"callid":"c@h","from_tag":"f",'
                  b'"to_tag":"t","old_state":1,"new_state":4}}')
        assert proxy.raise_event("E_PIKE_BLOCKED", {"ip": "1.2.3.4"}) == 1
        data, _ = yield collector.next()
        assert data == pike
        params = json.loads(dialog)["params"]
        assert proxy.raise_event("E_DLG_STATE_CHANGED", params) == 1
        data, _ = yield collector.next()
        assert data == dialog
        yield until(lambda: b"".join(tcp_received) == dialog)
        # reliable mode: evsrv acknowledged the event_stream request
        stream = proxy.stream(*_host_port(tcp_socket))
        yield until(lambda: stream.replies == b'{"jsonrpc":"2.0","result":"OK","id":1}')

        # the proxy restarts: its MI is gone for a moment, then every
        # subscription is lost and its start time is new
        yield proxy.stop_listening()
        yield stream.cut()
        yield deferLater(reactor, 0.6, lambda: None)
        proxy.restart()
        proxy.listen(mi_port)
        yield until(lambda: proxy.subscribers("E_PIKE_BLOCKED")
                    and proxy.subscribers("E_DLG_STATE_CHANGED"), timeout=10)
        proxy.raise_event("E_PIKE_BLOCKED", {"ip": "5.6.7.8"})
        data, _ = yield collector.next()
        assert data == pike.replace(b"1.2.3.4", b"5.6.7.8")
        proxy.raise_event("E_DLG_STATE_CHANGED", dict(params, new_state=5))
        data, _ = yield collector.next()
        assert data == dialog.replace(b'"new_state":4', b'"new_state":5')
        yield until(lambda: stream.replies.endswith(b'"id":2}'))

        # a clean stop unsubscribes (expire 0)
        os.kill(proc.pid, signal.SIGTERM)
        yield until(lambda: proc.process.poll() is not None, timeout=15)
        assert proc.process.returncode == 0, proc.log()
        unsubscribed = [params for m, params in proxy.requests
                        if m == "event_subscribe" and params[2] == 0]
        assert sorted(p[0] for p in unsubscribed) == ["E_DLG_STATE_CHANGED", "E_PIKE_BLOCKED"]
        log = proc.log()
        assert "upstream proxy1: unsubscribed" in log and " [E] " not in log
        # noticed when it answered again, or (no check fell in its downtime) by a check
        assert log.count("the proxy restarted") == 2
    finally:
        if proc is not None and proc.process.poll() is None:
            proc.stop()
        yield tcp_port.stopListening()
        yield proxy.close()


def _host_port(sock):
    _, host, port = sock.split(":")
    return host, int(port)


def deferToThreadStart(start, text):
    """
    Start the process in a thread (ServerProcess waits for its start-up
    line), so that the fake proxy in this reactor answers its MI meanwhile.
    """
    return deferToThread(start, text)
