"""
Hostile subscribe input, end to end against a real evsrv process (its real
resolver, its real store): every request is answered, over UDP JSON-RPC,
the 1.x text MI and HTTP, and nothing is logged as critical.

- Host names that cannot be encoded, or are not host names, are refused
  before anything resolves them (they used to raise inside getaddrinfo and
  leave the subscribe unanswered forever).
- Sockets holding bytes that are not UTF-8 are refused at parse time (they
  used to poison the store batch, or answer 500 for rabbitmq).
"""

import json
import socket
import urllib.request

import pytest

from tests.conftest import BASE_INI

# real processes (an installed wheel, evsrv servers, the official clients)
pytestmark = pytest.mark.slow

INI = BASE_INI + """\
[http]
listen = 127.0.0.1:0
[store]
directory = state
"""

LONG_LABEL = "a" * 64 + ".example"
LONG_NAME = ".".join(["a" * 60] * 5)  # 304 characters

# (socket, what the error's data says)
BAD_HOSTS = [
    ("udp:a..b:52999", "empty label"),
    ("tcp:a..b:52999", "empty label"),
    ("jsonrpc:a..b:52999", "empty label"),
    ("xmlrpc:a..b:52999:method", "empty label"),
    ("rabbitmq:a..b/queue", "empty label"),
    (f"udp:{LONG_LABEL}:52999", "label longer than 63"),
    (f"tcp:{LONG_NAME}:52999", "longer than 253"),
    ("udp:-a.example:1", "starting or ending with '-'"),
    ("tcp:a\u00a0b:1", "host"),
    ("udp:a%b:1", "character"),
    ("udp:xn--\u00e9.example:1", "IDNA"),
    ("udp:.:1", "empty host name"),
]

NOT_UTF8 = [
    b'"rabbitmq:127.0.0.1/q\xff"',
    b'"unix:/tmp/evsrv-x\xff.sock"',
    b'"unix:/tmp/evsrv-x\\udc80.sock"',
    b'"udp:127.0.0.1:\xc0\x80"',
]


@pytest.fixture(scope="module")
def evsrv(tmp_path_factory):
    from evsrv.testing import ServerProcess
    from tests.conftest import ROOT
    ini = tmp_path_factory.mktemp("bad-input") / "evsrv.ini"
    ini.write_text(INI)
    proc = ServerProcess(ini, pythonpath=ROOT)
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def nothing_critical_logged(evsrv):
    """
    Each test's part of the server's log has no traceback and no critical
    line (the unencodable names used to log two per request).
    """
    start = len(evsrv.log())
    yield
    logged = evsrv.log()[start:]
    for word in ("Unhandled error", "Traceback", "critical", "CRITICAL"):
        assert word not in logged, logged[-3000:]


def udp(evsrv, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(data, evsrv.udp)
        return sock.recv(65535)


def http(evsrv, data: bytes) -> bytes:
    request = urllib.request.Request(evsrv.http, data, {"Content-Type": "application/json"},
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read()


def subscribe(socket_json: bytes) -> bytes:
    return (b'{"jsonrpc":"2.0","method":"event_subscribe","params":["E_TEST",'
            + socket_json + b',60],"id":1}')


def assert_bad_parameter(reply: bytes, fragment: str):
    error = json.loads(reply.decode("utf-8", "surrogateescape"))["error"]
    assert (error["code"], error["message"]) == (400, "Bad parameter value"), reply
    assert fragment in error["data"], error["data"]


@pytest.mark.parametrize("sock, fragment", BAD_HOSTS)
def test_bad_host_names_are_answered_on_every_listener(evsrv, sock, fragment):
    data = subscribe(json.dumps(sock).encode())
    assert_bad_parameter(udp(evsrv, data), fragment)
    assert_bad_parameter(http(evsrv, data), fragment)
    text = b":event_subscribe:\nE_TEST\n" + sock.encode() + b"\n60\n"
    assert udp(evsrv, text) == b"400 Bad parameter\n"


@pytest.mark.parametrize("socket_json", NOT_UTF8)
def test_sockets_that_are_not_utf8_are_bad_parameters(evsrv, socket_json):
    data = subscribe(socket_json)
    assert_bad_parameter(udp(evsrv, data), "not valid UTF-8")
    assert_bad_parameter(http(evsrv, data), "not valid UTF-8")


def test_a_bad_socket_does_not_cost_good_subscribes_their_answer(evsrv):
    # the datagrams of several clients arrive together: the bad ones are
    # refused, the good one is stored and answered OK
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    good = f'"udp:127.0.0.1:{receiver.getsockname()[1]}"'.encode()
    try:
        for sock, payload in zip(sockets, [NOT_UTF8[1], good, NOT_UTF8[2], NOT_UTF8[0]]):
            sock.settimeout(10)
            sock.sendto(subscribe(payload), evsrv.udp)
        replies = [sock.recv(65535) for sock in sockets]
        assert json.loads(replies[1]) == {"jsonrpc": "2.0", "result": "OK", "id": 1}
        for reply in replies[:1] + replies[2:]:
            assert_bad_parameter(reply, "not valid UTF-8")
    finally:
        receiver.close()
        for sock in sockets:
            sock.close()


