# -*- test-case-name: tests.test_evi -*-
"""
Event parameters: an ordered list of optionally named int/str values (spec §1.2).
"""

from collections.abc import Mapping
from typing import NamedTuple

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1


class Param(NamedTuple):
    """
    One event parameter. C{name} is C{None} for an unnamed parameter;
    C{value} is an C{int} or a C{str}.
    """
    name: str | None
    value: int | str


Params = tuple  # tuple[Param, ...]; a tuple so a raise cannot be changed under a transport


def _checked(name, value) -> Param:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"parameter name must be a str or None, not {type(name).__name__}")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"parameter {name or '#'} must be an int or a str, "
                        f"not {type(value).__name__}")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"parameter {name or '#'} is outside the 64-bit integer range")
    return Param(name, value)


def make_params(params=None) -> Params:
    """
    Build a parameter tuple from what callers naturally have:
    C{None} (no parameters), a mapping (named, in its order), a sequence of
    L{Param} or C{(name, value)} pairs, or a sequence of plain values (unnamed).
    """
    if params is None:
        return ()
    if isinstance(params, Mapping):
        return tuple(_checked(k, v) for k, v in params.items())
    if isinstance(params, (str, bytes)):
        raise TypeError("params must be a mapping or a sequence, not a single string")
    out = []
    for item in params:
        if isinstance(item, tuple) and len(item) == 2:
            out.append(_checked(item[0], item[1]))
        else:
            out.append(_checked(None, item))
    return tuple(out)
