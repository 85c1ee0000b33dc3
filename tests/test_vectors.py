"""
The test vectors of spec §8, byte for byte, with evsrv's §9 decisions applied
where they differ from OpenSIPS:

 - D2: 1.x text replies have no trailing empty line (C{200 OK\\n}) and the
   parse error reply is C{400 parse_error\\n};
 - D4: an inline JSON object as C{raise_event} params is accepted (vector 29);
 - D5: C{expire 0} removes the subscription at once (vector 33);
 - D8: text notifications print negative ints signed (vector 15).

The server publishes C{E_TEST} only, which gives fixture F3's ids exactly
(E_TEST=6, E_CORE_LOG=7). The 1.x vectors were written against fixture F1
(E_TEST=3, three core events); their expected bytes use the F3 ids.

Vectors whose notification is observed subscribe a real UDP receiver: the
spec's C{udp:127.0.0.1:9999} is replaced by the receiver's address in both the
request and the expected bytes (see L{Sink.sub}).

MI vectors run twice: straight through C{server.dispatcher.handle} and over
the real UDP MI socket.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from evsrv import encoding
from evsrv.evi.params import Param, make_params

F3_INI = """\
[mi]
udp = 127.0.0.1:0
[events]
publish = E_TEST
"""

TEXT_INI = F3_INI + """\
[transport:udp]
format = text
"""

SPEC_SOCKET = b"udp:127.0.0.1:9999"
PROBE = b'{"jsonrpc":"2.0","method":"version","id":"__probe__"}'
PROBE_TAIL = b',"id":"__probe__"}'


# -- helpers -------------------------------------------------------------------------


class DispatcherMI:
    """
    The MI without sockets: the dispatcher's reply (or C{None}).
    """

    def __init__(self, server):
        self.server = server

    def call(self, data: bytes):
        return self.server.dispatcher.handle(data)


class UDPMI:
    """
    The MI over its real UDP socket. Every request is followed by a probe so
    that "no reply" is observed as "the next datagram back is the probe's".
    """

    def __init__(self, server, collector):
        self.address = server.mi_udp_address()
        self.collector = collector

    @inlineCallbacks
    def call(self, data: bytes):
        self.collector.transport.write(data, self.address)
        self.collector.transport.write(PROBE, self.address)
        first, addr = yield self.collector.next()
        assert addr == self.address  # replies come from the MI socket itself
        if first.endswith(PROBE_TAIL):
            return None
        probe, _ = yield self.collector.next()
        assert probe.endswith(PROBE_TAIL), probe
        return first


@pytest.fixture(params=["dispatcher", "udp"])
def make_mi(request, udp_collector):
    def make(server):
        if request.param == "dispatcher":
            return DispatcherMI(server)
        return UDPMI(server, udp_collector())
    return make


class Sink:
    """
    A UDP subscriber standing in for the spec's udp:127.0.0.1:9999.
    """

    def __init__(self, collector):
        self.collector = collector
        self.socket = ("udp:%s:%d" % collector.address).encode()

    def sub(self, data):
        if data is None:
            return None
        return data.replace(SPEC_SOCKET, self.socket)

    @inlineCallbacks
    def assert_nothing_more(self, wait=0.1):
        yield deferLater(reactor, wait, lambda: None)
        assert self.collector.received == []


# -- 1.x / 2.x text MI over mi_datagram (vectors 1-12) ---------------------------------

V01 = (b":event_subscribe:\nE_TEST\nudp:127.0.0.1:9999\n60\n", b"200 OK\n")

EVENTS_TEXT = (b"200 OK\n"
               b"Event:: E_CORE_SR_STATUS_CHANGED id=0\n"
               b"Event:: E_CORE_THRESHOLD id=1\n"
               b"Event:: E_CORE_SHM_THRESHOLD id=2\n"
               b"Event:: E_CORE_PKG_THRESHOLD id=3\n"
               b"Event:: E_CORE_PROC_AUTO_SCALE id=4\n"
               b"Event:: E_CORE_TCP_DISCONNECT id=5\n"
               b"Event:: E_TEST id=6\n"
               b"Event:: E_CORE_LOG id=7\n")

TEXT_VECTORS = [
    pytest.param([V01], id="v01-subscribe"),
    pytest.param([(b":event_subscribe:\nE_TEST\n", b"400 Too few or too many arguments\n")],
                 id="v02-too-few"),
    pytest.param([(b":event_subscribe:\nE_NOPE\nudp:127.0.0.1:9999\n", b"400 Bad parameter\n")],
                 id="v03-unknown-event"),
    pytest.param([(b":event_subscribe:\nE_TEST\nudp:127.0.0.1:9999\nabc\n",
                   b"400 Bad parameter\n")], id="v04-bad-expire"),
    pytest.param([(b":event_subscribe:\nE_TEST\nfoo:bar\n", b"400 Bad parameter\n")],
                 id="v05-unknown-transport"),
    pytest.param([(b":events_list:\n", EVENTS_TEXT)], id="v06-events-list"),
    pytest.param([V01, (b":subscribers_list:\n",
                        b"200 OK\nEvent:: E_TEST id=6\n"
                        b"\tSubscriber::  socket=udp:127.0.0.1:9999 expire=60\n")],
                 id="v07-subscribers-list"),
    pytest.param([(b":subscribers_list:\nE_NOPE\n", b"404 Event not published\n")],
                 id="v08-unknown-event"),
    pytest.param([V01, (b":subscribers_list:\nE_TEST\nudp:127.0.0.1:1\n",
                        b"404 Subscriber does not exist\n")], id="v09-no-such-subscriber"),
    pytest.param([(b":subscribers_list:\nE_CORE_THRESHOLD\n", b"200 OK\n")],
                 id="v10-no-subscribers"),
    pytest.param([(b":no_such_cmd:\n", b"500 command not available\n")], id="v11a-unknown-cmd"),
    pytest.param([(b":events_list:x\n", b"500 command not available\n")],
                 id="v11b-text-after-cmd"),
    pytest.param([(b':event_subscribe:\nE_TEST\nudp:1.2.3.4:9"\n', b"400 parse_error\n")],
                 id="v12-parse-error"),
]


@pytest.mark.parametrize("steps", TEXT_VECTORS)
@pytest_twisted.inlineCallbacks
def test_text_mi_vectors(server_factory, make_mi, steps):
    mi = make_mi(server_factory(F3_INI))
    for request, expected in steps:
        reply = yield mi.call(request)
        assert reply == expected, request


@pytest_twisted.inlineCallbacks
def test_v13_script_subscription_never_expires(server_factory, make_mi):
    server = server_factory(F3_INI)
    mi = make_mi(server)
    # A script subscribe_event() without expire: never expires.
    results = []
    server.evi.subscribe("E_TEST", "udp:127.0.0.1:9998").addBoth(results.append)
    assert results and results[0].expire is None
    reply = yield mi.call(b":subscribers_list:\nE_TEST\n")
    assert reply == (b"200 OK\nEvent:: E_TEST id=6\n"
                     b"\tSubscriber::  socket=udp:127.0.0.1:9998 expire=never\n")
    # The same subscriber in the 3.x dialect (spec §2.1: "expire":"never", no ttl).
    reply = yield mi.call(b'{"jsonrpc":"2.0","method":"subscribers_list",'
                          b'"params":["E_TEST"],"id":1}')
    assert reply == (b'{"jsonrpc":"2.0","result":{"Event":{"name":"E_TEST","id":6,'
                     b'"Subscribers":[{"socket":"udp:127.0.0.1:9998","expire":"never"}]}},'
                     b'"id":1}')


# -- 1.x-3.0 text notifications (vectors 14-17) -----------------------------------------

TEXT_NOTIFICATIONS = [
    pytest.param({"ip": "1.2.3.4", "n": 5}, b"E_TEST\nip::1.2.3.4\nn::5\n\n", id="v14"),
    pytest.param(None, b"E_TEST\n\n", id="v15a-no-params"),
    # D8: signed, where OpenSIPS prints 18446744073709551615.
    pytest.param(["a", -1], b"E_TEST\na\n-1\n\n", id="v15b-unnamed-negative"),
    pytest.param({"v": 'x"y\nz'}, b'E_TEST\nv::"x\\"y\nz"\n\n', id="v16-quoted"),
]


# Further §4.1 rules: empty string -> nothing after "::"; backslashes are not
# escaped; only a LF (not a lone CR) triggers quoting.
TEXT_RULES = [
    pytest.param({"e": ""}, b"E_TEST\ne::\n\n", id="s41-empty-string"),
    pytest.param({"v": 'a\\"\nb'}, b'E_TEST\nv::"a\\\\"\nb"\n\n', id="s41-backslash-kept"),
    pytest.param({"v": 'a"b\rc'}, b'E_TEST\nv::a"b\rc\n\n', id="s41-no-lf-no-quoting"),
    pytest.param([Param("n", 2 ** 31 - 1), Param(None, -(2 ** 31))],
                 b"E_TEST\nn::2147483647\n-2147483648\n\n", id="s41-int-limits"),
]


@pytest.mark.parametrize("params, expected", TEXT_NOTIFICATIONS + TEXT_RULES)
def test_text_notification_encoding(params, expected):
    assert encoding.text_notification("E_TEST", make_params(params)) == expected


@pytest.mark.parametrize("params, expected", TEXT_NOTIFICATIONS)
@pytest_twisted.inlineCallbacks
def test_text_notification_over_udp(server_factory, udp_collector, params, expected):
    server = server_factory(TEXT_INI)
    sink = udp_collector()
    mi = DispatcherMI(server)
    reply = yield mi.call(b":event_subscribe:\nE_TEST\nudp:%s:%d\n" % (
        sink.address[0].encode(), sink.address[1]))
    assert reply == b"200 OK\n"
    report = yield server.evi.raise_event("E_TEST", params)
    assert report.delivered == 1
    data, _ = yield sink.next()
    assert data == expected


@pytest_twisted.inlineCallbacks
def test_v14_text_notification_raised_through_mi(server_factory, udp_collector):
    """
    Vector 14's parameters as MI raise_event gives them: a JSON string
    holding an object (numbers become int parameters).
    """
    server = server_factory(TEXT_INI)
    sink = Sink(udp_collector())
    mi = DispatcherMI(server)
    reply = yield mi.call(sink.sub(b'{"jsonrpc":"2.0","method":"event_subscribe",'
                                   b'"params":["E_TEST","udp:127.0.0.1:9999"],"id":1}'))
    assert reply == b'{"jsonrpc":"2.0","result":"OK","id":1}'
    reply = yield mi.call(b'{"jsonrpc":"2.0","method":"raise_event","params":'
                          b'["E_TEST","{\\"ip\\":\\"1.2.3.4\\",\\"n\\":5}"],"id":2}')
    assert reply == b'{"jsonrpc":"2.0","result":"OK","id":2}'
    data, _ = yield sink.collector.next()
    assert data == b"E_TEST\nip::1.2.3.4\nn::5\n\n"


def test_v17_rabbitmq_text_body():
    params = make_params({"ip": "1.2.3.4", "n": 5})
    assert encoding.text_notification("E_TEST", params, terminator=False) == \
        b"E_TEST\nip::1.2.3.4\nn::5"


# -- 3.x JSON-RPC MI over mi_datagram (vectors 18-33) ------------------------------------

V18 = (b'{"jsonrpc":"2.0","method":"event_subscribe","params":["E_TEST","udp:127.0.0.1:9999",60],'
       b'"id":1}', b'{"jsonrpc":"2.0","result":"OK","id":1}')
V29_SUB = (b'{"jsonrpc":"2.0","method":"event_subscribe","params":["E_TEST","udp:127.0.0.1:9999"],'
           b'"id":0}', b'{"jsonrpc":"2.0","result":"OK","id":0}')

# (request, reply, notification the subscriber receives or None)
JSON_VECTORS = [
    pytest.param([V18 + (None,)], id="v18-subscribe"),
    pytest.param([(b'{"jsonrpc":"2.0","method":"event_subscribe","params":{"event":"E_NOPE",'
                   b'"socket":"udp:127.0.0.1:9999"},"id":"a"}',
                   b'{"jsonrpc":"2.0","error":{"code":400,"message":"Bad parameter value"},'
                   b'"id":"a"}', None)], id="v19-unknown-event"),
    pytest.param([(b'{"jsonrpc":"2.0","method":"event_subscribe","params":["E_TEST",'
                   b'"udp:127.0.0.1:9999",-5],"id":2}',
                   b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params",'
                   b'"data":"Negative expire value"},"id":2}', None)], id="v20-negative-expire"),
    pytest.param([(b'{"jsonrpc":"2.0","method":"event_subscribe","params":["E_TEST"],"id":3}',
                   b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params",'
                   b'"data":"Too few or too many parameters"},"id":3}', None)],
                 id="v21-too-few"),
    pytest.param([(b'{"jsonrpc":"2.0","method":"event_subscribe","params":{"event":"E_TEST",'
                   b'"sock":"udp:127.0.0.1:9"},"id":4}',
                   b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params",'
                   b'"data":"Named parameters do not match"},"id":4}', None)],
                 id="v22-named-mismatch"),
    pytest.param([V18 + (None,),
                  (b'{"jsonrpc":"2.0","method":"subscribers_list","id":5}',
                   b'{"jsonrpc":"2.0","result":{"Events":[{"name":"E_TEST","id":6,"Subscribers":'
                   b'[{"socket":"udp:127.0.0.1:9999","expire":60,"ttl":60}]}]},"id":5}', None)],
                 id="v23-subscribers-list"),
    pytest.param([(b'{"jsonrpc":"2.0","method":"subscribers_list","params":["E_CORE_THRESHOLD"],'
                   b'"id":6}', b'{"jsonrpc":"2.0","result":{"Event":{}},"id":6}', None)],
                 id="v24-no-subscribers"),
    pytest.param([V18 + (None,),
                  (b'{"jsonrpc":"2.0","method":"subscribers_list","params":["E_TEST",'
                   b'"udp:127.0.0.1:1"],"id":7}',
                   b'{"jsonrpc":"2.0","error":{"code":404,"message":"Subscriber does not exist"},'
                   b'"id":7}', None)], id="v25-no-such-subscriber"),
    pytest.param([(b'{"jsonrpc":"2.0","method":"events_list","id":8}',
                   b'{"jsonrpc":"2.0","result":{"Events":['
                   b'{"name":"E_CORE_SR_STATUS_CHANGED","id":0},'
                   b'{"name":"E_CORE_THRESHOLD","id":1},{"name":"E_CORE_SHM_THRESHOLD","id":2},'
                   b'{"name":"E_CORE_PKG_THRESHOLD","id":3},'
                   b'{"name":"E_CORE_PROC_AUTO_SCALE","id":4},'
                   b'{"name":"E_CORE_TCP_DISCONNECT","id":5},{"name":"E_TEST","id":6},'
                   b'{"name":"E_CORE_LOG","id":7}]},"id":8}', None)], id="v26-events-list"),
    pytest.param([V18 + (None,),
                  (b'{"jsonrpc":"2.0","method":"raise_event","params":["E_TEST",'
                   b'"{\\"ip\\":\\"1.2.3.4\\",\\"n\\":5}"],"id":9}',
                   b'{"jsonrpc":"2.0","result":"OK","id":9}',
                   b'{"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4","n":5}}')],
                 id="v27-raise-json-string"),
    pytest.param([V18 + (None,),
                  (b'{"jsonrpc":"2.0","method":"raise_event","params":["E_TEST",["a",7]],"id":10}',
                   b'{"jsonrpc":"2.0","result":"OK","id":10}',
                   b'{"jsonrpc":"2.0","method":"E_TEST","params":["a","7"]}')],
                 id="v28-raise-array"),
    # D4: the inline object is accepted (OpenSIPS: 400 "No Params").
    pytest.param([V29_SUB + (None,),
                  (b'{"jsonrpc":"2.0","method":"raise_event","params":{"event":"E_TEST",'
                   b'"params":{"a":1}},"id":11}',
                   b'{"jsonrpc":"2.0","result":"OK","id":11}',
                   b'{"jsonrpc":"2.0","method":"E_TEST","params":{"a":1}}'),
                  (b'{"jsonrpc":"2.0","method":"raise_event","params":{"event":"E_TEST",'
                   b'"params":"not json"},"id":11}',
                   b'{"jsonrpc":"2.0","error":{"code":400,"message":"Bad Params"},"id":11}',
                   None)], id="v29-raise-inline-object-and-bad-string"),
    pytest.param([(b'{"jsonrpc":"2.0","method":"raise_event","params":["E_CORE_THRESHOLD"],'
                   b'"id":12}',
                   b'{"jsonrpc":"2.0","error":{"code":480,"message":"Temporarily Unavailable"},'
                   b'"id":12}', None),
                  (b'{"jsonrpc":"2.0","method":"raise_event","params":["E_NOPE"],"id":12}',
                   b'{"jsonrpc":"2.0","error":{"code":404,"message":"Event not registered"},'
                   b'"id":12}', None)], id="v30-raise-errors"),
    pytest.param([(b'{"jsonrpc":"2.0","method":"no_such","id":13}',
                   b'{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},'
                   b'"id":13}',
                   None)], id="v31-method-not-found"),
    pytest.param([(b'{"method":"events_list","id":14}',
                   b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":14}',
                   None),
                  (b"hello", b"400 Parse_error", None),
                  (b'{"jsonrpc":"2.0","method":"events_list"}', None, None)],
                 id="v32-invalid-parse-notification"),
    # D5: expire 0 removes the subscriber at once; no "expired" listing.
    pytest.param([V18 + (None,),
                  (b'{"jsonrpc":"2.0","method":"event_subscribe","params":["E_TEST",'
                   b'"udp:127.0.0.1:9999",0],"id":15}',
                   b'{"jsonrpc":"2.0","result":"OK","id":15}', None),
                  (b'{"jsonrpc":"2.0","method":"subscribers_list","id":16}',
                   b'{"jsonrpc":"2.0","result":{"Events":[]},"id":16}', None),
                  (b'{"jsonrpc":"2.0","method":"subscribers_list","params":["E_TEST"],"id":17}',
                   b'{"jsonrpc":"2.0","result":{"Event":{}},"id":17}', None),
                  (b'{"jsonrpc":"2.0","method":"subscribers_list","params":["E_TEST",'
                   b'"udp:127.0.0.1:9999"],"id":18}',
                   b'{"jsonrpc":"2.0","error":{"code":404,"message":"Subscriber does not exist"},'
                   b'"id":18}', None),
                  (b'{"jsonrpc":"2.0","method":"raise_event","params":["E_TEST",["x"]],"id":19}',
                   b'{"jsonrpc":"2.0","error":{"code":480,"message":"Temporarily Unavailable"},'
                   b'"id":19}', None)],
                 id="v33-unsubscribe"),
]


@pytest.mark.parametrize("steps", JSON_VECTORS)
@pytest_twisted.inlineCallbacks
def test_jsonrpc_mi_vectors(server_factory, make_mi, udp_collector, steps):
    server = server_factory(F3_INI)
    mi = make_mi(server)
    sink = Sink(udp_collector())
    for request, expected, notification in steps:
        reply = yield mi.call(sink.sub(request))
        assert reply == sink.sub(expected), request
        if notification is not None:
            data, _ = yield sink.collector.next()
            assert data == notification
    yield sink.assert_nothing_more()


@pytest_twisted.inlineCallbacks
def test_v33_unsubscribed_socket_receives_nothing(server_factory, udp_collector):
    """
    After expire 0 the old subscriber gets nothing, while a new subscriber
    of the same event does.
    """
    server = server_factory(F3_INI)
    mi = DispatcherMI(server)
    gone = Sink(udp_collector())
    other = Sink(udp_collector())
    reply = yield mi.call(gone.sub(V18[0]))
    assert reply == V18[1]
    reply = yield mi.call(gone.sub(b'{"jsonrpc":"2.0","method":"event_subscribe","params":'
                                   b'["E_TEST","udp:127.0.0.1:9999",0],"id":15}'))
    assert reply == b'{"jsonrpc":"2.0","result":"OK","id":15}'
    reply = yield mi.call(other.sub(V18[0]))
    assert reply == V18[1]
    report = yield server.evi.raise_event("E_TEST", ["x"])
    assert (report.subscribers, report.delivered) == (1, 1)
    data, _ = yield other.collector.next()
    assert data == b'{"jsonrpc":"2.0","method":"E_TEST","params":["x"]}'
    yield gone.assert_nothing_more()


# -- transport bodies (vectors 34, 38; 35-37 have no encoder in evsrv) ------------------

V27_PARAMS = (Param("ip", "1.2.3.4"), Param("n", 5))


def test_v34_stream_body():
    assert encoding.json_notification("E_TEST", V27_PARAMS) == \
        b'{"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4","n":5}}'


def test_v34_stream_body_with_method():
    assert encoding.json_notification("E_TEST", V27_PARAMS, method="notify") == \
        b'{"jsonrpc":"2.0","method":"notify","params":{"ip":"1.2.3.4","n":5}}'


def test_v34_stream_body_with_event_param():
    # event_param "event": an extra first parameter carrying the event name.
    params = (Param("event", "E_TEST"),) + V27_PARAMS
    assert encoding.json_notification("E_TEST", params, method="notify") == \
        b'{"jsonrpc":"2.0","method":"notify","params":{"event":"E_TEST","ip":"1.2.3.4","n":5}}'


def test_v34_reliable_mode_id_first():
    # §4.0 / §4.4: in reliable mode "id" comes first.
    assert encoding.json_notification("E_TEST", V27_PARAMS, notification_id=3) == \
        b'{"id":3,"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4","n":5}}'


@pytest.mark.parametrize("params, expected", [
    pytest.param((), b'{"jsonrpc":"2.0","method":"E_TEST"}', id="no-params"),
    pytest.param((Param("ip", "1.2.3.4"),),
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4"}}', id="named"),
    pytest.param((Param(None, "a"), Param(None, "b")),
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":["a","b"]}', id="unnamed"),
])
def test_s40_json_body_examples(params, expected):
    assert encoding.json_notification("E_TEST", params) == expected


@pytest.mark.parametrize("params, expected", [
    # §1.2: the first parameter decides object vs array.
    pytest.param((Param(None, "a"), Param("n", 1)),
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":["a",1]}', id="name-lost"),
    pytest.param((Param("n", 1), Param(None, "a")),
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"n":1,"":"a"}}',
                 id="empty-key"),
    pytest.param((Param("n", 1), Param("n", -2)),
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"n":1,"n":-2}}',
                 id="duplicate-names-kept"),
    # §2.1 string escaping: only '"', '\\' and control bytes; '/' and non-ASCII raw.
    pytest.param((Param("s", 'q"b\\/\x01\x1f\n\t\x7f\u00e9'),),
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"s":"q\\"b\\\\/\\u0001'
                 b'\\u001f\\n\\t\x7f\xc3\xa9"}}', id="escaping"),
])
def test_s12_json_params_layout(params, expected):
    assert encoding.json_notification("E_TEST", params) == expected


def test_v38_jsonrpc24_body():
    assert encoding.jsonrpc24_notification("E_TEST", (Param("ip", "1.2.3.4"),)) == \
        b'{"id":null,"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4"}}'


def test_v38_jsonrpc24_body_with_an_id():
    # evsrv's reliable mode on jsonrpc: (as 2.4's sync_mode): a number instead of null
    assert encoding.jsonrpc24_notification_with_id(
        "E_TEST", (Param("ip", "1.2.3.4"),), method="notify", notification_id=12) == \
        b'{"id":12,"jsonrpc":"2.0","method":"notify","params":{"ip":"1.2.3.4"}}'
    assert encoding.jsonrpc24_notification_with_id("E_TEST", ()) == \
        b'{"id":1,"jsonrpc":"2.0","method":"E_TEST","params":{}}'


def test_v38_jsonrpc24_body_empty_params():
    assert encoding.jsonrpc24_notification("E_TEST", ()) == \
        b'{"id":null,"jsonrpc":"2.0","method":"E_TEST","params":{}}'
