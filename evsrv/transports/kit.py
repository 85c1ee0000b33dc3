# -*- test-case-name: tests.test_kit -*-
"""
The delivery kit: what every transport that holds notifications shares,
written once.

 - L{Settlement}: the results of one C{deliver} call, from each
   notification's settling (delivered, failed or dropped) to the
   subscriber's counters, the transport's C{evi_NAME} counters and the
   L{Outcome} the call returns (at once, or through a Deferred fired when
   the last one settles).
 - L{Entry}: one notification for one subscription while a transport holds
   it (queued, on the wire awaiting a reply, unconfirmed); it settles
   exactly once.
 - L{PendingQueue}, with the L{QueueRules} of its transport: one
   destination's bounded queue. Full: the oldest is dropped. Too old (if
   the transport sets an age limit): failed or dropped, as the transport
   says. The reason texts are the transport's own.
 - L{ByteBudget}: the bytes every transport holds, all destinations
   together, bounded by C{[limits] max_queued_bytes}; what does not fit is
   dropped, with the budget as its reason.
 - L{FailingSpell}: a destination's failures logged once when they start
   (or change kind) and once when it works again, never once per
   notification.
 - L{DrainResult} and L{wait_drained}: what a drain reports, and how a
   transport waits until it holds nothing (used by L{evsrv.shutdown}).
"""

import collections

from twisted.internet.defer import Deferred

from evsrv.evi.notification import Outcome

DRAIN_POLL = 0.05   # seconds between two looks at a transport's queues while draining

# How a notification settles (L{Settlement.settle}).
DELIVERED, FAILED, DROPPED = "delivered", "failed", "dropped"

# [limits] max_queued_bytes when the ini does not say (evsrv.config's default).
DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024


# -- settling ----------------------------------------------------------------

class Settlement:
    """
    The results of one C{deliver} call of one transport: each of its
    C{count} notifications is settled exactly once (delivered, failed or
    dropped), now or later, and counted for its subscriber, in the
    transport's C{counters} (L{evsrv.transports.TransportCounters}) and in
    the L{Outcome}.
    """
    __slots__ = ("outcome", "pending", "deferred", "counters")

    def __init__(self, counters, count: int):
        self.outcome = Outcome()
        self.pending = count
        self.deferred = None
        self.counters = counters

    # (each one's end is written out: they run once per notification)

    def delivered(self, sub):
        self.outcome.sent_to(sub)
        self.counters.sent.value += 1
        self.pending -= 1
        if self.pending == 0 and self.deferred is not None:
            d, self.deferred = self.deferred, None
            d.callback(self.outcome)

    def failed(self, sub, reason: str):
        self.outcome.failed_for(sub, reason)
        self.counters.failed.value += 1
        self.pending -= 1
        if self.pending == 0 and self.deferred is not None:
            d, self.deferred = self.deferred, None
            d.callback(self.outcome)

    def dropped(self, sub, reason: str):
        self.outcome.dropped_for(sub, reason)
        self.counters.dropped.value += 1
        self.pending -= 1
        if self.pending == 0 and self.deferred is not None:
            d, self.deferred = self.deferred, None
            d.callback(self.outcome)

    def settle(self, sub, status: str, reason: str = None):
        """
        Settle by status: L{DELIVERED}, L{FAILED} or L{DROPPED}.
        """
        if status == DELIVERED:
            self.delivered(sub)
        elif status == DROPPED:
            self.dropped(sub, reason)
        else:
            self.failed(sub, reason)

    def result(self):
        """
        @return: the L{Outcome} when everything has settled, else a
            Deferred firing with it when the last notification settles.
        """
        if self.pending == 0:
            return self.outcome
        if self.deferred is None:
            self.deferred = Deferred()
        return self.deferred


