# -*- test-case-name: tests.test_vectors, tests.test_mi_malformed -*-
"""
The OpenSIPS 3.x JSON-RPC 2.0 MI dialect (spec §2.1, §3.2): request parsing
and reply bytes.
"""

import json

from evsrv import encoding
from evsrv.util.wire import from_bytes
from evsrv.mi.controller import INT32_MAX, INT32_MIN, MIError, Named, clamp

PARSE_ERROR = b"400 Parse_error"


class ParseError(ValueError):
    """
    The datagram is not JSON at all: answered with plain C{400 Parse_error}.
    """


class JSONObject(list):
    """
    A decoded JSON object as its ordered C{(key, value)} pairs, so duplicate
    keys and case-insensitive lookups behave as in OpenSIPS' cJSON.
    """


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN/Infinity, cJSON does not


_decoder = json.JSONDecoder(object_pairs_hook=JSONObject, parse_constant=_no_constants)
_WHITESPACE = " \t\n\r"


def loads(text: str):
    """
    Parse the first JSON value of C{text}; trailing bytes are ignored (as cJSON).

    @raise ParseError: not JSON.
    """
    try:
        value, _ = _decoder.raw_decode(text, len(text) - len(text.lstrip(_WHITESPACE)))
    except (ValueError, RecursionError) as e:
        raise ParseError(str(e)) from None
    return value


class _Token(str):
    """
    Punctuation already in its final form, on L{compact}'s stack.
    """


def compact(value) -> str:
    """
    Compact JSON text of a decoded value (objects keep their key order).
    Iterative, so any depth the parser accepted can be written back.
    """
    out = []
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Token:
            out.append(item)
        elif isinstance(item, JSONObject):
            stack.append(_Token("}"))
            for i in range(len(item) - 1, -1, -1):
                key, member = item[i]
                stack.append(member)
                stack.append(_Token(("," if i else "") + from_bytes(encoding.dumps(key)) + ":"))
            stack.append(_Token("{"))
        elif isinstance(item, list):
            stack.append(_Token("]"))
            for i in range(len(item) - 1, -1, -1):
                stack.append(item[i])
                if i:
                    stack.append(_Token(","))
            stack.append(_Token("["))
        else:
            out.append(from_bytes(encoding.dumps(item)))
    return "".join(out)


_MISSING = object()


class Request:
    """
    A valid JSON-RPC request. C{is_notification}: it had no C{id} member.
    """
    __slots__ = ("id", "is_notification", "method", "params")

    def __init__(self, request_id, is_notification, method, params):
        self.id = request_id
        self.is_notification = is_notification
        self.method = method
        self.params = params


class InvalidRequest(Exception):
    """
    JSON, but not a valid request: answered with -32600 and C{id} (or C{null}).
    """

    def __init__(self, request_id=None):
        super().__init__(request_id)
        self.id = request_id


def echo_id(value):
    """
    The C{id} as OpenSIPS echoes it: numbers as 32-bit integers.
    """
    if isinstance(value, (int, float)):
        return clamp(value, INT32_MIN, INT32_MAX)
    return value


def decode(data: bytes) -> Request:
    """
    @raise ParseError: not JSON.
    @raise InvalidRequest: not a valid JSON-RPC 2.0 request.
    """
    message = loads(from_bytes(data))
    if not isinstance(message, JSONObject):
        raise InvalidRequest(None)
    members = {}
    for key, value in message:  # case-insensitive, first match wins (as cJSON)
        members.setdefault(key.lower(), value)
    missing = _MISSING
    request_id = members.get("id", missing)
    is_notification = request_id is missing
    if is_notification:
        request_id = None
    elif request_id is not None and (isinstance(request_id, (bool, list))
                                     or not isinstance(request_id, (int, float, str))):
        raise InvalidRequest(None)
    request_id = echo_id(request_id)
    if members.get("jsonrpc") != "2.0":
        raise InvalidRequest(request_id)
    method = members.get("method")
    if not isinstance(method, str):
        raise InvalidRequest(request_id)
    params = members.get("params", missing)
    if params is missing:
        params = None
    elif isinstance(params, JSONObject):
        params = Named(params) if params else None
    elif isinstance(params, list):
        params = params or None
    else:
        raise InvalidRequest(request_id)
    return Request(request_id, is_notification, method, params)


def result_reply(request: Request, result) -> bytes | None:
    if request.is_notification:
        return None
    return encoding.jsonrpc_result(request.id, result)


def error_reply(request_id, error: MIError) -> bytes:
    return encoding.jsonrpc_error(request_id, error.code, error.message, error.data)


def invalid_request_reply(request_id) -> bytes:
    return encoding.jsonrpc_error(request_id, -32600, "Invalid Request")
