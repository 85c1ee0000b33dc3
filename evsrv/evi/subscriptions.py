# -*- test-case-name: tests.test_subscriptions -*-
"""
Subscribers and the subscription store with its expiry wheel.

Identity (§9 D7): one subscription per (event, destination key), where the
transport builds the key from scheme, host text, port and whatever else names
the destination. Re-subscribing refreshes the entry in place.

Expiry costs O(log n) per expired or refreshed entry (see
L{SubscriptionStore}); a sweep never scans all subscriptions.
"""

import heapq
import math


class Destination:
    """
    Where a transport delivers: what it parsed from a socket string.

    @ivar key: hashable identity for re-subscribe matching (§9 D7), unique
        across transports: normally the listing text C{scheme:...} itself
        (never containing a password). A transport may use another value
        (the udp transport uses C{(host text, port)}, which is also its send
        address, to keep 100k subscriptions small); it must then have a
        C{describe(key)} method giving the listing text, and the value must
        not be a string.
    @ivar address: transport-specific target (resolved address, path, ...).
    """
    __slots__ = ("key", "address")

    def __init__(self, key, address=None):
        self.key = key
        self.address = address

    def __repr__(self):
        return f"<Destination {self.key!r}>"


class DeliveryFailures:
    """
    Failure counters of one subscription, allocated at its first failure.
    """
    __slots__ = ("failed", "dropped", "last_error")

    def __init__(self):
        self.failed = 0
        self.dropped = 0
        self.last_error = None


class Subscription:
    """
    One subscriber of one event, with its delivery counters (§9 D16).

    Kept small (about 100 bytes plus its key and address): there may be
    hundreds of thousands.

    @ivar expire: seconds, or C{None} for a subscription that never expires.
    @ivar deadline: clock time at which it expires, or C{None}.
    @ivar origin: C{"mi"}, C{"script"}, C{"internal"}...
    """
    __slots__ = ("event", "transport", "key", "address", "expire", "deadline", "origin",
                 "sent", "_failures", "_queued")

    def __init__(self, event, transport, destination, origin):
        self.event = event
        self.transport = transport
        self.key = destination.key
        self.address = destination.address
        self.origin = origin
        self.expire = None
        self.deadline = None
        self.sent = 0
        self._failures = None
        self._queued = None

    @property
    def socket(self) -> str:
        """
        The listing text, C{scheme:...}.
        """
        key = self.key
        return key if type(key) is str else self.transport.describe(key)

    @property
    def failed(self) -> int:
        return self._failures.failed if self._failures else 0

    @property
    def dropped(self) -> int:
        return self._failures.dropped if self._failures else 0

    @property
    def last_error(self):
        return self._failures.last_error if self._failures else None

    def ttl(self, now: float):
        """
        Whole seconds left, or C{None} if it never expires. Zero or less
        means expired (listed as C{"expired"}).
        """
        if self.deadline is None:
            return None
        return math.ceil(self.deadline - now - 1e-9)

    def is_expired(self, now: float) -> bool:
        return self.deadline is not None and self.deadline <= now

    def failure(self, reason: str, count: int = 1) -> None:
        failures = self._failures or self._new_failures()
        failures.failed += count
        failures.last_error = reason

    def drop(self, reason: str) -> None:
        failures = self._failures or self._new_failures()
        failures.dropped += 1
        failures.last_error = reason

    def _new_failures(self):
        self._failures = DeliveryFailures()
        return self._failures

    def __repr__(self):
        return f"<Subscription {self.event.name} {self.socket} expire={self.expire}>"


class SubscriptionStore:
    """
    All subscriptions, per event, with a timing wheel of one-second buckets.

    Bucket C{b} holds the subscriptions whose deadline is in C{(b-1, b]};
    a small heap of bucket numbers finds the due ones. A subscription has at
    most one live entry (its C{_queued} is that bucket's number object):
    a refresh that moves the deadline later leaves the entry, which is
    re-queued when it comes due; one that moves it earlier queues a new
    entry and the old one goes stale. Stale entries are compacted away once
    they outnumber the live ones, so memory stays proportional to live
    subscriptions and every operation is O(log n) at worst.
    """

    def __init__(self):
        self._buckets = {}  # bucket number -> [number, subscription, ...]
        self._due = []      # heap of bucket numbers
        self._queued = 0
        self._stale = 0
        self.size = 0

    def find(self, event, key) -> Subscription | None:
        return event.subscriptions.get(key)

    def subscribe(self, event, destination, transport, expire, now, origin):
        """
        Add or refresh a subscription.

        @param expire: seconds, or C{None} (never expires; on a refresh the
            stored expire is kept, as OpenSIPS does for a script re-subscribe).
        @return: C{(subscription, created)}.
        """
        sub = event.subscriptions.get(destination.key)
        created = sub is None
        if created:
            sub = Subscription(event, transport, destination, origin)
            event.subscriptions[destination.key] = sub
            self.size += 1
        if expire is not None:
            sub.expire = expire
        sub.deadline = None if sub.expire is None else now + sub.expire
        if sub.deadline is not None and (sub._queued is None or sub.deadline <= sub._queued - 1):
            self._queue(sub)
        return sub, created

    def _queue(self, sub):
        number = math.ceil(sub.deadline)
        bucket = self._buckets.get(number)
        if bucket is None:
            bucket = self._buckets[number] = [number]
            heapq.heappush(self._due, number)
        if sub._queued is None:
            self._queued += 1
        else:
            self._stale += 1
        sub._queued = bucket[0]  # the bucket's own int: shared, not one per entry
        bucket.append(sub)

    def remove(self, sub) -> None:
        subscriptions = sub.event.subscriptions
        if subscriptions.get(sub.key) is not sub:
            return
        del subscriptions[sub.key]
        self.size -= 1
        if sub._queued is not None:
            sub._queued = None
            self._queued -= 1
            self._stale += 1
            if self._stale > self._queued + 1024:
                self._compact()

    def _compact(self):
        live = [sub for bucket in self._buckets.values() for sub in bucket[1:]
                if sub._queued is bucket[0]]
        self._buckets = {}
        self._due = []
        self._queued = self._stale = 0
        for sub in live:
            sub._queued = None
            self._queue(sub)

    def expire_due(self, now: float, on_expired=None, limit=None) -> int:
        """
        Remove subscriptions whose deadline has passed.

        @param on_expired: called with each removed subscription.
        @param limit: stop after this many removals (the rest wait for the
            next call), so one call never stalls the reactor for long.
        @return: the number removed.
        """
        removed = 0
        due = self._due
        while due and due[0] <= now:
            if limit is not None and removed >= limit:
                break
            number = due[0]
            bucket = self._buckets[number]
            tag = bucket[0]
            index = 1
            while index < len(bucket):
                if limit is not None and removed >= limit:
                    break
                sub = bucket[index]
                index += 1
                if sub._queued is not tag:
                    self._stale -= 1
                    continue  # removed or queued elsewhere since
                sub._queued = None
                self._queued -= 1
                if sub.deadline is None:
                    continue
                if sub.deadline > now:
                    self._queue(sub)  # refreshed to a later bucket
                    continue
                self.remove(sub)
                removed += 1
                if on_expired is not None:
                    on_expired(sub)
            if index < len(bucket):
                del bucket[1:index]  # resume here next time
                break
            heapq.heappop(due)
            del self._buckets[number]
        return removed

    def queue_size(self) -> int:
        """
        Entries in the expiry wheel, live and stale.
        """
        return sum(len(b) - 1 for b in self._buckets.values())
