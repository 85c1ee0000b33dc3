"""
The rabbitmq: transport end to end: a real evsrv (in the test's reactor)
publishing to the real RabbitMQ at 127.0.0.1:5672, checked with pika; a
proxy that cuts the link; a TLS proxy; a broker that never answers.

Skipped when no broker is reachable, unless EVSRV_REQUIRE_BROKER=1 (CI),
which makes them fail instead.
"""

import json
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher

from tests.amqp_tools import (CutProxy, SilentBroker, drain, make_certificates, pika_connection,
                              rabbitmqctl, require_broker, server_tls_context, unique)
from tests.conftest import until
from tests.test_script import mi


# Twisted's TLS helpers still hand pyOpenSSL objects to pyOpenSSL.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def broker():
    require_broker()


INI = """\
[mi]
udp = 127.0.0.1:0
unix =
[events]
publish = E_TEST, E_OTHER
[transports]
enabled = udp, rabbitmq
[transport:rabbitmq]
connect_timeout = {connect_timeout}
reconnect_min = 0.05
reconnect_max = 0.3
heartbeat = {heartbeat}
stop_timeout = 1
{extra}
"""


def ini(extra="", connect_timeout=2, heartbeat=10):
    return INI.format(extra=extra, connect_timeout=connect_timeout, heartbeat=heartbeat)


@pytest.fixture
def amqp():
    """
    A pika channel on the real broker; queues and exchanges made through
    it are deleted at teardown.
    """
    connection = pika_connection()
    channel = connection.channel()
    made = {"queues": [], "exchanges": []}

    def queue(name=None):
        name = name or unique()
        channel.queue_declare(name, auto_delete=False)
        made["queues"].append(name)
        return name

    def exchange(kind="topic"):
        name = unique("evsrv-x")
        channel.exchange_declare(name, exchange_type=kind)
        made["exchanges"].append(name)
        return name
    channel.make_queue = queue
    channel.make_exchange = exchange
    yield channel
    for name in made["queues"]:
        channel.queue_delete(name)
    for name in made["exchanges"]:
        channel.exchange_delete(name)
    connection.close()


def subscribe(server, socket, expire=60, event="E_TEST"):
    reply = mi(server, "event_subscribe", [event, socket, expire])
    assert reply.get("result") == "OK", reply
    return reply


def settled(d, timeout=10):
    return d.addTimeout(timeout, reactor)


def stats(server, prefix="evi_rabbitmq:"):
    return server.statistics.get([prefix])


def connection_stat(server, name):
    values = {k.rsplit(":", 1)[1]: v for k, v in stats(server).items() if k.count(":") > 1}
    return values[name]


class LogCapture:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def texts(self, level=None):
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events
                if level is None or e.get("log_level") == level]


@pytest.fixture
def log_capture():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


# -- delivery ------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_default_exchange_to_a_queue(server_factory, amqp):
    server = server_factory(ini())
    queue = amqp.make_queue()
    subscribe(server, f"rabbitmq:127.0.0.1/{queue}")
    listed = mi(server, "subscribers_list", ["E_TEST"])["result"]
    assert listed["Event"]["Subscribers"][0]["socket"] == f"rabbitmq:guest@127.0.0.1/{queue}"
    report = yield settled(server.evi.raise_event("E_TEST", {"ip": "10.0.0.1", "port": 5060}))
    assert (report.delivered, report.failed, report.dropped) == (1, 0, 0)
    (body, props, key), = drain(amqp, queue)
    assert body == b'{"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"10.0.0.1","port":5060}}'
    assert props.content_type == "application/json" and props.delivery_mode is None
    assert key == queue
    report = yield settled(server.evi.raise_event("E_TEST"))
    assert report.delivered == 1
    assert drain(amqp, queue)[0][0] == b'{"jsonrpc":"2.0","method":"E_TEST"}'
    assert stats(server)["evi_rabbitmq:notifications_sent"] == 2
    sub_stats = mi(server, "subscribers_stats", ["E_TEST"])["result"]
    assert json.dumps(sub_stats).count('"sent": 2') == 1


@pytest_twisted.inlineCallbacks
def test_large_and_non_ascii_bodies_arrive_byte_exact(server_factory, amqp):
    """
    Bodies over the broker's frame_max (131072) go out in several body
    frames; non-ASCII text and a non-ASCII routing key are bytes-exact.
    """
    server = server_factory(ini())
    queue = amqp.make_queue(unique("évt"))
    subscribe(server, "rabbitmq:127.0.0.1/" + queue.replace("é", "%C3%A9"))
    big = "x" * 300000
    for params in ({"big": big}, {"v": "é€ \u0000"}, {"v": "plain"}):
        report = yield settled(server.evi.raise_event("E_TEST", params))
        assert report.delivered == 1
    bodies = [b for b, _, _ in drain(amqp, queue)]
    assert [json.loads(b)["params"] for b in bodies] == [
        {"big": big}, {"v": "é€ \u0000"}, {"v": "plain"}]


