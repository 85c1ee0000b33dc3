# -*- test-case-name: tests.test_script -*-
"""
The C{route:} transport (spec §4.5): delivers events to the routing
script's event routes, in process and at once (as OpenSIPS 1.x), so a route
that raises events nests, bounded by L{MAX_NESTED_RAISES}.
"""

from zope.interface import implementer

from evsrv.evi.notification import Outcome
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import BadSocket, ICounted, IEventTransport, IPeerHosts
from evsrv.transports import LateBinding, TransportCounters
from evsrv.transports.factories import TransportFactory


@implementer(IEventTransport, IPeerHosts, ICounted)
class RouteTransport:
    schemes = ("route",)

    def __init__(self, name, statistics, script=None):
        """
        @param script: a L{evsrv.transports.LateBinding} of the
            L{ScriptRunner}, bound by the server once the script is loaded
            (the script is made after the transports).
        """
        self.name = name
        self.counters = TransportCounters(statistics, name)
        self._script = LateBinding("the routing script") if script is None else script

    @property
    def runner(self):
        """
        The loaded L{ScriptRunner}, or C{None} (no C{[script]}).
        """
        return self._script.get()

    def parse(self, scheme, rest):
        if self.runner is None:
            raise BadSocket("route: no routing script is loaded ([script] path)")
        if not self.runner.has_event_route(rest):
            raise BadSocket(f"route: the script has no event_route for {rest[:64]!r}")
        return Destination(f"route:{rest}", rest)

    @staticmethod
    def peer_hosts(destination):
        return ()  # in process: nothing for the [policy] to check

    def deliver(self, notification, subscriptions):
        outcome = Outcome()
        for sub in subscriptions:
            runner = self.runner
            if runner is not None and runner.has_event_route(sub.address):
                if runner.run_event_route(sub.address, notification):
                    outcome.sent_to(sub)
                    continue
                reason = "the event route raised an error"
            else:
                reason = f"no event_route[{sub.address}] (the script was reloaded without it)"
            outcome.failed_for(sub, reason)
        self.counters.sent.value += outcome.delivered
        self.counters.failed.value += outcome.failed
        return outcome


def _build_route(settings, context):
    return RouteTransport("route", context.statistics, context.script)


routeTransport = TransportFactory(
    "route", ("route",), {}, _build_route,
    "the routing script's event routes (event_route)")
