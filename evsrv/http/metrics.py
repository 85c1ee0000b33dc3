# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics, read from the server's own statistics at each scrape
(nothing is counted twice: the collector only reads).

 - every evsrv statistic C{group:name} becomes C{evsrv_<group>_<name>}
   (characters outside C{[a-zA-Z0-9_]} become C{_}), a counter (C{_total})
   when it is incremental, a gauge otherwise; a per-destination statistic
   C{group:DESTINATION:name} (the RabbitMQ connections) becomes
   C{evsrv_<group>_<name>{destination="DESTINATION"}};
 - labelled families: C{evsrv_events_raised_total{event}},
   C{evsrv_subscriptions{event}}, C{evsrv_notifications_sent_total},
   C{_failed_total}, C{_dropped_total} C{{transport}},
   C{evsrv_mi_command_requests_total{command}} and
   C{evsrv_mi_command_errors_total{command}}.

C{reset_statistics} resets the underlying counters; Prometheus takes that as a
counter reset, as after a restart.
"""

import re

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from twisted.web.resource import Resource

from evsrv.http.mi import method_not_allowed
from evsrv.interfaces import IDestinationReport

_NOTIFICATIONS = re.compile(r"evi_(.+):notifications_(sent|failed|dropped)\Z")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(*parts) -> str:
    name = "_".join(_UNSAFE.sub("_", p) for p in ("evsrv", *parts))
    return re.sub(r"__+", "_", name).strip("_")


class EvsrvCollector:
    """
    A prometheus-client collector over one server's parts.

    @param evi: the L{EventInterface} (events, subscriptions).
    @param controller: the L{MIController} (commands with C{calls}/C{errors}).
    """

    def __init__(self, statistics, evi, controller):
        self.statistics = statistics
        self.evi = evi
        self.controller = controller

    def collect(self):
        yield from self._generic()
        yield from self._events()
        yield from self._notifications()
        yield from self._mi_commands()
        yield from self._destinations()

    def _destinations(self):
        """
        C{evsrv_destination_<name>{transport, destination}} gauges from the
        transports that report per-destination state (tcp, jsonrpc, xmlrpc).
        """
        families = {}
        transports = {id(t): t for t in self.evi.transports.values()}.values()
        for transport in transports:
            if not IDestinationReport.providedBy(transport):
                continue
            for row in transport.destinations():
                for name, value in row.items():
                    if name == "destination":
                        continue
                    family = families.get(name)
                    if family is None:
                        family = families[name] = GaugeMetricFamily(
                            metric_name("destination", name),
                            f"Per destination: {name}", labels=["transport", "destination"])
                    family.add_metric([transport.name, row["destination"]], value)
        yield from families.values()

    def _generic(self):
        families = {}
        kinds = self.statistics.kinds()
        for stat, kind in kinds.items():
            group, _, rest = stat.partition(":")
            destination, _, name = rest.rpartition(":")
            try:
                value = self.statistics.value(stat)
            except (ValueError, TypeError, LookupError):
                continue  # a gauge that cannot say a number now: left out of this scrape
            counter = kind == "incremental"
            full = metric_name(group, name)
            entry = families.get(full)
            if entry is None:
                kind_class = CounterMetricFamily if counter else GaugeMetricFamily
                entry = families[full] = (
                    kind_class(full, f"evsrv statistic {group}:{name}",
                               labels=["destination"] if destination else None),
                    bool(destination), counter)
            family, labelled, is_counter = entry
            if labelled != bool(destination) or is_counter != counter:
                continue  # a clash after sanitizing: the first statistic wins
            if destination:
                family.add_metric([destination], value)
            elif not family.samples:
                family.add_metric([], value)
        yield from (family for family, _, _ in families.values())

    def _events(self):
        raised = CounterMetricFamily("evsrv_events_raised", "Events raised, by event",
                                     labels=["event"])
        subscriptions = GaugeMetricFamily("evsrv_subscriptions",
                                          "Subscriptions (not yet swept), by event",
                                          labels=["event"])
        for event in self.evi.events:
            raised.add_metric([event.name], event.raised)
            subscriptions.add_metric([event.name], len(event.subscriptions))
        yield raised
        yield subscriptions

    def _notifications(self):
        families = {what: CounterMetricFamily(f"evsrv_notifications_{what}",
                                              f"Notifications {what}, by transport",
                                              labels=["transport"])
                    for what in ("sent", "failed", "dropped")}
        for stat in self.statistics.kinds():
            match = _NOTIFICATIONS.match(stat)
            if match:
                families[match.group(2)].add_metric([match.group(1)],
                                                    self.statistics.value(stat))
        yield from families.values()

    def _mi_commands(self):
        requests = CounterMetricFamily("evsrv_mi_command_requests",
                                       "MI requests, by command", labels=["command"])
        errors = CounterMetricFamily("evsrv_mi_command_errors",
                                     "MI requests answered with an error, by command",
                                     labels=["command"])
        for name in self.controller.names:
            command = self.controller.commands[name]
            requests.add_metric([name], command.calls)
            errors.add_metric([name], command.errors)
        yield requests
        yield errors


class MetricsResource(Resource):
    """
    C{GET} (and C{HEAD}): the Prometheus text exposition; other methods 405.
    Built at each scrape from in-memory numbers, so it never waits on a peer.
    """
    isLeaf = True

    def __init__(self, statistics, evi, controller):
        super().__init__()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EvsrvCollector(statistics, evi, controller))

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, b"GET", b"HEAD")
        return self.render_GET(request)

    def render_GET(self, request):
        body = generate_latest(self.registry)
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return body
