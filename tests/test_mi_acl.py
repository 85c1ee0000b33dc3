"""
MI access control (issue 6): the UDP listeners' source allow lists (global
and per listener, IPv4, IPv6 and IPv4-mapped), the UNIX socket's mode, owner
and group, the HTTP site's allow list, and the request gates' refusals
(pike's 429 on the datagram and HTTP MI), from real sockets.

Refused datagrams get no reply; to show that without waiting for a silence,
each test then sends a request that is served from the same client socket:
the server handles datagrams in order and a reply would have been sent at
once, so the next datagram the client gets must be the served one's reply.
"""

import json
import os
import stat
import warnings as pywarnings  # (warnings: the fixture below)

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from evsrv.config import ConfigError
from evsrv.mi.controller import MIController, MIError
from evsrv.mi.dispatch import MIDispatcher, Refusal
from evsrv.mi.protocol import ListenError, MIDatagramProtocol, listen_unix
from evsrv.util.netlist import NetworkList
from evsrv.util.statistics import Statistics
from tests.conftest import DatagramCollector, until
from tests.test_http_mi import RawReply

NOBODY, NOGROUP = 65534, 65534


def request(method, request_id=1, params=None):
    body = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


@pytest.fixture
def client():
    """
    Factory of L{DatagramCollector}s bound to a given local address
    (C{127.0.0.2} is loopback, yet outside C{127.0.0.1/32}); all closed at
    teardown.
    """
    ports = []

    def make(host="127.0.0.1"):
        collector = DatagramCollector()
        port = reactor.listenUDP(0, collector, interface=host, maxPacketSize=65536)
        collector.address = (host, port.getHost().port)
        ports.append(port)
        return collector
    yield make
    for port in ports:
        pytest_twisted.blockon(maybeDeferred(port.stopListening))


@pytest.fixture
def warnings():
    """
    The warnings logged during the test, formatted.
    """
    lines = []

    def observe(event):
        if event.get("log_level") == LogLevel.warn:
            lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def udp_address(server, host):
    """
    C{(host, port)} of the server's UDP MI listener bound to C{host}.
    """
    for port in server.mi_ports:
        address = port.getHost()
        if getattr(address, "host", None) == host:
            return host, address.port
    raise LookupError(host)


# -- UDP ---------------------------------------------------------------------------

# A per-listener section names a listener as written in [mi] udp, port 0
# included, so two port-0 listeners need two hosts to be told apart.
TWO_LISTENERS = """\
[mi]
udp = 127.0.0.1:0, 127.0.0.3:0
allow = 127.0.0.1/32
[mi:udp:127.0.0.3:0]
allow = 127.0.0.2/32
"""


@pytest_twisted.inlineCallbacks
def test_udp_source_outside_the_allow_list_gets_no_service(server_factory, client, warnings):
    server = server_factory(TWO_LISTENERS)
    first, second = udp_address(server, "127.0.0.1"), udp_address(server, "127.0.0.3")
    stranger = client("127.0.0.2")  # loopback, but not in [mi] allow
    local = client("127.0.0.1")
    served = server.statistics.counter("mi", "requests")
    before = served.value

    stranger.transport.write(request("which", 1), first)
    yield until(lambda: server.statistics.value("mi:requests_refused") == 1)
    assert served.value == before  # nothing run
    # ... and nothing sent: the listener whose own allow list names it answers
    reply, source = yield stranger.request(request("which", 2), second)
    assert json.loads(reply)["id"] == 2 and source == second

    # the override replaces [mi] allow for its listener: 127.0.0.1 is refused there
    local.transport.write(request("which", 3), second)
    yield until(lambda: server.statistics.value("mi:requests_refused") == 2)
    reply, source = yield local.request(request("which", 4), first)
    assert json.loads(reply)["id"] == 4 and source == first

    stats = json.loads((yield local.request(request("get_statistics", 5, [["mi:"]]), first))[0])
    assert stats["result"]["mi:requests_refused"] == 2
    refused = [line for line in warnings if "refused" in line]
    assert refused == [
        "udp:127.0.0.1:0: MI request from 127.0.0.2 refused: not in the allow list "
        "(127.0.0.1/32) (0 similar messages suppressed)",
        "udp:127.0.0.3:0: MI request from 127.0.0.1 refused: not in the allow list "
        "(127.0.0.2/32) (0 similar messages suppressed)"]


