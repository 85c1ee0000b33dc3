"""
Malformed and unusual MI input (spec §2.1, §2.3, §3, §9) gets its documented
reply, in both dialects, and never an internal error or a logged error.

Most tests go straight through C{server.dispatcher.handle}, whose Deferred
has already fired for everything here (no DNS: only IP literals and UNIX
paths are used); the socket-level rules (empty datagram, UNIX replies) use
the real MI sockets.
"""

import json
import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from tests.conftest import BASE_INI, DatagramCollector

OK = b'"result":"OK"'
EMPTY_LIST = b'{"Events":[]}'


def request(method, params=None, id=1, **extra):
    """
    Compact JSON-RPC request bytes (C{id=None} gives "id":null; pass
    C{notification=True} for no id member).
    """
    message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if not extra.pop("notification", False):
        message["id"] = id
    message.update(extra)
    return json.dumps(message, separators=(",", ":")).encode()


def error(code, message, id=1, data=None):
    err = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return (b'{"jsonrpc":"2.0","error":' + json.dumps(err, separators=(",", ":")).encode()
            + b',"id":' + json.dumps(id).encode() + b"}")


def result(value, id=1):
    return (b'{"jsonrpc":"2.0","result":' + json.dumps(value, separators=(",", ":")).encode()
            + b',"id":' + json.dumps(id).encode() + b"}")


INVALID = error(-32600, "Invalid Request", None)


def invalid(id):
    return error(-32600, "Invalid Request", id)


class Caller:
    """
    Runs one request through the dispatcher synchronously; fails the test
    at once if anything was logged as an error.
    """

    def __init__(self, server, logged_errors):
        self.server = server
        self.logged_errors = logged_errors

    def __call__(self, data: bytes):
        results = []
        try:
            self.server.dispatcher.handle(data).addBoth(results.append)
        finally:
            logged = self.logged_errors.flush()
        assert not logged, "errors were logged: %r" % ([e.get("log_format") for e in logged],)
        assert results, "the reply was not produced synchronously"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def json(self, data: bytes):
        reply = self(data)
        assert reply is not None
        return json.loads(reply.decode("utf-8", "surrogateescape"))

    def sockets(self, event="E_TEST"):
        """
        C{[(socket, expire)]} of an event's subscribers, from the MI listing.
        """
        listing = self.json(request("subscribers_list", [event], id="ls"))["result"]["Event"]
        return [(s["socket"], s["expire"]) for s in listing.get("Subscribers", [])]


@pytest.fixture
def call(server, logged_errors):
    return Caller(server, logged_errors)


@pytest.fixture
def make_call(server_factory, logged_errors):
    def make(ini):
        return Caller(server_factory(ini), logged_errors)
    return make


# == JSON-RPC: request structure (§2.1, §3.2) ===============================================

@pytest.mark.parametrize("data", [
    b"hello", b"{", b'{"jsonrpc":"2.0"', b'{"jsonrpc":"2.0","method":"which",}', b"[1,",
    b"{'jsonrpc':'2.0'}", b'{"a":tru}', b"nul", b"\xff\xfe\x00", b" ", b"\n\t\r ",
    b'{"jsonrpc":"2.0","method":"which","id":1', b"}", b"]", b"x{}", b"--1",
])
def test_not_json_is_plain_parse_error(call, data):
    assert call(data) == b"400 Parse_error"


@pytest.mark.parametrize("data", [
    b"NaN", b"Infinity", b"-Infinity",
    b'{"jsonrpc":"2.0","method":"subscribers_list","id":NaN}',
    b'{"jsonrpc":"2.0","method":"subscribers_list","id":1,"params":[NaN]}',
    b'{"jsonrpc":"2.0","method":"event_subscribe","params":["E_TEST","udp:127.0.0.1:9",NaN],'
    b'"id":1}',
])
def test_nonstandard_json_literals_are_parse_errors(call, data):
    assert call(data) == b"400 Parse_error"


@pytest.mark.parametrize("data", [
    b"[1]", b"5", b'"str"', b"null", b"true", b"[]", b"{}", b"[{}]",
    b'[{"jsonrpc":"2.0","method":"which","id":1}]',  # no batches
])
def test_non_object_json_is_invalid_request_with_null_id(call, data):
    assert call(data) == INVALID


@pytest.mark.parametrize("jsonrpc", [
    None, "missing", 2.0, 2, "1.0", "2", "2.0 ", " 2.0", "", ["2.0"], {"v": "2.0"}, True])
@pytest.mark.parametrize("id", [7, "x", None])
def test_missing_or_wrong_jsonrpc_is_invalid_request(call, jsonrpc, id):
    message = {"method": "subscribers_list", "id": id}
    if jsonrpc != "missing":
        message["jsonrpc"] = jsonrpc
    assert call(json.dumps(message).encode()) == invalid(id)


@pytest.mark.parametrize("bad_id", ["true", "false", "[]", "{}", "[1]", '{"a":1}'])
def test_bad_id_types_are_invalid_request_with_null_id(call, bad_id):
    data = b'{"jsonrpc":"2.0","method":"subscribers_list","id":%s}' % bad_id.encode()
    assert call(data) == INVALID


@pytest.mark.parametrize("method", ["missing", 5, None, [], {}, True, ["which"]])
def test_missing_or_non_string_method_is_invalid_request(call, method):
    message = {"jsonrpc": "2.0", "id": 3}
    if method != "missing":
        message["method"] = method
    assert call(json.dumps(message).encode()) == invalid(3)


@pytest.mark.parametrize("params", [5, "x", "", True, False, None, 1.5])
def test_params_neither_array_nor_object_is_invalid_request(call, params):
    data = json.dumps({"jsonrpc": "2.0", "method": "subscribers_list", "params": params,
                       "id": 4}).encode()
    assert call(data) == invalid(4)


