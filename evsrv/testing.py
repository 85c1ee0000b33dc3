"""
Public test doubles for code built on evsrv (scripts, modules, plugins):
a transport that records what it is asked to deliver, and a ready-made
L{EventInterface} on a L{Clock}.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from evsrv.evi import EventInterface
from evsrv.evi.notification import Outcome
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import BadSocket, IEventTransport
from evsrv.statistics import Statistics


@implementer(IEventTransport)
class RecordingTransport:
    """
    Accepts C{SCHEME:anything} sockets and records every delivery as
    C{(event, params, socket)} in C{delivered}.

    @ivar fail: sockets whose deliveries fail (counted, not recorded).
    @ivar asynchronous: when true, C{deliver} returns a Deferred kept in
        C{pending}; fire it with L{settle}.
    """

    def __init__(self, scheme="test", name=None):
        self.name = name or scheme
        self.schemes = (scheme,)
        self.delivered = []
        self.fail = set()
        self.asynchronous = False
        self.pending = []

    def parse(self, scheme, rest):
        if not rest:
            raise BadSocket(f"{scheme}: empty destination")
        return Destination(f"{scheme}:{rest}", rest)

    def deliver(self, notification, subscriptions):
        outcome = Outcome()
        for sub in subscriptions:
            if sub.socket in self.fail:
                sub.failure("refused by test")
                outcome.failed += 1
                outcome.errors.append((sub.socket, "refused by test"))
            else:
                sub.sent += 1
                outcome.delivered += 1
                self.delivered.append((notification.event, notification.params, sub.socket))
        if not self.asynchronous:
            return outcome
        d = Deferred()
        self.pending.append((d, outcome))
        return d

    def settle(self):
        """
        Fire every pending asynchronous delivery.
        """
        pending, self.pending = self.pending, []
        for d, outcome in pending:
            d.callback(outcome)


def memory_evi(*events, scheme="test"):
    """
    An L{EventInterface} on a L{Clock} with one L{RecordingTransport},
    with C{events} published.

    @return: C{(evi, clock, transport)}.
    """
    clock = Clock()
    transport = RecordingTransport(scheme)
    evi = EventInterface(clock, {scheme: transport}, Statistics())
    for name in events:
        evi.publish(name)
    return evi, clock, transport
