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


def test_http_is_off_unless_the_ini_says_so(tmpdir_short):
    assert make_config(BASE_INI, tmpdir_short).http.listen is None


@pytest.mark.parametrize("key, value, message", [
    ("listen", "localhost:8888", "bad IPv4 address"),
    ("listen", "127.0.0.1:99999", "bad port"),
    ("mi_path", "mi", "URL path"),
    ("metrics_path", "/mi", "must differ from mi_path"),
    ("max_request", "10", "between 1024"),
    ("idle_timeout", "0", "positive"),
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


def test_idle_connection_is_closed_after_idle_timeout(tmpdir_short):
    """
    A client that connects and says nothing is dropped after idle_timeout
    (on a Clock: the site's timers run on the server's reactor).
    """
    from evsrv.server import EvsrvService
    from evsrv.http.site import build_site
    clock = Clock()
    config = make_config(HTTP_INI + "idle_timeout = 30\n", tmpdir_short)
    service = EvsrvService(config, clock)
    site = build_site(config.http, clock, service.statistics, service.evi,
                      service.controller, service.http_dispatcher)
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


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
    yield protocol.done
    yield until(lambda: not http_server.http.site.connections)
    pending.callback("OK")


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


@pytest.mark.skipif(not OPENSIPS_MI.exists(), reason="opensips-mi is not installed")
def test_opensips_mi_over_http(server_process):
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