def test_refusals_are_logged_at_a_limited_rate(warnings):
    """
    A refused flood costs one warning per 10 s per listener, with the
    number of refusals it stands for.
    """
    clock = Clock()
    statistics = Statistics()
    protocol = MIDatagramProtocol(MIDispatcher(MIController(statistics)), clock, "udp:test",
                                  allow=NetworkList.parse("127.0.0.1/32"))
    for port in range(100):
        protocol.datagramReceived(request("which"), ("10.0.0.1", port))
    clock.advance(9.9)
    protocol.datagramReceived(request("which"), ("10.0.0.1", 1))
    clock.advance(0.1)
    protocol.datagramReceived(b"", ("10.0.0.2", 1))  # refused before anything else
    assert statistics.value("mi:requests_refused") == 102
    assert statistics.value("mi:requests") == 0
    assert warnings == [
        "udp:test: MI request from 10.0.0.1 refused: not in the allow list (127.0.0.1/32) "
        "(0 similar messages suppressed)",
        "udp:test: MI request from 10.0.0.2 refused: not in the allow list (127.0.0.1/32) "
        "(100 similar messages suppressed)"]


def test_default_allow_is_loopback(tmpdir_short):
    from tests.conftest import make_config
    config = make_config("[mi]\nudp = 0.0.0.0:0\n", tmpdir_short)
    allow = config.mi.allow_for(("0.0.0.0", 0))
    assert "127.0.0.1" in allow and "127.9.9.9" in allow and "::1" in allow
    assert "10.0.0.1" not in allow and "::ffff:10.0.0.1" not in allow
    assert "::ffff:127.0.0.1" in allow


@pytest_twisted.inlineCallbacks
def test_ipv6_loopback_is_allowed_by_default(server_factory, client):
    server = server_factory("[mi]\nudp = [::1]:0\n")
    six = client("::1")
    reply, _ = yield six.request(request("which", 7), udp_address(server, "::1"))
    assert json.loads(reply)["id"] == 7
    assert server.statistics.value("mi:requests_refused") == 0


@pytest_twisted.inlineCallbacks
def test_ipv4_mapped_sources_match_ipv4_entries(server_factory, client):
    """
    An IPv6 listener bound to an IPv4-mapped address sees IPv4 clients as
    ::ffff:a.b.c.d; they are matched as the IPv4 addresses they are.
    """
    server = server_factory("[mi]\nudp = [::ffff:127.0.0.1]:0\nallow = 127.0.0.1/32\n")
    host, port = udp_address(server, "::ffff:127.0.0.1")
    stranger, local = client("127.0.0.2"), client("127.0.0.1")
    stranger.transport.write(request("which", 1), ("127.0.0.1", port))
    yield until(lambda: server.statistics.value("mi:requests_refused") == 1)
    reply, _ = yield local.request(request("which", 2), ("127.0.0.1", port))
    assert json.loads(reply)["id"] == 2
    assert server.statistics.value("mi:requests_refused") == 1


# -- UNIX --------------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_unix_socket_mode_owner_and_group(server_factory, tmpdir_short):
    server_factory("[mi]\nunix = mi.sock\nunix_mode = 0640\n"
                            "unix_owner = nobody\nunix_group = nogroup\n")
    info = os.stat(tmpdir_short / "mi.sock")
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (NOBODY, NOGROUP)
    # still served (we are root); UNIX clients do not go through the allow list
    collector = DatagramCollector()
    path = str(tmpdir_short / "client.sock")
    port = reactor.listenUNIXDatagram(path, collector)
    try:
        reply, _ = yield collector.request(request("which", 3), str(tmpdir_short / "mi.sock"))
        assert json.loads(reply)["id"] == 3
    finally:
        yield maybeDeferred(port.stopListening)
        os.unlink(path)


