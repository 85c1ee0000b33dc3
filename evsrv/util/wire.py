# -*- test-case-name: tests.test_vectors -*-
"""
Text <-> wire bytes. Bytes that are not UTF-8 travel inside evsrv as lone
surrogates (C{surrogateescape}) and leave exactly as they came in.
"""

import codecs


def _wire_errors(error):
    """
    Encoding errors: a byte carried as a lone surrogate by
    C{surrogateescape} goes back out as that byte; any other lone surrogate
    (a JSON C{\\ud800} escape) becomes U+FFFD.
    """
    if isinstance(error, UnicodeEncodeError):
        out = bytearray()
        for ch in error.object[error.start:error.end]:
            code = ord(ch)
            out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else "\ufffd".encode()
        return bytes(out), error.end
    return codecs.surrogateescape_errors(error)


codecs.register_error("evsrv-wire", _wire_errors)


def to_bytes(text: str) -> bytes:
    """
    Text to wire bytes (UTF-8; bytes that came in raw leave raw).
    """
    return text.encode("utf-8", "evsrv-wire")


def from_bytes(data: bytes) -> str:
    """
    Wire bytes to text; bytes that are not UTF-8 survive as lone surrogates.
    """
    return data.decode("utf-8", "surrogateescape")