@pytest.mark.parametrize("data", [
    b'{"method":"events_list"}',
    b'{"jsonrpc":"1.0","method":"events_list"}',
    b'{"jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","method":"events_list","params":5}',
    b"[1]",
])
def test_invalid_notification_is_answered_with_null_id(call, data):
    assert call(data) == INVALID


@pytest.mark.parametrize("data", [
    request("subscribers_list", notification=True),
    request("no_such_method", notification=True),
    request("event_subscribe", ["E_TEST"], notification=True),                    # -32602
    request("event_subscribe", ["E_NOPE", "udp:127.0.0.1:9"], notification=True),  # 400
    request("subscribers_list", ["E_NOPE"], notification=True),                    # 404
    request("raise_event", ["E_TEST"], notification=True),                         # 480
    request("event_subscribe", ["E_TEST", "udp:127.0.0.1:9"], notification=True),  # OK
])
def test_valid_notifications_get_no_reply(call, data):
    assert call(data) is None


def test_notification_is_still_executed(call):
    assert call(request("event_subscribe", ["E_TEST", "udp:127.0.0.1:9", 30],
                        notification=True)) is None
    assert call.sockets() == [("udp:127.0.0.1:9", 30)]


def test_member_names_are_case_insensitive(call):
    data = b'{"JSONRPC":"2.0","Method":"subscribers_list","ID":7,"Params":[]}'
    assert call(data) == result({"Events": []}, 7)
    data = b'{"Jsonrpc":"2.0","mEtHoD":"subscribers_list","Id":"k","PARAMS":{}}'
    assert call(data) == result({"Events": []}, "k")


def test_member_lookup_takes_the_first_match(call):
    data = b'{"jsonrpc":"2.0","method":"subscribers_list","id":1,"ID":2}'
    assert call(data) == result({"Events": []}, 1)
    data = b'{"jsonrpc":"2.0","JSONRPC":"1.0","method":"subscribers_list","id":1}'
    assert call(data) == result({"Events": []}, 1)
    data = b'{"JSONRPC":"1.0","jsonrpc":"2.0","method":"subscribers_list","id":1}'
    assert call(data) == invalid(1)
    data = b'{"jsonrpc":"2.0","Method":"subscribers_list","method":"nope","id":1}'
    assert call(data) == result({"Events": []}, 1)


def test_uppercase_id_member_makes_it_a_request_not_a_notification(call):
    assert call(b'{"jsonrpc":"2.0","method":"no_such","ID":9}') == \
        error(-32601, "Method not found", 9)


@pytest.mark.parametrize("id_text, echoed", [
    (b"1", b"1"), (b"0", b"0"), (b"-0", b"0"), (b"1.7", b"1"), (b"-1.7", b"-1"),
    (b"0.5", b"0"), (b"-0.5", b"0"), (b"1e3", b"1000"),
    (b"2147483647", b"2147483647"), (b"2147483648", b"2147483647"),
    (b"-2147483648", b"-2147483648"), (b"-2147483649", b"-2147483648"),
    (b"99999999999999999999999", b"2147483647"), (b"1e20", b"2147483647"),
    (b"-1e20", b"-2147483648"),
    (b'"abc"', b'"abc"'), (b'""', b'""'), (b"null", b"null"),
    (b'"a/b"', b'"a/b"'),                      # '/' is not escaped
    (b'"\\u00e9"', '"\u00e9"'.encode()),       # non-ASCII written raw (UTF-8)
    (b'"\xff\xfe"', b'"\xff\xfe"'),            # bytes copied raw, no UTF-8 check
    (b'"a\\nb\\u0001\\u001f"', b'"a\\nb\\u0001\\u001f"'),
    (b'"q\\"b\\\\"', b'"q\\"b\\\\"'),
])
def test_id_echo(call, id_text, echoed):
    data = b'{"jsonrpc":"2.0","method":"subscribers_list","id":' + id_text + b"}"
    assert call(data) == b'{"jsonrpc":"2.0","result":{"Events":[]},"id":' + echoed + b"}"


@pytest.mark.parametrize("id_text, echoed", [(b"1e400", b"2147483647"),
                                             (b"-1e400", b"-2147483648")])
def test_id_echo_infinite(call, id_text, echoed):
    data = b'{"jsonrpc":"2.0","method":"subscribers_list","id":' + id_text + b"}"
    assert call(data) == b'{"jsonrpc":"2.0","result":{"Events":[]},"id":' + echoed + b"}"


def test_id_with_lone_surrogate_escape_still_gets_a_reply(call):
    reply = call(b'{"jsonrpc":"2.0","method":"subscribers_list","id":"\\ud800"}')
    assert reply is not None
    assert reply.startswith(b'{"jsonrpc":"2.0","result":{"Events":[]},"id":')


@pytest.mark.parametrize("tail", [b"garbage", b"}", b"{}", b'{"jsonrpc":"2.0"}', b"\n\n",
                                  b"\x00\xff", b" ]]]", b"NaN"])
def test_trailing_bytes_after_the_object_are_ignored(call, tail):
    data = b'{"jsonrpc":"2.0","method":"subscribers_list","id":1}' + tail
    assert call(data) == result({"Events": []})


def test_leading_whitespace_is_allowed(call):
    assert call(b' \n\t\r{"jsonrpc":"2.0","method":"subscribers_list","id":1}') == \
        result({"Events": []})


def test_raw_non_utf8_method_is_just_unknown(call):
    assert call(b'{"jsonrpc":"2.0","method":"\xff\xfe","id":1}') == \
        error(-32601, "Method not found")


@pytest.mark.parametrize("method", ["no_such", "", "EVENTS_LIST ", " events_list", "evi:",
                                    "evi:nope", "event_subscribe:"])
def test_unknown_method(call, method):
    assert call(request(method, id=13)) == error(-32601, "Method not found", 13)