def test_unix_socket_group_alone(server_factory, tmpdir_short):
    server_factory("[mi]\nunix = mi.sock\nunix_group = nogroup\n")
    info = os.stat(tmpdir_short / "mi.sock")
    assert (info.st_uid, info.st_gid) == (os.getuid(), NOGROUP)
    assert stat.S_IMODE(info.st_mode) == 0o660


def test_failing_chown_is_a_clear_startup_error(server_factory, tmpdir_short, monkeypatch):
    """
    As a non-root server would: the start-up error names the key, the file,
    the owner and the reason; no socket is left open or on disk.
    """
    def refuse(path, uid, gid):
        raise PermissionError(1, os.strerror(1), path)
    monkeypatch.setattr("evsrv.mi.protocol.os.chown", refuse)
    with pytest.raises(ConfigError) as error:
        server_factory("[mi]\nunix = mi.sock\nunix_owner = nobody\n")
    assert str(error.value) == (
        f"<test>: [mi] unix: cannot give {tmpdir_short / 'mi.sock'} owner nobody and group "
        f"(unchanged): Operation not permitted")
    assert not (tmpdir_short / "mi.sock").exists()


def test_unknown_owner_is_refused_before_binding(tmpdir_short):
    path = str(tmpdir_short / "x.sock")
    with pytest.raises(ListenError, match=r"cannot set the owner of .*x\.sock: no such user "
                                          r"'no-such-user-here'"):
        listen_unix(reactor, None, path, 0o600, "no-such-user-here", None)
    with pytest.raises(ListenError, match="no such group 'no-such-group-here'"):
        listen_unix(reactor, None, path, 0o600, None, "no-such-group-here")
    assert not os.path.exists(path)


# -- the MI sockets themselves -------------------------------------------------------


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def mi_protocol(*commands, label="mi:test"):
    """
    An MI datagram protocol over a controller with C{commands}
    (C{(name, handler)}), no reply size limit.
    """
    from evsrv.mi.controller import Command
    controller = MIController(Statistics())
    for name, handler in commands:
        controller.register(Command(name, [[]], handler))
    return MIDatagramProtocol(MIDispatcher(controller), reactor, label)


def test_a_failing_chown_leaves_no_socket_open(tmpdir_short, monkeypatch):
    def refuse(path, uid, gid):
        raise PermissionError(1, os.strerror(1), path)
    monkeypatch.setattr("evsrv.mi.protocol.os.chown", refuse)
    path = str(tmpdir_short / "x.sock")
    before = open_fds()
    with pytest.raises(ListenError, match="Operation not permitted"):
        listen_unix(reactor, DatagramCollector(), path, 0o600, "nobody", None)
    assert open_fds() == before and not os.path.exists(path)


@pytest_twisted.inlineCallbacks
def test_the_socket_is_chowned_only_for_an_owner_or_a_group(tmpdir_short, monkeypatch):
    calls = []
    monkeypatch.setattr("evsrv.mi.protocol.os.chown", lambda *args: calls.append(args))
    path = str(tmpdir_short / "x.sock")
    for owner, group, expected in ((None, None, []), (None, "nogroup", [(path, -1, NOGROUP)]),
                                   ("nobody", None, [(path, NOBODY, -1)])):
        calls.clear()
        port = listen_unix(reactor, DatagramCollector(), path, 0o600, owner, group)
        yield maybeDeferred(port.stopListening)
        os.unlink(path)
        assert calls == expected


