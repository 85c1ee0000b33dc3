# -*- test-case-name: tests.test_subscriptions -*-
"""
The expiry timer: a TimerService whose sweep can never stop it.
"""

from twisted.application.internet import TimerService
from twisted.logger import Logger


class ExpiryService(TimerService):
    """
    Runs L{EventInterface.sweep} every C{interval} seconds on C{clock}.

    TimerService stops for good when its callable raises, so the sweep is
    wrapped: an error is logged and the next tick runs as usual.
    """
    _log = Logger()

    def __init__(self, evi, interval: float = 1.0, clock=None):
        super().__init__(interval, self._tick)
        self.evi = evi
        if clock is not None:
            self.clock = clock
        self.errors = evi.statistics.counter("evi", "expiry_errors")
        self.sweeps = evi.statistics.counter("evi", "expiry_sweeps")

    def _tick(self):
        self.sweeps.value += 1
        try:
            self.evi.sweep()
        except Exception:
            self.errors.value += 1
            self._log.failure("subscription expiry sweep failed; retrying next tick")
