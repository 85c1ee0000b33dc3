"""
The rabbitmq: transport without a broker: socket syntax, the listing, and
the queue / confirm / reconnect logic driven through fakes on a Clock.
"""

import json

import pytest
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from evsrv.evi import EventInterface
from evsrv.interfaces import BadSocket
from evsrv.transports.kit import ByteBudget
from evsrv.util.statistics import Statistics
from evsrv.transports.rabbitmq import (DOWN, READY, STOPPED, BrokerRefused, PublishDropped,
                                       PublishNacked, RabbitMQTransport, amqp_spec,
                                       parse_socket, rabbitmqTransport)
from tests.test_evi import result_of


# -- syntax --------------------------------------------------------------------------------


@pytest.mark.parametrize("rest, listed, conn, exchange, key, persistent", [
    ("127.0.0.1/q1", "rabbitmq:guest@127.0.0.1/q1",
     ("127.0.0.1", 5672, "/", "guest", "guest", False), b"", b"q1", False),
    ("u:secret@broker.example:5672/ex?rk.a", "rabbitmq:u@broker.example/ex?rk.a",
     ("broker.example", 5672, "/", "u", "secret", False), b"ex", b"rk.a", False),
    ("u@h:5673/exchange=ex;persistent?k", "rabbitmq:u@h:5673/exchange=ex;persistent?k",
     ("h", 5673, "/", "u", "guest", False), b"ex", b"k", True),
    ("h/vhost=v1;exchange=e?k", "rabbitmq:guest@h/exchange=e;vhost=v1?k",
     ("h", 5672, "v1", "guest", "guest", False), b"e", b"k", False),
    ("h/tls?k", "rabbitmq:guest@h/tls?k", ("h", 5671, "/", "guest", "guest", True), b"", b"k",
     False),
    ("h:5671/tls?k", "rabbitmq:guest@h/tls?k", ("h", 5671, "/", "guest", "guest", True), b"",
     b"k", False),
    ("h/exchange=x?", "rabbitmq:guest@h/x?", ("h", 5672, "/", "guest", "guest", False), b"x",
     b"", False),
    ("us%40er:p%3Aw@h/a%2Fb", "rabbitmq:us%40er@h/a/b",
     ("h", 5672, "/", "us@er", "p:w", False), b"", b"a/b", False),
    ("[::1]:5000/q", "rabbitmq:guest@[::1]:5000/q", ("::1", 5000, "/", "guest", "guest", False),
     b"", b"q", False),
    ("h/vhost=%2F?k", "rabbitmq:guest@h/k", ("h", 5672, "/", "guest", "guest", False), b"",
     b"k", False),
    ("h/k%C3%A9", "rabbitmq:guest@h/k%C3%A9", ("h", 5672, "/", "guest", "guest", False), b"",
     "ké".encode(), False),
])
def test_socket_syntax_and_listing(rest, listed, conn, exchange, key, persistent):
    shown, target = parse_socket(rest)
    assert shown == listed
    assert tuple(target.connection) == conn
    assert (target.exchange, target.routing_key, target.persistent) == (exchange, key,
                                                                          persistent)
    # the listing parses back to the same identity (unsubscribe with it)
    again, other = parse_socket(shown[len("rabbitmq:"):])
    assert again == shown
    assert other.exchange == target.exchange and other.routing_key == target.routing_key
    assert "secret" not in shown


@pytest.mark.parametrize("rest", [
    "127.0.0.1",                 # no '/'
    "h:0/q", "h:65536/q", "h:x/q", "h:/q",
    "/q",                        # no host
    "@h/q",                      # empty user
    "h/bogus=1?q", "h/exchange=a;nope?q",
    "h/tls_domain=dom?q",
    "h/q%2", "h/q%zz",           # truncated / bad escapes
    "h/q%0A",                    # control character
    "h/vhost=?q",
    "[::1/q",
    "h/" + "k" * 256,
])
def test_bad_sockets(rest):
    with pytest.raises(BadSocket):
        parse_socket(rest)


def test_spec_is_vendored_with_its_licence():
    spec = amqp_spec()
    assert "select" in spec.classes.byname["confirm"].methods.byname
    assert "nack" in spec.classes.byname["basic"].methods.byname
    from importlib import resources
    text = (resources.files("evsrv") / "specs" / "amqp0-9-1.stripped.extended.xml").read_text()
    assert "Copyright (c) 2009 AMQP Working Group" in text and "BSD" in text


