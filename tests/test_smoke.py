import json

import pytest_twisted


@pytest_twisted.inlineCallbacks
def test_subscribe_raise_receive(server, udp_collector):
    mi = udp_collector()
    sink = udp_collector()
    addr = server.mi_udp_address()
    req = {"jsonrpc": "2.0", "method": "event_subscribe",
           "params": ["E_TEST", "udp:%s:%d" % sink.address, 60], "id": 1}
    reply, _ = yield mi.request(json.dumps(req).encode(), addr)
    assert reply == b'{"jsonrpc":"2.0","result":"OK","id":1}'
    req = {"jsonrpc": "2.0", "method": "raise_event", "params": ["E_TEST", ["a", 7]], "id": 2}
    reply, _ = yield mi.request(json.dumps(req).encode(), addr)
    assert reply == b'{"jsonrpc":"2.0","result":"OK","id":2}'
    data, _ = yield sink.next()
    assert data == b'{"jsonrpc":"2.0","method":"E_TEST","params":["a","7"]}'
