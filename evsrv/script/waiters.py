# -*- test-case-name: tests.test_script -*-
"""
Event-based routing (OpenSIPS' C{event_routing}): one-shot waiters for an
event whose parameters match C{key=glob} filters, made by the script's
C{notify_on_event} and C{wait_for_event}.

A raise reaches the waiters through L{EventInterface.watch}, registered
only while an event has waiters: raises of other events, and every raise
when nobody waits, pay nothing more than a test of an empty dict.
"""

import math
import re
from collections.abc import Mapping
from fnmatch import translate

from twisted.logger import Logger

from evsrv.script.api import ScriptError, TooManyWaiters

MAX_WAITERS = 10000  # waiters of one script, all events together
MAX_FILTERS = 32  # filters of one waiter
MAX_PATTERN = 1024  # characters of one glob
MAX_TIMEOUT = 86400.0  # seconds; a wait for ever is an event_route


def parse_filters(spec, where: str) -> tuple:
    """
    The filters of a waiter, from:

     - C{None} or an empty mapping or list: every raise matches;
     - a mapping C{{"ip": "10.0.*", "port": 5060}};
     - a list of C{"key=glob"} strings (or one such string);

    A key names a parameter; a key of digits (C{1} or C{"1"}) is a 1-based
    position, as C{event[1]}, for unnamed parameters.

    @return: C{(key, glob, match)} tuples, C{match} the compiled glob.
    @raise ScriptError: a malformed filter, more than L{MAX_FILTERS}, or a
        glob longer than L{MAX_PATTERN}.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    elif isinstance(spec, (list, tuple)):
        pairs = []
        for item in spec:
            if not isinstance(item, str) or "=" not in item:
                raise ScriptError(f"{where}: filter {item!r} is not a \"key=glob\" string")
            pairs.append(tuple(item.partition("=")[::2]))
    else:
        raise ScriptError(f"{where}: the filter must be a dict, a list of \"key=glob\" strings "
                          f"or None, not {type(spec).__name__}")
    if len(pairs) > MAX_FILTERS:
        raise ScriptError(f"{where}: {len(pairs)} filters, more than {MAX_FILTERS}")
    filters = []
    for key, glob in pairs:
        if isinstance(key, str) and key.isascii() and key.isdigit():
            key = int(key)  # the same position in both forms: {"1": ...} and "1=..."
        if isinstance(key, bool) or not isinstance(key, (str, int)) or key == "" \
                or (isinstance(key, int) and key < 1):
            raise ScriptError(f"{where}: filter key {key!r} is neither a parameter name nor a "
                              f"position from 1")
        if isinstance(glob, int) and not isinstance(glob, bool):
            glob = str(glob)  # {"port": 5060}: values are matched as text
        if not isinstance(glob, str):
            raise ScriptError(f"{where}: the glob of filter {key!r} must be a str, "
                              f"not {type(glob).__name__}")
        if len(glob) > MAX_PATTERN:
            raise ScriptError(f"{where}: the glob of filter {key!r} is longer than "
                              f"{MAX_PATTERN} characters")
        filters.append((key, glob, re.compile(translate(glob)).match))
    return tuple(filters)


def check_timeout(timeout, where: str) -> float:
    """
    @raise ScriptError: not a number of seconds in (0, L{MAX_TIMEOUT}].
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise ScriptError(f"{where}: the timeout must be a number of seconds above 0 and at "
                          f"most {MAX_TIMEOUT:g}, not {timeout!r}")
    return float(timeout)


def waited_params(params):
    """
    What a C{wait_for_event} Deferred fires with: a dict when every
    parameter is named (the first of duplicate names wins, as
    C{EventContext.as_dict}; C{{}} when there are none), else the list of
    the values in order.
    """
    if all(p.name is not None for p in params):
        out = {}
        for p in params:
            out.setdefault(p.name, p.value)
        return out
    return [p.value for p in params]


def _value(params, key):
    if type(key) is int:
        return params[key - 1].value if key <= len(params) else None
    for p in params:
        if p.name == key:
            return p.value
    return None


