# -*- test-case-name: tests.test_evi -*-
"""
The Event Interface: events, subscriptions and raising, independent of any
listener. The MI, the routing script and modules all go through it.
"""

import collections
import re
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger

from evsrv.evi.events import EventTable
from evsrv.evi.notification import DeliveryReport, Notification
from evsrv.evi.params import make_params
from evsrv.evi.subscriptions import SubscriptionStore
from evsrv.interfaces import (BadSocket, IAdmission, LimitExceeded,
                              declare_legacy_capabilities)

# Bytes that are not UTF-8 travel inside evsrv as lone surrogates
# (evsrv.util.wire); a JSON \udc80 escape decodes to one too.
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_NESTED_RAISES = 100  # as OpenSIPS' MAX_REC_LEV
SWEEP_LIMIT = 10000  # expirations per sweep; more wait for the next tick


class UnknownEvent(LookupError):
    """
    The event name was never published.
    """


class UnknownTransport(BadSocket):
    """
    No enabled transport handles the socket's scheme.
    """


class NestingError(RuntimeError):
    """
    Raises nested deeper than L{MAX_NESTED_RAISES}.
    """


@dataclass(frozen=True)
class Limits:
    """
    The C{[limits]} an L{EventInterface} keeps; C{0} means no limit.

    @ivar max_subscriptions: subscriptions in all.
    @ivar max_subscriptions_per_event: subscribers of one event.
    @ivar max_params_bytes: bytes of the parameter names and values of one raise.
    """
    max_subscriptions: int = 0
    max_subscriptions_per_event: int = 0
    max_params_bytes: int = 0


