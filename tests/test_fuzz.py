"""
Property tests: whatever bytes reach the MI, the dispatcher answers (its
Deferred fires at once, with bytes or None), never raises and never logs an
error; the replies are well-formed for their dialect; a JSON-RPC oracle
checks the request-level rules of spec §2.1 on near-miss requests.

The udp transport's name resolution is replaced by one that fails at once,
so that every generated subscribe completes synchronously (a host name is
then just a bad socket) and nothing reaches the network's DNS.
"""

import json
import os
import random
import re
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.error import DNSLookupError
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from evsrv.interfaces import BadSocket

FUZZ_INI = """\
[mi]
udp = 127.0.0.1:0
[events]
publish = E_TEST, E_OTHER
"""

# EVSRV_FUZZ_EXAMPLES raises the count for a longer hunt.
FUZZ = settings(max_examples=int(os.environ.get("EVSRV_FUZZ_EXAMPLES", "250")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

METHODS = ["event_subscribe", "events_list", "subscribers_list", "raise_event",
           "subscribers_stats", "which", "help", "version", "uptime", "ps", "get_statistics",
           "list_statistics", "reset_statistics", "evi:subscribe", "evi:list",
           "evi:subscribers", "evi:raise", "evi:subscribers_stats"]
PARAM_NAMES = ["event", "socket", "expire", "params", "mi_cmd", "statistics"]
EVENTS = ["E_TEST", "E_OTHER", "E_NOPE", "E_CORE_LOG", "E_CORE_THRESHOLD", ""]
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
TEXT_FIRST_LINE = re.compile(rb"\A[1-5][0-9][0-9] [^\n]*\n")


class NoDNS:
    """
    Stands in for the reactor's resolver: every name fails to resolve, now.
    """

    def resolve(self, name, timeout=None):
        return fail(DNSLookupError(name))


@pytest.fixture
def fuzz_server(server_factory):
    server = server_factory(FUZZ_INI)
    server.transports["udp"].reactor = NoDNS()
    return server


@pytest.fixture
def handle(fuzz_server, logged_errors):
    """
    C{handle(data)}: the reply, checked to be synchronous, bytes or None,
    with nothing logged as an error.
    """
    def run(data: bytes):
        results = []
        try:
            d = fuzz_server.dispatcher.handle(data)
        finally:
            logged = logged_errors.flush()
        d.addBoth(results.append)
        logged += logged_errors.flush()
        assert not logged, "errors were logged for %r: %r" % (
            data[:300], [e.get("log_format") for e in logged])
        assert results, "the reply did not come synchronously for %r" % (data[:300],)
        reply = results[0]
        if isinstance(reply, Failure):
            reply.raiseException()
        assert reply is None or isinstance(reply, bytes)
        return reply
    return run


def parse_reply(reply: bytes):
    """
    A JSON-RPC reply as C{(member names, decoded)}; checks its shape.
    """
    pairs_seen = []

    def hook(pairs):
        pairs_seen.append([k for k, _ in pairs])
        return dict(pairs)
    message = json.loads(reply.decode("utf-8", "surrogateescape"), object_pairs_hook=hook)
    keys = pairs_seen[-1]
    assert keys in (["jsonrpc", "result", "id"], ["jsonrpc", "error", "id"]), reply[:300]
    assert message["jsonrpc"] == "2.0"
    if "error" in message:
        err = message["error"]
        assert list(err)[:2] == ["code", "message"] and set(err) <= {"code", "message", "data"}
        assert isinstance(err["code"], int) and isinstance(err["message"], str)
        assert isinstance(err.get("data", ""), str)
    assert message["id"] is None or isinstance(message["id"], (int, str))
    return message


def check_json_reply(reply):
    if reply is None or reply == b"400 Parse_error":
        return None
    return parse_reply(reply)


def check_text_reply(reply):
    assert reply is not None
    assert TEXT_FIRST_LINE.match(reply), reply[:300]
    assert reply.endswith(b"\n")


# -- strategies ------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10, 10)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20)

ports = st.one_of(st.sampled_from(["9", "0", "65536", "70000", "99999", "", "-1", "09"]),
                  st.text("0123456789ab:", max_size=6))
hosts = st.sampled_from(["127.0.0.1", "[::1]", "localhost", "example.invalid", "", "1.2.3",
                         "[::1", "a b", "127.0.0.1:9"])
sockets = st.one_of(
    st.builds(lambda h, p: f"udp:{h}:{p}", hosts, ports),
    st.builds(lambda h: f"udp:{h}", hosts),
    st.builds(lambda p: "unix:" + p, st.text(max_size=12)),
    st.sampled_from(["foo:bar", "nocolon", "UDP:127.0.0.1:9", "rabbitmq:127.0.0.1/q1",
                     "unix:", "/tmp/evsrv-fuzz-none.sock", ":", "udp:"]),
    st.text(max_size=20))
param_values = st.one_of(
    st.sampled_from(EVENTS), sockets, st.integers(-100, 100000), st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.dictionaries(st.text(max_size=6), json_values, max_size=4).map(json.dumps),
    st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=4),
    json_values)


def cased(name):
    return st.sampled_from([name, name.upper(), name.capitalize(), name.swapcase()])


@st.composite
def params_member(draw):
    kind = draw(st.sampled_from(["list", "dict", "other"]))
    if kind == "list":
        return draw(st.lists(param_values, max_size=4))
    if kind == "dict":
        names = st.one_of(st.sampled_from(PARAM_NAMES), st.text(max_size=6))
        return draw(st.dictionaries(names, param_values, max_size=4))
    return draw(json_values)


@st.composite
def near_miss_requests(draw):
    """
    A JSON-RPC request with each member possibly missing, miscased, of the
    wrong type or duplicated under another case.
    """
    members = []
    if draw(st.integers(0, 9)):
        members.append((draw(cased("jsonrpc")),
                        draw(st.one_of(st.just("2.0"), st.just("2.0"), json_values))))
    if draw(st.integers(0, 9)):
        members.append((draw(cased("method")), draw(st.one_of(
            st.sampled_from(METHODS), st.sampled_from(METHODS), st.text(max_size=12),
            json_values))))
    if draw(st.booleans()):
        members.append((draw(cased("params")), draw(params_member())))
    if draw(st.integers(0, 3)):
        members.append((draw(cased("id")), draw(st.one_of(
            st.integers(-5, 5), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=8), st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))))
    for _ in range(draw(st.integers(0, 2))):
        members.append((draw(st.one_of(st.sampled_from(["jsonrpc", "method", "params", "id",
                                                          "ID", "Method"]),
                                       st.text(max_size=6))),
                        draw(json_values)))
    members = draw(st.permutations(members))
    message = {}
    for key, value in members:
        message.setdefault(key, value)
    return message


