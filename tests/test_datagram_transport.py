"""
The udp: and unix: transports against real sockets.
"""

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from evsrv.evi import EventInterface
from evsrv.interfaces import BadSocket
from evsrv.util.statistics import Statistics
from evsrv.transports.datagram import UDPTransport, UNIXTransport
from tests.conftest import udp_receiver
from tests.test_evi import result_of


@pytest.fixture
def datagram_evi():
    statistics = Statistics()
    udp = UDPTransport("udp", "json", statistics, reactor)
    unix = UNIXTransport("unix", "json", statistics)
    evi = EventInterface(Clock(), {"udp": udp, "unix": unix}, statistics)
    evi.publish("E_TEST")
    yield evi
    udp.stopService()
    unix.stopService()


def counters(evi, name):
    stats = evi.statistics.get([f"evi_{name}:"])
    return tuple(stats[f"evi_{name}:notifications_{k}"] for k in ("sent", "failed", "dropped"))


def test_udp_delivery_from_one_stable_source(datagram_evi):
    receivers = [udp_receiver() for _ in range(3)]
    try:
        for r in receivers:
            result_of(datagram_evi.subscribe("E_TEST", "udp:127.0.0.1:%d" % r.getsockname()[1]))
        for n in range(2):
            report = result_of(datagram_evi.raise_event("E_TEST", {"n": n}))
            assert report.delivered == 3
        sources = set()
        for r in receivers:
            for n in range(2):
                data, source = r.recvfrom(65536)
                assert data == b'{"jsonrpc":"2.0","method":"E_TEST","params":{"n":%d}}' % n
                sources.add(source)
        assert len(sources) == 1
        assert counters(datagram_evi, "udp") == (6, 0, 0)
    finally:
        for r in receivers:
            r.close()


def test_udp_ipv6_literal(datagram_evi):
    r = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    r.bind(("::1", 0))
    r.settimeout(5)
    try:
        sub = result_of(datagram_evi.subscribe("E_TEST", "udp:[::1]:%d" % r.getsockname()[1]))
        assert sub.socket == "udp:[::1]:%d" % r.getsockname()[1]
        result_of(datagram_evi.raise_event("E_TEST"))
        assert r.recv(100) == b'{"jsonrpc":"2.0","method":"E_TEST"}'
    finally:
        r.close()


@pytest_twisted.inlineCallbacks
def test_udp_hostname_is_resolved_at_subscribe_time(datagram_evi):
    r = udp_receiver()
    try:
        sub = yield datagram_evi.subscribe("E_TEST", "udp:localhost:%d" % r.getsockname()[1])
        assert sub.socket == "udp:localhost:%d" % r.getsockname()[1]
        assert sub.address[0] == "127.0.0.1"
    finally:
        r.close()


@pytest_twisted.inlineCallbacks
def test_udp_unresolvable_hostname_is_a_bad_socket(datagram_evi):
    with pytest.raises(BadSocket):
        yield datagram_evi.subscribe("E_TEST", "udp:no-such-host.invalid:9")


@pytest.mark.parametrize("socket_text", [
    "udp:127.0.0.1", "udp::9", "udp:127.0.0.1:0", "udp:127.0.0.1:70000", "udp:127.0.0.1:9x",
    "udp:127.0.0.1:123456", "udp:[::1:9", "udp:[nothex]:9", "unix:", "udp:a b:9"])
def test_bad_datagram_sockets(datagram_evi, socket_text):
    assert result_of(datagram_evi.subscribe("E_TEST", socket_text)).check(BadSocket)


def test_udp_key_is_exact_host_text(datagram_evi):
    result_of(datagram_evi.subscribe("E_TEST", "udp:127.0.0.10:9"))
    result_of(datagram_evi.subscribe("E_TEST", "udp:127.0.0.1:9"))
    assert datagram_evi.store.size == 2  # no OpenSIPS prefix matching (§9 D7)


def test_udp_payload_too_large_counts_as_failed(datagram_evi):
    r = udp_receiver()
    try:
        result_of(datagram_evi.subscribe("E_TEST", "udp:127.0.0.1:%d" % r.getsockname()[1]))
        report = result_of(datagram_evi.raise_event("E_TEST", ["x" * 70000]))
        assert (report.delivered, report.failed) == (0, 1)
        assert "too long" in report.errors[0][1]
        assert counters(datagram_evi, "udp") == (0, 1, 0)
    finally:
        r.close()