@pytest.mark.parametrize("alias, name, params", [
    ("evi:list", "events_list", None),
    ("evi:subscribers", "subscribers_list", ["E_TEST"]),
    ("evi:subscribe", "event_subscribe", ["E_NOPE", "udp:127.0.0.1:9"]),
    ("evi:raise", "raise_event", ["E_TEST"]),
])
def test_master_aliases_answer_like_the_3x_names(call, alias, name, params):
    assert call(request(alias, params)) == call(request(name, params))


# == JSON-RPC: parameters and recipes ============================================================

@pytest.mark.parametrize("params", [None, [], {}])
def test_empty_params_are_like_absent(call, params):
    assert call(request("subscribers_list", params)) == result({"Events": []})
    assert call(request("events_list", params)) == call(request("events_list"))
    assert call(request("event_subscribe", params)) == \
        error(-32602, "Invalid params", data="Too few or too many parameters")


@pytest.mark.parametrize("method, params", [
    ("events_list", ["x"]),
    ("events_list", {"x": 1}),
    ("event_subscribe", ["E_TEST"]),
    ("event_subscribe", ["E_TEST", "udp:127.0.0.1:9", 1, 2]),
    ("event_subscribe", {"event": "E_TEST"}),
    ("event_subscribe", {"event": "E_TEST", "socket": "udp:127.0.0.1:9", "expire": 1, "x": 2}),
    ("subscribers_list", ["E_TEST", "udp:127.0.0.1:9", "x"]),
    ("raise_event", ["E_TEST", [], "x"]),
    ("which", ["events_list", "x"]),
])
def test_wrong_parameter_count(call, method, params):
    assert call(request(method, params)) == \
        error(-32602, "Invalid params", data="Too few or too many parameters")


@pytest.mark.parametrize("method, params", [
    ("event_subscribe", {"event": "E_TEST", "sock": "udp:127.0.0.1:9"}),
    ("event_subscribe", {"Event": "E_TEST", "socket": "udp:127.0.0.1:9"}),  # case-sensitive
    ("event_subscribe", {"event": "E_TEST", "socket": "udp:127.0.0.1:9", "expires": 5}),
    ("event_subscribe", {"event": "E_TEST", "socket": "udp:127.0.0.1:9", "socket ": 5}),
    ("subscribers_list", {"evt": "E_TEST"}),
    ("subscribers_list", {"event": "E_TEST", "sock": "x"}),
    ("raise_event", {"name": "E_TEST"}),
    ("raise_event", {"event": "E_TEST", "param": "{}"}),
])
def test_named_parameters_do_not_match(call, method, params):
    assert call(request(method, params)) == \
        error(-32602, "Invalid params", data="Named parameters do not match")


def test_duplicate_named_parameter_does_not_match_a_recipe(call):
    data = (b'{"jsonrpc":"2.0","method":"event_subscribe","params":{"event":"E_TEST",'
            b'"socket":"udp:127.0.0.1:9","socket":"udp:127.0.0.1:8"},"id":1}')
    assert call(data) == error(-32602, "Invalid params", data="Named parameters do not match")


def test_named_parameters_in_any_order(call):
    assert call(request("event_subscribe", {"expire": 30, "socket": "udp:127.0.0.1:9",
                                            "event": "E_TEST"})) == result("OK")
    assert call.sockets() == [("udp:127.0.0.1:9", 30)]
    assert call(request("subscribers_list", {"socket": "udp:127.0.0.1:9", "event": "E_TEST"})) \
        == result({"Event": {"name": "E_TEST", "id": 6, "Subscriber": {
            "socket": "udp:127.0.0.1:9", "expire": 30, "ttl": 30}}})


# -- typed getters ---------------------------------------------------------------------------

@pytest.mark.parametrize("expire, stored", [
    ("60", 60), ("+60", 60), ("007", 7), (60.9, 60), (1.0, 1), (1e10, 2147483647),
    ("2147483647", 2147483647), (2 ** 40, 2147483647),
])
def test_expire_accepts_numbers_and_numeric_strings(call, expire, stored):
    assert call(request("event_subscribe", ["E_TEST", "udp:127.0.0.1:9", expire])) == \
        result("OK")
    assert call.sockets() == [("udp:127.0.0.1:9", stored)]


@pytest.mark.parametrize("expire", [True, False, None, [], {}, [60], "abc", "6x", "1.5",
                                    " 60", "0x10", "60 ", "--1"])
def test_expire_of_a_bad_type(call, expire):
    assert call(request("event_subscribe", ["E_TEST", "udp:127.0.0.1:9", expire])) == \
        error(-32602, "Invalid params", data="Bad type for parameter 'expire'")
    assert call.sockets() == []


@pytest.mark.parametrize("name", ["event", "socket"])
@pytest.mark.parametrize("value", [True, False, None, [], {}, ["E_TEST"], {"a": "b"}])
def test_string_parameter_of_a_bad_type(call, name, value):
    params = {"event": "E_TEST", "socket": "udp:127.0.0.1:9"}
    params[name] = value
    assert call(request("event_subscribe", params)) == \
        error(-32602, "Invalid params", data=f"Bad type for parameter '{name}'")


@pytest.mark.parametrize("params", [[True], [None], [["E_TEST"]], [{}]])
def test_bad_types_in_other_commands(call, params):
    assert call(request("subscribers_list", params)) == \
        error(-32602, "Invalid params", data="Bad type for parameter 'event'")
    assert call(request("raise_event", params)) == \
        error(-32602, "Invalid params", data="Bad type for parameter 'event'")


def test_bad_type_for_array_item(call):
    assert call(request("get_statistics", [["mi:requests", 1]])) == error(
        -32602, "Invalid params", data="Bad type for array item in parameter 'statistics'")