def first_ci(message: dict, name: str):
    for key, value in message.items():
        if key.lower() == name:
            return True, value
    return False, None


def echoed(value):
    if isinstance(value, float):
        value = int(value)
    if isinstance(value, int):
        return min(max(value, INT32_MIN), INT32_MAX)
    return value


# -- dispatcher properties -------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(handle, data):
    reply = handle(data)
    if data[:1] == b":":
        check_text_reply(reply)
    else:
        if reply is None:  # only a valid notification goes unanswered
            assert data.lstrip(b" \t\r\n")[:1] == b"{"
        check_json_reply(reply)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_text_dialect(handle, data):
    check_text_reply(handle(b":" + data))


@FUZZ
@given(value=json_values, lead=st.sampled_from(["", " ", "\n\t"]),
       tail=st.sampled_from(["", " ", "garbage", "}", "\x00", "{}"]))
def test_random_json_values(handle, value, lead, tail):
    data = (lead + json.dumps(value) + tail).encode()
    reply = handle(data)
    message = check_json_reply(reply)
    if not isinstance(value, dict):
        assert message == {"jsonrpc": "2.0", "error": {"code": -32600,
                                                        "message": "Invalid Request"},
                           "id": None}


@FUZZ
@given(message=near_miss_requests(), ensure_ascii=st.booleans(),
       tail=st.sampled_from(["", "xyz", "]"]))