def test_unix_delivery_and_bare_path(datagram_evi, tmpdir_short):
    path = str(tmpdir_short / "rx.sock")
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.bind(path)
    r.settimeout(5)
    try:
        result_of(datagram_evi.subscribe("E_TEST", path))
        sub = datagram_evi.event("E_TEST").subscriptions["unix:" + path]
        assert sub.socket == "unix:" + path
        result_of(datagram_evi.raise_event("E_TEST", ["a"]))
        assert r.recv(100) == b'{"jsonrpc":"2.0","method":"E_TEST","params":["a"]}'
    finally:
        r.close()


def test_unix_missing_path_and_dead_socket_are_failures(datagram_evi, tmpdir_short):
    dead = str(tmpdir_short / "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(dead)
    s.close()  # the file stays, nobody reads: ECONNREFUSED
    result_of(datagram_evi.subscribe("E_TEST", "unix:" + dead))
    result_of(datagram_evi.subscribe("E_TEST", "unix:" + str(tmpdir_short / "missing.sock")))
    report = result_of(datagram_evi.raise_event("E_TEST"))
    assert (report.delivered, report.failed) == (0, 2)
    reasons = sorted(reason for _, reason in report.errors)
    assert reasons == ["Connection refused", "No such file or directory"]


def test_unix_receiver_that_stops_reading_gets_counted_drops(datagram_evi, tmpdir_short):
    path = str(tmpdir_short / "slow.sock")
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.bind(path)
    try:
        result_of(datagram_evi.subscribe("E_TEST", "unix:" + path))
        reports = [result_of(datagram_evi.raise_event("E_TEST", [str(i)])) for i in range(2000)]
        delivered = sum(rep.delivered for rep in reports)
        dropped = sum(rep.dropped for rep in reports)
        assert dropped > 0 and delivered + dropped == 2000
        assert counters(datagram_evi, "unix") == (delivered, 0, dropped)
        sub = datagram_evi.event("E_TEST").subscriptions["unix:" + path]
        assert (sub.sent, sub.dropped) == (delivered, dropped)
    finally:
        r.close()


def test_text_format():
    statistics = Statistics()
    udp = UDPTransport("udp", "text", statistics, reactor)
    evi = EventInterface(Clock(), {"udp": udp}, statistics)
    evi.publish("E_TEST")
    r = udp_receiver()
    try:
        result_of(evi.subscribe("E_TEST", "udp:127.0.0.1:%d" % r.getsockname()[1]))
        result_of(evi.raise_event("E_TEST", {"ip": "1.2.3.4", "n": 5}))
        assert r.recv(100) == b"E_TEST\nip::1.2.3.4\nn::5\n\n"
    finally:
        r.close()
        udp.stopService()


def test_udp_closed_port_is_counted_against_the_right_subscriber(datagram_evi):
    live = udp_receiver()
    dead = udp_receiver()
    dead_port = dead.getsockname()[1]
    dead.close()
    try:
        result_of(datagram_evi.subscribe("E_TEST", "udp:127.0.0.1:%d" % dead_port))
        result_of(datagram_evi.subscribe("E_TEST", "udp:127.0.0.1:%d" % live.getsockname()[1]))
        for n in range(5):
            result_of(datagram_evi.raise_event("E_TEST", {"n": n}))
            # the live subscriber gets every notification, never blamed
            assert live.recv(200) == b'{"jsonrpc":"2.0","method":"E_TEST","params":{"n":%d}}' % n
        subs = datagram_evi.event("E_TEST").subscriptions
        dead_sub = subs[("127.0.0.1", dead_port)]
        live_sub = subs[("127.0.0.1", live.getsockname()[1])]
        assert (live_sub.sent, live_sub.failed) == (5, 0)
        # each refusal is learnt at a later send; the last may still be in flight
        assert dead_sub.failed >= 4 and dead_sub.last_error.startswith("Connection refused")
    finally:
        live.close()


def test_udp_refused_notification_has_one_outcome(datagram_evi):
    # A datagram refused by ICMP was counted as sent when it left; once the
    # refusal is learnt it is a failure instead, never both.
    dead = udp_receiver()
    dead_port = dead.getsockname()[1]
    dead.close()
    result_of(datagram_evi.subscribe("E_TEST", "udp:127.0.0.1:%d" % dead_port))
    sub = datagram_evi.event("E_TEST").subscriptions[("127.0.0.1", dead_port)]
    for n in range(4):
        result_of(datagram_evi.raise_event("E_TEST", {"n": n}))
        # every notification has exactly one outcome
        assert sub.sent + sub.failed + sub.dropped == n + 1
    assert sub.failed >= 2