@pytest_twisted.inlineCallbacks
def test_a_stale_socket_file_is_replaced_a_served_one_is_not(tmpdir_short):
    import socket
    path = str(tmpdir_short / "mi.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # its file stays behind, as after a crash
    before = open_fds()
    protocol = mi_protocol(("ping", lambda call: "pong"))
    with pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always")
        port = listen_unix(reactor, protocol, path, 0o600)
    try:
        with pywarnings.catch_warnings(record=True) as more:
            pywarnings.simplefilter("always")
            with pytest.raises(ListenError, match="another process is serving it"):
                listen_unix(reactor, DatagramCollector(), path, 0o600)
        # the probe sockets are closed, not left to the garbage collector
        assert open_fds() == before + 1
        assert [w for w in caught + more if issubclass(w.category, ResourceWarning)] == []
        client = DatagramCollector()
        client_path = str(tmpdir_short / "client.sock")
        client_port = reactor.listenUNIXDatagram(client_path, client)
        try:
            reply, _ = yield client.request(request("ping", 4), path)
            assert json.loads(reply)["result"] == "pong"
        finally:
            yield maybeDeferred(client_port.stopListening)
            os.unlink(client_path)
    finally:
        yield maybeDeferred(port.stopListening)
    os.unlink(path)
    with open(path, "w") as f:
        f.write("not a socket")
    with pytest.raises(ListenError, match="it exists and is not a socket"):
        listen_unix(reactor, DatagramCollector(), path, 0o600)
    assert os.path.exists(path)  # never removed


@pytest_twisted.inlineCallbacks
def test_mi_sockets_read_a_bounded_amount_per_turn_into_a_large_buffer(tmpdir_short):
    import socket
    from evsrv.mi.protocol import MI_BYTES_PER_TURN, listen_udp
    fresh = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    default = fresh.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    fresh.close()
    ports = [listen_udp(reactor, mi_protocol(), "127.0.0.1", 0),
             listen_unix(reactor, mi_protocol(), str(tmpdir_short / "x.sock"), 0o600)]
    try:
        for port in ports:
            # (Twisted reads up to 256 KiB per turn by default)
            assert port.maxThroughput == MI_BYTES_PER_TURN < 256 * 1024
            assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > default
    finally:
        for port in ports:
            yield maybeDeferred(port.stopListening)


@pytest_twisted.inlineCallbacks
def test_the_mi_protocol_is_not_noisy(tmpdir_short):
    from evsrv.mi.protocol import listen_udp
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        port = listen_udp(reactor, mi_protocol(), "127.0.0.1", 0)
        yield maybeDeferred(port.stopListening)
    finally:
        globalLogPublisher.removeObserver(events.append)
    # (the server logs its own "MI listening on ..." line)
    assert [t for t in map(formatEvent, events) if "protocol" in t.lower()
            and "starting on" not in t] == []


@pytest_twisted.inlineCallbacks
def test_replies_that_cannot_be_sent_are_counted_and_logged(warnings, client, tmpdir_short):
    import socket
    from twisted.internet.defer import Deferred
    from evsrv.mi.protocol import listen_udp
    later = Deferred()
    protocol = mi_protocol(("huge", lambda call: "x" * 70000), ("later", lambda call: later))
    statistics = protocol.dispatcher.controller.statistics
    port = listen_udp(reactor, protocol, "127.0.0.1", 0)
    address = ("127.0.0.1", port.getHost().port)
    local = client()
    try:
        # more than an IPv4 datagram can carry
        local.transport.write(request("huge"), address)
        yield until(lambda: statistics.value("mi:replies_failed") == 1)
        assert warnings == [f"mi:test: reply to {local.address!r} lost: Message too long "
                            f"(0 similar messages suppressed)"]
        # an answer that comes once the socket is closed
        local.transport.write(request("later"), address)
        yield until(lambda: statistics.value("mi:requests") == 2)
    finally:
        yield maybeDeferred(port.stopListening)
    later.callback("OK")
    assert statistics.value("mi:replies_failed") == 2
    # a UNIX client that did not bind a path cannot be answered
    path = str(tmpdir_short / "mi.sock")
    unix_protocol = mi_protocol(("ping", lambda call: "pong"), label="mi:unix")
    unix_port = listen_unix(reactor, unix_protocol, path, 0o600)
    unbound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        unbound.sendto(request("ping"), path)
        unix_statistics = unix_protocol.dispatcher.controller.statistics
        yield until(lambda: unix_statistics.value("mi:replies_failed") == 1)
        assert warnings[1:] == ["mi:unix: cannot reply to an unbound UNIX client "
                                "(0 similar messages suppressed)"]
    finally:
        unbound.close()
        yield maybeDeferred(unix_port.stopListening)


@pytest_twisted.inlineCallbacks
def test_listening_ports_close_and_remove_their_files(tmpdir_short):
    from twisted.internet.defer import Deferred
    from evsrv.mi.protocol import ListeningPorts
    path = str(tmpdir_short / "mi.sock")
    port = listen_unix(reactor, DatagramCollector(), path, 0o600)
    service = ListeningPorts([port], [path, str(tmpdir_short / "never-made.sock")])
    service.startService()
    stopped = service.stopService()
    assert isinstance(stopped, Deferred)  # the server waits for it
    yield stopped
    assert (service.running, service.ports, os.path.exists(path)) == (False, [], False)
    # a path that cannot be removed is an error, not a silence
    (tmpdir_short / "a-directory").mkdir()
    failing = ListeningPorts([], [str(tmpdir_short / "a-directory")])
    failing.startService()
    with pytest.raises(IsADirectoryError):
        yield failing.stopService()


# -- HTTP --------------------------------------------------------------------------

HTTP_ACL_INI = """\
[mi]
[http]
listen = 127.0.0.1:0
allow = 127.0.0.1/32
"""


def http_post(body, path=b"/mi"):
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (path, len(body), body))