def test_near_miss_requests_follow_the_jsonrpc_rules(handle, message, ensure_ascii, tail):
    data = (json.dumps(message, ensure_ascii=ensure_ascii) + tail).encode()
    reply = handle(data)

    has_id, request_id = first_ci(message, "id")
    id_ok = (not has_id or request_id is None
             or (isinstance(request_id, (int, float, str)) and not isinstance(request_id, bool)))
    has_params, params = first_ci(message, "params")
    valid = (id_ok and first_ci(message, "jsonrpc") == (True, "2.0")
             and isinstance(first_ci(message, "method")[1], str)
             and (not has_params or isinstance(params, (list, dict))))
    if not valid:
        assert parse_reply(reply) == {
            "jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"},
            "id": echoed(request_id) if id_ok else None}
        return
    if not has_id:
        assert reply is None  # a notification: never answered once it is valid
        return
    answer = parse_reply(reply)
    assert answer["id"] == echoed(request_id)
    if first_ci(message, "method")[1] not in METHODS:
        assert answer["error"] == {"code": -32601, "message": "Method not found"}
    if "error" in answer:
        assert answer["error"]["code"] not in (-32700, -32600, -32000)
        assert answer["error"]["message"] != "Internal error"


text_tokens = st.one_of(
    st.sampled_from(EVENTS), sockets, st.integers(-5, 100000).map(str),
    st.sampled_from(['"', '\\"', "::", "name::", "a::b", '"quoted"', '"open', 'x"y',
                     '"a\\"b"', '"multi\nline"', "\r", " ", "\t", "", '"" x']),
    st.text(max_size=20))


@FUZZ
@given(method=st.one_of(st.sampled_from(METHODS), st.text(max_size=12)),
       tokens=st.lists(text_tokens, max_size=6),
       separators=st.lists(st.sampled_from(["\n", "\r\n", "\n\n", " \n", ""]), min_size=6,
                           max_size=6),
       after_command=st.sampled_from(["\n", "\n", "\r\n", "", "x\n"]))
def test_text_requests(handle, method, tokens, separators, after_command):
    body = "".join(t + s for t, s in zip(tokens, separators))
    data = (":" + method + ":" + after_command + body).encode("utf-8", "surrogateescape")
    reply = handle(data)
    check_text_reply(reply)
    rest = after_command + body
    if ":" not in method and not rest.startswith("\n"):
        assert reply == b"500 command not available\n"
    elif ":" not in method and method not in METHODS:
        # an unknown command is "not available" whatever its arguments are
        assert reply == b"500 command not available\n"
    assert not reply.startswith(b"500 command failed")


@FUZZ
@given(event=st.sampled_from(EVENTS), sock=sockets,
       expire=st.one_of(st.none(), st.integers(-3, 5), st.integers(), st.text(max_size=5)),
       dialect=st.sampled_from(["json", "text"]))
def test_subscribe_list_raise_cycle(fuzz_server, handle, event, sock, expire, dialect):
    """
    Whatever the socket, event_subscribe answers OK or a documented error,
    and the listing/raise that follow still work.
    """
    if dialect == "json":
        params = [event, sock] + ([] if expire is None else [expire])
        reply = parse_reply(handle(json.dumps({"jsonrpc": "2.0", "method": "event_subscribe",
                                               "params": params, "id": 1}).encode()))
        if "error" in reply:
            assert reply["error"]["code"] in (400, -32602), reply
        else:
            assert reply["result"] == "OK"
    else:
        args = [event, sock] + ([] if expire is None else [str(expire)])
        quoted = ['"%s"' % a.replace('"', '\\"') for a in args]
        reply = handle((":event_subscribe:\n" + "\n".join(quoted) + "\n").encode(
            "utf-8", "surrogateescape"))
        assert reply in (b"200 OK\n", b"400 Bad parameter\n", b"400 parse_error\n",
                         b"400 Too few or too many arguments\n"), reply
    for data in (b'{"jsonrpc":"2.0","method":"subscribers_list","id":2}',
                 json.dumps({"jsonrpc": "2.0", "method": "subscribers_list",
                             "params": [event, sock], "id": 3}).encode(),
                 b":subscribers_list:\n",
                 json.dumps({"jsonrpc": "2.0", "method": "raise_event",
                             "params": [event, {"k": sock}], "id": 4}).encode(),
                 b'{"jsonrpc":"2.0","method":"subscribers_stats","id":5}'):
        reply = handle(data)
        if data.startswith(b":"):
            check_text_reply(reply)
        else:
            parse_reply(reply)


