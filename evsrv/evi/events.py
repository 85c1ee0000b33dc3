# -*- test-case-name: tests.test_evi -*-
"""
The events table: names with dense numeric ids in publication order (spec §1.1).
"""

from twisted.logger import Logger
from evsrv.util.wire import to_bytes

MAX_EVENT_NAME = 64


class Event:
    """
    A published event and its subscribers.

    C{subscriptions} maps a destination key to its L{Subscription}, oldest
    first, so delivery walks it backwards (newest subscriber first, §9 D9).
    """
    __slots__ = ("name", "id", "subscriptions", "raised")

    def __init__(self, name: str, event_id: int):
        self.name = name
        self.id = event_id
        self.subscriptions = {}
        self.raised = 0

    def __repr__(self):
        return f"<Event {self.name} id={self.id} subscribers={len(self.subscriptions)}>"


class EventTable:
    _log = Logger()

    def __init__(self):
        self._by_name = {}
        self._by_id = []

    def publish(self, name: str) -> Event:
        """
        Publish C{name}, or return the existing event of that name.

        @raise ValueError: empty name or longer than 64 bytes.
        """
        event = self._by_name.get(name)
        if event is not None:
            return event
        if not isinstance(name, str) or not name:
            raise ValueError("an event name must be a non-empty string")
        if len(to_bytes(name)) > MAX_EVENT_NAME:
            raise ValueError(f"event name longer than {MAX_EVENT_NAME} bytes: {name[:80]!r}")
        event = Event(name, len(self._by_id))
        self._by_name[name] = event
        self._by_id.append(event)
        return event

    def get(self, name: str) -> Event | None:
        return self._by_name.get(name)

    def __iter__(self):
        return iter(self._by_id)

    def __len__(self):
        return len(self._by_id)