@pytest_twisted.inlineCallbacks
def http_exchange(server, data, source="127.0.0.1"):
    """
    Everything the server sends on one connection from C{source} until it
    closes it.
    """
    address = server.http.listening.getHost()
    protocol = RawReply(data)
    endpoint = TCP4ClientEndpoint(reactor, address.host, address.port,
                                  bindAddress=(source, 0))
    yield connectProtocol(endpoint, protocol)
    received = yield protocol.done.addTimeout(5, reactor)
    return received


@pytest_twisted.inlineCallbacks
def test_http_client_outside_the_allow_list_is_disconnected(server_factory, warnings):
    server = server_factory(HTTP_ACL_INI)
    received = yield http_exchange(server, http_post(request("which")), "127.0.0.2")
    assert received == b""
    assert server.statistics.value("http:connections_refused") == 1
    assert server.statistics.value("mi:requests") == 0
    received = yield http_exchange(server, http_post(request("which", 8)))
    assert received.startswith(b"HTTP/1.1 200 ")
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["id"] == 8
    assert server.statistics.value("http:connections_refused") == 1
    assert [line for line in warnings if "refused" in line] == [
        "HTTP connection from 127.0.0.2 refused: not in [http] allow (127.0.0.1/32) "
        "(0 similar messages suppressed)"]


# -- request gates: pike's 429 -----------------------------------------------------

PIKE_INI = """\
[mi]
udp = 127.0.0.1:0
[http]
listen = 127.0.0.1:0
[modules]
load = pike
[module:pike]
window = 60
limit = 2
block_time = 30
"""


def pike_on_clock(server):
    """
    Pike's decisions on a Clock, so its one-error-per-second cap is exact.
    """
    clock = Clock()
    server.modules["pike"].clock = clock
    return clock


@pytest_twisted.inlineCallbacks
def test_pike_answers_the_text_mi_with_429(server_factory, client):
    server = server_factory(PIKE_INI)
    pike_on_clock(server)
    address = server.mi_udp_address()
    local = client()
    for _ in range(2):
        reply, _ = yield local.request(b":which:\n", address)
        assert reply.startswith(b"200 OK\n")
    reply, _ = yield local.request(b":which:\n", address)
    assert reply == b"429 Too many requests\n"
    # within the same second: ignored, counted; a second later the next
    # request gets the error again (so it was not queued behind a reply)
    local.transport.write(b":which:\n", address)
    yield until(lambda: server.statistics.value("pike:requests_ignored") == 1)
    server.modules["pike"].clock.advance(1)
    reply, _ = yield local.request(request("which", 4), address)
    assert json.loads(reply)["error"]["code"] == 429 and json.loads(reply)["id"] == 4
    assert server.statistics.value("pike:requests_refused") == 2
    assert server.statistics.value("mi:requests_filtered") == 3


@pytest_twisted.inlineCallbacks
def test_pike_answers_the_json_mi_with_429_and_the_request_id(server_factory, client):
    server = server_factory(PIKE_INI)
    pike_on_clock(server)
    address = server.mi_udp_address()
    local = client()
    for i in range(2):
        yield local.request(request("which", i), address)
    reply, _ = yield local.request(request("which", "abc"), address)
    assert json.loads(reply) == {"jsonrpc": "2.0", "id": "abc", "error": {
        "code": 429, "message": "Too many requests",
        "data": "127.0.0.1 sent more than 2 MI requests in 60 s; "
                "blocked for 30 more seconds"}}


