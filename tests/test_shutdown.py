"""
Graceful shutdown: the order of the steps and the deadline (unit, on a
Clock), each transport's drain (on fakes), the exit status, and real
processes stopped with SIGTERM.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from zope.interface import alsoProvides, implementer

from evsrv import exitstatus
from evsrv.mi.protocol import ListeningPorts
from evsrv.shutdown import (DRAIN_GRACE, DRAIN_POLL, NO_REPORT, DrainResult, close_listeners,
                            stop_server, wait_drained)
from evsrv.util.statistics import Statistics
from evsrv.transports import TransportCounters
from evsrv.interfaces import ICounted, IDrainable
from tests import test_rabbitmq_unit as rabbit_t
from tests import test_stream_transport as stream_t
from tests import test_xmlrpc_transport as xmlrpc_t
from tests.conftest import BASE_INI, ROOT
from tests.test_evi import result_of
from tests.test_tap import mi_call


@pytest.fixture(autouse=True)
def fresh_exit_status():
    exitstatus.reset()
    yield
    exitstatus.reset()


# -- wait_drained ----------------------------------------------------------------

def test_wait_drained_fires_at_once_when_nothing_is_held():
    clock = Clock()
    assert result_of(wait_drained(clock, 10, lambda: True)) is True
    assert clock.getDelayedCalls() == []


def test_wait_drained_polls_until_drained_or_the_deadline():
    clock = Clock()
    held = [3]
    d = wait_drained(clock, 1.0, lambda: held[0] == 0)
    clock.advance(DRAIN_POLL)
    assert not d.called
    held[0] = 0
    clock.advance(DRAIN_POLL)
    assert result_of(d) is True
    d = wait_drained(clock, clock.seconds() + 0.12, lambda: False)
    clock.pump([DRAIN_POLL, DRAIN_POLL])
    assert not d.called
    clock.advance(0.02)  # the last wait is cut to the deadline
    assert result_of(d) is False
    assert clock.getDelayedCalls() == []


def test_wait_drained_cancelled_leaves_no_timer():
    clock = Clock()
    d = wait_drained(clock, 5, lambda: False)
    d.cancel()
    assert result_of(d).check(CancelledError)
    assert clock.getDelayedCalls() == []


# -- stop_server, on fakes ---------------------------------------------------------

class FakePort:
    def __init__(self, steps):
        self.steps = steps

    def stopListening(self):
        self.steps.append("mi")


class FakeHTTP(Service):
    def __init__(self, steps):
        self.steps = steps

    def stopService(self):
        self.steps.append("http")


@implementer(IDrainable, ICounted)
class FakeTransport:
    """
    A transport whose drain the test settles by hand.
    """

    def __init__(self, name, steps, statistics):
        self.name = name
        self.steps = steps
        self.counters = TransportCounters(statistics, name)
        self.drains = []

    def drain(self, deadline):
        self.steps.append(f"drain {self.name}")
        d = Deferred()
        self.drains.append((deadline, d))
        return d


class FakeJournal:
    def __init__(self, steps, error=None):
        self.steps = steps
        self.error = error

    def close(self):
        self.steps.append("journal")
        return fail(self.error) if self.error else succeed(None)


def fake_server(timeout=5.0, journal_error=None, names=("tcp", "xmlrpc")):
    steps = []
    clock = Clock()
    clock.advance(100)
    statistics = Statistics()
    server = MultiService()
    server.reactor = clock
    server.config = SimpleNamespace(shutdown_timeout=timeout)
    server.transports = {n: FakeTransport(n, steps, statistics) for n in names}
    listening = ListeningPorts([FakePort(steps)])
    listening.setServiceParent(server)
    http = FakeHTTP(steps)
    http.setServiceParent(server)
    server.close_mi = lambda: close_listeners([listening, http])
    server.journal = FakeJournal(steps, journal_error)

    def stop_children():
        steps.append("children")
        return succeed(None)
    return server, clock, steps, stop_children


def test_order_mi_first_then_drain_then_children_then_journal():
    server, clock, steps, stop_children = fake_server(timeout=5.0)
    d = stop_server(server, stop_children)
    # the MI closes before anything else; every transport drains at once,
    # all to the same deadline
    assert steps == ["mi", "http", "drain tcp", "drain xmlrpc"]
    tcp, xmlrpc = server.transports["tcp"], server.transports["xmlrpc"]
    assert [deadline for deadline, _ in tcp.drains + xmlrpc.drains] == [105.0, 105.0]
    tcp.counters.sent.value += 2  # delivered while draining
    tcp.drains[0][1].callback(DrainResult())
    assert steps[-1] == "drain xmlrpc" and not d.called  # waits for every transport
    clock.advance(1)
    left = DrainResult()
    left.add("xmlrpc:127.0.0.1:9:m", 1, "1 call(s) unanswered")
    xmlrpc.drains[0][1].callback(left)
    assert steps[-2:] == ["children", "journal"]
    report = result_of(d)
    assert report.elapsed == 1.0
    assert (report.transports[0].delivered, report.transports[0].undelivered) == (2, 0)
    assert report.persisted is True
    # left at the deadline: the status says notifications may be lost
    assert report.status == exitstatus.UNDELIVERED == exitstatus.recorded()
    assert "2 notification(s) delivered" in report.summary()
    assert clock.getDelayedCalls() == []


def test_clean_stop_is_status_0():
    server, clock, steps, stop_children = fake_server()
    d = stop_server(server, stop_children)
    for transport in server.transports.values():
        transport.drains[0][1].callback(DrainResult())
    report = result_of(d)
    assert report.status == 0 == exitstatus.recorded()
    assert report.summary().startswith(
        "shutdown in 0.0 s: 0 notification(s) delivered, 0 undelivered (nothing was "
        "pending); subscriptions saved; exit status 0")


def test_counted_failures_while_draining_are_undelivered():
    server, clock, steps, stop_children = fake_server()
    d = stop_server(server, stop_children)
    tcp = server.transports["tcp"]
    tcp.counters.failed.value += 1   # e.g. its queue_timeout ran out while draining
    tcp.counters.dropped.value += 2  # dropped when the children stopped
    for transport in server.transports.values():
        transport.drains[0][1].callback(DrainResult())
    report = result_of(d)
    assert (report.delivered, report.undelivered, report.status) == (0, 3, 75)
    assert "tcp 0 delivered, 3 undelivered" in report.summary()


def test_the_deadline_is_kept_even_by_a_transport_that_never_answers():
    server, clock, steps, stop_children = fake_server(timeout=2.0)
    d = stop_server(server, stop_children)
    server.transports["tcp"].drains[0][1].callback(DrainResult())
    clock.advance(2.0)
    assert not d.called  # its grace to report
    clock.advance(DRAIN_GRACE)
    report = result_of(d)
    assert steps[-2:] == ["children", "journal"]
    assert server.transports["xmlrpc"].drains[0][1].called  # cancelled
    assert report.transports[1].result is NO_REPORT and report.status == 75
    assert "xmlrpc 0 delivered, 0 undelivered, did not finish draining" in report.summary()
    assert clock.getDelayedCalls() == []


def test_a_failing_drain_is_logged_and_does_not_stop_the_shutdown(logged_errors):
    server, clock, steps, stop_children = fake_server(names=("tcp",))
    server.transports["tcp"].drain = lambda deadline: 1 / 0
    report = result_of(stop_server(server, stop_children))
    assert [e["transport"] for e in logged_errors.flush(ZeroDivisionError)] == ["tcp"]
    assert report.transports[0].result is NO_REPORT and report.status == 75
    assert steps == ["mi", "http", "children", "journal"]


def test_transports_without_drain_and_virtual_results():
    server, clock, steps, stop_children = fake_server(names=())
    statistics = Statistics()
    udp = SimpleNamespace(counters=TransportCounters(statistics, "udp"))
    alsoProvides(udp, ICounted)
    virtual = SimpleNamespace(counters=TransportCounters(statistics, "virtual"),
                              drain=lambda deadline: DrainResult(through_members=True))
    alsoProvides(virtual, ICounted, IDrainable)
    server.transports = {"udp": udp, "virtual": virtual, "thirdparty": object()}

    def stopping():
        virtual.counters.dropped.value += 1  # counted again at its member's transport
        udp.counters.sent.value += 4
        return stop_children()
    report = result_of(stop_server(server, stopping))
    assert (report.delivered, report.undelivered, report.status) == (4, 0, 0)
    assert "virtual 0 delivered, 1 undelivered (counted at its members)" in report.summary()


def test_state_not_saved_is_status_74(logged_errors):
    server, clock, steps, stop_children = fake_server(journal_error=OSError("disk full"))
    d = stop_server(server, stop_children)
    for transport in server.transports.values():
        transport.drains[0][1].callback(DrainResult())
    report = result_of(d)
    assert report.persisted is False and report.status == exitstatus.NOT_PERSISTED == 74
    assert "subscriptions NOT saved (disk full)" in report.summary()
    assert len(logged_errors.flush()) == 1


def test_no_store_is_nothing_to_persist():
    server, clock, steps, stop_children = fake_server(names=())
    server.journal = None
    report = result_of(stop_server(server, stop_children))
    assert report.persisted is None and report.status == 0
    assert "subscriptions not stored ([store] backend = none)" in report.summary()


class BrokenPort:
    def stopListening(self):
        raise OSError("cannot close")


def test_close_listeners_logs_what_fails_and_removes_the_socket_files(tmp_path, logged_errors):
    steps = []
    socket_file = tmp_path / "mi.sock"
    socket_file.write_bytes(b"")
    http = FakeHTTP(steps)
    d = close_listeners([http], [FakePort(steps), BrokenPort()],
                        [str(socket_file), str(tmp_path / "gone.sock")])
    assert result_of(d) is None  # fired, and did not fail
    assert steps == ["http", "mi"]
    assert len(logged_errors.flush(OSError)) == 1
    assert not socket_file.exists()  # a file already gone is no error


@pytest_twisted.inlineCallbacks
def test_the_server_closes_its_mi_and_removes_its_socket_file(server_factory):
    from twisted.internet import reactor
    server = server_factory()
    [path] = server.mi_socket_paths
    assert os.path.exists(path)
    yield server.close_mi()
    assert not os.path.exists(path)
    assert not set(server.mi_ports) & set(reactor.getReaders())


# -- exit status -----------------------------------------------------------------------

def test_worst_status_wins():
    assert exitstatus.recorded() is None
    exitstatus.record(0)
    exitstatus.record(75)
    exitstatus.record(0)
    assert exitstatus.recorded() == 75
    exitstatus.record(74)
    exitstatus.record(75)
    assert exitstatus.recorded() == 74


def test_signal_reraise_becomes_the_recorded_status():
    reraised = []
    exitstatus.exit_with_status(signal.SIGTERM, reraised.append)
    assert reraised == [signal.SIGTERM]  # nothing recorded: Twisted's way
    exitstatus.record(75)
    with pytest.raises(SystemExit) as exit_info:
        exitstatus.exit_with_status(signal.SIGTERM, reraised.append)
    assert exit_info.value.code == 75 and reraised == [signal.SIGTERM]


def test_install_hooks_both_twisted_runners_once():
    from twisted.application import app
    from twisted.application.twist import _twist
    exitstatus.install()
    exitstatus.install()
    for module in (app, _twist):
        hook = module._exitWithSignal
        assert getattr(hook._evsrv_original, "_evsrv_original", None) is None
    exitstatus.record(0)
    with pytest.raises(SystemExit) as exit_info:
        _twist._exitWithSignal(signal.SIGTERM)
    assert exit_info.value.code == 0


# -- the transports' drains -------------------------------------------------------------

def test_tcp_drain_sends_the_queue_then_closes_gracefully(logged_errors):
    evi, clock, transport = stream_t.make_evi()
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:9"))
    reports = [evi.raise_event("E_TEST", {"n": i}) for i in range(2)]
    d = transport.drain(clock.seconds() + 5)
    assert not d.called  # connecting, 2 queued
    protocol, wire = stream_t.connect(clock)
    assert [o["params"]["n"] for o in stream_t.objects(wire.value())] == [0, 1]
    clock.advance(DRAIN_POLL)
    # all written: closed once Twisted has flushed it, not aborted
    assert wire.disconnecting and wire.producer is None and not d.called
    protocol.connectionLost(Failure(ConnectionDone()))
    clock.advance(DRAIN_POLL)
    assert result_of(d).complete
    assert [result_of(r).delivered for r in reports] == [1, 1]
    assert stream_t.counters(evi) == (2, 0, 0)


def test_tcp_drain_reports_a_down_destination_at_the_deadline(logged_errors):
    evi, clock, transport = stream_t.make_evi()
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:9"))
    reports = [evi.raise_event("E_TEST", {"n": i}) for i in range(3)]
    stream_t.refuse(clock)
    d = transport.drain(clock.seconds() + 1)
    clock.pump([DRAIN_POLL] * 19)
    assert not d.called
    clock.advance(DRAIN_POLL)
    assert result_of(d).destinations == {"tcp:127.0.0.1:9": [3, "connecting, connect failing"]}
    transport.stopService()
    clock.advance(0)
    assert [result_of(r).dropped for r in reports] == [1, 1, 1]


def test_tcp_reliable_drain_waits_for_the_replies():
    evi, clock, transport = stream_t.make_evi(reliable=True, timeout=30.0)
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:9"))
    report = evi.raise_event("E_TEST", {"n": 1})
    protocol, wire = stream_t.connect(clock)
    d = transport.drain(clock.seconds() + 5)
    clock.advance(DRAIN_POLL)
    assert not wire.disconnecting and not d.called  # awaiting the reply
    protocol.dataReceived(b'{"jsonrpc":"2.0","result":"ok","id":1}')
    clock.advance(DRAIN_POLL)
    assert wire.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    clock.advance(DRAIN_POLL)
    assert result_of(d).complete and result_of(report).delivered == 1


def test_tcp_drain_reports_a_peer_that_does_not_read():
    evi, clock, transport = stream_t.make_evi()
    result_of(evi.subscribe("E_TEST", "tcp:127.0.0.1:9"))
    evi.raise_event("E_TEST", {"n": 0})
    protocol, wire = stream_t.connect(clock)
    protocol.pauseProducing()  # Twisted's buffer is full
    evi.raise_event("E_TEST", {"n": 1})
    evi.raise_event("E_TEST", {"n": 2})
    d = transport.drain(clock.seconds() + 1)
    clock.pump([DRAIN_POLL] * 20)
    assert result_of(d).destinations == {
        "tcp:127.0.0.1:9": [2, "connected, the peer does not read"]}
    transport.stopService()
    clock.advance(0)
    assert stream_t.counters(evi) == (1, 0, 2)


def test_xmlrpc_drain_waits_for_open_calls():
    evi, clock, transport = xmlrpc_t.make_evi()
    result_of(evi.subscribe("E_TEST", "xmlrpc:127.0.0.1:8081:m"))
    evi.raise_event("E_TEST", [1])
    d = transport.drain(clock.seconds() + 2)
    clock.pump([DRAIN_POLL] * 40)
    assert result_of(d).destinations == {"xmlrpc:127.0.0.1:8081:m": [1, "1 call(s) unanswered"]}
    transport.stopService()
    assert xmlrpc_t.counters(evi) == (0, 0, 1)


def test_rabbitmq_drain_is_capped_by_stop_timeout_and_not_repeated_at_stop():
    transport, clock, statistics = rabbit_t.make_transport(queue_size=10, stop_timeout=1.0)
    conn = rabbit_t.connection_of(transport)
    conn.service = rabbit_t.FakeService()
    protocol, channel = rabbit_t.fake_connect(conn)
    results = [conn.publish(b"", b"q", b"m%d" % i) for i in range(3)]  # window 2
    d = transport.drain(clock.seconds() + 10)
    clock.advance(0.5)
    conn._confirmed(protocol, channel, 1, False, True)
    clock.advance(0.5)  # stop_timeout, not the shutdown deadline
    assert result_of(d).destinations == {conn.label: [2, "ready, 2 unconfirmed"]}
    stopped = transport.stopService()
    clock.advance(0)
    assert stopped.called  # no second wait
    assert [isinstance(result_of(r), bool) for r in results] == [True, False, False]
    assert clock.getDelayedCalls() == []


def test_rabbitmq_drain_ends_when_everything_is_confirmed():
    transport, clock, statistics = rabbit_t.make_transport(queue_size=10)
    conn = rabbit_t.connection_of(transport)
    conn.service = rabbit_t.FakeService()
    protocol, channel = rabbit_t.fake_connect(conn)
    conn.publish(b"", b"q", b"m")
    d = transport.drain(clock.seconds() + 10)
    conn._confirmed(protocol, channel, 1, False, True)
    clock.advance(0.05)
    assert result_of(d).complete


def test_virtual_is_drained_through_its_members():
    from evsrv.transports.virtual import VirtualTransport
    result = VirtualTransport("virtual", Statistics(), Clock()).drain(0)
    assert result.through_members and result.complete


# -- real processes ----------------------------------------------------------------------

def free_port():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there any more: connects are refused
    return port


def wait_for_log(proc, text, timeout=15.0):
    """
    Poll the process's log for C{text} (a line it writes when the state
    we wait for is reached).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.log():
            return
        assert proc.process.poll() is None, f"exited early:\n{proc.log()}"
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not logged:\n{proc.log()}")