def test_factory_options_and_defaults():
    assert rabbitmqTransport.name == "rabbitmq" and rabbitmqTransport.builtin
    options = rabbitmqTransport.options
    for key in ("heartbeat", "connect_timeout", "queue_size", "max_age", "window"):
        default, coerce, _ = options[key]
        coerce(default)
    with pytest.raises(ValueError):
        options["queue_size"][1]("0")
    with pytest.raises(ValueError):
        options["heartbeat"][1]("x")


# -- queue logic with a fake connection ---------------------------------------------------------


class FakeProtocol:
    def __init__(self):
        self.published = []

    def publish(self, channel_id, exchange, key, body, properties):
        self.published.append((exchange, key, body, dict(properties)))


class FakeChannel:
    id = 1


class FakeService:
    def __init__(self):
        self.stopped = False

    def stopService(self):
        self.stopped = True
        return succeed(None)


def make_transport(max_queued_bytes=None, **kw):
    clock = Clock()
    statistics = Statistics()
    options = dict(window=2, queue_size=3, max_age=10.0)
    if max_queued_bytes is not None:
        options["budget"] = ByteBudget(max_queued_bytes, statistics)
    options.update(kw)
    transport = RabbitMQTransport("rabbitmq", clock, statistics, **options)
    return transport, clock, statistics


def fake_connect(conn):
    """
    Bring a connection up on fakes: returns the fake protocol.
    """
    conn.service = conn.service or FakeService()
    protocol = FakeProtocol()
    channel = FakeChannel()
    conn._ready(protocol, channel)
    return protocol, channel


def connection_of(transport, socket="127.0.0.1/q"):
    return transport.admit(transport.parse("rabbitmq", socket)).address.connection


def test_window_ack_multiple_and_nack():
    transport, clock, statistics = make_transport(queue_size=10)
    conn = connection_of(transport)
    conn.service = FakeService()
    results = [conn.publish(b"", b"q", b"m%d" % i) for i in range(5)]
    seen = []
    for d in results:
        d.addBoth(seen.append)
    assert len(conn.queue) == 5
    protocol, channel = fake_connect(conn)
    assert [p[2] for p in protocol.published] == [b"m0", b"m1"]  # window 2
    assert protocol.published[0][3] == {"content-type": "application/json"}
    conn._confirmed(protocol, channel, 2, True, True)  # acks 1 and 2
    assert seen == [True, True]
    assert [p[2] for p in protocol.published] == [b"m0", b"m1", b"m2", b"m3"]
    conn._confirmed(protocol, channel, 4, False, False)  # nack 4 only
    assert seen[2].check(PublishNacked)
    conn._confirmed(protocol, channel, 3, False, True)
    conn._confirmed(protocol, channel, 5, False, True)
    assert len(seen) == 5 and seen[3] is True and seen[4] is True
    stats = statistics.get(["evi_rabbitmq:"])
    label = conn.label
    assert stats[f"evi_rabbitmq:{label}:confirmed"] == 4
    assert stats[f"evi_rabbitmq:{label}:nacked"] == 1
    assert stats[f"evi_rabbitmq:{label}:state"] == READY


def test_lost_connection_republishes_in_flight_first_in_order():
    transport, clock, statistics = make_transport(queue_size=10)
    conn = connection_of(transport)
    conn.service = FakeService()
    protocol, channel = fake_connect(conn)
    results = [conn.publish(b"", b"q", b"m%d" % i) for i in range(4)]
    seen = []
    for d in results:
        d.addBoth(seen.append)
    conn._confirmed(protocol, channel, 1, False, True)
    conn._lost(protocol, "Connection lost")  # m1, m2 in flight; m3 queued
    assert conn.state == DOWN and [e.body for e in conn.queue] == [b"m1", b"m2", b"m3"]
    # late confirms from the dead connection are ignored
    conn._confirmed(protocol, channel, 2, True, True)
    assert seen == [True]
    again, channel2 = fake_connect(conn)
    assert [p[2] for p in again.published] == [b"m1", b"m2"]
    conn._confirmed(again, channel2, 2, True, True)
    conn._confirmed(again, channel2, 3, True, True)
    assert seen == [True] * 4
    assert statistics.get([f"evi_rabbitmq:{conn.label}:republished"]) == {
        f"evi_rabbitmq:{conn.label}:republished": 2}


