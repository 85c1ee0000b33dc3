# -*- test-case-name: tests.test_virtual_transport -*-
"""
The C{virtual:} transport (OpenSIPS event_virtual, spec §4.6):
C{virtual:POLICY SOCKET1 SOCKET2 ...} delivers each raise through other
transports, the members, according to POLICY:

 - C{PARALLEL}: to every member. Unlike OpenSIPS, a failing member does not
   stop the ones after it; the virtual delivery fails if any member failed.
 - C{FAILOVER}: to the first member that takes it, in the order written.
 - C{ROUND-ROBIN}: to one member per raise, cycling.

Member results are the real delivery results of their transports, whether
they come at once (an L{Outcome}: a missing UNIX path fails here and now)
or later (a Deferred: reliable TCP replies, XML-RPC faults and timeouts,
AMQP confirms). A member has failed for this raise when its outcome is not
one delivered notification; the raise then goes to the next member, so a
slow member delays only the virtual subscriptions it belongs to, by as long
as its own transport's timeout, and never another subscriber.

Failing fast (FAILOVER and ROUND-ROBIN): a member that has another member
after it in this raise's order is asked not to wait for a destination that
is down, through C{deliver(..., fail_fast=True)} on transports that
provide L{evsrv.interfaces.IFailFast} (tcp/jsonrpc): a refused connection fails it
at once and the raise moves on, as OpenSIPS does, rather than after the
member's C{queue_timeout}. The last member to try (nowhere else to go), and
every PARALLEL member, are delivered as plain subscribers are, waiting and
retrying. Transports without the flag report their failures as they come
(a refused XML-RPC call, a missing UNIX path: at once).

Skipping (FAILOVER and ROUND-ROBIN): a member that failed is skipped for
C{failover_timeout} seconds (ini; 0 never skips), then tried again; one
that works again is used again at once. Skipped members are not forgotten:
when every member that is not skipped has failed, the skipped ones are
tried last (in the written order), so a raise is lost only when all members
fail. A member whose transport reports a failure that belongs to an
earlier notification (a UDP port unreachable, learnt on the next send)
counts as delivered for this raise but is skipped from then on.

ROUND-ROBIN cursor (OS#1510): the cursor names the member for the next
raise and moves on when a raise is dispatched, not when it is settled, so
raises still in flight do not all go to the same member. A raise takes the
first member not skipped from the cursor on, and the cursor moves to the
member after it; if that member fails, the same raise goes on to the
following members (the cursor does not move again), so a failing member
never swallows its share, and while it is skipped the other members share
its turns evenly.

Members are parsed when subscribing, with the event interface's own
parser: a bad member makes the subscription fail with the reason (OpenSIPS
parses them at the first raise and only then finds out). Member sockets
are written in their listing form (C{/path} becomes C{unix:/path}).
Deliveries to members use subscriptions of their own, outside the store:
each member transport counts them in its own statistics; the virtual
subscription's counters (C{subscribers_stats}, C{evi_virtual:}) count the
virtual outcome.
"""

import re

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from zope.interface import implementer

from evsrv.evi.subscriptions import Destination, Subscription
from evsrv.interfaces import (BadSocket, DestinationRefused, ICounted, IDrainable,
                              IEventTransport, IFailFast, IListing, IPeerHosts)
from evsrv.util.coercers import seconds
from evsrv.transports import LateBinding, TransportCounters
from evsrv.transports.factories import TransportFactory
from evsrv.transports.kit import DELIVERED, DROPPED, FAILED, DrainResult, FailingSpell, Settlement

PARALLEL, FAILOVER, ROUND_ROBIN = "PARALLEL", "FAILOVER", "ROUND-ROBIN"
POLICIES = (PARALLEL, FAILOVER, ROUND_ROBIN)
_BLANKS = re.compile(r"[ \t]+")
# What a member's failing spell logs (FailingSpell: once when it is first
# skipped, once when it delivers again).
MEMBER_FAILING = "{socket}: member {member} failed ({reason}); skipped for {seconds} s"
MEMBER_RECOVERED = "{socket}: member {member} delivers again"