def statistic(proc, name):
    return mi_call(proc.udp, "get_statistics", {"statistics": [name]})["result"][name]


def terminate(proc, bound):
    """
    SIGTERM, then wait for the exit; C{bound} is only a hang guard.
    """
    proc.process.send_signal(signal.SIGTERM)
    try:
        return proc.process.wait(bound)
    except subprocess.TimeoutExpired:
        proc.process.kill()
        raise AssertionError(f"still running {bound} s after SIGTERM:\n{proc.log()}")


def kernel_send_buffer_max():
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 16 * 1024 * 1024


def shutdown_ini(timeout, extra=""):
    return BASE_INI + f"[shutdown]\ntimeout = {timeout}\n{extra}"


def test_e2e_down_destination_is_reported_with_status_75(server_process):
    port = free_port()
    proc = server_process(shutdown_ini(1, "[transport:tcp]\nqueue_timeout = 60\n"))
    socket_text = f"tcp:127.0.0.1:{port}"
    assert mi_call(proc.udp, "event_subscribe", ["E_TEST", socket_text])["result"] == "OK"
    for i in range(3):
        assert mi_call(proc.udp, "raise_event", ["E_TEST", {"n": i}])["result"] == "OK"
    assert statistic(proc, "evi_tcp:queued") == 3
    # the deadline is kept (the bound is only a hang guard, far above 1 s)
    assert terminate(proc, bound=10) == exitstatus.UNDELIVERED
    log = proc.log()
    assert f"{socket_text}: 3 notification(s) undelivered (" in log
    assert "0 notification(s) delivered, 3 undelivered (tcp 0 delivered, 3 undelivered" in log
    assert "exit status 75" in log


