# -*- test-case-name: tests.test_ingest -*-
"""
What happens to one notification an OpenSIPS proxy sent to an ingest
listener (spec §4.0, §4.1, §4.4): the listeners (L{evsrv.ingest.listeners})
only cut the bytes and say where they came from; everything else is here.

A notification is taken when it is a JSON object with a C{method} naming an
event (letters, digits and C{_}, at most 64 bytes), optional
C{"jsonrpc":"2.0"}, and C{params} absent, an object (named parameters, in
order, duplicates kept) or an array (unnamed). It is raised in evsrv with
those parameters: JSON integers stay ints, strings stay strings; any other
value (a float, C{true}, C{null}, an object) becomes a string parameter
holding its compact JSON text, as the MI's C{raise_event} does (§9 D18).
An object whose keys are all C{""} is OpenSIPS 3.6's garbled array (§9
D17): it is taken as the unnamed parameters it was meant to be.

Which events (C{[ingest] events}, shell globs): an event taken for the
first time is published, so local clients can subscribe to it; at most
C{max_events} events are published this way (a peer sending random names
cannot grow the event table without bound); anything else is refused and
counted. Bad input (not JSON, not an object, no method, bad params, over
C{max_size}, a stream that is not JSON objects) is counted and logged at
most once per 10 s per kind, never raised. A flood (over C{max_rate}
notifications per second from one source address) is dropped on datagram
listeners and slowed down on TCP (the connection stops being read until
the rate allows more: TCP's own flow control pushes back on the sender).

Reliable mode (event_stream C{reliable_mode}, requests with an C{id}): the
reply is made here, once the raise has been handed to evsrv's transports
(the transports then deliver on their own: a slow subscriber cannot hold
the proxy's acknowledgements back). C{"result":"OK"} when the event was
raised (or recognised as an echo, below); an error reply when it was
refused, so the sender counts a failure instead of re-sending it forever.

Loops (C{[ingest] loop_window}): OpenSIPS passes parameters through
untouched, so evsrv cannot mark an event it forwards (a hop parameter would
change the event every consumer sees, and an envelope member would change
the wire bytes). The rule is by content: an event whose name and
parameters are exactly those of one the ingest raised less than
C{loop_window} seconds ago is an echo of evsrv's own output coming back
(through evsrv's own ingest address subscribed to evsrv, another evsrv that
subscribed here and is an upstream of ours, or any relay): it is not raised
again, counted in C{ingest:echoes}. A cycle is thus broken at its first
turn, whatever its path. The price: two identical notifications within the
window are one event (two proxies of a pair reporting the same gateway
down, for instance, are reported once); C{loop_window = 0} turns the rule
off where evsrv's output can never come back.
"""

import fnmatch
import re
from collections import deque

from twisted.logger import Logger

from evsrv import encoding
from evsrv.evi.events import MAX_EVENT_NAME
from evsrv.evi.params import INT64_MAX, INT64_MIN, Param
from evsrv.interfaces import LimitExceeded
from evsrv.mi import jsonrpc
from evsrv.util.ratelimit import RateLimitedLog
from evsrv.util.wire import from_bytes

MAX_BUCKETS = 4096     # source addresses with a rate bucket of their own
MAX_FINGERPRINTS = 100000  # recent raises the loop rule remembers at most


class Rejected(Exception):
    """
    A notification that is not raised; C{code} and C{message} make the
    error reply of reliable mode, C{kind} the statistic it is counted in.
    """

    def __init__(self, kind, code, message, detail):
        super().__init__(detail)
        self.kind = kind
        self.code = code
        self.message = message
        self.detail = detail


def _bad(code, message, detail):
    return Rejected("bad_input", code, message, detail)


def _value(value):
    if type(value) is int:
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if type(value) is str:
        return value
    return jsonrpc.compact(value)


def ingest_params(params) -> tuple:
    """
    The event parameters of a notification's C{params} member (decoded by
    L{evsrv.mi.jsonrpc.loads}), see the module docstring.

    @raise ValueError: C{params} is neither an object nor an array.
    """
    if params is None:
        return ()
    if isinstance(params, jsonrpc.JSONObject):
        if params and all(key == "" for key, _ in params):
            return tuple(Param(None, _value(v)) for _, v in params)
        return tuple(Param(key, _value(v)) for key, v in params)
    if isinstance(params, list):
        return tuple(Param(None, _value(v)) for v in params)
    raise ValueError(f"params is a {type(params).__name__}, not an object or an array")


def _good_name(name) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= MAX_EVENT_NAME and name.isascii()
            and name.replace("_", "a").isalnum())


