# -*- test-case-name: tests.test_script -*-
"""
What routing scripts and modules share: the attrs/values pairing of
C{raise_event} (spec §6, §9 D13) and the view of an event's parameters that
an event route receives (the C{$param(...)} / C{fetch_event_params}
equivalents).
"""

from evsrv.evi.params import Param, make_params


class ScriptError(Exception):
    """
    A misuse of the script API; the message names the route.
    """


class TooManyWaiters(ScriptError):
    """
    C{wait_for_event} / C{notify_on_event} past the bound on waiters.
    """


class EventTimeout(TimeoutError):
    """
    What a C{wait_for_event} Deferred fails with when no matching event
    was raised in time.
    """


def event_params(attrs=None, values=None, where="raise_event") -> tuple:
    """
    The parameters of C{raise_event(name[, attrs][, values])}:

     - C{raise_event(name)}: none;
     - C{raise_event(name, values)}: a list gives unnamed parameters (the
       OpenSIPS 1.x meaning; 3.x sends nothing), a mapping named ones;
     - C{raise_event(name, attrs, values)}: names paired with values in the
       order given (not OpenSIPS' newest-first AVP order: Python lists have
       an order of their own).

    @raise ScriptError: attrs and values of different lengths (nothing is sent).
    """
    if values is None:
        return make_params(attrs)
    if attrs is None:
        return make_params(values)
    attrs, values = list(attrs), list(values)
    if len(attrs) != len(values):
        raise ScriptError(f"{where}: {len(attrs)} attribute name(s) for {len(values)} "
                          f"value(s); nothing was raised")
    return make_params(list(zip(attrs, values)))


class EventContext:
    """
    The event an event route handles: C{event.name}, C{event.params} (the
    L{Param} tuple), C{event["ip"]} (first parameter of that name),
    C{event[1]} (first parameter, 1-based like C{$param(1)}); a missing one
    is C{None}, as C{$null}.
    """
    __slots__ = ("name", "params")

    def __init__(self, name: str, params: tuple):
        self.name = name
        self.params = params

    def __getitem__(self, key):
        return self.get(key)

    def get(self, key, default=None):
        if isinstance(key, int):
            if 1 <= key <= len(self.params):
                return self.params[key - 1].value
            return default
        for param in self.params:
            if param.name == key:
                return param.value
        return default

    def fetch(self, *spec):
        """
        C{fetch_event_params}: one value per entry of C{spec}; a name takes
        the parameter of that name, C{None} takes the next unnamed parameter
        (counting only the C{None} entries, as OpenSIPS counts the unnamed
        entries of its spec). Missing ones are C{None}.
        """
        unnamed = [p for p in self.params if p.name is None]
        out = []
        position = 0
        for entry in spec:
            if entry is None:
                out.append(unnamed[position].value if position < len(unnamed) else None)
                position += 1
            else:
                out.append(self.get(entry))
        return out

    def as_dict(self) -> dict:
        """
        Named parameters as a dict (the first of duplicate names wins).
        """
        out = {}
        for param in self.params:
            if param.name is not None:
                out.setdefault(param.name, param.value)
        return out

    def __len__(self):
        return len(self.params)

    def __iter__(self):
        return iter(self.params)

    def __repr__(self):
        return f"<EventContext {self.name} {list(self.params)}>"


__all__ = ["ScriptError", "TooManyWaiters", "EventTimeout", "event_params", "EventContext",
           "Param"]