class VirtualKey:
    """
    Re-subscribe identity of a virtual socket (§9 D7): the policy and the
    member sockets in their listing form, in order for FAILOVER and
    ROUND-ROBIN, in any order for PARALLEL (as OpenSIPS). C{text} is the
    listing text, as first subscribed: a PARALLEL re-subscribe with the
    members in another order refreshes it and keeps its listing.
    """
    __slots__ = ("text", "_identity", "_hash")

    def __init__(self, policy, members):
        self.text = "virtual:" + " ".join((policy, *members))
        self._identity = (policy, tuple(sorted(members)) if policy == PARALLEL
                          else tuple(members))
        self._hash = hash(self._identity)

    def __eq__(self, other):
        return type(other) is VirtualKey and other._identity == self._identity

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"<VirtualKey {self.text!r}>"


class Member:
    """
    One member socket of one virtual subscription.

    @ivar down_until: clock time before which it is skipped (0: not skipped).
    @ivar spell: its L{FailingSpell} once it has failed.
    """
    __slots__ = ("text", "transport", "destination", "subscription", "down_until", "spell")

    def __init__(self, text, transport, destination):
        self.text = text
        self.transport = transport
        self.destination = destination
        self.subscription = None
        self.down_until = 0.0
        self.spell = None

    def subscription_for(self, event):
        sub = self.subscription
        if sub is None:
            sub = self.subscription = Subscription(event, self.transport, self.destination,
                                                   "virtual")
        return sub


class Group:
    """
    The address of a virtual subscription: its members and the policy's
    state (the round-robin cursor), kept across refreshes.
    """
    __slots__ = ("policy", "members", "cursor")

    def __init__(self, policy, members):
        self.policy = policy
        self.members = members
        self.cursor = 0