def test_bounded_queue_drops_oldest_and_max_age(logged_errors):
    transport, clock, statistics = make_transport(queue_size=3, max_age=10.0)
    conn = connection_of(transport)
    conn.service = FakeService()
    seen = {}
    for i in range(5):
        conn.publish(b"", b"q", b"m%d" % i).addErrback(
            lambda f, i=i: seen.setdefault(i, f.value))
        clock.advance(1)
    assert sorted(seen) == [0, 1]
    assert all(isinstance(e, PublishDropped) and "queue full" in str(e) for e in seen.values())
    assert [e.body for e in conn.queue] == [b"m2", b"m3", b"m4"]
    clock.advance(10 - 3 + 0.001)  # m2 (queued at t=2) is now older than 10 s
    assert sorted(seen) == [0, 1, 2] and "queued too long" in str(seen[2])
    clock.advance(2)
    assert sorted(seen) == [0, 1, 2, 3, 4] and not conn.queue
    assert statistics.get([f"evi_rabbitmq:{conn.label}:dropped"])[
        f"evi_rabbitmq:{conn.label}:dropped"] == 5
    assert not clock.getDelayedCalls()


def test_queued_and_unconfirmed_are_charged_to_the_byte_budget():
    transport, clock, statistics = make_transport(max_queued_bytes=25, queue_size=10)
    conn = connection_of(transport)
    conn.service = FakeService()
    protocol, channel = fake_connect(conn)
    results = [conn.publish(b"", b"q", b"m%d" % i + b"." * 8) for i in range(3)]  # 10 bytes
    assert [p[2][:2] for p in protocol.published] == [b"m0", b"m1"]  # window 2, one queued
    assert statistics.value("evi_rabbitmq:queued_bytes") == 20  # the third did not fit
    assert results[2].result.check(PublishDropped)
    assert results[2].result.getErrorMessage() == \
        "byte budget of 25 bytes full ([limits] max_queued_bytes)"
    results[2].addErrback(lambda f: None)
    label = conn.label
    assert statistics.value(f"evi_rabbitmq:{label}:dropped") == 1
    conn._lost(protocol, "Connection lost")  # queued again: still held, charged once
    assert statistics.value("evi_rabbitmq:queued_bytes") == 20
    protocol, channel = fake_connect(conn)
    conn._confirmed(protocol, channel, 2, True, True)
    assert [result_of(d) for d in results[:2]] == [True, True]
    assert statistics.value("evi:queued_bytes") == 0


def test_deliver_counts_what_the_byte_budget_drops():
    transport, clock, statistics = make_transport(max_queued_bytes=10, queue_size=10)
    evi = EventInterface(clock, {"rabbitmq": transport}, statistics)
    evi.publish("E_TEST")
    sub = result_of(evi.subscribe("E_TEST", "rabbitmq:127.0.0.1/a"))
    sub.address.connection.service = FakeService()
    report = result_of(evi.raise_event("E_TEST", {"n": 1}))  # 50 bytes of JSON
    assert (report.dropped, sub.dropped) == (1, 1)
    assert sub.last_error == "byte budget of 10 bytes full ([limits] max_queued_bytes)"
    assert statistics.value("evi_rabbitmq:notifications_dropped") == 1


def test_channel_error_fails_the_culprit_and_keeps_the_others():
    transport, clock, statistics = make_transport(queue_size=10, window=10)
    conn = connection_of(transport)
    conn.service = FakeService()
    protocol, channel = fake_connect(conn)
    reopened = []
    conn._reopen_channel = reopened.append
    good = conn.publish(b"", b"q", b"good")
    bad = conn.publish(b"missing", b"k", b"bad")
    out = {}
    good.addBoth(lambda r: out.update(good=r))
    bad.addBoth(lambda r: out.update(bad=r))

    class Close:
        reply_code = 404
        reply_text = "NOT_FOUND - no exchange 'missing' in vhost '/'"
    conn._channel_failed(protocol, channel, Close())
    assert out["bad"].check(PublishNacked) and "404" in out["bad"].getErrorMessage()
    assert "good" not in out and [e.body for e in conn.queue] == [b"good"]
    assert reopened == [protocol]