@pytest_twisted.inlineCallbacks
def test_topic_exchange_routing_key_and_persistent(server_factory, amqp):
    server = server_factory(ini())
    exchange = amqp.make_exchange("topic")
    queue = amqp.make_queue()
    amqp.queue_bind(queue, exchange, routing_key="calls.*")
    subscribe(server, f"rabbitmq:guest:guest@127.0.0.1/exchange={exchange};persistent?calls.new")
    subscribe(server, f"rabbitmq:127.0.0.1/{exchange}?other.key")  # 2.x form, not bound
    report = yield settled(server.evi.raise_event("E_TEST", ["a", "b"]))
    assert report.delivered == 2  # the broker acks an unroutable publish too
    (body, props, key), = drain(amqp, queue)
    assert body == b'{"jsonrpc":"2.0","method":"E_TEST","params":["a","b"]}'
    assert props.delivery_mode == 2 and key == "calls.new"
    listed = [s["socket"] for s in
              mi(server, "subscribers_list", ["E_TEST"])["result"]["Event"]["Subscribers"]]
    assert listed == [f"rabbitmq:guest@127.0.0.1/{exchange}?other.key",
                      f"rabbitmq:guest@127.0.0.1/exchange={exchange};persistent?calls.new"]


@pytest_twisted.inlineCallbacks
def test_text_format_bytes(server_factory, amqp):
    server = server_factory(ini("format = text"))
    queue = amqp.make_queue()
    subscribe(server, f"rabbitmq:127.0.0.1/{queue}")
    report = yield settled(server.evi.raise_event("E_TEST", {"a": "x\ny", "n": -1}))
    assert report.delivered == 1
    (body, props, _), = drain(amqp, queue)
    assert body == b'E_TEST\na::"x\ny"\nn::-1'
    assert props.content_type == "text/plain"


@pytest.fixture(scope="module")
def vhost_user():
    """
    A vhost and a user with rights on it only (made with rabbitmqctl).
    """
    vhost, user, password = unique("evsrv-vh"), unique("evsrv-u"), "pw-" + unique("p")
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("add_user", user, password)
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield vhost, user, password
    finally:
        subprocess_quiet("delete_user", user)
        subprocess_quiet("delete_vhost", vhost)


def subprocess_quiet(*args):
    try:
        rabbitmqctl(*args)
    except Exception:
        pass


@pytest_twisted.inlineCallbacks
def test_credentials_and_vhost(server_factory, vhost_user, log_capture):
    vhost, user, password = vhost_user
    server = server_factory(ini())
    connection = pika_connection(user, password, vhost)
    try:
        channel = connection.channel()
        queue = unique()
        channel.queue_declare(queue)
        subscribe(server, f"rabbitmq:{user}:{password}@127.0.0.1/vhost={vhost}?{queue}")
        # the same queue name in the default vhost with a wrong password
        subscribe(server, f"rabbitmq:{user}:wrong@127.0.0.1/{queue}")
        listed = json.dumps(mi(server, "subscribers_list")["result"])
        assert password not in listed and "wrong" not in listed
        assert f"rabbitmq:{user}@127.0.0.1/vhost={vhost}?{queue}" in listed
        d = server.evi.raise_event("E_TEST", {"k": "v"})
        yield until(lambda: drain_into(channel, queue, got), timeout=10)
        assert got == [b'{"jsonrpc":"2.0","method":"E_TEST","params":{"k":"v"}}']
        # the bad password: refused by the broker, logged as a warning, failed
        report = yield settled(d)
        assert (report.delivered, report.failed, report.dropped) == (1, 1, 0)
        assert report.errors == [(f"rabbitmq:{user}@127.0.0.1/{queue}",
                                  "authentication failed (ACCESS_REFUSED)")]
        bad = [c for c in server.transports["rabbitmq"].connections.values()
               if c.key.password == "wrong"][0]
        assert any("authentication failed (ACCESS_REFUSED)" in t
                   for t in log_capture.texts(LogLevel.warn) if bad.label in t), \
            log_capture.texts(LogLevel.warn)
        channel.queue_delete(queue)
    finally:
        connection.close()