@implementer(IEventTransport, IListing, IPeerHosts, IDrainable, ICounted)
class VirtualTransport:
    _log = Logger()
    schemes = ("virtual",)

    def __init__(self, name, statistics, clock, failover_timeout=30.0, events=None):
        """
        @param events: a L{LateBinding} of the event interface (made after
            every transport; the server binds it), through which members'
            sockets are parsed.
        """
        self.name = name
        self.clock = clock
        self.failover_timeout = failover_timeout
        self.events = LateBinding("the event interface") if events is None else events
        self.counters = TransportCounters(statistics, name)
        self.failovers = statistics.counter(f"evi_{name}", "failovers")

    @property
    def evi(self):
        # The event interface is made after every transport: read it late.
        return self.events.get()

    # -- subscribing --------------------------------------------------------

    def parse(self, scheme, rest):
        words = [w for w in _BLANKS.split(rest) if w]
        if not words or words[0] not in POLICIES:
            raise BadSocket(f"expected virtual:POLICY SOCKET..., POLICY one of "
                            f"{', '.join(POLICIES)}, got {('virtual:' + rest)[:120]!r}")
        policy, texts = words[0], words[1:]
        if not texts:
            raise BadSocket(f"virtual:{policy} needs at least one member socket")
        for text in texts:
            if text.startswith("virtual:"):
                raise BadSocket(f"a virtual member cannot be virtual: {text[:120]!r}")
        evi = self.evi
        if evi is None:
            raise BadSocket("virtual: the event interface is not ready")
        return DeferredList([evi.parse_socket(t) for t in texts],
                            consumeErrors=True).addCallback(self._parsed, policy, texts)

    def _parsed(self, results, policy, texts):
        members = []
        for index, (ok, result) in enumerate(results):
            if not ok:
                # a member the [policy] refused refuses the whole group (MI 403)
                error = DestinationRefused if result.check(DestinationRefused) else BadSocket
                raise error(f"virtual member {index + 1} {texts[index][:120]!r}: "
                            f"{result.getErrorMessage()}")
            transport, destination = result
            if transport is self:
                raise BadSocket(f"a virtual member cannot be virtual: {texts[index][:120]!r}")
            key = destination.key
            shown = key if type(key) is str else transport.describe(key)
            members.append(Member(shown, transport, destination))
        key = VirtualKey(policy, [m.text for m in members])
        return Destination(key, Group(policy, members))

    @staticmethod
    def describe(key) -> str:
        return key.text

    @staticmethod
    def peer_hosts(destination):
        # the members were checked by the [policy] when they were parsed
        return ()

    # -- delivering ---------------------------------------------------------

    def deliver(self, notification, subscriptions):
        settlement = Settlement(self.counters, len(subscriptions))
        for sub in subscriptions:
            group = sub.address
            if group.policy == PARALLEL:
                result = self._parallel(group, notification, sub)
            else:
                result = self._in_order(group, self._order(group), notification, sub)
            if isinstance(result, Deferred):
                result.addCallback(_settle, settlement, sub).addErrback(
                    self._bug, settlement, sub)
            else:
                settlement.settle(sub, *result)
        return settlement.result()

    def _bug(self, failure, settlement, sub):
        # (the policy code never fails a result: this is a bug of ours, and
        # the subscriber's notification must still settle)
        self._log.failure("{socket}: virtual delivery failed", failure, socket=sub.socket,
                          transport=self.name, event=sub.event.name)
        settlement.failed(sub, f"internal error: {failure.getErrorMessage()}")

    def _order(self, group):
        """
        The members to try for one raise: those not skipped first, then
        the skipped ones as a last resort; for ROUND-ROBIN starting at the
        cursor, which moves past the member chosen.
        """
        now = self.clock.seconds()
        members = group.members
        if group.policy == ROUND_ROBIN:
            start = group.cursor % len(members)
            members = members[start:] + members[:start]
        live = [m for m in members if m.down_until <= now]
        skipped = [m for m in members if m.down_until > now]
        order = live + skipped
        if group.policy == ROUND_ROBIN:
            group.cursor = (group.members.index(order[0]) + 1) % len(group.members)
        return order

    def _in_order(self, group, order, notification, sub, index=0, reasons=None):
        """
        Try C{order[index:]} one after the other until one takes the
        notification. @return: C{(status, reason)} or a Deferred of it.
        """
        reasons = [] if reasons is None else reasons
        while index < len(order):
            member = order[index]
            # only a member with a next one to fall back on may fail fast
            result = self._attempt(member, notification, sub,
                                   fail_fast=index + 1 < len(order))
            if isinstance(result, Deferred):
                return result.addCallback(self._next, group, order, notification, sub,
                                          index, reasons)
            done = self._judge(result, group, member, sub, reasons)
            if done is not None:
                return done
            index += 1
            if index < len(order):
                self.failovers.value += 1
        return self._all_failed(reasons)

    def _next(self, result, group, order, notification, sub, index, reasons):
        done = self._judge(result, group, order[index], sub, reasons)
        if done is not None:
            return done
        if index + 1 < len(order):
            self.failovers.value += 1
        return self._in_order(group, order, notification, sub, index + 1, reasons)

    def _judge(self, result, group, member, sub, reasons):
        status, reason, late_failure = result
        if status == DELIVERED:
            if late_failure:
                self._mark_down(group, member, sub, reason)
            elif member.down_until:
                member.down_until = 0.0
                if member.spell is not None:
                    member.spell.success()
            return DELIVERED, None
        reasons.append((status, f"{member.text}: {reason}"))
        self._mark_down(group, member, sub, reason)
        return None

    def _mark_down(self, group, member, sub, reason):
        if not self.failover_timeout:
            return
        if member.spell is None:
            member.spell = FailingSpell(self._log, sub.socket, failing=MEMBER_FAILING,
                                        recovered=MEMBER_RECOVERED, member=member.text,
                                        transport=self.name, event=sub.event.name)
        # logged once per failing spell, not once per raise
        member.spell.failure("failed", reason, seconds=self.failover_timeout)
        member.down_until = self.clock.seconds() + self.failover_timeout

    @staticmethod
    def _all_failed(reasons):
        status = DROPPED if reasons and all(s == DROPPED for s, _ in reasons) else FAILED
        return status, "; ".join(r for _, r in reasons)[:500] or "no member"

    def _parallel(self, group, notification, sub):
        results = [self._attempt(m, notification, sub) for m in group.members]
        if not any(isinstance(r, Deferred) for r in results):
            return self._combine(group, results)
        return DeferredList(
            [r if isinstance(r, Deferred) else succeed(r) for r in results],
            consumeErrors=True,
        ).addCallback(lambda settled: self._combine(group, [r for _, r in settled]))

    def _combine(self, group, results):
        reasons = [(status, f"{member.text}: {reason}")
                   for member, (status, reason, _) in zip(group.members, results)
                   if status != DELIVERED]
        if not reasons:
            return DELIVERED, None
        if any(s == FAILED for s, _ in reasons):
            return FAILED, "; ".join(r for _, r in reasons)[:500]
        return DROPPED, "; ".join(r for _, r in reasons)[:500]

    def _attempt(self, member, notification, sub, fail_fast=False):
        """
        Deliver through one member. @return: C{(status, reason,
        late_failure)} or a Deferred of it (never failing).

        @param fail_fast: ask the member's transport, if it supports it, to
            fail rather than wait for a destination that is down.
        """
        msub = member.subscription_for(sub.event)
        failed_before = msub.failed
        transport = member.transport
        try:
            if fail_fast and IFailFast.providedBy(transport):
                result = transport.deliver(notification, [msub], fail_fast=True)
            else:
                result = transport.deliver(notification, [msub])
        except Exception as e:
            # a member transport's bug: this member failed, the others go on
            self._log.failure("{socket}: member {member} raised",
                              socket=sub.socket, member=member.text, transport=self.name,
                              event=sub.event.name)
            return FAILED, f"internal error: {e}", False
        if isinstance(result, Deferred):
            return result.addCallbacks(
                _verdict, lambda f: (FAILED, f.getErrorMessage() or repr(f.value), False),
                callbackArgs=(msub, failed_before))
        return _verdict(result, msub, failed_before)

    # -- stopping -----------------------------------------------------------

    def drain(self, deadline):
        """
        Shutdown: nothing waits here. A virtual raise in progress waits in
        its members' transports, which drain it (and count it) themselves;
        a FAILOVER raise whose member fails while draining goes on to the
        next member, also drained. The result only marks the virtual
        counters as counted elsewhere.
        """
        return DrainResult(through_members=True)


def _verdict(outcome, msub, failed_before):
    late_failure = msub.failed > failed_before
    if outcome.delivered >= 1 and not outcome.failed and not outcome.dropped:
        return DELIVERED, msub.last_error if late_failure else None, late_failure
    reason = outcome.errors[0][1] if outcome.errors else (msub.last_error or "not delivered")
    if outcome.dropped and not outcome.failed:
        return DROPPED, reason, False
    return FAILED, reason, False


def _settle(result, settlement, sub):
    settlement.settle(sub, *result)


def _build(settings, context):
    return VirtualTransport("virtual", context.statistics, context.reactor,
                            settings["failover_timeout"], events=context.event_interface)


virtualTransport = TransportFactory(
    "virtual", ("virtual",),
    {"failover_timeout": ("30", seconds,
                          "seconds a failed FAILOVER/ROUND-ROBIN member is skipped (0: never)")},
    _build, "PARALLEL, FAILOVER and ROUND-ROBIN groups of other sockets (event_virtual)")