def test_deliver_settles_per_subscriber_and_outcome():
    transport, clock, statistics = make_transport(queue_size=1, window=1)
    evi = EventInterface(clock, {"rabbitmq": transport}, statistics)
    evi.publish("E_TEST")
    a = result_of(evi.subscribe("E_TEST", "rabbitmq:127.0.0.1/a", origin="mi", expire=60))
    b = result_of(evi.subscribe("E_TEST", "rabbitmq:127.0.0.1/b", origin="mi", expire=60))
    conn = a.address.connection
    assert b.address.connection is conn
    conn.service = FakeService()
    report = evi.raise_event("E_TEST", {"n": 1})
    seen = []
    report.addCallback(seen.append)
    # b (newest first) is queued, a then pushes it out: queue_size 1
    assert not seen or seen[0].dropped == 1
    protocol, channel = fake_connect(conn)
    conn._confirmed(protocol, channel, 1, False, True)
    (rep,) = seen
    assert (rep.delivered, rep.dropped) == (1, 1)
    assert json.loads(protocol.published[0][2]) == {"jsonrpc": "2.0", "method": "E_TEST",
                                                    "params": {"n": 1}}
    assert (a.sent, b.sent, b.dropped) == (1, 0, 1)
    stats = statistics.get(["evi_rabbitmq:"])
    assert stats["evi_rabbitmq:notifications_sent"] == 1
    assert stats["evi_rabbitmq:notifications_dropped"] == 1
    # MI expire is honoured like any transport's (§9 D6)
    clock.advance(61)
    evi.sweep()
    assert evi.probe("E_TEST") == 0


def test_stop_drops_and_counts_what_is_left():
    transport, clock, statistics = make_transport(queue_size=10, stop_timeout=0)
    conn = connection_of(transport)
    service = conn.service = FakeService()
    d = conn.publish(b"", b"q", b"x")
    errors = []
    d.addErrback(errors.append)
    result_of(transport.stopService())
    assert service.stopped and conn.state == STOPPED
    assert errors[0].check(PublishDropped)
    late = []
    conn.publish(b"", b"q", b"y").addErrback(late.append)
    assert late[0].check(PublishDropped)


def test_too_many_connections():
    transport, clock, statistics = make_transport(max_connections=2)
    transport.admit(transport.parse("rabbitmq", "a/q"))
    transport.admit(transport.parse("rabbitmq", "b/q"))
    transport.admit(transport.parse("rabbitmq", "a/other"))  # same connection: fine
    with pytest.raises(BadSocket, match="max_connections"):
        transport.admit(transport.parse("rabbitmq", "c/q"))


def test_same_user_other_password_gets_its_own_connection():
    transport, clock, statistics = make_transport()
    one = transport.admit(transport.parse("rabbitmq", "u:a@h/q")).address.connection
    two = transport.admit(transport.parse("rabbitmq", "u:b@h/q")).address.connection
    assert one is not two
    assert (one.label, two.label) == ("amqp://u@h:5672/", "amqp://u@h:5672/#2")


def test_text_format_has_no_trailing_newline():
    transport, clock, statistics = make_transport(format="text")
    evi = EventInterface(clock, {"rabbitmq": transport}, statistics)
    evi.publish("E_TEST")
    sub = result_of(evi.subscribe("E_TEST", "rabbitmq:h/q"))
    conn = sub.address.connection
    conn.service = FakeService()
    protocol, channel = fake_connect(conn)
    evi.raise_event("E_TEST", {"a": "1", "b": 2})
    assert protocol.published[0][2] == b"E_TEST\na::1\nb::2"
    assert protocol.published[0][3] == {"content-type": "text/plain"}


CONFIG = """\
[mi]
udp = 127.0.0.1:0
unix =
[transport:rabbitmq]
"""


def test_plugin_is_found_and_enabled_by_default(tmpdir_short):
    from evsrv.server import transport_factories
    from tests.conftest import make_config
    assert transport_factories()["rabbitmq"] is rabbitmqTransport
    config = make_config(CONFIG + "queue_size = 5\nformat = text\n", tmpdir_short)
    assert config.transports["rabbitmq"]["queue_size"] == 5
    assert config.transports["rabbitmq"]["tls_ca"] is None