got = []


def drain_into(channel, queue, into):
    into.extend(body for body, _, _ in drain(channel, queue))
    return bool(into)


@pytest.fixture(autouse=True)
def _reset_got():
    got.clear()


@pytest_twisted.inlineCallbacks
def test_unknown_exchange_fails_only_its_subscriber(server_factory, amqp):
    server = server_factory(ini())
    queue = amqp.make_queue()
    subscribe(server, f"rabbitmq:127.0.0.1/{queue}")
    subscribe(server, f"rabbitmq:127.0.0.1/exchange={unique('nope')}?k")
    for n in range(3):
        report = yield settled(server.evi.raise_event("E_TEST", {"n": n}))
        assert (report.delivered, report.failed) == (1, 1), report.errors
        assert "404" in report.errors[0][1]
    assert [json.loads(b)["params"]["n"] for b, _, _ in drain(amqp, queue)] == [0, 1, 2]


@pytest_twisted.inlineCallbacks
def test_statistics_and_bad_socket_over_mi(server_factory, amqp):
    server = server_factory(ini())
    reply = mi(server, "event_subscribe", ["E_TEST", "rabbitmq:127.0.0.1", 60])
    assert reply["error"]["code"] == 400 and "expected rabbitmq:" in reply["error"]["data"]
    reply = mi(server, "event_subscribe", ["E_TEST", "rabbitmq:h/tls_domain=x?q", 60])
    assert reply["error"]["code"] == 400
    queue = amqp.make_queue()
    subscribe(server, f"rabbitmq:127.0.0.1/{queue}")
    yield settled(server.evi.raise_event("E_TEST"))
    values = mi(server, "get_statistics", [["evi_rabbitmq:"]])["result"]
    name = "evi_rabbitmq:amqp://guest@127.0.0.1:5672/"
    assert values[f"{name}:state"] == 2
    assert values[f"{name}:confirmed"] == 1
    assert values[f"{name}:queued"] == 0 and values[f"{name}:in_flight"] == 0
    assert values[f"{name}:connects"] == 1
    assert values["evi_rabbitmq:notifications_sent"] == 1
    assert values["evi_rabbitmq:connections"] == 1


# -- outages --------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_link_cut_for_seconds_loses_nothing_keeps_order_and_udp_flows(
        server_factory, amqp, udp_collector):
    """
    A stream of raises while a proxy cuts the broker link for ~4 s: every
    notification arrives (duplicates allowed: at-least-once), in order, and
    the UDP subscriber of the same event receives each one at once.
    """
    proxy = CutProxy()
    port = proxy.listen()
    try:
        server = server_factory(ini())
        queue = amqp.make_queue()
        sink = udp_collector()
        subscribe(server, f"rabbitmq:127.0.0.1:{port}/{queue}")
        subscribe(server, "udp:%s:%d" % sink.address)
        conn = next(iter(server.transports["rabbitmq"].connections.values()))
        reports, udp_delays = [], []
        total = 450
        cut_at, restore_at = 50, 400  # raises every 10 ms: down 3.5 s and more
        for n in range(total):
            if n == cut_at:
                yield until(lambda: conn.state == 2, timeout=10)
                proxy.cut()
            if n == restore_at:
                assert conn.queue, "nothing queued while the link was down"
                proxy.restore()
            sent_at = time.monotonic()
            reports.append(server.evi.raise_event("E_TEST", {"n": n}))
            data, _ = yield sink.next(timeout=2)
            udp_delays.append(time.monotonic() - sent_at)
            assert json.loads(data)["params"]["n"] == n
            yield deferLater(reactor, 0.01, lambda: None)
        results = yield settled(DeferredList(reports, fireOnOneErrback=True), timeout=20)
        outcomes = [r for _, r in results]
        assert sum(r.delivered for r in outcomes) == 2 * total  # udp + rabbitmq each
        assert sum(r.dropped + r.failed for r in outcomes) == 0
        numbers = [json.loads(b)["params"]["n"] for b, _, _ in drain(amqp, queue)]
        first_seen = list(dict.fromkeys(numbers))
        assert first_seen == list(range(total))
        assert max(udp_delays) < 0.5, max(udp_delays)
        assert connection_stat(server, "connects") >= 2
    finally:
        yield proxy.close()


