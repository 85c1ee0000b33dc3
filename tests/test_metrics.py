"""
Prometheus metrics on the HTTP site: scraped over HTTP from a real
in-process server and parsed with prometheus-client's own parser, with the
counters moving as events are raised to real UDP peers.
"""

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from evsrv.http.metrics import EvsrvCollector, metric_name
from evsrv.mi.controller import Command, MIController, MIError
from evsrv.util.statistics import Statistics
from evsrv.testing import memory_evi
from tests.test_http_mi import HTTP_INI, Client, rpc


@pytest.fixture
def client():
    c = Client()
    yield c
    pytest_twisted.blockon(c.pool.closeCachedConnections())


def samples(text):
    """
    C{{(sample name, frozenset of labels): value}} and C{{family: type}}.
    """
    values, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values, types


@pytest_twisted.inlineCallbacks
def scrape(server, client):
    response, data = yield client.request(b"GET", server.http_url("/metrics"))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    return samples(data.decode())


@pytest_twisted.inlineCallbacks
def test_counters_move_as_events_are_raised(server_factory, client, udp_collector):
    server = server_factory(HTTP_INI)
    peer = udp_collector()
    yield server.evi.subscribe("E_TEST", "udp:%s:%d" % peer.address, 3600)
    yield server.evi.subscribe("E_TEST", "unix:/nonexistent/evsrv-test.sock", 3600)
    before, types = yield scrape(server, client)
    assert types["evsrv_events_raised"] == "counter"
    assert types["evsrv_subscriptions"] == "gauge"
    assert before[("evsrv_events_raised_total", frozenset({("event", "E_TEST")}))] == 0
    assert before[("evsrv_subscriptions", frozenset({("event", "E_TEST")}))] == 2
    assert before[("evsrv_subscriptions", frozenset({("event", "E_OTHER")}))] == 0
    for n in range(3):
        yield server.evi.raise_event("E_TEST", {"n": n})
        yield peer.next()
    yield server.evi.raise_event("E_OTHER", {})
    after, _ = yield scrape(server, client)

    def moved(name, **labels):
        key = (name, frozenset(labels.items()))
        return after[key] - before[key]
    assert moved("evsrv_events_raised_total", event="E_TEST") == 3
    assert moved("evsrv_events_raised_total", event="E_OTHER") == 1
    assert moved("evsrv_notifications_sent_total", transport="udp") == 3
    assert moved("evsrv_notifications_failed_total", transport="unix") == 3
    assert moved("evsrv_notifications_dropped_total", transport="udp") == 0
    assert moved("evsrv_evi_events_raised_total") == 4
    assert moved("evsrv_evi_udp_notifications_sent_total") == 3
    assert moved("evsrv_evi_events_without_subscribers_total") == 1


@pytest_twisted.inlineCallbacks
def test_every_statistic_is_a_metric(server_factory, client):
    server = server_factory(HTTP_INI)
    values, types = yield scrape(server, client)
    for stat, kind in server.statistics.kinds().items():
        group, _, name = stat.partition(":")
        family = metric_name(group, name.rpartition(":")[2])  # per destination: a label
        assert types[family] == ("counter" if kind == "incremental" else "gauge"), stat
    # the connection-holding transports' gauges (queue depth, connections)
    for family in ("evsrv_evi_tcp_queued", "evsrv_evi_tcp_connections",
                   "evsrv_evi_xmlrpc_queued", "evsrv_evi_xmlrpc_in_flight",
                   "evsrv_evi_rabbitmq_connections", "evsrv_evi_expiry_sweeps"):
        assert family in types, family
    assert ("evsrv_evi_expiry_sweeps_total", frozenset()) in values


@pytest_twisted.inlineCallbacks
def test_mi_requests_and_errors_per_command(server_factory, client):
    server = server_factory(HTTP_INI)
    before, _ = yield scrape(server, client)
    url = server.http_mi_url()
    yield client.request(b"POST", url, rpc("which"))
    yield client.request(b"POST", url, rpc("which"))
    yield client.request(b"POST", url, rpc("event_subscribe", ["E_NOPE", "udp:127.0.0.1:9"]))
    yield server.dispatcher.handle(rpc("events_list"))  # the datagram MI counts too
    after, _ = yield scrape(server, client)

    def moved(name, **labels):
        key = (name, frozenset(labels.items()))
        return after[key] - before[key]
    assert moved("evsrv_mi_command_requests_total", command="which") == 2
    assert moved("evsrv_mi_command_errors_total", command="which") == 0
    assert moved("evsrv_mi_command_requests_total", command="event_subscribe") == 1
    assert moved("evsrv_mi_command_errors_total", command="event_subscribe") == 1
    assert moved("evsrv_mi_command_requests_total", command="events_list") == 1
    assert moved("evsrv_mi_requests_total") == 4
    assert moved("evsrv_mi_errors_total") == 1


