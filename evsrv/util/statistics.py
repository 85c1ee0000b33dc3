# -*- test-case-name: tests.test_metrics -*-
"""
Named statistics in OpenSIPS style (C{group:name}), read by the MI
C{get_statistics}, C{list_statistics} and C{reset_statistics} commands.
"""


class Counter:
    """
    An incremental statistic; hot paths add to C{value} directly.
    """
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0


class Statistics:
    """
    The registry of every statistic of one server.

    Counters are incremental and can be reset; gauges are computed on read
    (non-incremental) and are not reset.
    """

    def __init__(self):
        self._counters = {}  # "group:name" -> Counter
        self._gauges = {}    # "group:name" -> callable

    def counter(self, group: str, name: str) -> Counter:
        key = f"{group}:{name}"
        try:
            return self._counters[key]
        except KeyError:
            counter = self._counters[key] = Counter()
            return counter

    def gauge(self, group: str, name: str, read) -> None:
        self._gauges[f"{group}:{name}"] = read

    def _names(self):
        return sorted({*self._counters, *self._gauges})

    def _select(self, patterns):
        """
        Names matching C{patterns}: C{all}, C{group:} (a whole group) or a full
        C{group:name}; C{None} means all.
        """
        names = self._names()
        if patterns is None:
            return names
        chosen = []
        for pattern in patterns:
            if pattern == "all":
                matched = names
            elif pattern.endswith(":"):
                matched = [n for n in names if n.startswith(pattern)]
            else:
                matched = [pattern] if pattern in self._counters or pattern in self._gauges else []
            chosen.extend(n for n in matched if n not in chosen)
        return chosen

    def value(self, name: str) -> int:
        counter = self._counters.get(name)
        return counter.value if counter is not None else int(self._gauges[name]())

    def get(self, patterns=None) -> dict:
        return {name: self.value(name) for name in self._select(patterns)}

    def kinds(self, patterns=None) -> dict:
        return {name: "incremental" if name in self._counters else "non-incremental"
                for name in self._select(patterns)}

    def reset(self, patterns) -> list:
        names = [n for n in self._select(patterns) if n in self._counters]
        for name in names:
            self._counters[name].value = 0
        return names
