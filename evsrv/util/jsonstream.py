# -*- test-case-name: tests.test_ingest -*-
"""
A byte stream of JSON objects written back to back with no delimiter and
no length prefix (OpenSIPS event_stream, spec §4.4), cut into one C{bytes}
per object without parsing it.

The scanner keeps its state between chunks (depth, inside a string, after a
backslash), so each byte is looked at once however the stream is cut: a
peer that sends one byte at a time costs the same as one that sends whole
objects (re-parsing the buffer at every chunk would cost the square of the
object's size). What a peer can make it hold is bounded: an object longer
than C{limit} bytes is not kept but skipped to its end and reported as
L{OVERSIZE}, so the stream stays in step and the next object is read.
Bytes between objects other than whitespace cannot be resynchronised from
(the scanner cannot know where the next object starts): L{StreamError}.

The bytes of a string are not decoded here: C{"}, C{\\}, braces and
brackets are ASCII, and in UTF-8 no byte of a multi-byte character is below
0x80, so scanning bytes is exact for UTF-8 and harmless for anything else
(the JSON parser that reads the object later says whether it is valid).
"""

import re

OVERSIZE = object()  # stands for an object that was longer than the limit

_OUTSIDE = re.compile(rb'[{}\[\]"]')  # what matters between strings
_INSIDE = re.compile(rb'["\\]')         # what matters inside a string
_WHITESPACE = b" \t\r\n"


class StreamError(ValueError):
    """
    The stream holds something other than JSON objects and whitespace.
    """


class ObjectSplitter:
    """
    Feed it chunks; it returns the objects they complete.

    @param limit: the most bytes one object may take; longer ones come out
        as L{OVERSIZE}.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._held = bytearray()  # the unfinished object's bytes from earlier chunks
        self._depth = 0           # 0: between objects
        self._in_string = False
        self._escaped = False     # the last byte was a backslash inside a string
        self._skipping = False    # the current object passed the limit: not kept

    @property
    def pending(self) -> int:
        """
        Bytes of an unfinished object held.
        """
        return len(self._held)

    def feed(self, data: bytes) -> list:
        """
        @return: the objects completed by C{data}, in order: C{bytes}, or
            L{OVERSIZE} for one that was too long.
        @raise StreamError: a byte between objects is not whitespace and
            does not start an object; the objects before it are lost with
            the stream (the caller closes it).
        """
        out = []
        n = len(data)
        i = 0
        start = 0 if self._depth else None  # where the current object starts in data
        while i < n:
            if self._depth == 0:
                byte = data[i]
                if byte in _WHITESPACE:
                    i += 1
                    continue
                if byte != 0x7B:  # "{"
                    raise StreamError(f"not a JSON object at {bytes(data[i:i + 40])!r}")
                start = i
                self._depth = 1
                i += 1
                continue
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                    i += 1
                    continue
                match = _INSIDE.search(data, i)
                if match is None:
                    break
                j = match.start()
                if data[j] == 0x5C:  # backslash: the next byte is taken as it is
                    if j + 1 < n:
                        i = j + 2
                    else:
                        self._escaped = True
                        i = n
                else:
                    self._in_string = False
                    i = j + 1
                continue
            match = _OUTSIDE.search(data, i)
            if match is None:
                break
            j = match.start()
            byte = data[j]
            i = j + 1
            if byte == 0x22:
                self._in_string = True
            elif byte in (0x7B, 0x5B):
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    out.append(self._finish(data, start, i))
                    start = None
        if self._depth:
            self._hold(data, start)
        return out

    def _finish(self, data, start, end):
        skipped = self._skipping
        size = len(self._held) + end - start
        self._skipping = False
        if skipped or size > self.limit:
            self._held.clear()
            return OVERSIZE
        if self._held:
            self._held += data[start:end]
            whole = bytes(self._held)
            self._held.clear()
            return whole
        return bytes(data[start:end])

    def _hold(self, data, start):
        if self._skipping:
            return
        if len(self._held) + len(data) - start > self.limit:
            # past the limit: nothing more is kept, the end is still looked for
            self._skipping = True
            self._held.clear()
            return
        self._held += data[start:]