@pytest.mark.parametrize("extra, words", [
    ("tls_ca = missing.pem", "no such file"),
    ("tls_ca = bad.pem", "no PEM certificate"),
    ("tls_cert = bad.pem", "cannot load the TLS files"),
])
def test_bad_tls_files_stop_start_up(tmpdir_short, extra, words):
    from evsrv.config import ConfigError
    from evsrv.server import EvsrvService
    from tests.conftest import make_config
    (tmpdir_short / "bad.pem").write_text("not a certificate\n")
    config = make_config(CONFIG + extra + "\n", tmpdir_short)
    with pytest.raises(ConfigError, match=words):
        EvsrvService(config, Clock())


def test_handshake_timeout_and_oversized_frame_cut_the_connection():
    import struct

    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from evsrv.transports.rabbitmq import _ProtocolFactory

    class Transport(StringTransport):
        aborted = False

        def abortConnection(self):
            self.aborted = True
            self.loseConnection()

    transport, clock, _ = make_transport(connect_timeout=5.0)
    conn = connection_of(transport)
    conn.service = FakeService()

    def connect():
        proto = _ProtocolFactory(conn).buildProtocol(None)
        wire = Transport()
        proto.makeConnection(wire)
        assert wire.value().startswith(b"AMQP")  # txamqp says 1-1-0-9; RabbitMQ takes it
        return proto, wire

    proto, wire = connect()
    clock.advance(4.9)
    assert not wire.aborted
    clock.advance(0.2)
    assert wire.aborted and conn.state == DOWN
    proto.connectionLost(Failure(ConnectionDone()))

    proto, wire = connect()
    proto.dataReceived(struct.pack("!BHI", 1, 0, 10 ** 9) + b"x" * 5000)
    assert wire.aborted
    proto.connectionLost(Failure(ConnectionDone()))
    assert conn.current is None and conn.protocol is None
    assert not [c for c in clock.getDelayedCalls() if c.active()]


# -- the broker refusing the login --------------------------------------------------------------


class _Wire:
    """
    A StringTransport that records aborts (txamqp's protocol on it, driven
    with frames pika encodes, read back with pika's decoder).
    """

    def __init__(self):
        from twisted.internet.testing import StringTransport

        class Transport(StringTransport):
            aborted = False

            def abortConnection(self):
                self.aborted = True
                self.loseConnection()
        self.transport = Transport()

    def frames(self):
        import pika.frame
        data, out = self.transport.value(), []
        self.transport.clear()
        while data:
            used, frame = pika.frame.decode_frame(data)
            assert used, data
            out.append(frame)
            data = data[used:]
        return out


def broker_says(proto, method, channel=0):
    import pika.frame
    proto.dataReceived(pika.frame.Method(channel, method).marshal())


def connected_protocol(conn):
    from evsrv.transports.rabbitmq import _ProtocolFactory
    proto = _ProtocolFactory(conn).buildProtocol(None)
    wire = _Wire()
    proto.makeConnection(wire.transport)
    assert wire.transport.value() == b"AMQP\x01\x01\x00\x09"
    wire.transport.clear()
    return proto, wire


@pytest.fixture
def log_events():
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def rabbitmq_lines(events):
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in events if "rabbitmq:" in e.get("log_format", "")]


def test_start_ok_asks_for_authentication_failure_close():
    """
    start-ok carries client properties with the capabilities table
    RabbitMQ reads, as pika (not our encoder) decodes it.
    """
    import pika.spec
    transport, clock, _ = make_transport()
    conn = connection_of(transport, "user:pw@127.0.0.1/q")
    conn.service = FakeService()
    proto, wire = connected_protocol(conn)
    broker_says(proto, pika.spec.Connection.Start(
        server_properties={"capabilities": {"authentication_failure_close": True}},
        mechanisms="PLAIN AMQPLAIN"))
    start_ok, = wire.frames()
    method = start_ok.method
    assert isinstance(method, pika.spec.Connection.StartOk)
    properties = method.client_properties
    assert properties["capabilities"] == {"authentication_failure_close": True}
    assert properties["product"] == "evsrv"
    assert method.mechanism == "PLAIN" and method.locale == "en_US"
    assert method.response == b"\0user\0pw"
    proto.connectionLost(Failure(ConnectionDone()))


