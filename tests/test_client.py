"""
The MI clients (L{evsrv.client}); L{StubMI} is the in-process test double,
the blocking clients are also driven end to end by tests/test_ctl.py.
"""

import pytest
from twisted.internet.defer import Deferred

from evsrv.client import HTTPMIClient, MIClient, StubMI, parse_reply


def test_stub_gets_the_bytes_a_datagram_client_would(server):
    mi = StubMI(server.dispatcher)
    reply = mi.call("events_list")
    assert reply.ok and "E_TEST" in [e["name"] for e in reply.value["Events"]]
    assert mi.requests[-1] == b'{"jsonrpc":"2.0","method":"events_list","id":1}'
    error = mi.call("subscribers_list", ["E_NOPE"])
    assert (error.kind, error.value["code"]) == ("error", 404)
    assert mi.raw(b":version:\n").startswith(b"200 OK\n")
    assert mi.raw(b'{"jsonrpc":"2.0","method":"which"}') is None  # a notification
    assert mi.call("nope").value["message"] == "Method not found"


def test_stub_refuses_a_request_that_is_not_answered_at_once():
    class Pending:
        def handle(self, data):
            return Deferred()
    with pytest.raises(AssertionError, match="no synchronous answer"):
        StubMI(Pending()).call("which")


@pytest.mark.parametrize("data, kind, value", [
    (b'{"jsonrpc":"2.0","result":"OK","id":7}', "result", "OK"),
    (b'{"jsonrpc":"2.0","error":{"code":400,"message":"x"},"id":null}', "error",
     {"code": 400, "message": "x"}),
    (b'{"jsonrpc":"2.0","result":"OK","id":8}', "text", '{"jsonrpc":"2.0","result":"OK","id":8}'),
    (b"400 Parse_error", "text", "400 Parse_error"),
    (b"\xff", "text", "\ufffd"),
])
def test_parse_reply(data, kind, value):
    reply = parse_reply(data, 7)
    assert (reply.kind, reply.value, reply.data) == (kind, value, data)


def test_every_client_has_the_same_interface():
    for cls in (MIClient, HTTPMIClient, StubMI):
        for name in ("call", "close", "__enter__", "__exit__"):
            assert callable(getattr(cls, name)), (cls, name)
