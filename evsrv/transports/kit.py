# -*- test-case-name: tests.test_kit -*-
"""
The delivery kit: what every transport that holds notifications shares,
written once. For now: what a drain reports (L{DrainResult}) and how a
transport waits until it holds nothing (L{wait_drained}), used by
L{evsrv.shutdown}.
"""

from twisted.internet.defer import Deferred

DRAIN_POLL = 0.05   # seconds between two looks at a transport's queues while draining


class DrainResult:
    """
    What a transport still holds when its drain ends: by destination (its
    listing text), how many notifications are undelivered and in what state
    the destination is (e.g. C{"connecting"}).

    A destination may be listed with 0 notifications: something may still be
    lost that cannot be counted (bytes a peer did not read from a stream).

    @ivar through_members: the transport delivers through others (virtual),
        which report its notifications themselves: it is shown, but not
        added to the totals.
    """

    def __init__(self, through_members=False):
        self.destinations = {}  # text -> [count, state]
        self.through_members = through_members

    def add(self, destination: str, count: int, state: str):
        entry = self.destinations.setdefault(destination, [0, state])
        entry[0] += count
        entry[1] = state

    @property
    def count(self) -> int:
        return sum(entry[0] for entry in self.destinations.values())

    @property
    def complete(self) -> bool:
        """
        Whether nothing is left at all.
        """
        return not self.destinations

    def __repr__(self):
        return f"<DrainResult {self.destinations!r}>"


class _Poll:
    """
    See L{wait_drained}.
    """

    def __init__(self, clock, deadline, drained, interval):
        self.clock = clock
        self.deadline = deadline
        self.drained = drained
        self.interval = interval
        self.call = None
        self.deferred = Deferred(self._cancel)

    def _cancel(self, _):
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None

    def check(self):
        self.call = None
        try:
            done = self.drained()
        except Exception:
            self.deferred.errback()
            return
        if done:
            self.deferred.callback(True)
            return
        now = self.clock.seconds()
        if now >= self.deadline:
            self.deferred.callback(False)
            return
        self.call = self.clock.callLater(min(self.interval, self.deadline - now), self.check)


def wait_drained(clock, deadline, drained, interval=DRAIN_POLL) -> Deferred:
    """
    Wait until C{drained()} is true (asked now, then every C{interval}
    seconds) or C{deadline} (clock time) has come.

    A transport's queues change in many places (writes, replies, expiry,
    reconnects); looking at them a few times a second, and only while
    shutting down, cannot miss a change and costs nothing in the delivery
    paths.

    @return: a Deferred firing with C{True} (drained) or C{False} (deadline);
        cancelling it stops the polling.
    """
    poll = _Poll(clock, deadline, drained, interval)
    poll.check()
    return poll.deferred
