# -*- test-case-name: tests.test_stream_transport -*-
"""
JSON-RPC notifications over persistent TCP connections (spec §4.4, §9 D12):
C{tcp:HOST:PORT[/METHOD]} sends the OpenSIPS 3.x event_stream body and
C{jsonrpc:HOST:PORT[/METHOD]} the 2.4 event_jsonrpc body (C{"id":null} first,
C{params} always present). Bodies are written back to back with no
delimiter; receivers parse the stream incrementally.

One connection per destination address (resolved IP and port), shared by
every subscriber and event of the transport, opened on the first
notification and kept open. What happens when the peer misbehaves:

 - down (refused, unreachable, connect timeout): notifications wait in a
   bounded per-destination queue (the oldest is dropped and counted when it
   is full) while reconnects back off exponentially; one that waits longer
   than C{queue_timeout} counts as failed. Except those delivered with
   C{fail_fast} (a C{virtual:} FAILOVER or ROUND-ROBIN member that has
   another member to go to): they fail as soon as a connect attempt fails,
   and at once while the destination is known down (backing off after a
   failed connect), so that the caller moves on instead of waiting
   C{queue_timeout} for a peer that refused;
 - slow (stops reading): Twisted's write buffer pauses us (we are its
   streaming producer) once it holds 64 KiB, and notifications wait in the
   same bounded queue; nothing piles up without bound and the reactor never
   waits;
 - chatty or malicious (sends data): without reliable mode everything
   received is discarded as it arrives; in reliable mode at most
   C{MAX_REPLY_BUFFER} bytes of an unfinished reply are kept, and a reply
   that is not a JSON object with a numeric id closes the connection;
 - closes the connection: the next notification (or a queued one) reconnects;
 - goes quiet (nothing sent to it for C{idle_timeout} seconds, e.g. its
   subscriptions expired or were removed): the connection is closed and the
   destination forgotten, so addresses that come and go cannot pile up open
   file descriptors or table entries (C{idle_timeout = 0}: never closed,
   OpenSIPS' way).

Reliable mode (C{reliable = yes} in the ini section): each body carries a
numeric C{"id"} first and counts as delivered only when the peer's JSON-RPC
reply with that id arrives (a reply with an C{"error"} member counts as
failed). A destination that leaves the oldest notification unanswered for
C{timeout} seconds gets its connection closed; every unanswered notification
is sent again, same id, on the next connection (at least once delivery),
up to C{retries} sends in all, then counts as failed.

What a destination holds (queued, and in reliable mode unanswered) is
charged to the server's byte budget (C{[limits] max_queued_bytes}, shared
with every transport, L{evsrv.transports.kit.ByteBudget}): a notification
that does not fit is dropped and counted. One written at once is not held.

Every result (delivered, failed, dropped) reaches the subscriber's counters,
the transport statistics and the Deferred[Outcome] of the C{deliver} call
that sent it, so callers (the virtual transport, scripts) see real outcomes.

At shutdown (L{StreamTransport.drain}) queues go on being sent, and each
connection with nothing left (in reliable mode: every reply in) is closed
gracefully, so that what Twisted still buffers reaches the peer; at the
deadline whatever is left is reported, then dropped when the transport stops.
"""

import json

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from evsrv import encoding
from evsrv.evi.params import Param
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import (BadSocket, ICounted, IDestinationReport, IDrainable,
                              IEventTransport, IFailFast, IPeerHosts)
from evsrv.transports import TransportCounters, resolve_once
from evsrv.transports.datagram import split_host_port
from evsrv.transports.factories import TransportFactory
from evsrv.transports.kit import (FAILED, ByteBudget, DrainResult, Entry, FailingSpell,
                                  PendingQueue, QueueRules, Settlement, wait_drained)
from evsrv.util.coercers import positive_seconds as seconds
from evsrv.util.coercers import seconds_or_never

MAX_REPLY_BUFFER = 65536  # bytes of one unfinished reply kept in reliable mode
MAX_ID = 2 ** 31 - 1      # ids stay positive 32-bit ints, as OpenSIPS'
STOPPING = "evsrv stopping"


