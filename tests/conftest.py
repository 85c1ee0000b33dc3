"""
Shared fixtures, and trial's discipline for pytest-twisted: a test fails if
it logs an error it did not expect, or leaves a timer behind.
"""

import inspect
import re
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel, globalLogPublisher

from evsrv.config import parse_config
from evsrv.server import EvsrvService, module_factories, transport_factories
from evsrv.testing import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


# Fixtures that start real processes (an evsrv server, an installed wheel):
# a test using one is marked slow, as are the modules that mark themselves
# (a broker, a browser). `make test PYTEST_ARGS='-m "not slow"'` skips them.
SLOW_FIXTURES = {"server_process", "evsrv", "listener_process", "installed", "deployed",
                 "production_root"}


SLOW_CALLS = re.compile(r"\b(ServerProcess|run_evsrv|subprocess|spawn|Popen|chromium)\b")


def pytest_collection_modifyitems(config, items):
    sources = {}
    for item in items:
        function = getattr(item, "function", None)
        if function not in sources:
            try:
                sources[function] = inspect.getsource(function)
            except (OSError, TypeError):
                sources[function] = ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) \
                or SLOW_CALLS.search(sources[function]):
            item.add_marker(pytest.mark.slow)


class LoggedErrors:
    """
    Errors logged through twisted.logger during a test. A test that expects
    some takes them with L{flush}; any left at teardown fail the test.
    """

    def __init__(self):
        self.events = []

    def __call__(self, event):
        if event.get("log_level", LogLevel.info) >= LogLevel.error or event.get("isError"):
            self.events.append(event)

    def flush(self, exception_type=None):
        taken = [e for e in self.events if exception_type is None
                 or (e.get("log_failure") is not None and e["log_failure"].check(exception_type))]
        self.events = [e for e in self.events if e not in taken]
        return taken


@pytest.fixture(autouse=True)
def logged_errors():
    errors = LoggedErrors()
    globalLogPublisher.addObserver(errors)
    yield errors
    globalLogPublisher.removeObserver(errors)
    if errors.events:
        from twisted.logger import formatEvent
        texts = [formatEvent(e) + ("\n" + e["log_failure"].getTraceback()
                                   if e.get("log_failure") else "") for e in errors.events]
        pytest.fail("errors were logged:\n" + "\n".join(texts))


@pytest.fixture(autouse=True)
def no_leaked_timers_or_ports():
    before = set(reactor.getDelayedCalls())
    readers = set(reactor.getReaders())
    yield
    leaked = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]
    for call in leaked:
        call.cancel()
    assert not leaked, f"timers left behind: {leaked}"
    # (the reactor adds its own signal wakers lazily)
    ports = [r for r in reactor.getReaders()
             if r not in readers and not type(r).__name__.endswith("Waker")]
    assert not ports, f"listening ports left behind: {ports}"


@pytest.fixture
def tmpdir_short():
    """
    A short temporary directory (UNIX socket paths are limited to 107 bytes).
    """
    path = Path(tempfile.mkdtemp(prefix="evsrv-t-"))
    yield path
    shutil.rmtree(path)


def make_config(text: str, base_dir: Path):
    return parse_config(text, "<test>", base_dir, transport_factories(), module_factories())


BASE_INI = """\
[mi]
udp = 127.0.0.1:0
unix = mi.sock
[events]
publish = E_TEST, E_OTHER
"""


@pytest.fixture
def server_factory(tmpdir_short):
    """
    Start in-process servers (in the test's reactor) from ini text; each is
    stopped, its ports closed, at teardown. Without a C{[store]} section
    in the text, the subscription store is off; without C{[shutdown]}, the
    drain at teardown is at most 0.5 s.
    """
    started = []

    def start(text=BASE_INI):
        if "[store]" not in text:
            # in-process tests read MI answers synchronously; a stored
            # subscribe answers a batch later (tests/test_persistence.py)
            text += "\n[store]\nbackend = none\n"
        if "[shutdown]" not in text:
            # a test that leaves a peer not reading should not wait the
            # default 10 s drain at teardown (tests/test_shutdown.py sets it)
            text += "\n[shutdown]\ntimeout = 0.5\n"
        service = EvsrvService(make_config(text, tmpdir_short), reactor)
        service.listen()
        service.startService()
        started.append(service)
        return service
    yield start
    for service in started:
        pytest_twisted.blockon(service.stopService())


@pytest.fixture
def server(server_factory):
    return server_factory()


@pytest.fixture
def server_process(tmpdir_short):
    """
    Start a real evsrv process from ini text (MI on udp:127.0.0.1:0 unless
    the text says otherwise); stopped at teardown.
    """
    running = []

    def start(text=BASE_INI, runner="twist"):
        ini = tmpdir_short / f"evsrv{len(running)}.ini"
        ini.write_text(text)
        proc = ServerProcess(ini, runner, pythonpath=ROOT)
        running.append(proc)
        return proc
    yield start
    for proc in running:
        proc.stop()


def udp_receiver():
    """
    A plain UDP socket on an ephemeral loopback port, with a timeout.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


class DatagramCollector(DatagramProtocol):
    """
    Receives datagrams in the test's reactor; C{next()} is a Deferred for
    the next one (with a timeout, so a missing datagram fails, never hangs).
    """
    noisy = False

    def __init__(self):
        self.received = []
        self._waiters = []

    def datagramReceived(self, data, addr):
        if self._waiters:
            self._waiters.pop(0).callback((data, addr))
        else:
            self.received.append((data, addr))

    def next(self, timeout=5.0):
        if self.received:
            return succeed(self.received.pop(0))
        d = Deferred()
        self._waiters.append(d)
        return d.addTimeout(timeout, reactor)

    def request(self, data: bytes, addr, timeout=5.0):
        """
        Send C{data} to C{addr} and wait for the next datagram back.
        """
        self.transport.write(data, addr)
        return self.next(timeout)


@pytest.fixture
def udp_collector():
    """
    Factory of L{DatagramCollector}s on ephemeral loopback UDP ports
    (C{collector.address} is C{(host, port)}); all closed at teardown.
    """
    ports = []

    def make():
        collector = DatagramCollector()
        port = reactor.listenUDP(0, collector, interface="127.0.0.1", maxPacketSize=65536)
        collector.address = ("127.0.0.1", port.getHost().port)
        ports.append(port)
        return collector
    yield make
    for port in ports:
        pytest_twisted.blockon(maybeDeferred(port.stopListening))


def until(predicate, timeout=5.0, interval=0.01):
    """
    A Deferred that fires once C{predicate()} is true, polling on the
    reactor; fails with a TimeoutError after C{timeout} seconds.
    """
    from twisted.internet.task import deferLater
    deadline = reactor.seconds() + timeout

    def check(_=None):
        if predicate():
            return True
        if reactor.seconds() > deadline:
            raise TimeoutError("condition not met in time")
        return deferLater(reactor, interval, lambda: None).addCallback(check)
    return succeed(None).addCallback(check)