@pytest_twisted.inlineCallbacks
def test_silent_broker_times_out_and_nothing_else_waits(server_factory, udp_collector,
                                                       log_capture):
    silent = SilentBroker()
    port = silent.listen()
    try:
        server = server_factory(ini(connect_timeout=0.5))
        sink = udp_collector()
        subscribe(server, f"rabbitmq:127.0.0.1:{port}/q")
        subscribe(server, "udp:%s:%d" % sink.address)
        reports = []
        for n in range(5):
            reports.append(server.evi.raise_event("E_TEST", {"n": n}))
            data, _ = yield sink.next(timeout=1)
            assert json.loads(data)["params"]["n"] == n
        # the MI over a real UDP socket answers at once
        client = udp_collector()
        started = time.monotonic()
        data, _ = yield client.request(
            b'{"jsonrpc":"2.0","method":"get_statistics","params":[["evi_rabbitmq:"]],"id":1}',
            server.mi_udp_address(), timeout=1)
        assert time.monotonic() - started < 0.5
        name = f"evi_rabbitmq:amqp://guest@127.0.0.1:{port}/"
        assert json.loads(data)["result"][f"{name}:queued"] == 5
        yield until(lambda: any("no AMQP handshake within 0.5 s" in t
                                for t in log_capture.texts(LogLevel.warn)), timeout=5)
        assert silent.received > 0  # it did get our protocol header
        assert not any(r.called for r in reports)
        server.transports["rabbitmq"].stop_timeout = 0
        yield server.transports["rabbitmq"].stopService()
        outcomes = yield settled(DeferredList(reports))
        assert [r.dropped for _, r in outcomes] == [1] * 5
        assert stats(server)[f"{name}:dropped"] == 5
        warned = [t for t in log_capture.texts(LogLevel.warn) if "unavailable" in t]
        assert len(warned) == 1, warned  # once per outage, not per retry
    finally:
        yield silent.close()


@pytest_twisted.inlineCallbacks
def test_hung_broker_is_cut_by_heartbeat_and_queue_is_published_after(server_factory, amqp,
                                                                      log_capture):
    """
    The broker stops answering on a live connection (no RST): missed
    heartbeats cut it, notifications wait in the queue, and are published
    once it answers again.
    """
    proxy = CutProxy()
    port = proxy.listen()
    try:
        server = server_factory(ini(heartbeat=1))
        queue = amqp.make_queue()
        subscribe(server, f"rabbitmq:127.0.0.1:{port}/{queue}")
        report = yield settled(server.evi.raise_event("E_TEST", {"n": 0}))
        assert report.delivered == 1
        conn = next(iter(server.transports["rabbitmq"].connections.values()))
        proxy.frozen = True
        pending = [server.evi.raise_event("E_TEST", {"n": n}) for n in range(1, 4)]
        yield until(lambda: conn.state == 3, timeout=6)  # 3 missed heartbeats
        assert len(conn.queue) == 3 and not conn.in_flight
        proxy.frozen = False
        proxy.cut()  # drop the half-open attempts made while frozen
        proxy.restore()
        outcomes = yield settled(DeferredList(pending), timeout=10)
        assert [r.delivered for _, r in outcomes] == [1, 1, 1]
        numbers = [json.loads(b)["params"]["n"] for b, _, _ in drain(amqp, queue)]
        assert list(dict.fromkeys(numbers)) == [0, 1, 2, 3]
    finally:
        yield proxy.close()


@pytest_twisted.inlineCallbacks
def test_stop_flushes_what_is_queued(server_factory, amqp):
    server = server_factory(ini())
    queue = amqp.make_queue()
    subscribe(server, f"rabbitmq:127.0.0.1/{queue}")
    pending = [server.evi.raise_event("E_TEST", {"n": n}) for n in range(50)]
    yield server.transports["rabbitmq"].stopService()  # connection not even up yet
    outcomes = yield settled(DeferredList(pending))
    assert sum(r.delivered for _, r in outcomes) == 50
    assert len(drain(amqp, queue)) == 50


# -- TLS -----------------------------------------------------------------------------------


def needs_tls():
    # Twisted's TLS needs pyOpenSSL and service_identity (twisted[tls])
    pytest.importorskip("OpenSSL", reason="pyOpenSSL not installed (twisted[tls])")
    pytest.importorskip("service_identity", reason="service_identity not installed")