@pytest_twisted.inlineCallbacks
def test_pike_counts_http_sources_and_answers_429(server_factory):
    server = server_factory(PIKE_INI)
    clock = pike_on_clock(server)
    for i in range(2):
        received = yield http_exchange(server, http_post(request("which", i)))
        assert received.startswith(b"HTTP/1.1 200 ")
    # every refused HTTP request is answered (a TCP peer cannot be spoofed),
    # rate-capped or not
    for i in (2, 3):
        received = yield http_exchange(server, http_post(request("which", i)))
        head, body = received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 429 ")
        assert b"Content-Type: application/json" in head
        assert json.loads(body) == {"jsonrpc": "2.0", "id": i, "error": {
            "code": 429, "message": "Too many requests",
            "data": "127.0.0.1 sent more than 2 MI requests in 60 s; "
                    "blocked for 30 more seconds"}}
    assert server.statistics.value("pike:requests_refused") == 1
    assert server.statistics.value("pike:requests_ignored") == 1
    # the datagram MI shares the block (same source address)
    listed = yield server.dispatcher.handle(request("pike_list"))
    assert [b["ip"] for b in json.loads(listed)["result"]["Blocked"]] == ["127.0.0.1"]
    clock.advance(30)
    received = yield http_exchange(server, http_post(request("which", 9)))
    assert received.startswith(b"HTTP/1.1 200 ")


@pytest_twisted.inlineCallbacks
def test_acl_refusal_comes_before_pike(server_factory, client):
    """
    A source outside the allow list never reaches pike: it stays silent (no
    429) and cannot fill pike's table, however much it sends.
    """
    server = server_factory(PIKE_INI.replace("[http]", "allow = 127.0.0.1/32\n[http]"))
    address = server.mi_udp_address()
    stranger = client("127.0.0.2")
    for i in range(10):
        stranger.transport.write(request("which", i), address)
    yield until(lambda: server.statistics.value("mi:requests_refused") == 10)
    assert server.modules["pike"]._sources == {}
    assert server.statistics.value("pike:requests_refused") == 0
    assert stranger.received == []


# -- request gates: the protocol ---------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_third_party_gates_false_is_a_counted_silent_ignore(server_factory, client):
    server = server_factory(PIKE_INI.replace("load = pike", "load ="))
    refused_port = []
    server.mi_filters.append(lambda address: address[1] not in refused_port)
    address = server.mi_udp_address()
    local = client()
    refused_port.append(local.address[1])
    local.transport.write(request("which", 1), address)
    yield until(lambda: server.statistics.value("mi:requests_filtered") == 1)
    received = yield http_exchange(server, http_post(request("which", 2)))
    assert received.startswith(b"HTTP/1.1 200 ")  # another port: let through
    refused_port.clear()
    reply, _ = yield local.request(request("which", 3), address)
    assert json.loads(reply)["id"] == 3  # the ignored request got nothing


@pytest_twisted.inlineCallbacks
def test_gate_refusal_with_an_error(server_factory, client):
    """
    A gate may answer with any MIError; over HTTP a code that is not an
    HTTP status becomes 403. Notifications get no datagram reply.
    """
    server = server_factory(PIKE_INI.replace("load = pike", "load ="))
    server.mi_filters.append(
        lambda address: Refusal(MIError(-32000, "Closed", "maintenance until 10:00")))
    address = server.mi_udp_address()
    local = client()
    local.transport.write(b'{"jsonrpc": "2.0", "method": "which"}', address)  # notification
    reply, _ = yield local.request(b"not json", address)
    assert json.loads(reply) == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32000, "message": "Closed", "data": "maintenance until 10:00"}}
    reply, _ = yield local.request(b":which:\n", address)
    assert reply == b"-32000 Closed\n"
    received = yield http_exchange(server, http_post(request("which", 5)))
    head, body = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 403 ")
    assert json.loads(body)["error"]["message"] == "Closed"
    assert server.statistics.value("mi:requests_filtered") == 4
    assert server.statistics.value("mi:requests") == 0