class Entry:
    """
    One notification for one subscription while a transport holds it.
    Transports subclass it with what they send (payload, ids, ...).

    It settles once: the first of L{delivered}, L{failed} or L{dropped}
    counts (through its L{Settlement}) and gives its bytes back to the
    budget; later calls do nothing.

    @ivar queued_at: clock time the age limit of a L{PendingQueue} counts
        from.
    @ivar size: bytes charged to the byte budget (0: none).
    @ivar share: the L{BudgetShare} charged, once C{size} is set.

    (A subclass on a hot path may set these five fields itself rather than
    call this C{__init__}.)
    """
    __slots__ = ("sub", "settlement", "queued_at", "size", "share")

    def __init__(self, sub, settlement, queued_at):
        self.sub = sub
        self.settlement = settlement
        self.queued_at = queued_at
        self.size = 0
        self.share = None

    def release(self):
        """
        Give the entry's bytes back to the budget (it no longer holds them).
        """
        size = self.size
        if size:
            self.size = 0
            share = self.share
            share.held -= size
            share.budget.held -= size

    # (release is written out in each: these run once per notification)

    def delivered(self):
        size = self.size
        if size:
            self.size = 0
            share = self.share
            share.held -= size
            share.budget.held -= size
        settlement, self.settlement = self.settlement, None
        if settlement is not None:
            settlement.delivered(self.sub)

    def failed(self, reason: str):
        size = self.size
        if size:
            self.size = 0
            share = self.share
            share.held -= size
            share.budget.held -= size
        settlement, self.settlement = self.settlement, None
        if settlement is not None:
            settlement.failed(self.sub, reason)

    def dropped(self, reason: str):
        size = self.size
        if size:
            self.size = 0
            share = self.share
            share.held -= size
            share.budget.held -= size
        settlement, self.settlement = self.settlement, None
        if settlement is not None:
            settlement.dropped(self.sub, reason)


# -- the byte budget ---------------------------------------------------------

class ByteBudget:
    """
    The bytes of the notifications held by every transport (queued, or sent
    and kept until the peer confirms them), against one limit: C{[limits]
    max_queued_bytes}, 0 for none. One per server, shared through the
    L{evsrv.transports.TransportContext}; each transport takes its
    L{BudgetShare}.

    An entry is charged the size of its payload, even when entries to
    several destinations share one payload object: the count errs on the
    safe side.

    Statistic C{evi:queued_bytes} (a gauge), with C{statistics}.
    """
    __slots__ = ("limit", "held")

    def __init__(self, limit: int = DEFAULT_MAX_QUEUED_BYTES, statistics=None):
        if limit < 0:
            raise ValueError("a byte budget is 0 (no limit) or more")
        self.limit = limit
        self.held = 0
        if statistics is not None:
            statistics.gauge("evi", "queued_bytes", lambda: self.held)

    @property
    def reason(self) -> str:
        """
        Why a notification that does not fit is dropped.
        """
        return f"byte budget of {self.limit} bytes full ([limits] max_queued_bytes)"

    def share(self, statistics=None, name: str = None) -> "BudgetShare":
        """
        A transport's part of the budget; with C{statistics}, its own gauge
        C{evi_NAME:queued_bytes}.
        """
        share = BudgetShare(self)
        if statistics is not None:
            statistics.gauge(f"evi_{name}", "queued_bytes", lambda: share.held)
        return share


class BudgetShare:
    """
    What one transport holds of the L{ByteBudget}.
    """
    __slots__ = ("budget", "held")

    def __init__(self, budget: ByteBudget):
        self.budget = budget
        self.held = 0

    def take(self, size: int) -> bool:
        """
        Charge C{size} bytes. @return: whether they fit (nothing is charged
        when they do not).
        """
        budget = self.budget
        if budget.limit and budget.held + size > budget.limit:
            return False
        budget.held += size
        self.held += size
        return True

    def give(self, size: int):
        self.budget.held -= size
        self.held -= size


# -- per-destination queues --------------------------------------------------

def _no_reason(owner):
    return "expired"


class QueueRules:
    """
    How the queues of one transport's destinations behave.

    @param size: entries a destination's queue holds; one more drops the
        oldest, with C{full_reason(owner)}.
    @param share: the transport's L{BudgetShare}.
    @param clock: what C{queued_at} and C{max_age} are measured with.
    @param max_age: seconds an entry may wait in the queue (0: no limit);
        an older one is settled as C{expired} (L{FAILED} or L{DROPPED}) with
        C{expired_reason(owner)}.
    @param full_reason: C{owner -> text} (the owner is the transport's
        destination object that holds the queue).
    """
    __slots__ = ("size", "share", "clock", "max_age", "expired", "full_reason",
                 "expired_reason")

    def __init__(self, size: int, share: BudgetShare, clock, full_reason, *, max_age=0.0,
                 expired=DROPPED, expired_reason=_no_reason):
        if expired not in (FAILED, DROPPED):
            raise ValueError(f"an expired entry is {FAILED!r} or {DROPPED!r}")
        self.size = size
        self.share = share
        self.clock = clock
        self.max_age = max_age
        self.expired = expired
        self.full_reason = full_reason
        self.expired_reason = expired_reason