@pytest.mark.parametrize("event", [12345, 12345.7])
def test_string_parameters_accept_numbers(make_call, event):
    call = make_call(BASE_INI.replace("E_TEST, E_OTHER", "E_TEST, 12345"))
    assert call(request("event_subscribe", [event, "udp:127.0.0.1:9"])) == result("OK")
    assert call(request("subscribers_list", [event]))  == result({"Event": {
        "name": "12345", "id": 7, "Subscribers": [
            {"socket": "udp:127.0.0.1:9", "expire": 3600, "ttl": 3600}]}})


@pytest.mark.parametrize("params, expected", [
    (["E_TEST", "udp:127.0.0.1:9", 1e400], result("OK")),
    (["E_TEST", "udp:127.0.0.1:9", -1e400],
     error(-32602, "Invalid params", data="Negative expire value")),
    (["E_TEST", 1e400], error(400, "Bad parameter value",
                              data="no transport prefix in '2147483647'")),
])
def test_infinite_numbers_in_typed_getters(call, params, expected):
    data = (b'{"jsonrpc":"2.0","method":"event_subscribe","params":'
            + json.dumps(params).replace("Infinity", "1e400").encode() + b',"id":1}')
    assert call(data) == expected


@pytest.mark.parametrize("params", [["", "udp:127.0.0.1:9"], ["E_TEST", ""], ["", ""],
                                    {"event": "", "socket": "udp:127.0.0.1:9"},
                                    ["E_TEST", "", 10]])
def test_empty_event_or_socket_in_event_subscribe(call, params):
    reply = call.json(request("event_subscribe", params))
    assert reply["error"]["code"] == -32602
    assert reply["error"]["message"] == "Invalid params"
    assert reply["id"] == 1


@pytest.mark.parametrize("params, expected", [
    ([""], error(404, "Event not published")),
    (["E_TEST", ""], error(404, "Subscriber does not exist")),
])
def test_empty_strings_in_subscribers_list(call, params, expected):
    assert call(request("subscribers_list", params)) == expected


@pytest.mark.parametrize("expire", [-5, "-5", -1, -1e10, "-2147483648", -2147483649])
def test_negative_expire(call, expire):
    assert call(request("event_subscribe", ["E_TEST", "udp:127.0.0.1:9", expire])) == \
        error(-32602, "Invalid params", data="Negative expire value")
    assert call.sockets() == []


@pytest.mark.parametrize("expire", [0, "0", "-0", -0.5, 0.9])
def test_expire_truncating_to_zero_unsubscribes(call, expire):
    assert call(request("event_subscribe", ["E_TEST", "udp:127.0.0.1:9", 60])) == result("OK")
    assert call(request("event_subscribe", ["E_TEST", "udp:127.0.0.1:9", expire])) == \
        result("OK")
    assert call.sockets() == []


# -- sockets -------------------------------------------------------------------------------

BAD_SOCKETS = [
    # (socket, a fragment the error's data must contain)
    ("foo:bar", "foo"),
    ("UDP:127.0.0.1:9", "UDP"),              # transport names are case-sensitive
    ("nocolon", "nocolon"),
    ("udp:127.0.0.1:0", "0"),
    ("udp:127.0.0.1:70000", "70000"),
    ("udp:127.0.0.1:65536", "65536"),
    ("udp:127.0.0.1:123456", "123456"),
    ("udp:127.0.0.1", "udp:127.0.0.1"),      # no port
    ("udp:127.0.0.1:", "port"),
    ("udp:127.0.0.1:9a", "9a"),
    ("udp:127.0.0.1:-1", "-1"),
    ("udp:127.0.0.1: 9", "9"),
    ("udp::9", "udp::9"),
    ("udp:", "udp:"),
    ("udp:[::1", "::1"),
    ("unix:", "unix:"),
    ("unix:/" + "x" * 120, "107"),
]


@pytest.mark.parametrize("sock, fragment", BAD_SOCKETS)
def test_bad_socket_in_event_subscribe(call, sock, fragment):
    reply = call.json(request("event_subscribe", ["E_TEST", sock, 60], id="s"))
    assert list(reply) == ["jsonrpc", "error", "id"]
    assert reply["id"] == "s"
    err = reply["error"]
    assert (err["code"], err["message"]) == (400, "Bad parameter value")
    assert fragment in err["data"], err["data"]
    assert call.sockets() == []


@pytest.mark.parametrize("sock, fragment", BAD_SOCKETS)
def test_bad_socket_in_text_event_subscribe(call, sock, fragment):
    data = b":event_subscribe:\nE_TEST\n" + sock.encode() + b"\n"
    assert call(data) == b"400 Bad parameter\n"


@pytest.mark.parametrize("sock, fragment", BAD_SOCKETS)
def test_bad_socket_in_subscribers_list(call, sock, fragment):
    assert call(request("subscribers_list", ["E_TEST", sock])) == \
        error(404, "Subscriber does not exist")


NON_ASCII_DIGIT_PORTS = ["udp:127.0.0.1:\u00b2",       # superscript two: int() refuses it
                         "udp:127.0.0.1:\u0661\u0662",  # Arabic-Indic digits: int() takes them
                         "udp:[::1]:\u00b9"]


@pytest.mark.parametrize("sock", NON_ASCII_DIGIT_PORTS)
def test_non_ascii_digits_are_not_a_port(call, sock):
    reply = call.json(request("event_subscribe", ["E_TEST", sock]))
    assert (reply["error"]["code"], reply["error"]["message"]) == (400, "Bad parameter value")
    assert call(request("subscribers_list", ["E_TEST", sock])) == \
        error(404, "Subscriber does not exist")
    assert call(b":event_subscribe:\nE_TEST\n" + sock.encode() + b"\n") == b"400 Bad parameter\n"
    assert call.sockets() == []


def test_unix_path_with_lone_surrogate_escape(call):
    reply = call(b'{"jsonrpc":"2.0","method":"event_subscribe","params":'
                 b'["E_TEST","unix:/tmp/\\ud800"],"id":1}')
    assert reply in (result("OK"), error(400, "Bad parameter value")) or \
        reply.startswith(b'{"jsonrpc":"2.0","error":{"code":400,"message":"Bad parameter value"')


