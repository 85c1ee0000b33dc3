# -*- test-case-name: tests.test_evi -*-
"""
One raise on its way to the transports, and the report of how it went.
"""

from evsrv import encoding

# Payload formats, each encoded at most once per raise whatever the number of
# subscribers that use it.
FORMATS = {
    "json": lambda n: encoding.json_notification(n.event, n.params),
    "text": lambda n: encoding.text_notification(n.event, n.params, terminator=True),
    "text-bare": lambda n: encoding.text_notification(n.event, n.params, terminator=False),
    "jsonrpc24": lambda n: encoding.jsonrpc24_notification(n.event, n.params),
}


class Notification:
    """
    An event raised with its parameters; C{payload(fmt)} caches the bytes of
    each format.
    """
    __slots__ = ("event", "params", "raised_at", "_payloads")

    def __init__(self, event: str, params: tuple, raised_at: float):
        self.event = event
        self.params = params
        self.raised_at = raised_at
        self._payloads = {}

    def payload(self, fmt: str = "json") -> bytes:
        try:
            return self._payloads[fmt]
        except KeyError:
            data = self._payloads[fmt] = FORMATS[fmt](self)
            return data


class Outcome:
    """
    What a transport did with one raise: counts, and the failures with reasons.
    """
    __slots__ = ("delivered", "failed", "dropped", "errors")

    def __init__(self, delivered=0, failed=0, dropped=0, errors=None):
        self.delivered = delivered
        self.failed = failed
        self.dropped = dropped
        self.errors = errors if errors is not None else []

    def sent_to(self, sub) -> None:
        """
        Count one notification delivered to C{sub}.
        """
        sub.sent += 1
        self.delivered += 1

    def failed_for(self, sub, reason: str) -> None:
        """
        Count one notification to C{sub} as failed, with the reason.
        """
        sub.failure(reason)
        self.failed += 1
        self.errors.append((sub.socket, reason))

    def dropped_for(self, sub, reason: str) -> None:
        """
        Count one notification to C{sub} as dropped (it could not wait), with the reason.
        """
        sub.drop(reason)
        self.dropped += 1
        self.errors.append((sub.socket, reason))

    def add(self, other: "Outcome") -> None:
        self.delivered += other.delivered
        self.failed += other.failed
        self.dropped += other.dropped
        self.errors.extend(other.errors)

    def __repr__(self):
        return (f"<Outcome delivered={self.delivered} failed={self.failed} "
                f"dropped={self.dropped}>")


class DeliveryReport(Outcome):
    """
    The result of L{EventInterface.raise_event}: totals over every subscriber,
    C{errors} as C{(socket, reason)} pairs.
    """
    __slots__ = ("event", "subscribers")

    def __init__(self, event: str, subscribers: int):
        super().__init__()
        self.event = event
        self.subscribers = subscribers

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.dropped == 0

    def __repr__(self):
        return (f"<DeliveryReport {self.event} subscribers={self.subscribers} "
                f"delivered={self.delivered} failed={self.failed} dropped={self.dropped}>")
