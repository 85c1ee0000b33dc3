# -*- test-case-name: tests.test_config -*-
"""
Ini value coercers, for the core schema (L{evsrv.config.SCHEMA}) and
plugins' C{options} alike: each takes the text of a value (stripped) and
returns the value, or raises C{ValueError} with the reason (shown as
C{[section] key: bad value 'TEXT': REASON}).

Plain ones are used as they are (C{yes_no}); the others are factories that
take their bounds (C{positive(float)}, C{bounded(int, 0, 1000)}).
"""

import grp
import math
import pwd


def positive(kind):
    """
    An ini coercer for a positive C{kind} (int or float; NaN is refused).
    """
    def coerce(text):
        value = kind(text)
        if not value > 0:
            raise ValueError("must be a positive number")
        return value
    return coerce


def non_negative(kind, zero=None):
    """
    An ini coercer for C{kind} >= 0 (0 usually means "off").

    @param zero: what 0 means, for the message (C{"no limit"}: "must be 0
        (no limit) or more").
    """
    def coerce(text):
        value = kind(text)
        if not value >= 0:
            raise ValueError(f"must be 0 ({zero}) or more" if zero else "must not be negative")
        return value
    return coerce


def bounded(kind, low, high=None, unit=""):
    """
    An ini coercer for C{kind} (int or float) from C{low} to C{high}
    inclusive (no upper bound when C{high} is C{None}; NaN is refused).

    @param unit: written after the bounds in the message ("bytes").
    """
    def coerce(text):
        value = kind(text)
        if high is None:
            if not value >= low:
                raise ValueError(f"must be {low}{' ' + unit if unit else ''} or more")
        elif not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}{' ' + unit if unit else ''}")
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


def positive_seconds(text: str) -> float:
    """
    A number of seconds above 0, at most a day.
    """
    value = float(text)
    if not 0 < value <= 86400:
        raise ValueError("must be a number of seconds above 0 (at most 86400)")
    return value


def seconds_or_never(text: str) -> float:
    """
    Like L{positive_seconds}, and C{0} for "never" (the timer is off).
    """
    value = float(text)
    if value == 0:
        return 0.0
    if not 0 < value <= 86400:
        raise ValueError("must be 0 (never) or a number of seconds above 0 (at most 86400)")
    return value


def yes_no(text: str) -> bool:
    """
    C{yes}/C{no} (also C{true}/C{false}, C{on}/C{off}, C{1}/C{0}; any case).
    """
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def choice(*allowed, ignore_case=False):
    """
    An ini coercer accepting one of C{allowed} (given in lower case when
    C{ignore_case}; the value is then returned in lower case).
    """
    def coerce(text: str) -> str:
        value = text.strip().lower() if ignore_case else text
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value
    return coerce


def comma_list(text: str) -> list:
    """
    Items separated by commas or line breaks (an ini value may go on over
    indented lines), stripped; empty ones are skipped.
    """
    return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]


def octal_mode(high=0o777, example="0660"):
    """
    An ini coercer for an octal file mode from 0 to C{high}.
    """
    def coerce(text: str) -> int:
        value = int(text.strip(), 8)
        if not 0 <= value <= high:
            raise ValueError(f"must be an octal file mode such as {example}")
        return value
    return coerce


def user_name(text: str) -> str | None:
    """
    The name of a user of this system; empty: C{None}.
    """
    if not text:
        return None
    try:
        pwd.getpwnam(text)
    except KeyError:
        raise ValueError(f"no such user {text!r}") from None
    return text


def group_name(text: str) -> str | None:
    """
    The name of a group of this system; empty: C{None}.
    """
    if not text:
        return None
    try:
        grp.getgrnam(text)
    except KeyError:
        raise ValueError(f"no such group {text!r}") from None
    return text