# -- ini coercers ------------------------------------------------------------

def yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def count(low: int, high: int):
    def coerce(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value
    return coerce


def method_name(text: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("no spaces or control characters")
    return text


# -- the wire ----------------------------------------------------------------

class ReplyParser:
    """
    Splits a byte stream into back-to-back JSON values with
    C{json.JSONDecoder.raw_decode}, keeping an unfinished value for the next
    chunk (at most C{limit} bytes of it).
    """
    _decoder = json.JSONDecoder()

    def __init__(self, limit=MAX_REPLY_BUFFER):
        self.limit = limit
        self._buffer = b""

    def feed(self, data: bytes) -> list:
        """
        @return: the complete values now available.
        @raise ValueError: the stream is not JSON, or an unfinished value
            exceeds the limit.
        """
        buffer = self._buffer + data if self._buffer else data
        text = encoding.from_bytes(buffer)
        values = []
        pos, end = 0, len(text)
        while True:
            while pos < end and text[pos] in " \t\r\n":
                pos += 1
            if pos == end:
                break
            try:
                value, pos_after = self._decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                if _complete_value_end(text, pos) is not None:
                    raise ValueError(f"not JSON: {text[pos:pos + 60]!r}") from None
                break  # unfinished: wait for more
            values.append(value)
            pos = pos_after
        rest = text[pos:]
        self._buffer = encoding.to_bytes(rest) if rest else b""
        if len(self._buffer) > self.limit:
            raise ValueError(f"reply longer than {self.limit} bytes")
        return values


def _complete_value_end(text, pos):
    """
    Where the object or array starting at C{pos} ends, or C{None} if the
    text stops before it does. Only called when C{raw_decode} failed, to tell
    a value that is merely unfinished from one that can never parse.
    """
    first = text[pos]
    if first not in "{[":
        return pos  # replies are objects; anything else is garbage already
    depth = 0
    in_string = escaped = False
    for i in range(pos, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i
    return None


class _Entry(Entry):
    """
    One notification for one subscription, queued or on the wire.

    @ivar fail_fast: the caller has somewhere else to send it (a virtual
        member): fail it when the destination is down instead of waiting.
    """
    __slots__ = ("payload", "id", "sends", "fail_fast")

    def __init__(self, payload, sub, settlement, notification_id, now, fail_fast=False):
        # (Entry's fields set here: one call less per notification)
        self.sub = sub
        self.settlement = settlement
        self.queued_at = now
        self.size = 0
        self.share = None
        self.payload = payload
        self.id = notification_id
        self.sends = 0
        self.fail_fast = fail_fast


def _fails_fast(entry):
    return entry.fail_fast


class _StreamProtocol(Protocol):
    """
    One TCP connection to a destination. It is the transport's streaming
    producer, so a peer that stops reading pauses the sender instead of
    growing Twisted's write buffer.
    """

    def __init__(self, peer):
        self.peer = peer
        self.paused = False
        self.parser = ReplyParser() if peer.transport.reliable else None

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.peer.connection_made(self)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.peer.flush()

    def stopProducing(self):
        self.paused = True

    def dataReceived(self, data):
        if self.parser is None:
            return  # not reliable: whatever the peer says is read and dropped
        try:
            replies = self.parser.feed(data)
        except ValueError as e:
            self.peer.protocol_error(self, str(e))
            return
        for reply in replies:
            if not self.peer.reply(self, reply):
                return

    def connectionLost(self, reason):
        self.peer.connection_lost(self, reason)


class _ConnectFactory(ClientFactory):
    noisy = False

    def __init__(self, peer):
        self.peer = peer

    def buildProtocol(self, addr):
        protocol = _StreamProtocol(self.peer)
        protocol.factory = self
        return protocol

    def clientConnectionFailed(self, connector, reason):
        self.peer.connect_failed(connector, reason)


class _Peer:
    """
    One destination address: its connection, queue and timers.

    States: C{idle} (no connection, nothing to send), C{connecting},
    C{connected}, C{waiting} (backing off before the next connect).
    """

    def __init__(self, transport, host, port, label):
        self.transport = transport
        self.host = host
        self.port = port
        self.label = label
        self.state = "idle"
        self.protocol = None
        self.connector = None
        self.queue = PendingQueue(transport._rules, self)
        self.unanswered = {}  # id -> entry, in send order
        self.failures = 0     # consecutive connect failures (backoff exponent)
        self.connect_error = None  # why the last connect failed (fail_fast entries)
        self.spell = FailingSpell(transport._log, label, transport=transport.name)
        self._retry = self._reply_timer = None
        self._closed = None   # Deferred fired when the connection is gone (stop)
        self._aborted = False  # we closed it ourselves (already logged why)
        self.closing = False   # draining: closed once written out, write no more
        self.last_used = transport.reactor.seconds()

    # -- sending -------------------------------------------------------------

    def send(self, entry):
        self.last_used = entry.queued_at
        if not self.queue.entries and self._can_write():
            # (without reliable mode it settles in _write: nothing is held)
            if self.transport.reliable and not self.queue.admit(entry, len(entry.payload)):
                return
            self._write(entry)
            return
        if entry.fail_fast and self.state == "waiting" and self.failures:
            # Known down (its last connect failed, the next one is a backoff
            # away): waiting would only delay the caller's next member.
            # Nothing is queued, so the backoff and the plain subscribers'
            # queue are left as they are.
            entry.failed(self._down_reason())
            return
        if self.queue.add(entry, len(entry.payload)) and self.state == "idle":
            self._connect()  # (not for one the byte budget dropped)

    def _can_write(self):
        return (self.state == "connected" and not self.closing and not self.protocol.paused
                and len(self.unanswered) < self.transport.queue_size)

    def _write(self, entry):
        entry.sends += 1
        if self.transport.reliable:
            self.unanswered[entry.id] = entry
            entry.queued_at = self.transport.reactor.seconds()
            self._arm_reply_timer()
            self.protocol.transport.write(entry.payload)
        else:
            # Handed to the socket: as far as TCP tells a sender, delivered.
            self.protocol.transport.write(entry.payload)
            entry.delivered()

    def flush(self):
        queue = self.queue
        entries = queue.entries
        while entries and self._can_write():
            entry = queue.pop()
            if entry is None:
                break
            self._write(entry)

    # -- the connection ------------------------------------------------------

    def _connect(self):
        t = self.transport
        self.state = "connecting"
        self._retry = None
        self.connector = t.reactor.connectTCP(self.host, self.port, _ConnectFactory(self),
                                              timeout=t.connect_timeout)

    def connection_made(self, protocol):
        self.state = "connected"
        self.protocol = protocol
        self._aborted = False
        self.closing = False
        self.connector = None
        self.failures = 0
        self.transport.connections += 1
        if not self.transport.reliable:
            self.spell.success()
        self.flush()

    def connect_failed(self, connector, reason):
        self.connector = None
        if self._closed is not None:
            self.state = "idle"
            return
        self.failures += 1
        self.connect_error = f"cannot connect: {reason.getErrorMessage()}"
        self.spell.failure("connect", self.connect_error)
        # Callers with another member to try: this attempt's outcome is
        # their answer (the others wait for the reconnects).
        for entry in self.queue.remove(_fails_fast):
            entry.failed(self.connect_error)
        self._after_disconnect()

    def _down_reason(self):
        reason = self.connect_error or "cannot connect"
        if self._retry is not None and self._retry.active():
            wait = max(0.0, self._retry.getTime() - self.transport.reactor.seconds())
            return f"{reason} ({self.failures} failed connect(s), next in {wait:.3g} s)"
        return reason

    def connection_lost(self, protocol, reason):
        if protocol is not self.protocol:
            return
        self.protocol = None
        self.transport.connections -= 1
        self._cancel("_reply_timer")
        # Unanswered notifications go back to the head of the queue, in the
        # order they were sent, to be sent again on the next connection.
        if self.unanswered:
            again = []
            retries = self.transport.retries
            for entry in self.unanswered.values():
                if entry.sends >= retries:
                    entry.failed(f"no reply after {entry.sends} send(s)")
                else:
                    again.append(entry)
            self.unanswered = {}
            # their queue_timeout starts over
            self.queue.push_front(again, self.transport.reactor.seconds())
        if self._closed is not None:
            self.state = "idle"
            self._closed.callback(None)
            return
        if not self._aborted and (not reason.check(ConnectionDone) or self.queue):
            self.spell.failure("lost", f"connection lost: {reason.getErrorMessage()}")
        self._after_disconnect()

    def _after_disconnect(self):
        if not self.queue:
            self.state = "idle"  # the next notification reconnects
            self.transport._forget(self)
            return
        t = self.transport
        delay = min(t.reconnect_max_delay, t.reconnect_delay * 2 ** max(self.failures - 1, 0))
        self.state = "waiting"
        self._retry = t.reactor.callLater(delay, self._connect)

    # -- reliable mode ---------------------------------------------------------

    def reply(self, protocol, reply) -> bool:
        """
        A JSON value from the peer. @return: whether to keep reading.
        """
        ident = reply.get("id") if isinstance(reply, dict) else None
        if type(ident) is not int:
            self.protocol_error(protocol, f"reply without a numeric id: {str(reply)[:80]}")
            return False
        entry = self.unanswered.pop(ident, None)
        if entry is None:
            return True  # late reply to a notification already settled
        if "error" in reply:
            entry.failed(f"peer error: {json.dumps(reply['error'])[:200]}")
        else:
            entry.delivered()
            self.failures = 0
            self.spell.success()
        if not self.unanswered:
            self._cancel("_reply_timer")
        self.flush()
        return True

    def protocol_error(self, protocol, reason):
        self.spell.failure("protocol", f"closing the connection: {reason}")
        self._aborted = True
        protocol.transport.abortConnection()

    def _arm_reply_timer(self):
        if self._reply_timer is None and self.unanswered:
            oldest = next(iter(self.unanswered.values()))
            t = self.transport
            delay = max(0.0, oldest.queued_at + t.timeout - t.reactor.seconds())
            self._reply_timer = t.reactor.callLater(delay, self._reply_due)

    def _reply_due(self):
        self._reply_timer = None
        if not self.unanswered or self.protocol is None:
            return
        oldest = next(iter(self.unanswered.values()))
        if oldest.queued_at + self.transport.timeout > self.transport.reactor.seconds():
            self._arm_reply_timer()
            return
        # A peer that does not answer in time gets a new connection; what it
        # left unanswered is sent again there (at least once).
        self.spell.failure("timeout", f"no reply within {self.transport.timeout} s, "
                                      "reconnecting to send again")
        self._aborted = True
        self.protocol.transport.abortConnection()

    # -- stopping --------------------------------------------------------------

    def _cancel(self, name):
        call = getattr(self, name)
        if call is not None:
            setattr(self, name, None)
            if call.active():
                call.cancel()

    def drained(self) -> bool:
        """
        Draining (shutdown): whether nothing is left to deliver. A
        connection with nothing more to send is closed gracefully first, so
        that the bytes Twisted still buffers for it reach the peer before it
        counts as done; a peer that never reads them keeps it open until the
        deadline, when L{close} aborts it.
        """
        if self.queue or self.unanswered:
            return False
        if self.protocol is None:
            return True
        if not self.closing:
            self.closing = True
            self._aborted = True  # closed on purpose: not a failure to log
            transport = self.protocol.transport
            # a registered producer would keep loseConnection waiting forever
            transport.unregisterProducer()
            transport.loseConnection()
        return False

    def undelivered(self):
        """
        C{(count, state)} of what is left when a drain ends.
        """
        count = len(self.queue) + len(self.unanswered)
        if self.state == "connected":
            if self.unanswered:
                state = f"connected, {len(self.unanswered)} awaiting the peer's reply"
            elif self.closing or self.protocol.paused:
                state = "connected, the peer does not read"
            else:
                state = "connected"
        elif self.state == "waiting":
            state = (f"down, {self.failures} failed connect(s), reconnecting" if self.failures
                     else "disconnected, reconnecting")
        else:
            state = self.state
        if self.spell.failing and self.state != "waiting":
            state += f", {self.spell.kind} failing"
        return count, state

    def idle(self, now) -> bool:
        """
        Nothing queued or unanswered, and nothing sent for C{idle_timeout}
        (never, when it is 0).
        """
        idle_timeout = self.transport.idle_timeout
        return (bool(idle_timeout) and not self.queue and not self.unanswered
                and not self.closing and now - self.last_used >= idle_timeout)

    def close_idle(self):
        """
        Close a quiet connection gracefully (what Twisted still buffers is
        written first) and forget the destination.
        """
        for name in ("_retry", "_reply_timer"):
            self._cancel(name)
        self.queue.close()
        self.transport._peers.pop((self.host, self.port), None)
        if self.state == "connected" and self.protocol is not None:
            self._aborted = True  # ours: not a failure to log
            self.closing = True
            self.protocol.transport.loseConnection()
        elif self.state == "connecting" and self.connector is not None:
            self._closed = Deferred()  # connect_failed then just goes idle
            self.connector.stopConnecting()
        self.state = "idle"

    def close(self):
        """
        Drop what waits and close the connection. @return: Deferred fired
        once the connection is gone.
        """
        self._closed = Deferred()
        for name in ("_retry", "_reply_timer"):
            self._cancel(name)
        unanswered, self.unanswered = self.unanswered, {}
        for entry in list(unanswered.values()) + self.queue.clear():
            entry.dropped(STOPPING)
        if self.state == "connecting" and self.connector is not None:
            self.connector.stopConnecting()
        elif self.protocol is not None:
            self.protocol.transport.abortConnection()
            return self._closed
        self.state = "idle"
        return None


@implementer(IEventTransport, IPeerHosts, IDestinationReport, IDrainable, IFailFast, ICounted)
class StreamTransport(Service):
    """
    C{tcp:} (body C{json}, OpenSIPS 3.x) or C{jsonrpc:} (body C{jsonrpc24},
    OpenSIPS 2.4), as configured by its factory.
    """
    _log = Logger()

    def __init__(self, name, scheme, body, settings, statistics, reactor, budget=None):
        self.name = name
        self.schemes = (scheme,)
        self.scheme = scheme
        self.body = body
        self.reactor = reactor
        self.reliable = settings["reliable"]
        self.connect_timeout = settings["connect_timeout"]
        self.timeout = settings["timeout"]
        self.queue_size = settings["queue_size"]
        self.queue_timeout = settings["queue_timeout"]
        self.reconnect_delay = settings["reconnect_delay"]
        self.reconnect_max_delay = max(settings["reconnect_max_delay"], self.reconnect_delay)
        self.retries = settings["retries"]
        self.event_param = settings["event_param"] or None
        self.idle_timeout = settings.get("idle_timeout", 300.0)
        self.counters = TransportCounters(statistics, name)
        budget = ByteBudget() if budget is None else budget
        # a timed-out notification failed: its destination did not take it
        self._rules = QueueRules(
            self.queue_size, budget.share(statistics, name), reactor,
            lambda peer: f"queue full ({self.queue_size} waiting for {peer.label})",
            max_age=self.queue_timeout, expired=FAILED,
            expired_reason=lambda peer: (f"not sent within {self.queue_timeout} s "
                                         f"({peer.label} {peer.state})"))
        group = f"evi_{name}"
        self.connections = 0
        statistics.gauge(group, "connections", lambda: self.connections)
        # derived from the peers (a peer is only forgotten once it has nothing
        # queued or unanswered), so they can never drift
        statistics.gauge(group, "queued",
                         lambda: sum(len(p.queue) for p in self._peers.values()))
        statistics.gauge(group, "unanswered",
                         lambda: sum(len(p.unanswered) for p in self._peers.values()))
        self._peers = {}  # (ip, port) -> _Peer
        self._next_id = 0
        self._stopped = False
        self._idle_sweep = LoopingCall(self._close_idle)
        self._idle_sweep.clock = reactor

    # -- subscribing -----------------------------------------------------------

    def parse(self, scheme, rest):
        text = f"{scheme}:{rest}"
        address, slash, method = rest.partition("/")
        if slash and not method:
            raise BadSocket(f"empty method after '/' in {text[:120]!r}")
        if method:
            try:
                method_name(method)
            except ValueError as e:
                raise BadSocket(f"bad method {method[:40]!r} in {text[:120]!r}: {e}") from None
        shown, host, port = split_host_port(scheme, address)
        key = f"{scheme}:{shown}:{port}" + (f"/{method}" if method else "")
        method = method or None
        return resolve_once(self.reactor, host,
                            lambda ip: Destination(key, (ip, port, method)))

    @staticmethod
    def peer_hosts(destination):
        # the address connected to: the literal, or what the name resolved
        # to when subscribing (for the [policy])
        return (destination.address[0],)

    # -- delivering ------------------------------------------------------------

    def _body(self, notification, method, notification_id):
        params = notification.params
        if self.event_param and (params or self.body == "jsonrpc24"):
            # the event name as an extra first parameter (OpenSIPS event_param)
            name = None if params and params[0].name is None else self.event_param
            params = (Param(name, notification.event),) + params
        if self.body == "json":
            return encoding.json_notification(notification.event, params, method=method,
                                              notification_id=notification_id)
        if notification_id is None:
            return encoding.jsonrpc24_notification(notification.event, params, method=method)
        return encoding.jsonrpc24_notification_with_id(notification.event, params,
                                                       method=method,
                                                       notification_id=notification_id)

    def _new_id(self):
        self._next_id = self._next_id % MAX_ID + 1
        return self._next_id

    def deliver(self, notification, subscriptions, fail_fast=False):
        """
        See L{evsrv.interfaces.IEventTransport.deliver}.

        @param fail_fast: the caller has another destination to try (a
            virtual FAILOVER or ROUND-ROBIN member): a notification for a
            destination that is down fails as soon as a connect attempt
            fails (the first one included), or at once while it is backing
            off after one, with the connect error as the reason, instead of
            waiting up to C{queue_timeout} for a reconnect.
        """
        batch = Settlement(self.counters, len(subscriptions))
        if self._stopped:
            for sub in subscriptions:
                batch.dropped(sub, STOPPING)
            return batch.result()
        now = self.reactor.seconds()
        shared = {}  # method -> bytes, when the body has no id
        plain = not self.event_param
        for sub in subscriptions:
            ip, port, method = sub.address
            if self.reliable:
                ident = self._new_id()
                payload = self._body(notification, method, ident)
            else:
                ident = None
                payload = shared.get(method)
                if payload is None:
                    if method is None and plain:
                        payload = notification.payload(self.body)
                    else:
                        payload = self._body(notification, method, None)
                    shared[method] = payload
            peer = self._peers.get((ip, port))
            if peer is None:
                label = f"{self.scheme}:{ip}:{port}" if ":" not in ip else (
                    f"{self.scheme}:[{ip}]:{port}")
                peer = self._peers[(ip, port)] = _Peer(self, ip, port, label)
            peer.send(_Entry(payload, sub, batch, ident, now, fail_fast))
        return batch.result()

    def destinations(self):
        """
        One snapshot per destination the transport holds a connection (or a
        queue) for: what the metrics show per destination.
        """
        for peer in list(self._peers.values()):
            yield {"destination": peer.label, "connected": int(peer.state == "connected"),
                   "failing": int(peer.spell.failing), "queued": len(peer.queue),
                   "unanswered": len(peer.unanswered)}

    def _forget(self, peer):
        # An idle peer with nothing to send costs nothing to rebuild; keeping
        # it would grow the table with every address ever subscribed. A peer
        # that is failing is kept so that it is not logged again.
        if not peer.spell.failing and self._peers.get((peer.host, peer.port)) is peer:
            del self._peers[(peer.host, peer.port)]

    def _close_idle(self):
        now = self.reactor.seconds()
        quiet = [peer for peer in self._peers.values() if peer.idle(now)]
        for peer in quiet:
            peer.close_idle()
        if quiet:
            self._log.debug("{count} quiet {scheme} destination(s) closed", count=len(quiet),
                            scheme=self.scheme)

    # -- service ---------------------------------------------------------------

    def startService(self):
        super().startService()
        if self.idle_timeout:
            self._idle_sweep.start(min(self.idle_timeout, 30.0), now=False)

    def drain(self, deadline):
        """
        Shutdown: go on delivering until nothing is queued, unanswered
        (reliable mode) or unwritten, or until C{deadline}; every connection
        is closed gracefully once it is done. See
        L{evsrv.interfaces.IEventTransport}.

        @return: Deferred firing with a L{DrainResult} of what is left.
        """

        def drained():
            # every peer is asked, so that each done one starts closing now
            return all([peer.drained() for peer in list(self._peers.values())])

        def left(_):
            result = DrainResult()
            for peer in self._peers.values():
                if peer.queue or peer.unanswered or peer.protocol is not None:
                    result.add(peer.label, *peer.undelivered())
            return result
        return wait_drained(self.reactor, deadline, drained).addCallback(left)

    def stopService(self):
        super().stopService()
        self._stopped = True
        if self._idle_sweep.running:
            self._idle_sweep.stop()
        waits = [d for d in (peer.close() for peer in self._peers.values()) if d is not None]
        self._peers = {}
        # One more reactor turn: a connect aborted before it started leaves
        # a zero-delay call behind that must run out first.
        settle = deferLater(self.reactor, 0, lambda: None)
        return DeferredList(waits + [settle])


# -- plugin factories ------------------------------------------------------------

def _options():
    return {
        "reliable": ("no", yes_no,
                     "yes: each notification carries a numeric id and counts as delivered "
                     "only when the peer's JSON-RPC reply with that id arrives; unanswered "
                     "ones are sent again on the next connection"),
        "connect_timeout": ("2", seconds, "seconds to wait for a TCP connection"),
        "timeout": ("1", seconds,
                    "reliable mode: seconds the oldest unanswered notification may wait "
                    "for its reply before the connection is closed and opened again"),
        "retries": ("3", count(1, 100),
                    "reliable mode: sends of one notification before it counts as failed"),
        "queue_size": ("1000", count(1, 1000000),
                       "notifications waiting per destination while it is down or slow "
                       "(and, in reliable mode, unanswered); when full the oldest is "
                       "dropped and counted"),
        "queue_timeout": ("10", seconds,
                          "seconds a notification may wait for its destination before it "
                          "counts as failed"),
        "reconnect_delay": ("0.5", seconds,
                            "seconds before the first reconnect; doubled after each failed "
                            "connect"),
        "reconnect_max_delay": ("30", seconds, "longest wait between two connects"),
        "idle_timeout": ("300", seconds_or_never,
                         "seconds without a notification after which a destination's "
                         "connection is closed (reopened by the next one); 0: never"),
        "event_param": ("", method_name,
                        "name of an extra first parameter carrying the event name "
                        "(OpenSIPS event_param); empty: none"),
    }


def _builder(scheme, body):
    def build(settings, context):
        return StreamTransport(scheme, scheme, body, settings, context.statistics,
                               context.reactor, context.budget)
    return build


tcpTransport = TransportFactory(
    "tcp", ("tcp",), _options(), _builder("tcp", "json"),
    "JSON-RPC notifications over TCP, OpenSIPS 3.x body (event_stream)")

jsonrpcTransport = TransportFactory(
    "jsonrpc", ("jsonrpc",), _options(), _builder("jsonrpc", "jsonrpc24"),
    "JSON-RPC notifications over TCP, OpenSIPS 2.4 body (event_jsonrpc)")