def test_refused_login_fails_notifications_at_once_until_accepted(log_events):
    import pika.spec
    transport, clock, statistics = make_transport(queue_size=10)
    conn = connection_of(transport, "guest:WRONG@127.0.0.1/q")
    conn.service = FakeService()
    early = []
    conn.publish(b"", b"q", b"queued before").addErrback(early.append)
    proto, wire = connected_protocol(conn)
    broker_says(proto, pika.spec.Connection.Start(mechanisms="PLAIN"))
    wire.frames()
    broker_says(proto, pika.spec.Connection.Close(
        403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
        "For details see the broker logfile.", 0, 0))
    assert [type(f.method) for f in wire.frames()] == [pika.spec.Connection.CloseOk]
    proto.connectionLost(Failure(ConnectionLost()))
    # what was queued failed, with the short reason
    assert early[0].check(BrokerRefused)
    assert early[0].getErrorMessage() == "authentication failed (ACCESS_REFUSED)"
    assert conn.state == DOWN and not conn.queue
    # a new one fails at once while the broker refuses (retries change nothing)
    for _ in range(3):
        conn._handshake_failed(None, "403 ACCESS_REFUSED - ...",
                               "authentication failed (ACCESS_REFUSED)")
    late = []
    conn.publish(b"", b"q", b"while refused").addErrback(late.append)
    assert late[0].check(BrokerRefused) and not conn.queue
    label = conn.label
    assert statistics.get([f"evi_rabbitmq:{label}:refused"]) == {
        f"evi_rabbitmq:{label}:refused": 2}
    lines = rabbitmq_lines(log_events)
    assert lines == [
        "rabbitmq: amqp://guest@127.0.0.1:5672/: authentication failed (ACCESS_REFUSED) "
        "for user 'guest' (403 ACCESS_REFUSED - Login was refused using authentication "
        "mechanism PLAIN. For details see the broker logfile.); notifications to it fail "
        "until the broker accepts it, retrying with backoff (up to 10 s)"]
    # unreachable now: that may pass, so notifications queue again
    conn._handshake_failed(None, "Connection was refused by other side: 111: Connection "
                                 "refused.")
    queued = []
    conn.publish(b"", b"q", b"while down").addBoth(queued.append)
    assert not queued and len(conn.queue) == 1
    assert "unavailable" in rabbitmq_lines(log_events)[-1]
    # the operator fixed the password: published
    protocol, channel = fake_connect(conn)
    assert [p[2] for p in protocol.published] == [b"while down"]
    assert conn.refused is None
    conn.publish(b"", b"q", b"after")
    assert len(protocol.published) == 2


def test_refused_vhost_is_a_refusal_too():
    import pika.spec
    transport, clock, _ = make_transport()
    conn = connection_of(transport, "127.0.0.1/vhost=nope?q")
    conn.service = FakeService()
    failed = []
    conn.publish(b"", b"q", b"x").addErrback(failed.append)
    proto, wire = connected_protocol(conn)
    broker_says(proto, pika.spec.Connection.Start(mechanisms="PLAIN"))
    broker_says(proto, pika.spec.Connection.Tune(channel_max=0, frame_max=131072,
                                                 heartbeat=60))
    broker_says(proto, pika.spec.Connection.Close(530, "NOT_ALLOWED - vhost nope not found",
                                                  10, 40))
    proto.connectionLost(Failure(ConnectionLost()))
    assert failed[0].check(BrokerRefused)
    assert failed[0].getErrorMessage() == "access to vhost 'nope' refused (NOT_ALLOWED)"


def test_login_dropped_without_a_close_is_one_clean_line(log_events):
    """
    A broker that drops the connection at login (no
    authentication_failure_close): one line naming the likely cause, no
    Failure repr; it may be the network, so notifications stay queued.
    """
    import pika.spec
    transport, clock, _ = make_transport()
    conn = connection_of(transport)
    conn.service = FakeService()
    pending = conn.publish(b"", b"q", b"x")
    proto, wire = connected_protocol(conn)
    broker_says(proto, pika.spec.Connection.Start(mechanisms="PLAIN"))
    proto.connectionLost(Failure(ConnectionLost()))
    line, = rabbitmq_lines(log_events)
    assert ("unavailable (connection closed by the broker during login (wrong user or "
            "password?): Connection to the other side was lost in a non-clean fashion.)"
            in line), line
    assert "\n" not in line and "Failure" not in line
    assert len(conn.queue) == 1 and not pending.called
    conn._drop_all("test over")
    pending.addErrback(lambda f: f.trap(PublishDropped))