def test_e2e_slow_receiver_gets_everything_while_mi_is_refused(server_process):
    receiver = socket.socket()
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    receiver.bind(("127.0.0.1", 0))
    receiver.listen(1)  # not accepted, not read until the shutdown has begun
    receiver.settimeout(15)
    try:
        proc = server_process(shutdown_ini(15), runner="twistd")
        sock = f"tcp:127.0.0.1:{receiver.getsockname()[1]}"
        assert mi_call(proc.udp, "event_subscribe", ["E_TEST", sock])["result"] == "OK"
        value = "v" * 48000
        raised = 0
        # Queued in evsrv while connected: the kernel buffers are full. So
        # many that the kernel could not take them all even if it grew the
        # send buffer to its largest: some are still queued at SIGTERM.
        enough = kernel_send_buffer_max() // len(value) + 10

        def stuck():
            return (statistic(proc, "evi_tcp:connections") == 1
                    and statistic(proc, "evi_tcp:queued") >= enough)
        while not stuck() and raised < 900:
            for _ in range(10):
                mi_call(proc.udp, "raise_event", ["E_TEST", {"n": raised, "v": value}])
                raised += 1
        assert stuck()
        unix_path = str(proc.ini.parent / "mi.sock")
        proc.process.send_signal(signal.SIGTERM)
        wait_for_log(proc, "shutdown: MI closed")
        # while draining, the MI gives no service: UDP port closed, UNIX path gone
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.settimeout(5)
        probe.connect(proc.udp)
        probe.send(b'{"jsonrpc":"2.0","method":"version","id":1}')
        with pytest.raises(ConnectionRefusedError):
            probe.recv(65536)
        probe.close()
        assert not os.path.exists(unix_path)
        # the receiver now reads; evsrv closes the connection once it is all sent
        connection, _ = receiver.accept()
        data = bytearray()
        with connection:
            connection.settimeout(15)
            while chunk := connection.recv(65536):
                data += chunk
        received = [o["params"]["n"] for o in stream_t.objects(bytes(data))]
        assert received == list(range(raised))
        assert proc.process.wait(15) == 0
        summary = [line for line in proc.log().splitlines() if "shutdown in " in line][0]
        # what was queued at SIGTERM went out during the drain
        drained = re.search(r"\(tcp (\d+) delivered, 0 undelivered\)", summary)
        assert drained and int(drained.group(1)) >= enough, summary
        assert summary.endswith("exit status 0")
    finally:
        receiver.close()


def test_e2e_clean_stop_is_status_0_with_twist(server_process):
    proc = server_process(shutdown_ini(5))
    assert terminate(proc, bound=10) == 0
    assert "nothing was pending" in proc.log()


def test_e2e_clean_stop_is_status_0_with_the_evsrv_script(tmpdir_short):
    ini = tmpdir_short / "script.ini"
    ini.write_text(shutdown_ini(5))
    log_path = tmpdir_short / "script.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from evsrv.run import main; main()",
             "--log-format=text", "-c", str(ini)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmpdir_short))
        proc = SimpleNamespace(process=process, log=lambda: log_path.read_text())
        try:
            wait_for_log(proc, "started:")
            assert terminate(proc, bound=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "exit status 0" in log_path.read_text()
