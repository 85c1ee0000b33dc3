# -*- test-case-name: tests.test_subscriptions -*-
"""
Subscribers and the subscription store with its expiry heap.

Identity (§9 D7): one subscription per (event, destination key), where the
transport builds the key from scheme, host text, port and whatever else names
the destination. Re-subscribing refreshes the entry in place.

Expiry costs O(log n) per expired or refreshed entry: a heap holds at most one
live entry per subscription (a refresh that moves the deadline later does not
push; the old entry is re-queued when it comes due), and stale entries of
removed subscriptions are compacted away once they outnumber the live ones.
"""

import heapq
import math
from itertools import count


class Destination:
    """
    Where a transport delivers: what the transport parsed from a socket string.

    @ivar key: hashable identity used for re-subscribe matching (includes the scheme).
    @ivar text: the listing form, C{scheme:...} (never contains a password).
    @ivar address: transport-specific target (resolved address, path, ...).
    """
    __slots__ = ("key", "text", "address", "options")

    def __init__(self, key, text: str, address=None, options=None):
        self.key = key
        self.text = text
        self.address = address
        self.options = options

    def __repr__(self):
        return f"<Destination {self.text}>"


class Subscription:
    """
    One subscriber of one event, with its delivery counters (§9 D16).

    @ivar expire: seconds, or C{None} for a subscription that never expires.
    @ivar deadline: clock time at which it expires, or C{None}.
    """
    __slots__ = ("event", "destination", "transport", "expire", "subscribed_at", "deadline",
                 "origin", "sent", "failed", "dropped", "last_error", "removed",
                 "_heap_seq", "_heap_deadline")

    def __init__(self, event, destination, transport, origin):
        self.event = event
        self.destination = destination
        self.transport = transport
        self.origin = origin
        self.expire = None
        self.subscribed_at = 0.0
        self.deadline = None
        self.sent = self.failed = self.dropped = 0
        self.last_error = None
        self.removed = False
        self._heap_seq = None
        self._heap_deadline = None

    @property
    def socket(self) -> str:
        return self.destination.text

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

    def failure(self, reason: str) -> None:
        self.failed += 1
        self.last_error = reason

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.last_error = reason

    def __repr__(self):
        return f"<Subscription {self.event.name} {self.socket} expire={self.expire}>"


class SubscriptionStore:
    """
    All subscriptions, per event, with an expiry heap.
    """

    def __init__(self):
        self._heap = []   # (deadline, seq, subscription)
        self._queued = 0  # subscriptions with a live heap entry
        self._seq = count()
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
            sub = Subscription(event, destination, transport, origin)
            event.subscriptions[destination.key] = sub
            self.size += 1
        sub.subscribed_at = now
        if expire is not None:
            sub.expire = expire
        sub.deadline = None if sub.expire is None else now + sub.expire
        if sub.deadline is not None and (
                sub._heap_seq is None or sub.deadline < sub._heap_deadline):
            self._push(sub)
        return sub, created

    def _push(self, sub):
        if sub._heap_seq is None:
            self._queued += 1
        sub._heap_seq = seq = next(self._seq)
        sub._heap_deadline = sub.deadline
        heapq.heappush(self._heap, (sub.deadline, seq, sub))

    def remove(self, sub) -> None:
        if sub.removed:
            return
        sub.removed = True
        del sub.event.subscriptions[sub.destination.key]
        self.size -= 1
        if sub._heap_seq is not None:
            sub._heap_seq = None
            self._queued -= 1
            self._compact_if_stale()

    def _compact_if_stale(self):
        # Stale entries come from removals before the deadline (expire 0,
        # explicit unsubscribe); rebuild when they dominate so memory stays
        # proportional to live subscriptions.
        if len(self._heap) > 2 * self._queued + 1024:
            self._heap = [e for e in self._heap if e[2]._heap_seq == e[1]]
            heapq.heapify(self._heap)

    def expire_due(self, now: float, on_expired=None) -> int:
        """
        Remove every subscription whose deadline has passed.

        @param on_expired: called with each removed subscription; an
            exception from it is the caller's to handle for that entry only.
        @return: the number removed.
        """
        heap = self._heap
        removed = 0
        while heap and heap[0][0] <= now:
            _, seq, sub = heapq.heappop(heap)
            if sub._heap_seq != seq:
                continue  # stale: removed or superseded
            sub._heap_seq = None
            self._queued -= 1
            if sub.deadline is None:
                continue
            if sub.deadline > now:
                self._push(sub)  # refreshed since it was queued
                continue
            self.remove(sub)
            removed += 1
            if on_expired is not None:
                on_expired(sub)
        return removed

    def heap_size(self) -> int:
        return len(self._heap)
