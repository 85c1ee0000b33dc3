"""
The MI over HTTP: JSON-RPC 2.0 by POST on the [http] site, through a real
in-process server and a real HTTP client (twisted.web's Agent), parity with
the datagram MI, the size limits, opensips-mi -t http and evsrv-ctl --http
against a real server process.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from evsrv.config import read_config
from evsrv.server import transport_factories
from tests.conftest import BASE_INI, make_config

HTTP_INI = BASE_INI + """\
[http]
listen = 127.0.0.1:0
"""

BIN = Path(sys.executable).parent
OPENSIPS_MI = BIN / "opensips-mi"


class Client:
    """
    Blocking-free HTTP requests on the test reactor; one connection per
    request (closed by the client after the answer).
    """

    def __init__(self):
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)

    @inlineCallbacks
    def request(self, method, url, body=None, headers=None):
        from twisted.web.client import FileBodyProducer
        from io import BytesIO
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        response = yield self.agent.request(
            method, url.encode(),
            Headers(headers or {b"Content-Type": [b"application/json"]}), producer)
        done = Deferred()
        response.deliverBody(_BodyCollector(done))
        data = yield done
        return response, data


class _BodyCollector(Protocol):
    """
    The whole response body (readBody warns with this pool's transports).
    """

    def __init__(self, done):
        self.done = done
        self.chunks = []

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.chunks))


@pytest.fixture
def client():
    c = Client()
    yield c
    pytest_twisted.blockon(c.pool.closeCachedConnections())


class RawReply(Protocol):
    """
    Sends bytes as they are and collects everything until the server closes.
    """

    def __init__(self, data):
        self.data = data
        self.received = b""
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


@pytest_twisted.inlineCallbacks
def raw_request(server, data):
    host, port = server.http.listening.getHost().host, server.http.listening.getHost().port
    protocol = RawReply(data)
    yield connectProtocol(TCP4ClientEndpoint(reactor, host, port), protocol)
    received = yield protocol.done.addTimeout(5, reactor)
    return received


def rpc(method, params=None, id_=1):
    request = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        request["params"] = params
    if id_ is not None:
        request["id"] = id_
    return json.dumps(request).encode()


@pytest.fixture
def http_server(server_factory):
    return server_factory(HTTP_INI)


# -- configuration -----------------------------------------------------------------


def test_embedded_default_listens_on_8888():
    config = read_config(None, transport_factories())
    assert config.http.listen == ("127.0.0.1", 8888)
    assert (config.http.mi_path, config.http.metrics_path) == ("/mi", "/metrics")
    assert (config.http.idle_timeout, config.http.header_timeout) == (60.0, 10.0)


def test_http_is_off_unless_the_ini_says_so(tmpdir_short):
    assert make_config(BASE_INI, tmpdir_short).http.listen is None


@pytest.mark.parametrize("key, value, message", [
    ("listen", "localhost:8888", "bad IPv4 address"),
    ("listen", "127.0.0.1:99999", "bad port"),
    ("mi_path", "mi", "URL path"),
    ("metrics_path", "/mi", "must differ from mi_path"),
    ("max_request", "10", "between 1024"),
    ("idle_timeout", "0", "positive"),
    ("header_timeout", "0", "positive"),
    ("header_timeout", "soon", "bad value"),
    ("other", "1", "unknown key"),
])
def test_bad_http_settings(tmpdir_short, key, value, message):
    from evsrv.config import ConfigError
    with pytest.raises(ConfigError) as e:
        make_config(BASE_INI + f"[http]\n{key} = {value}\n", tmpdir_short)
    assert f"[http] {key}:" in str(e.value) and message in str(e.value)


def test_taken_port_fails_start_up_naming_the_key(server_factory, http_server):
    port = http_server.http.listening.getHost().port
    from evsrv.config import ConfigError
    with pytest.raises(ConfigError) as e:
        server_factory(BASE_INI.replace("unix = mi.sock", "unix = mi2.sock")
                       + f"[http]\nlisten = 127.0.0.1:{port}\n")
    assert "[http] listen: cannot listen on http://127.0.0.1:" in str(e.value)
    assert "\n" not in str(e.value)


# -- JSON-RPC by POST ---------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_result_and_error_are_200_json(http_server, client):
    url = http_server.http_mi_url()
    response, data = yield client.request(b"POST", url, rpc("which"))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert "subscribers_list" in json.loads(data)["result"]
    response, data = yield client.request(b"POST", url, rpc("no_such_command"))
    assert response.code == 200
    assert json.loads(data)["error"]["code"] == -32601


@pytest_twisted.inlineCallbacks
def test_notification_gets_an_empty_200(http_server, client):
    before = http_server.controller.commands["which"].calls
    response, data = yield client.request(b"POST", http_server.http_mi_url(),
                                          rpc("which", id_=None))
    assert (response.code, data) == (200, b"")
    assert http_server.controller.commands["which"].calls == before + 1


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("body", [b"not json", b"", b":which:\n"])
def test_non_json_body_is_400_parse_error(http_server, client, body):
    response, data = yield client.request(b"POST", http_server.http_mi_url(), body)
    assert (response.code, data) == (400, b"400 Parse_error")


@pytest_twisted.inlineCallbacks
def test_methods_other_than_post_are_405(http_server, client):
    url = http_server.http_mi_url()
    for method in (b"GET", b"PUT", b"DELETE", b"HEAD"):
        response, _ = yield client.request(method, url)
        assert response.code == 405, method
        assert response.headers.getRawHeaders(b"allow") == [b"POST"]


@pytest_twisted.inlineCallbacks
def test_unknown_path_is_404(http_server, client):
    response, _ = yield client.request(b"POST", http_server.http_url("/other"), rpc("which"))
    assert response.code == 404


@pytest_twisted.inlineCallbacks
def test_parity_with_the_datagram_mi(http_server, client):
    """
    The same requests through the datagram dispatcher, a real UDP socket and
    HTTP give identical bytes.
    """
    yield http_server.evi.subscribe("E_TEST", "udp:127.0.0.1:9", 1000)
    requests = [
        rpc("which"), rpc("events_list"), rpc("subscribers_list"),
        rpc("subscribers_list", ["E_TEST"], id_="x"),
        rpc("subscribers_list", {"event": "E_OTHER"}, id_=7),
        rpc("event_subscribe", ["E_NOPE", "udp:127.0.0.1:9"]),
        rpc("event_subscribe", ["E_TEST", "bogus:x"]),
        rpc("no_such_command"), rpc("which", id_=None),
        b'{"jsonrpc": "2.0", "id": 3}', b"[1, 2]", b"{broken",
        rpc("get_statistics", {"statistics": ["evi:events"]}),
    ]
    for request in requests:
        datagram = yield http_server.dispatcher.handle(request)
        response, data = yield client.request(b"POST", http_server.http_mi_url(), request)
        assert data == (datagram or b""), request
        assert response.code == (400 if datagram == b"400 Parse_error" else 200)


@pytest_twisted.inlineCallbacks
def test_parity_over_a_real_udp_socket(http_server, client, udp_collector):
    collector = udp_collector()
    for request in (rpc("events_list"), rpc("subscribers_list", ["E_TEST"])):
        datagram, _ = yield collector.request(request, http_server.mi_udp_address())
        _, data = yield client.request(b"POST", http_server.http_mi_url(), request)
        assert data == datagram


@pytest_twisted.inlineCallbacks
def test_10000_subscribers_answered_completely_over_http(http_server, client,
                                                          udp_collector):
    for n in range(10000):
        yield http_server.evi.subscribe("E_TEST", f"udp:127.0.0.1:{n + 1}", 3600)
    request = rpc("subscribers_list", ["E_TEST"])
    response, data = yield client.request(b"POST", http_server.http_mi_url(), request)
    assert response.code == 200
    listed = json.loads(data)["result"]["Event"]["Subscribers"]
    assert sorted(s["socket"] for s in listed) == sorted(
        f"udp:127.0.0.1:{n + 1}" for n in range(10000))
    assert len(data) > 65457
    # the datagram MI cannot carry it, and says where to get it
    collector = udp_collector()
    datagram, _ = yield collector.request(request, http_server.mi_udp_address())
    error = json.loads(datagram)["error"]
    assert error["message"] == "Reply too large"
    assert f"use the HTTP MI {http_server.http_mi_url()}" in error["data"]


def test_reply_too_large_hint_without_http(server):
    assert "HTTP" not in server.dispatcher.large_reply_hint


# -- hostile clients ----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_declared_body_over_the_cap_is_413_before_reading_it(http_server):
    reply = yield raw_request(http_server, b"POST /mi HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\n"
                              b"Content-Length: 2000000\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert reply.endswith(b"\r\n\r\n413 Request body too large")
    assert http_server.statistics.value("http:requests_too_large") == 1


@pytest_twisted.inlineCallbacks
def test_expect_100_continue_over_the_cap_gets_only_413(http_server):
    reply = yield raw_request(http_server, b"POST /mi HTTP/1.1\r\nHost: x\r\n"
                              b"Expect: 100-continue\r\nContent-Length: 2000000\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in reply


@pytest_twisted.inlineCallbacks
def test_chunked_body_over_the_cap_is_413(http_server):
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20))
    reply = yield raw_request(http_server, b"POST /mi HTTP/1.1\r\nHost: x\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert reply.startswith(b"HTTP/1.1 413 ")


@pytest_twisted.inlineCallbacks
def test_body_at_the_cap_is_served(server_factory, client):
    server = server_factory(HTTP_INI + "max_request = 2048\n")
    request = rpc("which")
    request = request[:-1] + b" " * (2048 - len(request)) + b"}"
    assert len(request) == 2048
    response, data = yield client.request(b"POST", server.http_mi_url(), request)
    assert response.code == 200 and "result" in json.loads(data)
    response, _ = yield client.request(b"POST", server.http_mi_url(), request + b" ")
    assert response.code == 413


def clock_site(tmpdir_short, settings=""):
    """
    The HTTP site of a server built on a Clock (its timers run on the
    server's reactor), with C{settings} added to C{[http]}.
    """
    from evsrv.server import EvsrvService
    from evsrv.http.site import build_site
    clock = Clock()
    config = make_config(HTTP_INI + settings, tmpdir_short)
    service = EvsrvService(config, clock)
    site = build_site(config.http, clock, service.statistics, service.evi,
                      service.controller, service.http_dispatcher)
    return clock, site, service.statistics


def connect(site):
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def hang_up(protocol, clock=None):
    """
    The client side goes away (StringTransport never says so itself); with
    C{clock} (no other connection open), nothing may be left on it.
    """
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    protocol.connectionLost(Failure(ConnectionDone()))
    if clock is not None:
        assert not clock.getDelayedCalls()


def http_post(body, extra=b""):
    return (b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (extra, len(body), body))


# a request head that is never finished (no blank line)
SLOW_HEAD = b"POST /mi HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200


@pytest.fixture
def warnings():
    """
    The warnings logged during the test, formatted.
    """
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    lines = []

    def observe(event):
        if event.get("log_level") == LogLevel.warn:
            lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_header_dribble_is_closed_at_header_timeout(tmpdir_short, warnings):
    """
    Slowloris: a header byte every 5 s resets idle_timeout (6 s) each time,
    but the head has its own deadline, counted from the connection's start:
    at header_timeout the client is answered 408 and the connection closed,
    counted, and logged once per period however many clients do it.
    """
    clock, site, statistics = clock_site(tmpdir_short, "idle_timeout = 6\nheader_timeout = 10\n")
    protocol, transport = connect(site)
    protocol.dataReceived(SLOW_HEAD[:1])
    clock.advance(5)
    other, other_transport = connect(site)  # a second client, 5 s behind
    protocol.dataReceived(SLOW_HEAD[1:2])
    other.dataReceived(SLOW_HEAD[:1])
    clock.advance(4.9)
    assert not transport.disconnecting and transport.value() == b""
    clock.advance(0.1)  # 10 s since the first client's start
    assert transport.disconnecting and not transport.disconnected  # closed, not aborted
    reply = transport.value()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nConnection: close\r\n" in reply
    assert reply.endswith(b"\r\n\r\n408 Request Timeout")
    assert statistics.value("http:requests_timed_out") == 1
    hang_up(protocol)
    other.dataReceived(SLOW_HEAD[1:2])
    clock.advance(5)
    # the second: answered and counted, not logged again within the 10 s
    assert other_transport.value().startswith(b"HTTP/1.1 408 ")
    assert statistics.value("http:requests_timed_out") == 2
    hang_up(other, clock)
    assert [line for line in warnings if "timed out" in line] == [
        "HTTP client 192.168.1.1 timed out: request line and headers not received within "
        "10 s; answered 408, connection closed (0 similar messages suppressed)"]


def test_client_that_does_not_read_the_408_is_aborted(tmpdir_short):
    """
    The 408 is written and the connection closed cleanly; a client that
    does not read (its window full) is cut off after Twisted's abortTimeout.
    """
    clock, site, _ = clock_site(tmpdir_short, "header_timeout = 10\n")
    protocol, transport = connect(site)
    protocol.dataReceived(SLOW_HEAD[:1])
    clock.advance(10)
    assert transport.disconnecting and not transport.disconnected
    clock.advance(protocol.abortTimeout)
    assert transport.disconnected  # StringTransport: aborted
    hang_up(protocol, clock)


def test_body_dribble_is_closed_at_idle_timeout_after_the_head(tmpdir_short):
    """
    Headers in time, then a body byte every 5 s: each resets the idle timer,
    but the body must be complete within idle_timeout of the head's end.
    """
    clock, site, statistics = clock_site(tmpdir_short, "idle_timeout = 20\nheader_timeout = 10\n")
    protocol, transport = connect(site)
    clock.advance(9)
    protocol.dataReceived(b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    for _ in range(3):  # past the head's deadline: it no longer applies
        clock.advance(5)
        protocol.dataReceived(b" ")
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert statistics.value("http:requests_timed_out") == 1
    hang_up(protocol, clock)


def test_silent_connection_is_closed_quietly_at_header_timeout(tmpdir_short, warnings):
    """
    A connection that sends nothing at all has begun no request: it is
    closed at header_timeout (counted from its start) without a 408, and is
    neither counted nor logged, as an idle close (browsers open spare ones).
    """
    clock, site, statistics = clock_site(tmpdir_short, "idle_timeout = 30\nheader_timeout = 10\n")
    protocol, transport = connect(site)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting and transport.value() == b""
    assert statistics.value("http:requests_timed_out") == 0
    assert not [line for line in warnings if "timed out" in line]
    hang_up(protocol, clock)


def test_idle_connection_is_closed_after_idle_timeout(tmpdir_short):
    """
    A client that connects and says nothing is dropped after idle_timeout
    when that comes before header_timeout (on a Clock: the site's timers
    run on the server's reactor).
    """
    clock, site, _ = clock_site(tmpdir_short, "idle_timeout = 30\nheader_timeout = 60\n")
    protocol, transport = connect(site)
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting
    hang_up(protocol, clock)


def test_keep_alive_waits_idle_timeout_then_the_head_has_header_timeout(tmpdir_short):
    """
    Between requests a keep-alive connection may wait silent for
    idle_timeout, as before; the next head's deadline starts at its first
    byte. Requests in time are all answered on the one connection.
    """
    clock, site, statistics = clock_site(tmpdir_short, "idle_timeout = 60\nheader_timeout = 10\n")
    protocol, transport = connect(site)
    for n in range(3):
        if n:
            clock.advance(30)  # longer than header_timeout, shorter than idle_timeout
            assert not transport.disconnecting
        transport.clear()
        protocol.dataReceived(http_post(rpc("which", id_=n)))
        assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n"), transport.value()
        assert json.loads(transport.value().split(b"\r\n\r\n", 1)[1])["id"] == n
    # the next request begins and stalls: its own header_timeout
    transport.clear()
    clock.advance(30)
    protocol.dataReceived(b"P")
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert statistics.value("http:requests_timed_out") == 1
    assert statistics.value("http:requests") == 3
    hang_up(protocol, clock)


def test_keep_alive_silent_after_a_request_is_closed_at_idle_timeout(tmpdir_short):
    clock, site, statistics = clock_site(tmpdir_short, "idle_timeout = 60\nheader_timeout = 10\n")
    protocol, transport = connect(site)
    protocol.dataReceived(http_post(rpc("which")))
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    clock.advance(59.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting and transport.value() == b""
    assert statistics.value("http:requests_timed_out") == 0
    hang_up(protocol, clock)


def test_pipelined_request_head_is_timed_from_the_end_of_the_previous(tmpdir_short):
    """
    Bytes of the next request that came while the previous one was being
    answered: its head's deadline starts when that answer is done.
    """
    from evsrv.mi.controller import Command
    clock, site, statistics = clock_site(tmpdir_short, "idle_timeout = 60\nheader_timeout = 10\n")
    pending = Deferred()
    site.resource.routes[b"/mi"].dispatcher.controller.register(
        Command("slow_test", [[]], lambda call: pending))
    protocol, transport = connect(site)
    protocol.dataReceived(http_post(rpc("slow_test")) + SLOW_HEAD[:5])
    clock.advance(30)  # the command takes its time; no deadline runs meanwhile
    assert not transport.disconnecting
    pending.callback("OK")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    hang_up(protocol, clock)


class Dribbler(Protocol):
    """
    Sends C{data} one byte every C{interval} seconds (on the real reactor)
    and collects what comes back until the server closes.
    """

    def __init__(self, data, interval):
        from twisted.internet.task import LoopingCall
        self.data = data
        self.received = b""
        self.done = Deferred()
        self.sending = LoopingCall(self._next)
        self.interval = interval

    def connectionMade(self):
        self.started = reactor.seconds()
        self.sending.start(self.interval)

    def _next(self):
        if self.data:
            self.transport.write(self.data[:1])
            self.data = self.data[1:]

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        if self.sending.running:
            self.sending.stop()
        self.elapsed = reactor.seconds() - self.started
        self.done.callback(self.received)


@pytest_twisted.inlineCallbacks
def test_header_dribble_over_a_real_socket_is_closed(server_factory):
    server = server_factory(HTTP_INI + "header_timeout = 0.5\n")
    host = server.http.listening.getHost()
    protocol = Dribbler(SLOW_HEAD, 0.05)  # 20 bytes a second: never done in time
    yield connectProtocol(TCP4ClientEndpoint(reactor, host.host, host.port), protocol)
    received = yield protocol.done.addTimeout(5, reactor)
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert 0.4 < protocol.elapsed < 3, protocol.elapsed
    assert server.statistics.value("http:requests_timed_out") == 1
    from tests.conftest import until
    yield until(lambda: not server.http.site.connections)


@pytest_twisted.inlineCallbacks
def test_keep_alive_client_is_unaffected(server_factory):
    """
    Several requests on one persistent connection, spread over more than
    header_timeout: each head has its own deadline, none is missed.
    """
    from twisted.internet.task import deferLater
    server = server_factory(HTTP_INI + "header_timeout = 0.5\n")
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    agent = Agent(reactor, pool=pool)
    from twisted.web.client import FileBodyProducer
    from io import BytesIO
    connections = set()
    try:
        for n in range(4):
            response = yield agent.request(
                b"POST", server.http_mi_url().encode(),
                Headers({b"Content-Type": [b"application/json"]}),
                FileBodyProducer(BytesIO(rpc("which", id_=n))))
            done = Deferred()
            response.deliverBody(_BodyCollector(done))
            # (the connection goes back to the pool once the body is read)
            connections.update(server.http.site.connections)
            data = yield done
            assert response.code == 200 and json.loads(data)["id"] == n
            yield deferLater(reactor, 0.2, lambda: None)
    finally:
        yield pool.closeCachedConnections()
    assert len(connections) == 1  # 0.8 s, 4 requests, one connection
    assert server.statistics.value("http:requests_timed_out") == 0
    assert server.statistics.value("http:requests") == 4


@pytest_twisted.inlineCallbacks
def test_client_gone_before_the_reply(http_server):
    """
    A command whose reply is pending when the client hangs up: it still
    completes, nothing is written and nothing is logged as an error.
    """
    from evsrv.mi.controller import Command
    pending = Deferred()
    http_server.controller.register(Command("slow_test", [[]], lambda call: pending))
    host = http_server.http.listening.getHost()
    protocol = RawReply(b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(rpc("slow_test")), rpc("slow_test")))
    yield connectProtocol(TCP4ClientEndpoint(reactor, host.host, host.port), protocol)
    from tests.conftest import until
    yield until(lambda: http_server.controller.commands["slow_test"].calls == 1)
    protocol.transport.loseConnection()
    received = yield protocol.done
    assert received == b""
    yield until(lambda: not http_server.http.site.connections)
    pending.callback("OK")
    # the command finished without error and its reply went nowhere: no
    # response was completed (the site counts each one it finishes)
    command = http_server.controller.commands["slow_test"]
    assert (command.calls, command.errors) == (1, 0)
    assert http_server.statistics.value("http:requests") == 0
    assert http_server.statistics.value("mi:errors") == 0


@pytest_twisted.inlineCallbacks
def test_stop_closes_open_connections(server_factory):
    server = server_factory(HTTP_INI)
    host = server.http.listening.getHost()
    protocol = RawReply(b"POST /mi HTTP/1.1\r\n")  # and then nothing
    yield connectProtocol(TCP4ClientEndpoint(reactor, host.host, host.port), protocol)
    from tests.conftest import until
    yield until(lambda: server.http.site.connections)
    yield server.stopService()
    yield protocol.done.addTimeout(5, reactor)
    assert not server.http.site.connections


# -- real clients against a real server process ---------------------------------------


def client_env():
    import os
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OPENSIPS_") and k != "EVSRV_MI_HTTP"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_opensips_mi_over_http(server_process):
    assert OPENSIPS_MI.exists(), f"{OPENSIPS_MI} is missing: `make test` installs it"
    proc = server_process(HTTP_INI)
    assert proc.http and proc.http.endswith("/mi")
    host, port = proc.http[len("http://"):-len("/mi")].rsplit(":", 1)

    def mi(*args):
        return subprocess.run([str(OPENSIPS_MI), "-t", "http", "-i", host, "-p", port, *args],
                              capture_output=True, text=True, timeout=20, env=client_env(),
                              cwd=str(proc.ini.parent))
    result = mi("event_subscribe", "E_TEST", "udp:127.0.0.1:9", "120")
    assert (result.returncode, json.loads(result.stdout)) == (0, "OK"), result
    result = mi("subscribers_list", "E_TEST")
    assert result.returncode == 0, result
    listed = json.loads(result.stdout)["Event"]["Subscribers"]
    assert [s["socket"] for s in listed] == ["udp:127.0.0.1:9"]
    result = mi("no_such_command")
    assert result.returncode == 1 and "Method not found" in result.stdout + result.stderr, result


def test_evsrv_ctl_over_http(server_process):
    proc = server_process(HTTP_INI)
    from evsrv import ctl

    def run(*args):
        return subprocess.run([sys.executable, "-m", "evsrv.ctl", *args], capture_output=True,
                              text=True, timeout=20, env=client_env())
    result = run("--http", proc.http, "events_list")
    assert result.returncode == 0, result
    assert "E_TEST" in [e["name"] for e in json.loads(result.stdout)["Events"]]
    result = run("--http", proc.http, "no_such_command")
    assert result.returncode == 1 and "error -32601" in result.stderr, result
    result = run("--http", proc.http, "-a", "127.0.0.1:1", "which")
    assert result.returncode == 2 and "exclusive" in result.stderr
    # same answer over UDP
    udp = run("-a", "%s:%d" % proc.udp, "events_list")
    http = run("--http", proc.http, "events_list")
    assert udp.stdout == http.stdout
    # nothing listening: exit 2 with one line
    closed = proc.http.rsplit(":", 1)[0] + ":1/mi"
    result = run("--http", closed, "which")
    assert result.returncode == 2 and "cannot reach" in result.stderr, result
    assert ctl.HTTPMIClient(proc.http).call("which").ok
