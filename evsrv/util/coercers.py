"""
Ini value coercers shared by plugins' C{options}: each takes the text and
returns the value or raises C{ValueError} with a reason.
"""

import math


def positive(kind):
    """
    An ini coercer for a positive C{kind} (int or float).
    """
    def coerce(text):
        value = kind(text)
        if value <= 0:
            raise ValueError("must be positive")
        return value
    return coerce


def non_negative(kind):
    """
    An ini coercer for C{kind} >= 0 (0 usually means "off").
    """
    def coerce(text):
        value = kind(text)
        if value < 0:
            raise ValueError("must not be negative")
        return value
    return coerce


def seconds(text: str) -> float:
    """
    A finite number of seconds, 0 or more.
    """
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise ValueError("must be a number of seconds (0 or more)")
    return value
