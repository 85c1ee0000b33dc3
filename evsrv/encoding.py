# -*- test-case-name: tests.test_vectors -*-
"""
Wire bytes, produced in one place per format (spec §4.0, §4.1, §2.1).

Strings inside evsrv are Python C{str}; bytes that are not UTF-8 travel as
lone surrogates (C{surrogateescape}) so that they leave exactly as they came
in, like OpenSIPS copying raw bytes.
"""

import json

from evsrv.util.wire import from_bytes, to_bytes  # noqa: F401 (re-exported)

# Compact JSON with the escaping OpenSIPS' cJSON uses: only '"', '\\' and
# control characters are escaped, '/' and non-ASCII characters are written raw.
# One difference, on purpose: NUL becomes \u0000 where cJSON would cut the string.
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_encode = _encoder.encode

# A raise's parameters: a tuple of (name, value) pairs (evsrv.evi.params.Param),
# name None for an unnamed one. Only their shape is needed here.
Params = tuple


def dumps(value) -> bytes:
    """
    Serialize a JSON value as compact cJSON-style bytes.
    """
    return to_bytes(_encode(value))


def _params_text(params: Params) -> str:
    """
    The JSON text of a non-empty parameter list (spec §1.2): an object when
    the first parameter is named, else an array. A name after an unnamed
    first parameter is lost; an unnamed one after a named first one gets the
    key "". Duplicate names are kept, as cJSON does.
    """
    if params[0].name is None:
        return "[" + ",".join(_encode(p.value) for p in params) + "]"
    return "{" + ",".join(_encode(p.name or "") + ":" + _encode(p.value) for p in params) + "}"


def json_notification(event: str, params: Params, method: str | None = None,
                      notification_id: int | None = None) -> bytes:
    """
    The JSON-RPC notification body shared by the datagram, stream and AMQP
    transports (spec §4.0): C{id} (reliable stream mode only), C{jsonrpc},
    C{method}, then C{params} only when there is at least one parameter.
    """
    head = '{"jsonrpc":"2.0","method":' if notification_id is None else (
        '{"id":%d,"jsonrpc":"2.0","method":' % notification_id)
    text = head + _encode(method if method is not None else event)
    if params:
        text += ',"params":' + _params_text(params)
    return to_bytes(text + "}")


def jsonrpc24_notification(event: str, params: Params, method: str | None = None) -> bytes:
    """
    The OpenSIPS 2.4 event_jsonrpc body (spec §4.4, §9 D12): C{"id":null}
    first and C{params} always present (C{{}} when empty).
    """
    text = '{"id":null,"jsonrpc":"2.0","method":' + _encode(method if method is not None else event)
    text += ',"params":' + (_params_text(params) if params else "{}")
    return to_bytes(text + "}")


def _text_value(value) -> str:
    if isinstance(value, int):
        # Signed decimal (spec §9 D8), not OpenSIPS' unsigned 64-bit rendering.
        return str(value)
    if "\n" in value:
        return '"' + value.replace('"', '\\"') + '"'
    return value


def text_notification(event: str, params: Params, terminator: bool = True) -> bytes:
    """
    The OpenSIPS 1.x text body (spec §4.1, §4.2): the event name, then one
    C{name::value} (or bare value) line per parameter. The datagram form ends
    with an empty line (C{terminator}); the AMQP form has no trailing newline.
    """
    lines = [event]
    for p in params:
        value = _text_value(p.value)
        lines.append(value if p.name is None else p.name + "::" + value)
    text = "\n".join(lines)
    if terminator:
        text += "\n\n"
    return to_bytes(text)


def jsonrpc_result(request_id, result) -> bytes:
    """
    A JSON-RPC 2.0 success reply with members in OpenSIPS order.
    """
    return b'{"jsonrpc":"2.0","result":' + dumps(result) + b',"id":' + dumps(request_id) + b"}"


def jsonrpc_error(request_id, code: int, message: str, data: str | None = None) -> bytes:
    """
    A JSON-RPC 2.0 error reply with members in OpenSIPS order.
    """
    error = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return b'{"jsonrpc":"2.0","error":' + dumps(error) + b',"id":' + dumps(request_id) + b"}"


def flatstore_line(event: str, params: Params, delimiter: str = ",",
                   suppress_event_name: bool = False) -> bytes:
    """
    One event_flatstore line (spec §4.7): the event name (unless
    C{suppress_event_name}), then the value of each parameter, joined by
    C{delimiter}, ended by a newline. Names are not written; ints are signed
    decimals; an empty string writes nothing after its delimiter, so
    C{E_TEST} with C{"x"}, C{-3}, C{""} gives C{E_TEST,x,-3,\\n} (vector 37).

    Escaping (evsrv's, §9 D20; OpenSIPS 3.x writes values raw, master/4.0
    replaces the delimiter with a space in the value every subscriber
    shares): inside the event name and string values a backslash becomes
    C{\\\\}, the delimiter C{\\<delimiter>}, a newline C{\\n} and a carriage
    return C{\\r}. The line is built from new strings, so what other
    subscribers receive is unchanged. Reading back: split at delimiters not
    preceded by an escaping backslash, then undo the four escapes
    (L{evsrv.transports.flatstore.split_line}). The delimiter is one
    character that is not a letter, digit, backslash, CR or LF, which keeps
    the escapes unambiguous.
    """
    def escaped(text: str) -> str:
        if "\\" in text or delimiter in text or "\n" in text or "\r" in text:
            text = (text.replace("\\", "\\\\").replace(delimiter, "\\" + delimiter)
                    .replace("\n", "\\n").replace("\r", "\\r"))
        return text
    fields = [] if suppress_event_name else [escaped(event)]
    for p in params:
        value = p.value
        fields.append(str(value) if isinstance(value, int) else escaped(value))
    return to_bytes(delimiter.join(fields) + "\n")


def jsonrpc24_notification_with_id(event: str, params: Params, method: str | None = None,
                                   notification_id: int = 1) -> bytes:
    """
    The 2.4 event_jsonrpc body with a numeric C{id} instead of C{null} (as
    2.4's C{sync_mode} sends it): evsrv's reliable mode on C{jsonrpc:}.
    """
    body = jsonrpc24_notification(event, params, method)
    return b'{"id":%d' % notification_id + body[len(b'{"id":null'):]