class PendingQueue:
    """
    One destination's notifications waiting to be sent, oldest first.

    An entry is charged to the byte budget when the transport takes it
    (L{admit}) and gives its bytes back when it settles, wherever it is by
    then (queued, or on the wire awaiting a reply). Queue operations never
    settle an entry except for the queue's own reasons: full (L{push},
    L{trim}), too old (a timer, and L{pop}), or no room in the budget
    (L{admit}); entries the transport takes out (L{pop}, L{remove},
    L{clear}) are its to settle.

    @param dropped: a statistics counter to add every drop of the queue's
        own to (a per-destination statistic), or C{None}.

    @ivar entries: the queued entries, oldest first (a deque: hot paths
        test it for emptiness directly; change it only through the queue).
    """
    __slots__ = ("rules", "owner", "dropped", "entries", "_timer", "_ordered")

    def __init__(self, rules: QueueRules, owner, dropped=None):
        self.rules = rules
        self.owner = owner
        self.dropped = dropped
        self.entries = collections.deque()
        self._timer = None
        # whether queued_at rises from head to tail, so that the oldest is
        # the head (not so after push_front with a new time)
        self._ordered = True

    def __len__(self):
        return len(self.entries)

    def __bool__(self):
        return bool(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def admit(self, entry: Entry, size: int) -> bool:
        """
        Charge C{entry}'s C{size} bytes to the budget: the transport holds
        it from now until it settles.

        @return: C{False} when they do not fit: the entry is then dropped,
            with the budget's reason.
        """
        share = self.rules.share
        budget = share.budget
        # (BudgetShare.take, written out: this runs once per notification)
        if not budget.limit or budget.held + size <= budget.limit:
            budget.held += size
            share.held += size
            entry.size = size
            entry.share = share
            return True
        self._drop(entry, budget.reason)
        return False

    def push(self, entry: Entry):
        """
        Queue an admitted entry behind the others; when that makes one too
        many, the oldest is dropped.
        """
        entries = self.entries
        entries.append(entry)
        rules = self.rules
        if len(entries) > rules.size:
            self._drop(entries.popleft(), rules.full_reason(self.owner))
        if self._timer is None and rules.max_age:
            self._arm()

    def add(self, entry: Entry, size: int) -> bool:
        """
        L{admit} then L{push}, in one call (the path of every notification
        that waits).

        @return: whether it was queued (else it was dropped: the budget is
            full).
        """
        rules = self.rules
        share = rules.share
        budget = share.budget
        if budget.limit and budget.held + size > budget.limit:
            self._drop(entry, budget.reason)
            return False
        budget.held += size
        share.held += size
        entry.size = size
        entry.share = share
        entries = self.entries
        entries.append(entry)
        if len(entries) > rules.size:
            self._drop(entries.popleft(), rules.full_reason(self.owner))
        if self._timer is None and rules.max_age:
            self._arm()
        return True

    def push_front(self, entries, now=None):
        """
        Put C{entries} (oldest first) back at the head, to be sent first
        (they were sent and must go again). Nothing is dropped: see L{trim}.

        @param now: their wait starts over at this time; C{None}: they keep
            their C{queued_at}.
        """
        if not entries:
            return
        if now is not None:
            for entry in entries:
                entry.queued_at = now
        if self.entries and entries[-1].queued_at > self.entries[0].queued_at:
            self._ordered = False
        self.entries.extendleft(reversed(entries))
        self._cancel()  # the oldest may have changed
        self._arm()

    def trim(self):
        """
        Drop the oldest entries beyond the queue's size.
        """
        entries = self.entries
        over = len(entries) - self.rules.size
        if over > 0:
            reason = self.rules.full_reason(self.owner)
            for _ in range(over):
                self._drop(entries.popleft(), reason)

    def pop(self):
        """
        @return: the oldest entry, to be sent, or C{None} when none is left
            (one older than the age limit is settled on the way).
        """
        entries = self.entries
        max_age = self.rules.max_age
        while entries:
            entry = entries.popleft()
            if max_age and entry.queued_at <= self.rules.clock.seconds() - max_age:
                self._expire_one(entry, self.rules.expired_reason(self.owner))
                continue
            if not entries:
                self._emptied()
            return entry
        self._emptied()
        return None

    def remove(self, predicate) -> list:
        """
        Take out the entries C{predicate} is true of. @return: them, in
        queue order, not settled.
        """
        kept = collections.deque()
        removed = []
        for entry in self.entries:
            (removed if predicate(entry) else kept).append(entry)
        if removed:
            self.entries = kept
            if not kept:
                self._emptied()
        return removed

    def clear(self) -> list:
        """
        Take out every entry. @return: them, not settled.
        """
        entries = list(self.entries)
        self.entries.clear()
        self._emptied()
        return entries

    def close(self):
        """
        Stop the age timer (the queue is being let go).
        """
        self._cancel()

    # -- inside ---------------------------------------------------------------

    def _drop(self, entry, reason):
        if self.dropped is not None:
            self.dropped.value += 1
        entry.dropped(reason)

    def _expire_one(self, entry, reason):
        if self.rules.expired == FAILED:
            entry.failed(reason)
        else:
            self._drop(entry, reason)

    def _emptied(self):
        self._ordered = True
        self._cancel()

    def _cancel(self):
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _arm(self):
        max_age = self.rules.max_age
        entries = self.entries
        if self._timer is not None or not entries or not max_age:
            return
        if self._ordered:
            oldest = entries[0].queued_at
        else:
            oldest = min(entry.queued_at for entry in entries)
        clock = self.rules.clock
        delay = max(0.0, oldest + max_age - clock.seconds())
        self._timer = clock.callLater(delay, self._expire)

    def _expire(self):
        self._timer = None
        rules = self.rules
        limit = rules.clock.seconds() - rules.max_age
        entries = self.entries
        expired = []
        if self._ordered:
            while entries and entries[0].queued_at <= limit:
                expired.append(entries.popleft())
        else:
            kept = collections.deque()
            ordered = True
            last = None
            for entry in entries:
                if entry.queued_at <= limit:
                    expired.append(entry)
                else:
                    if last is not None and entry.queued_at < last:
                        ordered = False
                    last = entry.queued_at
                    kept.append(entry)
            self.entries = kept
            self._ordered = ordered
        if expired:
            reason = rules.expired_reason(self.owner)
            for entry in expired:
                self._expire_one(entry, reason)
        if self.entries:
            self._arm()
        else:
            self._ordered = True


# -- logging a failing destination -----------------------------------------------

class FailingSpell:
    """
    Whether a destination works, so that a failing one is logged once when
    it starts failing (or fails differently: another C{kind}), and once
    when it recovers, never once per notification.

    @param log: the transport's Logger.
    @param what: the destination, logged as the field named C{key}.
    @param failing: the warning's format, with C{{reason}} and the fields.
    @param recovered: the info line's format, with C{{count}} (failures in
        the spell) and the fields.
    @param fields: more fields of every line (C{transport=NAME}, ...).

    @ivar kind: the kind of failure of the spell, C{None} when it works.
    """
    __slots__ = ("log", "fields", "failing_format", "recovered_format", "kind", "failures")

    FAILING = "{socket}: {reason} (logged once until it changes or recovers)"
    RECOVERED = "{socket}: works again after {count} failure(s)"

    def __init__(self, log, what, *, key="socket", failing=FAILING, recovered=RECOVERED,
                 **fields):
        self.log = log
        self.fields = dict(fields, **{key: what})
        self.failing_format = failing
        self.recovered_format = recovered
        self.kind = None
        self.failures = 0

    @property
    def failing(self) -> bool:
        return self.kind is not None

    def failure(self, kind, reason, fmt=None, **fields) -> bool:
        """
        One more failure, of C{kind}. @return: whether it was logged (the
        spell started, or its kind changed).

        @param fmt: this line's format instead of the spell's one.
        """
        self.failures += 1
        if kind == self.kind:
            return False
        self.kind = kind
        self.log.warn(fmt or self.failing_format, reason=reason, **{**self.fields, **fields})
        return True

    def success(self, **fields) -> bool:
        """
        It works. @return: whether that ended a spell (and was logged).
        """
        if self.kind is None:
            return False
        self.log.info(self.recovered_format, count=self.failures, **{**self.fields, **fields})
        self.kind = None
        self.failures = 0
        return True


# -- draining ----------------------------------------------------------------

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