@pytest_twisted.inlineCallbacks
def test_http_silent_gate_refusal_closes_the_connection(server_factory):
    server = server_factory(PIKE_INI.replace("load = pike", "load ="))
    server.mi_filters.append(lambda address: False)
    received = yield http_exchange(server, http_post(request("which", 1)))
    assert received == b""
    assert server.statistics.value("mi:requests_filtered") == 1
    assert server.statistics.value("mi:requests") == 0
    # the other pages are not MI requests: no gate
    received = yield http_exchange(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                           b"Connection: close\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 ")


def test_gates_are_asked_in_order_and_the_first_refusal_wins():
    from evsrv.mi.dispatch import run_gates
    asked = []

    def gate(name, verdict):
        def ask(address):
            asked.append(name)
            return verdict
        return ask
    closed = Refusal(MIError(-32000, "Closed"))
    assert run_gates([gate("a", True), gate("b", "any true value")], "x") is None
    assert run_gates([gate("c", True), gate("d", closed), gate("e", False)], "x") is closed
    silent = run_gates([gate("f", 0), gate("g", closed)], "x")
    assert isinstance(silent, Refusal) and silent.error is None and not silent.rate_capped
    assert asked == ["a", "b", "c", "d", "f"]
    assert not Refusal() and not closed  # false, for callers asking "if not gate(address)"


def test_a_refusal_is_answered_in_the_request_dialect_without_running_it():
    controller = MIController(Statistics())
    dispatcher = MIDispatcher(controller)
    error = MIError(-32000, "Closed", legacy=(403, "Closed now"))
    answer = b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"Closed"},"id":%s}'
    assert dispatcher.refusal_reply(request("which", 7), error) == answer % b"7"
    assert dispatcher.refusal_reply(b"not json", error) == answer % b"null"
    # JSON but not a request: the id is echoed when there is one
    assert dispatcher.refusal_reply(b'{"method":"which","id":"q"}', error) == answer % b'"q"'
    assert dispatcher.refusal_reply(b'{"jsonrpc":"2.0","method":"which"}', error) is None
    assert dispatcher.refusal_reply(b":which:\n", error) == b"403 Closed now\n"
    # the HTTP MI has no 1.x text: a colon is just bad JSON there
    assert dispatcher.refusal_reply(b":which:\n", error, json_only=True) == answer % b"null"
    assert controller.statistics.value("mi:requests") == 0


# -- a real server process ---------------------------------------------------------

def test_access_control_in_a_real_server_process(server_process, tmpdir_short):
    import re
    import socket
    proc = server_process("""\
[mi]
udp = 127.0.0.1:0, 127.0.0.3:0
allow = 127.0.0.1/32
unix = mi.sock
unix_mode = 0600
unix_owner = nobody
[mi:udp:127.0.0.3:0]
allow = 127.0.0.2/32
""")
    ports = dict(re.findall(r"MI listening on udp:([0-9.]+):(\d+)", proc.log()))
    first, second = ("127.0.0.1", int(ports["127.0.0.1"])), ("127.0.0.3", int(ports["127.0.0.3"]))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.2", 0))
    stranger.settimeout(5)
    received = []
    try:
        stranger.sendto(request("which", 1), first)
        # Ask the served listener until the refusal is counted: a reply to
        # request 1 would have been sent before that count was read, so it
        # would be among the datagrams received up to the answer.
        for attempt in range(100):
            stranger.sendto(request("get_statistics", attempt + 2,
                                    [["mi:requests_refused"]]), second)
            while True:
                reply = json.loads(stranger.recvfrom(65536)[0])
                received.append(reply)
                if reply["id"] == attempt + 2:
                    break
            if reply["result"] == {"mi:requests_refused": 1}:
                break
        else:
            pytest.fail("the refusal was never counted")
    finally:
        stranger.close()
    assert all("result" in r and r["id"] != 1 for r in received)
    info = os.stat(tmpdir_short / "mi.sock")
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, NOBODY)
    proc.stop()
    assert "udp:127.0.0.1:0: MI request from 127.0.0.2 refused" in proc.log()