def test_unknown_event_in_event_subscribe_has_no_data(call):
    assert call(request("event_subscribe", ["E_NOPE", "foo:bar"], id="a")) == \
        error(400, "Bad parameter value", "a")


@pytest.mark.parametrize("sock", ["udp:127.0.0.1:1", "udp:127.0.0.1:65535", "udp:[::1]:9",
                                  "unix:/tmp/x.sock", "unix:relative", "unix:/x/a:b"])
def test_good_sockets(call, sock):
    assert call(request("event_subscribe", ["E_TEST", sock, 10])) == result("OK")
    assert call.sockets() == [(sock, 10)]


def test_bare_absolute_path_means_unix(call):
    # evsrv decision: the opensips library subscribes UNIX sockets with a bare
    # path, and OpenSIPS' event_datagram documents ['unix:'] path.
    assert call(request("event_subscribe", ["E_TEST", "/tmp/bare.sock", 10])) == result("OK")
    assert call.sockets() == [("unix:/tmp/bare.sock", 10)]


# == raise_event forms (§2.1, §9 D4, D18) ==========================================================

RAISE_FORMS = [
    # (params of raise_event or "absent", reply, notification or None)
    pytest.param("absent", OK, b'{"jsonrpc":"2.0","method":"E_TEST"}', id="absent"),
    pytest.param([], OK, b'{"jsonrpc":"2.0","method":"E_TEST"}', id="empty-array"),
    pytest.param(["a", 7, -2, 0, "", "\u00e9"], OK,
                 '{"jsonrpc":"2.0","method":"E_TEST","params":["a","7","-2","0","","\u00e9"]}'
                 .encode(), id="array-numbers-become-strings"),
    pytest.param('{"ip":"1.2.3.4","n":5,"neg":-3}', OK,
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4","n":5,"neg":-3}}',
                 id="json-string-object"),
    pytest.param('{"a":true,"b":null,"c":{"k":[1, 2]},"d":[1,{"x":"y"}],"e":1.9,"f":"s",'
                 '"g":false}', OK,
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"a":"true","b":"null",'
                 b'"c":"{\\"k\\":[1,2]}","d":"[1,{\\"x\\":\\"y\\"}]","e":1,"f":"s","g":"false"}}',
                 id="json-string-nested-values-D18"),
    pytest.param('{"a":1,"a":2}', OK,
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"a":1,"a":2}}',
                 id="json-string-duplicate-keys"),
    pytest.param('{"a":1} trailing', OK,
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"a":1}}',
                 id="json-string-trailing-ignored"),
    pytest.param("{}", OK, b'{"jsonrpc":"2.0","method":"E_TEST"}', id="json-string-empty"),
    pytest.param({"a": 1, "b": "x", "c": [1, {"d": None}]}, OK,
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"a":1,"b":"x",'
                 b'"c":"[1,{\\"d\\":null}]"}}', id="inline-object-D4"),
    pytest.param({"o": {"k": 1, "l": [2, 3], "m": {"n": None, "p": "q"}}}, OK,
                 b'{"jsonrpc":"2.0","method":"E_TEST","params":{"o":"{\\"k\\":1,'
                 b'\\"l\\":[2,3],\\"m\\":{\\"n\\":null,\\"p\\":\\"q\\"}}"}}',
                 id="inline-nested-object-members-D18"),
    pytest.param(True, b'"error":{"code":400,"message":"No Params"}', None, id="true"),
    pytest.param(False, b'"error":{"code":400,"message":"No Params"}', None, id="false"),
    pytest.param(None, b'"error":{"code":400,"message":"No Params"}', None, id="null"),
    pytest.param(5, b'"error":{"code":400,"message":"No Params"}', None, id="number"),
    pytest.param(["a", {"x": 1}], b'"error":{"code":400,"message":"Bad Params"}', None,
                 id="array-with-object"),
    pytest.param(["a", ["x"]], b'"error":{"code":400,"message":"Bad Params"}', None,
                 id="array-with-array"),
    pytest.param(["a", True], b'"error":{"code":400,"message":"Bad Params"}', None,
                 id="array-with-true"),
    pytest.param(["a", None], b'"error":{"code":400,"message":"Bad Params"}', None,
                 id="array-with-null"),
    pytest.param("not json", b'"error":{"code":400,"message":"Bad Params"}', None,
                 id="string-not-json"),
    pytest.param("[1,2]", b'"error":{"code":400,"message":"Bad Params"}', None,
                 id="string-array"),
    pytest.param("5", b'"error":{"code":400,"message":"Bad Params"}', None,
                 id="string-number"),
    pytest.param('"s"', b'"error":{"code":400,"message":"Bad Params"}', None,
                 id="string-string"),
    pytest.param("", b'"error":{"code":400,"message":"Bad Params"}', None,
                 id="string-empty"),
]


@pytest.mark.parametrize("params, reply_part, notification", RAISE_FORMS)
@pytest_twisted.inlineCallbacks
def test_raise_event_params_forms(server, logged_errors, udp_collector, params, reply_part,
                                  notification):
    call = Caller(server, logged_errors)
    sink = udp_collector()
    assert call(request("event_subscribe", ["E_TEST", "udp:%s:%d" % sink.address])) == \
        result("OK")
    args = ["E_TEST"] if params == "absent" else ["E_TEST", params]
    for form in (args, dict(zip(["event", "params"], args))):
        reply = call(request("raise_event", form, id=11))
        assert reply.startswith(b'{"jsonrpc":"2.0",' + reply_part) and \
            reply.endswith(b',"id":11}'), reply
        if notification is not None:
            data, _ = yield sink.next()
            assert data == notification
    yield deferLater(reactor, 0.05, lambda: None)
    assert sink.received == []


