# -*- test-case-name: tests.test_mi_acl -*-
"""
Logging that a flood cannot turn into a flood of log lines.
"""


class RateLimitedLog:
    """
    Logs a repeated warning at most once per C{period} seconds, with the
    number of occurrences suppressed in between.
    """

    def __init__(self, log, clock, period=10.0):
        self.log = log
        self.clock = clock
        self.period = period
        self._last = None
        self._suppressed = 0

    def warn(self, fmt, **kw):
        now = self.clock.seconds()
        if self._last is not None and now - self._last < self.period:
            self._suppressed += 1
            return
        self._last = now
        self.log.warn(fmt + " ({suppressed} similar messages suppressed)",
                      suppressed=self._suppressed, **kw)
        self._suppressed = 0