# -- the real UDP MI socket ------------------------------------------------------------------

def _burst(seed=20240501, count=300):
    rnd = random.Random(seed)
    crafted = [
        b"", b":", b"{", b"}", b"[]", b"null", b'{"jsonrpc":"2.0"}', b":events_list:",
        b'{"jsonrpc":"2.0","method":"event_subscribe","params":["E_TEST","udp:127.0.0.1:0"],'
        b'"id":1}',
        b'{"jsonrpc":"2.0","method":"raise_event","params":["E_TEST",[{}]],"id":1}',
        b":event_subscribe:\nE_TEST\n\"unterminated\n",
        b"[" * 5000 + b"]" * 5000,
        b'{"jsonrpc":"2.0","method":"which","id":"' + b"x" * 60000 + b'"}',
        b"\x00" * 65000,
    ]
    datagrams = list(crafted)
    for _ in range(count):
        kind = rnd.random()
        size = rnd.choice([1, 2, 10, 100, 1000, 4000])
        payload = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, size)))
        if kind < 0.3:
            datagrams.append(b":" + payload)
        elif kind < 0.6:
            datagrams.append(b'{"jsonrpc":"2.0","method":"' + payload[:20] + b'","id":'
                             + payload[20:40] + b"}")
        else:
            datagrams.append(payload)
    return datagrams


@pytest_twisted.inlineCallbacks
def test_udp_burst_of_garbage_then_which(fuzz_server, udp_collector):
    address = fuzz_server.mi_udp_address()
    noise = udp_collector()
    datagrams = _burst()
    before = fuzz_server.statistics.value("mi:requests")
    for i in range(0, len(datagrams), 10):
        for data in datagrams[i:i + 10]:
            noise.transport.write(data, address)
        # Let the server read, so the kernel buffer never overflows.
        yield deferLater(reactor, 0.002, lambda: None)
    client = udp_collector()
    reply, addr = yield client.request(b'{"jsonrpc":"2.0","method":"which","id":"after"}',
                                       address, timeout=10)
    assert addr == address
    message = parse_reply(reply)
    assert message["id"] == "after" and "events_list" in message["result"]
    # The garbage was read and answered (not just dropped by the kernel).
    assert fuzz_server.statistics.value("mi:requests") > before
    for _ in range(100):
        if len(noise.received) > len(datagrams) // 2:
            break
        yield deferLater(reactor, 0.02, lambda: None)
    assert len(noise.received) > len(datagrams) // 2


# -- every socket parser ------------------------------------------------------------------

PARSER_INI = """\
[mi]
udp = 127.0.0.1:0
[events]
publish = E_TEST
[transports]
enabled = udp, unix, tcp, jsonrpc, xmlrpc, rabbitmq, virtual, flatstore, route
"""


class NoDNSReactor:
    """
    The reactor, except that every name fails to resolve at once (so each
    parse completes synchronously and nothing reaches the network's DNS).
    """

    def resolve(self, name, timeout=None):
        return fail(DNSLookupError(name))

    def __getattr__(self, name):
        return getattr(reactor, name)


@pytest.fixture
def parser_server(server_factory):
    server = server_factory(PARSER_INI)
    for transport in server.transports.values():
        if hasattr(transport, "reactor"):
            transport.reactor = NoDNSReactor()
    yield server
    for transport in server.transports.values():
        if hasattr(transport, "reactor"):
            transport.reactor = reactor


PARSER_SCHEMES = ["udp", "unix", "tcp", "jsonrpc", "xmlrpc", "rabbitmq", "virtual",
                  "flatstore", "route", "amqp", ""]
# text as it reaches a parser: any characters, and any bytes as the MI decodes them
socket_rests = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.builds(lambda a, b: f"{a}:{b}", st.text(max_size=40), st.integers(-5, 70000)),
    st.builds(lambda a, b: f"{a}/{b}", st.text(max_size=40), st.text(max_size=40)),
    st.builds(lambda a: f"FAILOVER udp:127.0.0.1:9 {a}", st.text(max_size=60)),
)