@pytest.mark.parametrize("as_string", [True, False], ids=["json-string", "inline"])
def test_raise_event_deeply_nested_value(call, as_string):
    assert call(request("event_subscribe", ["E_TEST", "udp:127.0.0.1:9"])) == result("OK")
    depth = 450
    nested = "[" * depth + "]" * depth
    obj = '{"a":%s}' % nested
    params = json.dumps(obj) if as_string else obj
    data = b'{"jsonrpc":"2.0","method":"raise_event","params":["E_TEST",%s],"id":1}' % (
        params.encode())
    assert call(data) == result("OK")


def test_raise_event_infinite_number_in_json_string(call):
    assert call(request("event_subscribe", ["E_TEST", "udp:127.0.0.1:9"])) == result("OK")
    assert call(request("raise_event", ["E_TEST", '{"n":1e400}'])) == result("OK")


def test_raise_event_checks_event_before_params(call):
    assert call(request("raise_event", ["E_NOPE", True])) == error(404, "Event not registered")
    assert call(request("raise_event", ["E_TEST", True])) == \
        error(480, "Temporarily Unavailable")


# == 1.x text dialect (§2.3, §3.1) ================================================================

@pytest.mark.parametrize("data", [
    b":", b":\n", b"::\n", b":events_list", b":events_list:", b":events_list:\r\n",
    b":events_list: \n", b":events_list:x\n", b":events_list:reply_fifo\n", b":no_such:\n",
    b":events_list\n:\n", b": events_list:\n", b":\x00:\n", b":\xff\xfe:\n",
])
def test_text_command_line_errors(call, data):
    assert call(data) == b"500 command not available\n"


@pytest.mark.parametrize("data", [b":no_such:\n\"unterminated\n", b"::\nunix:\"\n",
                                  b':no_such:\n"a" b\n'])
def test_text_unknown_command_with_malformed_arguments(call, data):
    assert call(data) == b"500 command not available\n"


def unix_subscribe(call, lines: bytes):
    return call(b":event_subscribe:\n" + lines)


@pytest.mark.parametrize("lines, socket, expire", [
    (b'E_TEST\n"unix:/x/a\\"b"\n', 'unix:/x/a"b', 3600),                   # \" is a quote
    (b'E_TEST\n"unix:/x/a\nb"\n', "unix:/x/a\nb", 3600),                   # spans lines
    (b'E_TEST\n"unix:/x/a\\\\"\n', "unix:/x/a\\\"", None),                 # see below
    (b'E_TEST\n"unix:/x/s"   \t\n', "unix:/x/s", 3600),                    # blanks after
    (b'E_TEST\n   "unix:/x/s"\n', "unix:/x/s", 3600),                      # blanks before
    (b'E_TEST\n"unix:/x/s"\n"60"\n', "unix:/x/s", 60),
    (b"event:: E_TEST\nsocket::unix:/x/s\nexpire::   60\n", "unix:/x/s", 60),  # name::value
    (b'E_TEST\nsocket:: "unix:/x/q r"\n', "unix:/x/q r", 3600),
    (b"\n\n  \n\tE_TEST\n\n\n unix:/x/s\n\n\n", "unix:/x/s", 3600),    # blank lines skipped
    (b"E_TEST\r\nunix:/x/s\r\n60\r\n", "unix:/x/s", 60),               # \r stripped
    (b"E_TEST \t\nunix:/x/s  \n", "unix:/x/s", 3600),                  # trailing blanks
    (b"E_TEST\nunix:/x/s", "unix:/x/s", 3600),                         # final \n optional
    (b"E_TEST\nunix:/x/s\n60\nextra\nmore\n", "unix:/x/s", 60),        # extra args ignored
    (b"E_TEST\nunix:/x/a b\n", "unix:/x/a b", 3600),                   # inner blanks kept
    (b'E_TEST\n"unix:/x/a\n"\n60\n', "unix:/x/a\n", 60),               # ends in a newline
    (b'E_TEST\n"unix:/x/s"', "unix:/x/s", 3600),                          # last, no \n
    (b"::E_TEST\n::unix:/x/s\n", "unix:/x/s", 3600),                     # empty node name
    (b"E_TEST\nunix:/x/a::b\n", "unix:/x/a::b", 3600),                   # "::" in a value
])
def test_text_argument_parsing(call, lines, socket, expire):
    if expire is None:
        # "a\\" then a lone quote: the second backslash escapes the closing
        # quote, so the value never ends.
        assert unix_subscribe(call, lines) == b"400 parse_error\n"
        assert call.sockets() == []
        return
    assert unix_subscribe(call, lines) == b"200 OK\n"
    assert call.sockets() == [(socket, expire)]


@pytest.mark.parametrize("lines", [
    b'E_TEST\n"unix:/x/s" x\n',            # text after the closing quote
    b'E_TEST\n"unix:/x/s""\n',
    b'E_TEST\nunix:/x/s"\n',               # unquoted value containing a quote
    b'E_TEST\nunix:/x/"s"\n',
    b'E_"TEST\nunix:/x/s\n',
    b'E_TEST\nunix:/x/s\n6"0\n',
    b'E_TEST\n"unix:/x/s\n',               # unterminated
    b'E_TEST\nunix:/x/s\n"',
    b'na"me:: E_TEST\nunix:/x/s\n',        # a quote in a node name
])
def test_text_parse_errors(call, lines):
    assert unix_subscribe(call, lines) == b"400 parse_error\n"
    assert call.sockets() == []


def test_text_v12_parse_error(call):
    assert call(b':event_subscribe:\nE_TEST\nudp:1.2.3.4:9"\n') == b"400 parse_error\n"


@pytest.mark.parametrize("args", [b"", b"E_TEST\n", b"\n\n\n", b"E_TEST\n\n\n"])
def test_text_too_few_arguments(call, args):
    assert call(b":event_subscribe:\n" + args) == b"400 Too few or too many arguments\n"