@pytest_twisted.inlineCallbacks
def test_tls_through_a_terminating_proxy_verifies_the_certificate(
        server_factory, amqp, tmpdir_short, log_capture):
    needs_tls()
    certs = make_certificates(str(tmpdir_short))
    proxy = CutProxy()
    port = proxy.listen(server_tls_context(certs))
    try:
        server = server_factory(ini(f"tls_ca = {certs['ca']}"))
        queue = amqp.make_queue()
        subscribe(server, f"rabbitmq:127.0.0.1:{port}/tls?{queue}")
        report = yield settled(server.evi.raise_event("E_TEST", {"tls": 1}))
        assert report.delivered == 1
        (body, _, _), = drain(amqp, queue)
        assert body == b'{"jsonrpc":"2.0","method":"E_TEST","params":{"tls":1}}'
        assert proxy.live  # it went through the TLS proxy
        listed = mi(server, "subscribers_list", ["E_TEST"])["result"]
        assert listed["Event"]["Subscribers"][0]["socket"] == \
            f"rabbitmq:guest@127.0.0.1:{port}/tls?{queue}"
    finally:
        yield proxy.close()


@pytest_twisted.inlineCallbacks
def test_tls_refuses_a_certificate_from_another_ca(server_factory, tmpdir_short, log_capture):
    needs_tls()
    certs = make_certificates(str(tmpdir_short))
    proxy = CutProxy()
    port = proxy.listen(server_tls_context(certs))
    try:
        server = server_factory(ini(f"tls_ca = {certs['other_ca']}"))
        subscribe(server, f"rabbitmq:127.0.0.1:{port}/tls?q")
        d = server.evi.raise_event("E_TEST")
        conn = next(iter(server.transports["rabbitmq"].connections.values()))
        yield until(lambda: conn.state == 3, timeout=5)
        assert conn.queue and not d.called
        assert any("unavailable" in t for t in log_capture.texts(LogLevel.warn))
        server.transports["rabbitmq"].stop_timeout = 0
        yield server.transports["rabbitmq"].stopService()
        report = yield settled(d)
        assert report.dropped == 1
    finally:
        yield proxy.close()




def refusal_lines(capture):
    return [t for t in capture.texts() if "authentication failed (ACCESS_REFUSED)" in t]


@pytest_twisted.inlineCallbacks
def test_wrong_password_fails_at_once_with_the_reason_logged_once(server_factory,
                                                                  log_capture):
    """
    The broker refuses the login (it closes with 403 ACCESS_REFUSED because
    we ask for authentication_failure_close): each notification fails at
    once, counted, with the reason; the log says so once, in one line,
    while the connection keeps retrying with backoff.
    """
    server = server_factory(ini())
    rabbitmq = server.transports["rabbitmq"]
    # the subscribe answers OK without talking to the broker
    reply = mi(server, "event_subscribe", ["E_TEST", "rabbitmq:guest:WRONG@127.0.0.1/q", 60])
    assert reply.get("result") == "OK", reply
    assert not any(conn.service for conn in rabbitmq.connections.values())
    report = yield settled(server.evi.raise_event("E_TEST", {"n": 1}), timeout=5)
    assert (report.delivered, report.failed, report.dropped) == (0, 1, 0)
    assert report.errors == [("rabbitmq:guest@127.0.0.1/q",
                              "authentication failed (ACCESS_REFUSED)")]
    conn, = rabbitmq.connections.values()
    failures = conn._failures
    yield until(lambda: conn._failures >= failures + 2, timeout=10)  # still retrying
    # while it refuses, a raise fails at once instead of queueing
    report = server.evi.raise_event("E_TEST", {"n": 2})
    assert report.called and report.result.failed == 1
    yield report
    sub, = mi(server, "subscribers_stats", ["E_TEST"])["result"]["Subscribers"]
    assert (sub["sent"], sub["failed"], sub["dropped"]) == (0, 2, 0)
    assert sub["last_error"] == "authentication failed (ACCESS_REFUSED)"
    values = stats(server)
    assert values["evi_rabbitmq:notifications_failed"] == 2
    name = "evi_rabbitmq:amqp://guest@127.0.0.1:5672/"
    assert values[f"{name}:refused"] == 2 and values[f"{name}:queued"] == 0
    assert values[f"{name}:state"] == 3
    lines = refusal_lines(log_capture)
    assert len(lines) == 1, lines  # once for the spell, not per retry
    assert "amqp://guest@127.0.0.1:5672/" in lines[0] and "user 'guest'" in lines[0]
    assert "WRONG" not in " ".join(log_capture.texts())
    rabbitmq_lines = [t for t in log_capture.texts() if "rabbitmq" in t]
    assert not [t for t in rabbitmq_lines
                if "\n" in t or "ConnectionLost" in t or "Failure instance" in t], rabbitmq_lines
    [event] = [e for e in log_capture.events
               if "authentication failed (ACCESS_REFUSED)" in str(e.get("refusal"))]
    assert event["log_level"] == LogLevel.warn