class EventInterface:
    """
    Everything it needs is given at construction (L{evsrv.server} builds
    the parts first); nothing is filled in from outside afterwards.

    @param clock: C{IReactorTime} provider used for subscription times.
    @param transports: mapping of scheme to L{IEventTransport}.
    @param statistics: L{evsrv.util.statistics.Statistics}.
    @param policy: an L{evsrv.evi.policy.DestinationPolicy} (or C{None}: every
        destination allowed): C{check(destination, transport)} returns the
        destination, or raises L{evsrv.interfaces.DestinationRefused}.
    @param journal: an L{evsrv.persistence.SubscriptionJournal} (or C{None}:
        nothing stored): MI subscriptions are answered once stored.
    @param limits: the L{Limits} (default: none).
    @param recent: how many of the last raises to keep in L{recent_raises}
        (for the HTTP status page); C{0}: none, nothing on the hot path.
    """
    _log = Logger()

    def __init__(self, clock, transports, statistics, *, policy=None, journal=None,
                 limits=None, recent=0):
        self.clock = clock
        self.transports = dict(transports)
        for transport in self.transports.values():
            # a plugin written before the capability interfaces keeps working
            # (the server warns about it)
            declare_legacy_capabilities(transport)
        self.events = EventTable()
        self.store = SubscriptionStore()
        self.statistics = statistics
        self._raised = statistics.counter("evi", "events_raised")
        self._no_subscribers = statistics.counter("evi", "events_without_subscribers")
        self._expired = statistics.counter("evi", "subscriptions_expired")
        statistics.gauge("evi", "events", lambda: len(self.events))
        statistics.gauge("evi", "subscriptions", lambda: self.store.size)
        self._depth = 0
        self._policy = policy
        self._journal = journal
        self._limits = Limits() if limits is None else limits
        self._max_params_bytes = self._limits.max_params_bytes  # read on every raise
        # callables (report, seconds) told how long each delivery took
        # (L{observe_reports}); empty: nothing is measured
        self._report_observers = []
        # event name -> callables (name, params) told of each raise (L{watch});
        # empty, a raise pays one truth test of it
        self._watchers = {}
        # the last raises as (time, name, params, DeliveryReport), for the
        # HTTP status page; maxlen 0: nothing kept
        self.recent_raises = collections.deque(maxlen=recent)

    @property
    def destination_policy(self):
        """
        The destination policy given at construction, or C{None}.
        """
        return self._policy

    @property
    def journal(self):
        """
        The subscription journal given at construction, or C{None}.
        """
        return self._journal

    @property
    def limits(self) -> Limits:
        return self._limits

    def observe_reports(self, observer) -> None:
        """
        Have C{observer(report, seconds)} told, once each raise has settled,
        its L{DeliveryReport} and how long its delivery took (the core
        module's C{E_CORE_THRESHOLD}). Registered while the server is built.
        """
        self._report_observers.append(observer)

    def watch(self, name: str, watcher) -> None:
        """
        Have C{watcher(name, params)} called at each raise of C{name}, in the
        raise, after its subscribers were chosen and before they get it,
        nested like a delivery (the routing script's C{wait_for_event} and
        C{notify_on_event}). While watched, the event counts as subscribed
        for L{has_subscribers} and L{probe} (one per watcher), so an MI
        C{raise_event} of it is not refused. A watcher should not raise
        (it is logged).
        """
        self._watchers.setdefault(name, []).append(watcher)

    def unwatch(self, name: str, watcher) -> None:
        watchers = self._watchers.get(name)
        if watchers and watcher in watchers:
            watchers.remove(watcher)
            if not watchers:
                del self._watchers[name]  # back to no cost on the raise path

    # -- events ---------------------------------------------------------

    def publish(self, name: str):
        """
        Publish an event (idempotent). @return: the L{Event}.
        """
        return self.events.publish(name)

    def event(self, name: str):
        return self.events.get(name)

    def probe(self, name: str) -> int:
        """
        The number of live subscribers of C{name} (0 for an unknown event), so
        a caller can skip building parameters nobody will receive; a
        L{watch}er counts as one.
        """
        event = self.events.get(name)
        watchers = len(self._watchers.get(name, ())) if self._watchers else 0
        if event is None or not event.subscriptions:
            return watchers
        now = self.clock.seconds()
        return watchers + sum(1 for s in event.subscriptions.values() if not s.is_expired(now))

    def has_subscribers(self, name: str) -> bool:
        """
        Whether C{name} has a live subscriber or a L{watch}er (cheaper than
        L{probe}).
        """
        if self._watchers and name in self._watchers:
            return True
        event = self.events.get(name)
        if event is None or not event.subscriptions:
            return False
        now = self.clock.seconds()
        for sub in event.subscriptions.values():
            if sub.deadline is None or sub.deadline > now:
                return True
        return False

    # -- subscriptions ----------------------------------------------------

    def parse_socket(self, socket: str):
        """
        Find the transport of C{socket} and let it parse the rest.

        @return: Deferred firing with C{(transport, destination)}; fails with
            L{BadSocket} (or L{UnknownTransport}).
        """
        if not socket.isascii():
            bad = _SURROGATE.search(socket)
            if bad is not None:
                # Refused for every transport alike: such a socket cannot be
                # stored (SQLite text is UTF-8), listed in a JSON reply or
                # compared reliably, and no real destination needs it.
                return fail(BadSocket(
                    f"socket {socket[:80]!r} is not valid UTF-8 (byte or escape "
                    f"at position {bad.start()})"))
        if socket.startswith("/"):
            scheme, rest = "unix", socket  # a bare path means unix (opensips-event does this)
        else:
            scheme, sep, rest = socket.partition(":")
            if not sep:
                return fail(UnknownTransport(f"no transport prefix in {socket[:80]!r}"))
        transport = self.transports.get(scheme)
        if transport is None:
            return fail(UnknownTransport(
                f"unknown or disabled transport {scheme[:40]!r} (enabled: "
                f"{', '.join(sorted(self.transports)) or 'none'})"))
        d = maybeDeferred(transport.parse, scheme, rest)
        if self._policy is not None:
            d.addCallback(self._policy.check, transport)
        if IAdmission.providedBy(transport):
            # resources (a broker connection) only for a socket the policy passed
            d.addCallback(transport.admit)
        d.addCallback(lambda destination: (transport, destination))
        return d

    def subscribe(self, event_name: str, socket: str, expire=None, *, origin="internal",
                  subscribed_at=None, record=True):
        """
        Subscribe C{socket} to an event, or refresh its subscription.

        @param expire: seconds. From the MI (C{origin="mi"}) C{0} removes the
            subscription at once; elsewhere C{None} or C{0} means it never expires.
        @param subscribed_at: clock time of the subscription (a restored one
            keeps its own); default now.
        @param record: for C{origin="mi"}, whether to store the change in the
            L{journal} (and answer only once it is durable).
        @return: Deferred firing with the L{Subscription} (C{None} after a
            removal); fails with L{UnknownEvent}, L{BadSocket},
            L{LimitExceeded} or L{evsrv.persistence.StoreWriteError}.
        """
        event = self.events.get(event_name)
        if event is None:
            return fail(UnknownEvent(event_name))
        if expire is not None and expire < 0:
            return fail(ValueError("negative expire"))
        d = self.parse_socket(socket)
        journal = self._journal if origin == "mi" and record else None

        def parsed(result):
            transport, destination = result
            if expire == 0 and origin == "mi":
                sub = self.store.find(event, destination.key)
                if sub is not None:
                    self.store.remove(sub)
                    self._log.info("{socket} unsubscribed from {event}",
                                   socket=sub.socket, event=event.name,
                                   transport=transport.name)
                if journal is None:
                    return None
                key = destination.key
                shown = key if type(key) is str else transport.describe(key)
                return journal.delete(event.name, shown).addCallback(lambda _: None)
            if self.store.find(event, destination.key) is None:
                self._check_room(event)
            now = self.clock.seconds() if subscribed_at is None else subscribed_at
            sub, created = self.store.subscribe(
                event, destination, transport, expire or None, now, origin)
            if created:
                self._log.info("{socket} subscribed to {event} (expire {expire})",
                               socket=sub.socket, event=event.name, transport=transport.name,
                               expire=sub.expire if sub.expire is not None else "never")
            if journal is None or sub.expire is None:
                return sub

            def not_stored(failure):
                # the client hears it was not stored; a new subscription is
                # taken back, a refresh keeps working until its old deadline
                if created:
                    self.store.remove(sub)
                return failure
            stored = journal.put(event.name, sub.socket, socket, sub.expire, now)
            return stored.addCallbacks(lambda _: sub, not_stored)
        return d.addCallback(parsed)

    def _check_room(self, event):
        """
        @raise LimitExceeded: a new subscription of C{event} would pass a
            C{[limits]} value (expired ones are purged before saying so).
        """
        per_event = self._limits.max_subscriptions_per_event
        if per_event and len(event.subscriptions) >= per_event:
            self.subscribers(event)
            if len(event.subscriptions) >= per_event:
                raise LimitExceeded(
                    f"{event.name} has {per_event} subscribers, the most "
                    f"[limits] max_subscriptions_per_event allows")
        total = self._limits.max_subscriptions
        if total and self.store.size >= total:
            self.store.expire_due(self.clock.seconds(), self._expired_hook)
            if self.store.size >= total:
                raise LimitExceeded(
                    f"{total} subscriptions in all, the most [limits] max_subscriptions allows")

    def unsubscribe(self, subscription) -> None:
        self.store.remove(subscription)

    def find_subscriber(self, event_name: str, socket: str):
        """
        @return: Deferred firing with the live L{Subscription} of C{socket}, or
            C{None}; fails with L{UnknownEvent} or L{BadSocket}.
        """
        event = self.events.get(event_name)
        if event is None:
            return fail(UnknownEvent(event_name))
        d = self.parse_socket(socket)

        def found(result):
            sub = self.store.find(event, result[1].key)
            if sub is None or sub.is_expired(self.clock.seconds()):
                return None
            return sub
        return d.addCallback(found)

    def subscribers(self, event):
        """
        Live subscribers of an L{Event}, newest first; expired ones are purged.
        """
        if not event.subscriptions:
            return []
        now = self.clock.seconds()
        live = []
        expired = None
        for sub in reversed(event.subscriptions.values()):
            if sub.deadline is not None and sub.deadline <= now:
                if expired is None:
                    expired = []
                expired.append(sub)
            else:
                live.append(sub)
        if expired:
            for sub in expired:
                self._expire(sub)
        return live

    def sweep(self, limit=SWEEP_LIMIT) -> int:
        """
        Remove subscriptions past their deadline, at most C{limit} of them
        (an expired one never receives meanwhile: raising checks deadlines).

        @return: how many were removed.
        """
        removed = self.store.expire_due(self.clock.seconds(), self._expired_hook, limit)
        if removed:
            self._log.info("{count} subscription(s) expired", count=removed)
        return removed

    def _expired_hook(self, sub):
        # Counted, not logged one by one: 100k subscriptions may expire at
        # once; sweep() logs a summary line.
        self._expired.value += 1

    def _expire(self, sub):
        self.store.remove(sub)
        self._expired_hook(sub)

    # -- raising -----------------------------------------------------------

    def raise_event(self, name: str, params=None) -> Deferred:
        """
        Notify every live subscriber of C{name}.

        @param params: anything L{make_params} accepts (a mapping for named
            parameters, a sequence for unnamed ones, or L{Param} items).
        @return: Deferred firing with a L{DeliveryReport} once every transport
            has settled; fails with L{UnknownEvent}, C{TypeError} for bad
            parameters or L{NestingError}.
        """
        event = self.events.get(name)
        if event is None:
            return fail(UnknownEvent(name))
        try:
            params = params if type(params) is tuple else make_params(params)
            if self._max_params_bytes:
                self.check_params(params)
        except (TypeError, ValueError, LimitExceeded) as e:
            return fail(e)
        subs = self.subscribers(event)
        event.raised += 1
        self._raised.value += 1
        report = DeliveryReport(name, len(subs))
        if self.recent_raises.maxlen:
            # the report object itself: its totals fill in as deliveries settle
            # (kept only while the status page is on: nothing on the hot path else)
            self.recent_raises.append((self.clock.seconds(), name, params, report))
        if self._watchers and name in self._watchers:
            if self._depth >= MAX_NESTED_RAISES:
                return self._too_deep(name)
            self._depth += 1
            try:
                for watcher in tuple(self._watchers[name]):
                    try:
                        watcher(name, params)
                    except Exception:
                        self._log.failure("a watcher of {event} failed", event=name)
            finally:
                self._depth -= 1
        if not subs:
            self._no_subscribers.value += 1
            return succeed(report)
        if self._depth >= MAX_NESTED_RAISES:
            return self._too_deep(name)
        notification = Notification(name, params, self.clock.seconds())
        # Group by transport, keeping newest-first order within each.
        first = subs[0].transport
        if all(s.transport is first for s in subs):
            groups = ((first, subs),)
        else:
            by_transport = {}
            for s in subs:
                by_transport.setdefault(s.transport, []).append(s)
            groups = by_transport.items()
        pending = []
        self._depth += 1
        try:
            for transport, group in groups:
                try:
                    outcome = transport.deliver(notification, group)
                except Exception as e:
                    # A transport bug must not stop the other transports.
                    self._log.failure("transport {transport} failed to deliver {event}",
                                      transport=transport.name, event=name)
                    for s in group:
                        s.failure(f"internal error: {e}")
                    report.failed += len(group)
                    continue
                if isinstance(outcome, Deferred):
                    pending.append(outcome)
                else:
                    report.add(outcome)
        finally:
            self._depth -= 1
        if not pending:
            if self._report_observers:
                self._observe(report, notification.raised_at)
            return succeed(report)

        # only the time is kept while deliveries settle: holding the
        # notification would keep its parameters alive outside the queues'
        # byte budget
        raised_at = notification.raised_at

        def settled(outcomes):
            for outcome in outcomes:
                report.add(outcome)
            if self._report_observers:
                self._observe(report, raised_at)
            return report
        return gatherResults(pending, consumeErrors=True).addCallback(settled)

    def _too_deep(self, name):
        self._log.error("too many nested raises ({depth}): {event} not sent",
                        depth=self._depth, event=name)
        return fail(NestingError(f"more than {MAX_NESTED_RAISES} nested raises"))

    def check_params(self, params) -> None:
        """
        @raise LimitExceeded: the parameters' names and values take more than
            C{[limits] max_params_bytes} (UTF-8 text, ints as decimal digits).
        """
        limit = self._max_params_bytes
        if not limit:
            return
        # a character is at most 4 bytes: encode only when it could matter
        chars = sum(len(p.name or "") + (len(p.value) if type(p.value) is str else 20)
                    for p in params)
        if chars * 4 <= limit:
            return
        size = sum(len((p.name or "").encode("utf-8", "surrogatepass"))
                   + (len(p.value.encode("utf-8", "surrogatepass")) if type(p.value) is str
                      else len(str(p.value)))
                   for p in params)
        if size > limit:
            raise LimitExceeded(f"the parameters take {size} bytes, more than "
                                f"[limits] max_params_bytes ({limit})")

    def _observe(self, report, raised_at):
        elapsed = self.clock.seconds() - raised_at
        for observer in self._report_observers:
            observer(report, elapsed)