@pytest.mark.parametrize("expire", [b"abc", b"-5", b"1.5", b"6x", b"0x10", b"6 0"])
def test_text_bad_expire(call, expire):
    assert call(b":event_subscribe:\nE_TEST\nunix:/x/s\n" + expire + b"\n") == \
        b"400 Bad parameter\n"
    assert call.sockets() == []


def test_text_expire_with_plus_sign_is_a_bad_parameter(call):
    assert call(b":event_subscribe:\nE_TEST\nunix:/x/s\n+5\n") == b"400 Bad parameter\n"


@pytest.mark.parametrize("args", [b"foo\nbar\n", b"a::b\n", b"E_TEST\nE_OTHER\n1\n2\n"])
def test_text_events_list_ignores_its_arguments(call, args):
    assert call(b":events_list:\n" + args) == call(b":events_list:\n")


@pytest.mark.parametrize("args", [b'"unterminated\n', b'x"y\n', b'"a" b\n'])
def test_text_events_list_ignores_even_malformed_arguments(call, args):
    assert call(b":events_list:\n" + args) == call(b":events_list:\n")


def test_text_subscribers_list_argument_counts(call):
    assert unix_subscribe(call, b"E_TEST\nunix:/x/s\n60\n") == b"200 OK\n"
    listed = (b"200 OK\nEvent:: E_TEST id=6\n\tSubscriber::  socket=unix:/x/s expire=60\n")
    assert call(b":subscribers_list:\n") == listed
    assert call(b":subscribers_list:\nE_TEST\n") == listed
    assert call(b":subscribers_list:\nE_TEST\nunix:/x/s\n") == listed
    assert call(b":subscribers_list:\nE_TEST\nunix:/x/s\nx\n") == \
        b"400 Too few or too many arguments\n"
    assert call(b":subscribers_list:\nE_TEST\nunix:/x/s\nx\ny\n") == \
        b"400 Too few or too many arguments\n"
    assert call(b":subscribers_list:\nE_OTHER\n") == b"200 OK\n"
    assert call(b":subscribers_list:\nE_NOPE\n") == b"404 Event not published\n"
    assert call(b":subscribers_list:\nE_TEST\nunix:/x/t\n") == b"404 Subscriber does not exist\n"
    assert call(b":subscribers_list:\nE_TEST\nfoo:bar\n") == b"404 Subscriber does not exist\n"


def test_text_unknown_event_and_transport(call):
    assert unix_subscribe(call, b"E_NOPE\nunix:/x/s\n") == b"400 Bad parameter\n"
    assert unix_subscribe(call, b"E_TEST\nfoo:bar\n") == b"400 Bad parameter\n"


@pytest.mark.parametrize("tail", [b"socket::", b"socket:: \t"])
def test_text_a_node_name_ending_the_request_gives_an_empty_value(call, tail):
    assert call(b":subscribers_list:\nE_TEST\n" + tail) == b"404 Subscriber does not exist\n"


def test_text_a_command_line_starts_with_a_colon():
    from evsrv.mi import text
    assert text.decode(b"events_list:\n") is None
    request = text.decode(b":events_list:\nx\n")
    assert (request.method, request.arguments()) == ("events_list", ["x"])


def test_text_generic_lines_of_any_result():
    from evsrv.mi.text import generic_lines
    result = {"a": 1, "b": None, "c": True, "d": False, "e": {"f": [1, {"g": "h"}]},
              "l": ["x", ["y"]], "o": "OK"}
    assert generic_lines(result) == [
        "a:: 1", "b:: ", "c:: true", "d:: false", "e:: ", "\tf:: ", "\t\t:: 1", "\t\tg:: h",
        "l:: ", "\t:: x", "\t:: y", "o:: OK"]
    assert generic_lines("OK") == []  # a bare OK is the status line alone
    assert generic_lines(["OK"]) == [":: OK"]
    assert generic_lines("OK", 1) == ["\t:: OK"]
    assert generic_lines(5) == [":: 5"]


def test_text_replies_of_commands_without_their_own_lines(call):
    help_reply = call(b":help:\nevents_list\n")
    assert help_reply == b"200 OK\nHelp:: Lists every published event with its id.\n" \
                         b"Exported by:: core\n"
    assert call(b":subscribers_stats:\n") == b"200 OK\nSubscribers:: \n"


def test_parse_errors_are_counted_in_both_dialects(call):
    statistics = call.server.dispatcher.controller.statistics

    def counted(data):
        before = statistics.value("mi:parse_errors")
        call(data)
        return statistics.value("mi:parse_errors") - before
    assert counted(b"not json") == 1
    assert counted(b'{"method":"which","id":1}') == 1          # invalid request
    assert counted(b":no colon\n") == 1                        # malformed command line
    assert counted(b':event_subscribe:\nE_TEST\n"unix:/x\n') == 1  # malformed argument
    assert counted(request("which")) == 0
    assert counted(b":which:\n") == 0
    assert counted(b":no_such:\n") == 0  # well formed, just unknown


# == replies larger than one datagram ===========================================================

SMALL_INI = BASE_INI.replace("[mi]\n", "[mi]\nmax_datagram = 1024\n")


def _many_subscribers(server, count=40):
    for i in range(count):
        fired = []
        server.evi.subscribe("E_TEST", "udp:127.0.0.1:%d" % (10000 + i), 60,
                             origin="mi").addBoth(fired.append)
        assert fired and not isinstance(fired[0], Failure)