@pytest_twisted.inlineCallbacks
def test_metrics_methods_and_paths(server_factory, client):
    server = server_factory(HTTP_INI.replace("listen = 127.0.0.1:0",
                                             "listen = 127.0.0.1:0\nmetrics_path = /m/x"))
    response, _ = yield client.request(b"POST", server.http_url("/m/x"), b"")
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
    response, _ = yield client.request(b"GET", server.http_url("/metrics"))
    assert response.code == 404
    response, data = yield client.request(b"GET", server.http_url("/m/x"))
    assert response.code == 200 and b"evsrv_events_raised_total" in data


@pytest_twisted.inlineCallbacks
def test_metrics_off(server_factory, client):
    server = server_factory(HTTP_INI + "metrics_path =\n")
    response, _ = yield client.request(b"GET", server.http_url("/metrics"))
    assert response.code == 404


# -- the collector alone ---------------------------------------------------------------


def exposition(statistics, evi=None, controller=None):
    from prometheus_client import CollectorRegistry, generate_latest
    if evi is None:
        evi, _, _ = memory_evi("E_A")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EvsrvCollector(statistics, evi, controller or MIController(statistics)))
    return samples(generate_latest(registry).decode())


def test_per_destination_statistics_become_labels():
    statistics = Statistics()
    statistics.gauge("evi_rabbitmq", "amqp://h:5672/v:state", lambda: 2)
    statistics.gauge("evi_rabbitmq", "amqp://k:5672/v:state", lambda: 1)
    statistics.counter("evi_rabbitmq", "amqp://h:5672/v:confirmed").value = 5
    values, types = exposition(statistics)
    assert types["evsrv_evi_rabbitmq_state"] == "gauge"
    assert values[("evsrv_evi_rabbitmq_state",
                   frozenset({("destination", "amqp://h:5672/v")}))] == 2
    assert values[("evsrv_evi_rabbitmq_state",
                   frozenset({("destination", "amqp://k:5672/v")}))] == 1
    assert values[("evsrv_evi_rabbitmq_confirmed_total",
                   frozenset({("destination", "amqp://h:5672/v")}))] == 5


def test_a_failing_gauge_is_left_out_and_names_are_sanitized():
    statistics = Statistics()
    statistics.gauge("odd-group", "bad gauge", lambda: "not a number")
    statistics.gauge("odd-group", "ok.gauge", lambda: 3)
    values, types = exposition(statistics)
    assert "evsrv_odd_group_bad_gauge" not in types
    assert values[("evsrv_odd_group_ok_gauge", frozenset())] == 3


def test_commands_counted_by_name():
    statistics = Statistics()
    controller = MIController(statistics, clock=Clock())

    def fails(call):
        raise MIError(500, "no")
    controller.register(Command("ok_cmd", [[]], lambda call: "OK", aliases=("ok_alias",)))
    controller.register(Command("bad_cmd", [[]], fails))
    for method in ("ok_cmd", "ok_alias", "bad_cmd"):
        controller.execute(method, None).addErrback(lambda f: f.trap(MIError))
    values, _ = exposition(statistics, controller=controller)
    assert values[("evsrv_mi_command_requests_total", frozenset({("command", "ok_cmd")}))] == 2
    assert values[("evsrv_mi_command_errors_total", frozenset({("command", "bad_cmd")}))] == 1
    assert ("evsrv_mi_command_requests_total",
            frozenset({("command", "ok_alias")})) not in values


@pytest_twisted.inlineCallbacks
def test_queue_depth_and_state_per_destination(server_factory, client):
    """
    A tcp: destination that refuses connections: its queue depth and
    connection state are exported per destination.
    """
    port = closed_port()
    server = server_factory(HTTP_INI + "[transport:tcp]\nqueue_timeout = 30\n")
    yield server.evi.subscribe("E_TEST", f"tcp:127.0.0.1:{port}", 3600)
    server.evi.raise_event("E_TEST", {"n": 1})
    values, types = yield scrape(server, client)
    labels = frozenset({("transport", "tcp"), ("destination", f"tcp:127.0.0.1:{port}")})
    assert types["evsrv_destination_queued"] == "gauge"
    assert values[("evsrv_destination_queued", labels)] == 1
    assert values[("evsrv_destination_connected", labels)] == 0


@pytest_twisted.inlineCallbacks
def test_xmlrpc_calls_in_flight_per_destination(server_factory):
    port = closed_port()
    server = server_factory(HTTP_INI)
    yield server.evi.subscribe("E_TEST", f"xmlrpc:127.0.0.1:{port}:notify", 3600)
    d = server.evi.raise_event("E_TEST", {"n": 1})
    # before the reactor runs again, the call is in flight
    values, _ = exposition(server.statistics, server.evi, server.controller)
    labels = frozenset({("transport", "xmlrpc"),
                        ("destination", f"xmlrpc:127.0.0.1:{port}:notify")})
    assert values[("evsrv_destination_in_flight", labels)] == 1
    assert values[("evsrv_destination_queued", labels)] == 0
    report = yield d  # the port refuses: the call fails, counted
    assert report.failed == 1


def closed_port() -> int:
    """
    A loopback TCP port nobody listens on (connections are refused).
    """
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