class IngestController:
    """
    The ingest's logic, shared by every listener.

    @param evi: the L{evsrv.evi.EventInterface} events are raised in.
    @param clock: C{IReactorTime} (rate buckets, the loop window, log limits).
    @param events: shell globs of the events taken.
    @param allow: L{evsrv.util.netlist.NetworkList} of the sources served
        (UDP and TCP; UNIX senders are let in by the socket file's mode).
    @param max_size: bytes of one notification.
    @param max_rate: notifications per second from one source (0: no limit).
    @param max_events: events the ingest may publish.
    @param loop_window: seconds of the loop rule (0: off).
    """
    _log = Logger()

    def __init__(self, evi, clock, statistics, *, events=("*",), allow=None,
                 max_size=65536, max_rate=0, max_events=1000, loop_window=2.0):
        self.evi = evi
        self.clock = clock
        self.allow = allow
        self.max_size = max_size
        self.max_rate = max_rate
        self.max_events = max_events
        self.loop_window = loop_window
        self.patterns = tuple(events)
        self._taken = re.compile("|".join(fnmatch.translate(p) for p in self.patterns)
                                 or r"(?!)")
        self.published = []  # events the ingest published, in order
        self.connections = set()  # open TCP connections (the listeners keep it)
        self._buckets = {}  # source host -> [tokens, last refill time]
        self._recent = {}   # fingerprint -> time raised (the loop rule)
        self._recent_order = deque()  # (time, fingerprint), oldest first
        count = statistics.counter
        self.received = count("ingest", "received")
        self.refused = count("ingest", "refused")
        self.bad_input = count("ingest", "bad_input")
        self.flooded = count("ingest", "flooded")
        self.throttled = count("ingest", "throttled")
        self.denied = count("ingest", "denied")
        self.echoes = count("ingest", "echoes")
        self.replies = count("ingest", "replies")
        self.connections_refused = count("ingest", "connections_refused")
        statistics.gauge("ingest", "events", lambda: len(self.published))
        statistics.gauge("ingest", "connections", lambda: len(self.connections))
        # one limiter per kind, so that a flood of one cannot hide the others
        self._warn = {kind: RateLimitedLog(self._log, clock)
                      for kind in ("bad_input", "refused", "flooded", "denied", "echoes",
                                   "connections")}

    # -- who may send, and how fast ------------------------------------------

    def allowed(self, host: str, label: str) -> bool:
        """
        Whether C{host} (an IP address) may send to the listener C{label};
        a refusal is counted and logged (at most once per 10 s).
        """
        if self.allow is None or host in self.allow:
            return True
        self.denied.value += 1
        self._warn["denied"].warn("ingest {label}: notifications from {source} refused: not "
                                  "in [ingest] allow ({allow})", label=label, source=host,
                                  allow=str(self.allow))
        return False

    def wait(self, host: str) -> float:
        """
        Take one notification's worth of C{host}'s rate.

        @return: C{0.0} when it may go on now; else the seconds until it may
            (nothing taken).
        """
        rate = self.max_rate
        if not rate:
            return 0.0
        now = self.clock.seconds()
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            # a table full of live sources (a spoofed flood): new ones share
            # one bucket, so the table stays bounded and they are still capped
            key = host if len(self._buckets) < MAX_BUCKETS else "*"
            bucket = self._buckets.setdefault(key, [float(rate), now])
        tokens = min(float(rate), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / rate

    def _prune(self, now):
        rate = self.max_rate
        full = [host for host, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * rate >= rate]
        for host in full:
            del self._buckets[host]

    def flood(self, source: str) -> None:
        """
        A datagram from C{source} dropped over the rate.
        """
        self.flooded.value += 1
        self._warn["flooded"].warn("ingest: {source} sends more than [ingest] max_rate "
                                   "({rate}/s): notifications dropped", source=source,
                                   rate=self.max_rate)

    def slowed(self, source: str) -> None:
        """
        A TCP connection paused for the rate.
        """
        self.throttled.value += 1
        self._warn["flooded"].warn("ingest: {source} sends more than [ingest] max_rate "
                                   "({rate}/s): reading it slowed down", source=source,
                                   rate=self.max_rate)

    def too_many(self, source: str, limit: int) -> None:
        """
        A TCP connection from C{source} closed at once: C{limit} are open.
        """
        self.connections_refused.value += 1
        self._warn["connections"].warn("ingest: connection from {source} closed: [ingest] "
                                       "max_connections ({limit}) are open", source=source,
                                       limit=limit)

    def bad(self, source: str, reason: str) -> None:
        """
        Count and log (rate-limited) bad input the listener found itself.
        """
        self.bad_input.value += 1
        self._warn["bad_input"].warn("ingest: bad notification from {source}: {reason}",
                                     source=source, reason=reason)

    # -- one notification --------------------------------------------------

    def take(self, data: bytes, source: str) -> bytes | None:
        """
        Raise the event of one notification.

        @param data: one datagram, or one object of a stream.
        @param source: where it came from, for the log (C{udp:HOST:PORT}).
        @return: the reply of a reliable-mode request (it had an C{id}), or
            C{None}. Made only after the raise was handed to the transports.
        """
        reply_id = None
        try:
            if len(data) > self.max_size:
                raise _bad(-32600, "Invalid Request",
                           f"{len(data)} bytes, more than [ingest] max_size ({self.max_size})")
            try:
                message = jsonrpc.loads(from_bytes(data))
            except jsonrpc.ParseError:
                raise _bad(-32700, "Parse error",
                           f"not JSON: {bytes(data[:60])!r}") from None
            if not isinstance(message, jsonrpc.JSONObject):
                raise _bad(-32600, "Invalid Request", "not a JSON object")
            members = {}
            for key, value in message:
                members.setdefault(key, value)  # the first one counts, as in cJSON
            ident = members.get("id")
            if type(ident) is int or type(ident) is str:
                reply_id = ident
            name = self._check(members)
            params = self._params(members)
            self._publish(name, source)
            self._raise(name, params)
        except Rejected as e:
            getattr(self, e.kind).value += 1
            self._warn[e.kind].warn("ingest: notification from {source} not raised: {reason}",
                                    source=source, reason=e.detail)
            if reply_id is None:
                return None
            self.replies.value += 1
            if e.kind == "echoes":
                # taken (it was raised already): an error would make a
                # reliable sender try again, and the loop go on
                return encoding.jsonrpc_result(reply_id, "OK")
            return encoding.jsonrpc_error(reply_id, e.code, e.message)
        if reply_id is None:
            return None
        self.replies.value += 1
        return encoding.jsonrpc_result(reply_id, "OK")

    def _check(self, members) -> str:
        if members.get("jsonrpc", "2.0") != "2.0":
            raise _bad(-32600, "Invalid Request", "jsonrpc is not \"2.0\"")
        name = members.get("method")
        if name is None:
            raise _bad(-32600, "Invalid Request", "no method")
        if not _good_name(name):
            raise _bad(-32600, "Invalid Request",
                       f"bad event name {str(name)[:80]!r} (letters, digits and _, at most "
                       f"{MAX_EVENT_NAME} bytes)")
        if not self._taken.match(name):
            raise Rejected("refused", 403, "Event refused",
                           f"{name} is not in [ingest] events ({', '.join(self.patterns)})")
        return name

    def _publish(self, name, source):
        if self.evi.event(name) is None:
            if len(self.published) >= self.max_events:
                raise Rejected("refused", 503, "Too many events",
                               f"{name} would be published, but the ingest has published "
                               f"[ingest] max_events ({self.max_events}) already")
            self.evi.publish(name)
            self.published.append(name)
            self._log.info("ingest: {event} published (first taken from {source})",
                           event=name, source=source)

    def _params(self, members):
        try:
            return ingest_params(members.get("params"))
        except ValueError as e:
            raise _bad(-32602, "Invalid params", str(e)) from None

    def _raise(self, name, params):
        fingerprint = None
        if self.loop_window:
            now = self.clock.seconds()
            self._forget(now)
            fingerprint = hash((name, params))
            if fingerprint in self._recent:
                raise Rejected("echoes", None, None, f"{name} with the same parameters was "
                               f"raised less than [ingest] loop_window "
                               f"({self.loop_window:g} s) ago: an echo, not raised again")
        failures = []
        self.evi.raise_event(name, params).addErrback(failures.append)
        if failures:
            # only refusals come back synchronously ([limits] max_params_bytes)
            failure = failures[0]
            if failure.check(LimitExceeded):
                raise Rejected("refused", 413, "Params too large", failure.getErrorMessage())
            raise Rejected("bad_input", -32602, "Invalid params", failure.getErrorMessage())
        self.received.value += 1
        if fingerprint is not None:
            if len(self._recent) >= MAX_FINGERPRINTS:
                _, oldest = self._recent_order.popleft()
                self._recent.pop(oldest, None)
            self._recent[fingerprint] = now
            self._recent_order.append((now, fingerprint))

    def _forget(self, now):
        horizon = now - self.loop_window
        order = self._recent_order
        while order and order[0][0] <= horizon:
            _, fingerprint = order.popleft()
            self._recent.pop(fingerprint, None)