def test_a_reply_of_exactly_max_reply_bytes_is_sent_one_more_is_not():
    from evsrv.mi.controller import Command, MIController
    from evsrv.mi.dispatch import MIDispatcher
    from evsrv.util.statistics import Statistics
    from tests.test_evi import result_of
    controller = MIController(Statistics())
    controller.register(Command("big", [[]], lambda call: "x" * 100))
    too_large = controller.statistics.counter("mi", "replies_too_large")
    for data, reply in ((request("big"), result("x" * 100)),
                        (b":big:\n", b"200 OK\n:: " + b"x" * 100 + b"\n")):
        size = len(reply)
        assert result_of(MIDispatcher(controller, max_reply=size).handle(data)) == reply
        detail = f"the reply is {size} bytes, more than one datagram can carry ({size - 1} bytes)"
        for hint, shown in ((None, detail), ("ask for less", detail + "; ask for less")):
            before = too_large.value
            dispatcher = MIDispatcher(controller, max_reply=size - 1) if hint is None else \
                MIDispatcher(controller, max_reply=size - 1, large_reply_hint=hint)
            got = result_of(dispatcher.handle(data))
            if data.startswith(b":"):
                assert got == f"500 Reply too large: {shown}\n".encode()
            else:
                assert got == error(500, "Reply too large", data=shown)
            assert too_large.value == before + 1


def test_json_reply_too_large(make_call):
    call = make_call(SMALL_INI)
    _many_subscribers(call.server)
    reply = call(request("subscribers_list", id=5))
    assert len(reply) <= 1024
    message = json.loads(reply)
    assert list(message) == ["jsonrpc", "error", "id"] and message["id"] == 5
    err = message["error"]
    assert (err["code"], err["message"]) == (500, "Reply too large")
    assert "1024" in err["data"] and "bytes" in err["data"]
    # A smaller question still gets its answer.
    reply = call.json(request("subscribers_list", ["E_TEST", "udp:127.0.0.1:10001"]))
    assert reply["result"]["Event"]["Subscriber"]["socket"] == "udp:127.0.0.1:10001"
    # A notification gets nothing, whatever its size.
    assert call(request("subscribers_list", notification=True)) is None


def test_text_reply_too_large(make_call):
    call = make_call(SMALL_INI)
    _many_subscribers(call.server)
    reply = call(b":subscribers_list:\n")
    assert reply.startswith(b"500 Reply too large") and reply.endswith(b"\n")
    assert len(reply) <= 1024 and reply.count(b"\n") == 1
    assert b"1024" in reply
    assert call(b":subscribers_list:\nE_TEST\nudp:127.0.0.1:10001\n") == (
        b"200 OK\nEvent:: E_TEST id=6\n\tSubscriber::  socket=udp:127.0.0.1:10001 expire=60\n")


def test_events_list_too_large(make_call):
    names = ", ".join("E_MANY_EVENT_NUMBER_%03d" % i for i in range(60))
    call = make_call(SMALL_INI.replace("E_TEST, E_OTHER", names))
    err = call.json(request("events_list"))["error"]
    assert (err["code"], err["message"]) == (500, "Reply too large")
    assert call(b":events_list:\n").startswith(b"500 Reply too large")


@pytest_twisted.inlineCallbacks
def test_reply_too_large_over_udp(server_factory, udp_collector):
    server = server_factory(SMALL_INI)
    _many_subscribers(server)
    client = udp_collector()
    reply, addr = yield client.request(request("subscribers_list", id=5),
                                       server.mi_udp_address())
    assert addr == server.mi_udp_address()
    assert reply.startswith(b'{"jsonrpc":"2.0","error":{"code":500,"message":"Reply too large"')


# == datagram sockets ==========================================================================

@inlineCallbacks
def _no_reply(client, address, data):
    """
    Send C{data} then a probe: the first reply back must be the probe's.
    """
    client.transport.write(data, address)
    reply, _ = yield client.request(request("subscribers_list", id="probe"), address)
    assert reply == result({"Events": []}, "probe")


@pytest_twisted.inlineCallbacks
def test_empty_datagram_gets_no_reply_udp(server, udp_collector):
    client = udp_collector()
    yield _no_reply(client, server.mi_udp_address(), b"")
    yield _no_reply(client, server.mi_udp_address(), request("events_list", notification=True))


@pytest_twisted.inlineCallbacks
def test_udp_parse_error_is_plain_text(server, udp_collector):
    client = udp_collector()
    reply, _ = yield client.request(b"hello", server.mi_udp_address())
    assert reply == b"400 Parse_error"
    reply, _ = yield client.request(b":nope:\n", server.mi_udp_address())
    assert reply == b"500 command not available\n"


def _mi_unix_path(server):
    return str(server.config.mi.unix[0])


@pytest_twisted.inlineCallbacks
def test_unix_mi_replies_to_the_client_bound_path(server, tmpdir_short):
    path = _mi_unix_path(server)
    client = DatagramCollector()
    client_path = str(tmpdir_short / "client.sock")
    port = reactor.listenUNIXDatagram(client_path, client)
    try:
        reply, addr = yield client.request(request("subscribers_list", id=1), path)
        assert reply == result({"Events": []})
        assert addr in (path, path.encode())
        reply, _ = yield client.request(b":subscribers_list:\n", path)
        assert reply == b"200 OK\n"
        reply, _ = yield client.request(b"not json", path)
        assert reply == b"400 Parse_error"
        yield _no_reply(client, path, b"")
        yield _no_reply(client, path, request("which", notification=True))
    finally:
        yield port.stopListening()
        if os.path.exists(client_path):
            os.unlink(client_path)


@pytest_twisted.inlineCallbacks
def test_unix_mi_unbound_client_gets_nothing_and_is_counted(server):
    path = _mi_unix_path(server)
    before = server.statistics.value("mi:replies_failed")
    requests_before = server.statistics.value("mi:requests")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.sendto(request("subscribers_list", id=1), path)
        for _ in range(100):
            if server.statistics.value("mi:replies_failed") > before:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        assert server.statistics.value("mi:replies_failed") == before + 1
        assert server.statistics.value("mi:requests") == requests_before + 1
        with pytest.raises(BlockingIOError):
            sock.recv(65536)
    finally:
        sock.close()