@FUZZ
@given(scheme=st.sampled_from(PARSER_SCHEMES), rest=socket_rests)
def test_every_socket_parser_answers_a_destination_or_bad_socket(
        parser_server, logged_errors, scheme, rest):
    results = []
    parser_server.evi.parse_socket(f"{scheme}:{rest}" if scheme else rest) \
        .addBoth(results.append)
    assert not logged_errors.flush(), (scheme, rest)
    assert results, f"no synchronous answer for {scheme}:{rest!r}"
    if isinstance(results[0], Failure):
        assert results[0].check(BadSocket), results[0].getTraceback()
    else:
        transport, destination = results[0]
        assert scheme == transport.schemes[0] or scheme in transport.schemes \
            or (not scheme and rest.startswith("/"))


# -- every MI listener, over real sockets -----------------------------------------------

LISTENER_INI = """\
[mi]
udp = 127.0.0.1:0
unix = mi.sock
[http]
listen = 127.0.0.1:0
[events]
publish = E_TEST
[modules]
load =
"""
LISTENER_FUZZ = settings(FUZZ, max_examples=max(20, FUZZ.max_examples // 3))
WHICH = b'{"jsonrpc":"2.0","method":"which","id":"probe"}'


@pytest.fixture(scope="module")
def listener_process(tmp_path_factory):
    """
    A real evsrv process (its own reactor: the test's blocking sockets
    cannot stall it); its log is checked to hold no traceback at the end.
    """
    from evsrv.testing import ServerProcess
    from tests.conftest import ROOT
    directory = Path(tempfile.mkdtemp(prefix="evsrv-f-"))
    ini = directory / "evsrv.ini"
    ini.write_text(LISTENER_INI)
    proc = ServerProcess(ini, pythonpath=ROOT)
    yield proc
    status = proc.stop()
    log = proc.log()
    shutil.rmtree(directory)
    for word in ("Traceback", "Unhandled error", "CRITICAL", "critical"):
        assert word not in log, log[-4000:]
    assert status == 0, log[-2000:]


def _until_probe(recv):
    """
    Read replies until the probe's: whatever came before it was the fuzz
    datagram's answer (or nothing, for a request that gets none).
    """
    while True:
        reply = recv()
        if b'"id":"probe"' in reply:
            return
        assert reply, "empty reply"


@LISTENER_FUZZ
@given(data=st.binary(max_size=3000))
def test_udp_listener_answers_or_ignores_any_datagram(listener_process, data):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(data, listener_process.udp)
        sock.sendto(WHICH, listener_process.udp)
        _until_probe(lambda: sock.recv(65535))


@LISTENER_FUZZ
@given(data=st.binary(max_size=3000))
def test_unix_listener_answers_or_ignores_any_datagram(listener_process, data):
    path = listener_process.ini.parent / "mi.sock"
    own = listener_process.ini.parent / f"client-{os.getpid()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(own))
        try:
            sock.settimeout(10)
            sock.sendto(data, str(path))
            sock.sendto(WHICH, str(path))
            _until_probe(lambda: sock.recv(65535))
        finally:
            own.unlink()


def _http_exchange(listener_process, request: bytes) -> bytes:
    host, port = listener_process.http.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # the whole request: the server must answer or close
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk


@LISTENER_FUZZ
@given(body=st.binary(max_size=3000))
def test_http_listener_answers_any_body(listener_process, body):
    path = "/" + listener_process.http.split("//")[1].split("/", 1)[1]
    answer = _http_exchange(listener_process, (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    assert answer.startswith(b"HTTP/1.1 200 ") or answer.startswith(b"HTTP/1.1 400 "), \
        answer[:200]


@LISTENER_FUZZ
@given(request=st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda a, b: b"POST /mi HTTP/1.1\r\n" + a + b"\r\n\r\n" + b,
              st.binary(max_size=300), st.binary(max_size=300))))
def test_http_listener_answers_or_closes_on_any_bytes(listener_process, request):
    answer = _http_exchange(listener_process, request)
    assert answer == b"" or answer.startswith(b"HTTP/1."), answer[:200]