class Waiter:
    """
    One waiter: C{on_match(name, params)} at the first matching raise, or
    C{on_timeout()} (if any) once the timeout passed; then it is gone.
    C{active} is false once it fired, timed out or was cancelled.
    """
    __slots__ = ("event", "filters", "on_match", "on_timeout", "what", "timer", "active")

    def __init__(self, event, filters, on_match, on_timeout, what):
        self.event = event
        self.filters = filters
        self.on_match = on_match
        self.on_timeout = on_timeout
        self.what = what
        self.timer = None
        self.active = True

    def matches(self, params) -> bool:
        for key, _, match in self.filters:
            value = _value(params, key)
            if value is None:
                return False  # a missing parameter matches no glob, not even "*"
            if match(value if type(value) is str else str(value)) is None:
                return False
        return True

    def __repr__(self):
        return f"<Waiter {self.what}>"


class Waiters:
    """
    The waiters of one script, at most C{limit} of them.

    @param evi: the L{EventInterface} (C{watch}, C{unwatch}).
    @param clock: C{IReactorTime} for the timeouts.
    """
    _log = Logger(namespace="evsrv.script")

    def __init__(self, evi, clock, statistics, limit=MAX_WAITERS):
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"the bound on waiters must be a positive int, not {limit!r}")
        self.evi = evi
        self.clock = clock
        self.limit = limit
        # event name -> {Waiter: None}: made-first order, and O(1) removal
        # when one of thousands times out
        self._by_event = {}
        self._count = 0
        statistics.gauge("script", "waiters", lambda: self._count)
        self._timed_out = statistics.counter("script", "waiters_timed_out")

    def __len__(self):
        return self._count

    def add(self, event, filters, timeout, on_match, on_timeout, what) -> Waiter:
        """
        @raise TooManyWaiters: C{limit} waiters are waiting already.
        """
        if self._count >= self.limit:
            raise TooManyWaiters(f"{what}: {self.limit} waiters are waiting already, the most "
                                 f"a script may have")
        waiter = Waiter(event, filters, on_match, on_timeout, what)
        waiting = self._by_event.get(event)
        if waiting is None:
            waiting = self._by_event[event] = {}
            self.evi.watch(event, self._raised)
        waiting[waiter] = None
        self._count += 1
        waiter.timer = self.clock.callLater(timeout, self._expire, waiter)
        return waiter

    def _remove(self, waiter) -> bool:
        waiting = self._by_event.get(waiter.event)
        if waiting is None or waiter not in waiting:
            return False
        del waiting[waiter]
        self._count -= 1
        if not waiting:
            del self._by_event[waiter.event]
            self.evi.unwatch(waiter.event, self._raised)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None
        return True

    def cancel(self, waiter) -> None:
        """
        Drop C{waiter} unfired (also one a raise matched but has not run yet).
        """
        waiter.active = False
        self._remove(waiter)

    def cancel_all(self) -> int:
        """
        Drop every waiter unfired (a reload, a stop). @return: how many.
        """
        waiters = [w for waiting in self._by_event.values() for w in waiting]
        for waiter in waiters:
            self.cancel(waiter)
        return len(waiters)

    def _raised(self, name, params):
        waiting = self._by_event.get(name)
        if not waiting:
            return
        matched = [w for w in waiting if w.matches(params)]
        # All taken before any runs: a waiter made by one of these routes
        # waits for the next raise, and a nested raise of the same event
        # cannot take one this raise matched.
        for waiter in matched:
            self._remove(waiter)
        for waiter in matched:
            if waiter.active:  # an earlier one may have cancelled it
                waiter.active = False
                try:
                    waiter.on_match(name, params)
                except Exception:
                    self._log.failure("{what} failed", what=waiter.what)

    def _expire(self, waiter):
        waiter.timer = None  # running now: nothing to cancel
        if not self._remove(waiter) or not waiter.active:
            return
        waiter.active = False
        self._timed_out.value += 1
        if waiter.on_timeout is not None:
            try:
                waiter.on_timeout()
            except Exception:
                self._log.failure("{what} failed on its timeout", what=waiter.what)
