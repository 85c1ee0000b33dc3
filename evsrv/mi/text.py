# -*- test-case-name: tests.test_vectors, tests.test_mi_malformed -*-
"""
The OpenSIPS 1.x text MI dialect on the datagram sockets (spec §2.3, §3.1,
§9 D2): C{:command:\\n} followed by one argument per line; replies are
C{<code> <reason>\\n} and node lines, with no trailing empty line.
"""

import re

from evsrv.mi.controller import MIError
from evsrv.util.wire import from_bytes, to_bytes

NOT_AVAILABLE = b"500 command not available\n"
PARSE_ERROR = b"400 parse_error\n"
_WS = " \t\r\n"
# A node name before "::". Anything else containing "::" (an IPv6 literal,
# say) is a plain value: a small, documented departure from OpenSIPS, which
# splits at the first "::" whatever precedes it.
_NODE_NAME = re.compile(r"[A-Za-z0-9_.\-]*\Z")


class TextParseError(ValueError):
    pass


class TextRequest:
    """
    A 1.x request; its arguments are parsed only once the command is known
    (an unknown command is "not available" whatever follows it).
    """
    __slots__ = ("method", "_text", "_start")

    def __init__(self, method, text, start):
        self.method = method
        self._text = text
        self._start = start

    def arguments(self) -> list:
        """
        @raise TextParseError: a malformed argument.
        """
        return _arguments(self._text, self._start)


def decode(data: bytes) -> TextRequest | None:
    """
    Parse the command line of a 1.x request.

    @return: the request, or C{None} when the command line is malformed
        (answered C{500 command not available}).
    """
    text = from_bytes(data)
    end = text.find(":", 1)
    if not text.startswith(":") or end < 0 or text[end + 1:end + 2] != "\n":
        return None
    return TextRequest(text[1:end], text, end + 2)


def _arguments(text: str, pos: int) -> list:
    args = []
    size = len(text)
    while True:
        while pos < size and text[pos] in _WS:
            pos += 1
        if pos >= size:
            return args
        line_end = text.find("\n", pos)
        if line_end < 0:
            line_end = size
        line = text[pos:line_end]
        start = pos
        split = line.find("::")
        if split >= 0 and _NODE_NAME.match(line[:split]):
            start = pos + split + 2
            while start < line_end and text[start] in " \t":
                start += 1
        if start < size and text[start] == '"':
            value, pos = _quoted(text, start + 1)
        else:
            value = text[start:line_end].rstrip(_WS)
            if '"' in text[pos:line_end]:
                raise TextParseError("quote inside an unquoted value")
            pos = line_end + 1
        args.append(value)


def _quoted(text: str, pos: int):
    """
    A value in double quotes (C{\\"} is a quote; it may span lines); only
    white space may follow the closing quote on its line.
    """
    out = []
    size = len(text)
    while pos < size:
        c = text[pos]
        if c == "\\" and text[pos + 1:pos + 2] == '"':
            out.append('"')
            pos += 2
        elif c == '"':
            break
        else:
            out.append(c)
            pos += 1
    else:
        raise TextParseError("unterminated quoted value")
    line_end = text.find("\n", pos + 1)
    if line_end < 0:
        line_end = size
    if text[pos + 1:line_end].strip(_WS):
        raise TextParseError("text after a quoted value")
    return "".join(out), line_end + 1


def _scalar(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def generic_lines(result, depth: int = 0) -> list:
    """
    1.x node lines for any JSON-like result: C{name:: value}, children one
    TAB deeper.
    """
    indent = "\t" * depth
    if isinstance(result, dict):
        lines = []
        for key, value in result.items():
            if isinstance(value, (dict, list)):
                lines.append(f"{indent}{key}:: ")
                lines.extend(generic_lines(value, depth + 1))
            else:
                lines.append(f"{indent}{key}:: {_scalar(value)}")
        return lines
    if isinstance(result, list):
        lines = []
        for value in result:
            if isinstance(value, (dict, list)):
                lines.extend(generic_lines(value, depth))
            else:
                lines.append(f"{indent}:: {_scalar(value)}")
        return lines
    if result == "OK" and depth == 0:
        return []
    return [f"{indent}:: {_scalar(result)}"]


def result_reply(command, result) -> bytes:
    render = command.text_lines if command is not None and command.text_lines else generic_lines
    body = "".join(line + "\n" for line in render(result))
    return to_bytes("200 OK\n" + body)


def error_reply(error: MIError) -> bytes:
    code, reason = error.legacy
    return to_bytes(f"{code} {reason}\n")
