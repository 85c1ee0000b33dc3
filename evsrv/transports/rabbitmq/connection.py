# -*- test-case-name: tests.test_rabbitmq_unit -*-
"""
Connection management of the C{rabbitmq:} transport: one
L{BrokerConnection} per broker (host, port, vhost, user, password, tls and
the address checked when subscribing), kept up by a ClientService with
backoff, and its bounded queue of publishes (a L{kit.PendingQueue}:
full, the oldest is dropped; older than C{max_age}, dropped) with the
publishes awaiting the broker's confirm.
"""

import re

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from evsrv.transports.kit import Entry, FailingSpell, PendingQueue, wait_drained
from evsrv.transports.rabbitmq.amqp import _failure_text, _ProtocolFactory
from evsrv.transports.rabbitmq.syntax import ConnectionKey

MAX_CHANNEL_ATTEMPTS = 3  # publishes of one entry that ended in a channel error
STOP_GRACE = 1.0  # seconds a closing connection may take before it is aborted

# Connection states, as the C{…:state} statistic shows them.
IDLE, CONNECTING, READY, DOWN, STOPPED = 0, 1, 2, 3, 4
STATE_NAMES = {IDLE: "idle", CONNECTING: "connecting", READY: "ready", DOWN: "down",
               STOPPED: "stopped"}

# What a connection's failing spell logs (kit.FailingSpell): once per
# outage, once more each time it turns from unreachable to refused or back.
UNAVAILABLE = ("rabbitmq: {connection} unavailable ({reason}); notifications are queued "
               "(up to {size}, {age:g} s) until it is back")
REFUSED = ("rabbitmq: {connection}: {refusal} for user {user!r} ({reason}); notifications "
           "to it fail until the broker accepts it, retrying with backoff (up to {retry:g} s)")
CONNECTED_AGAIN = ("rabbitmq: {connection} connected again; {queued} queued notification(s) "
                   "to publish")


class PublishNacked(Exception):
    """
    The broker refused the publish (basic.nack, or a channel error).
    """


class PublishDropped(Exception):
    """
    The publish was dropped before the broker confirmed it (queue full, too
    old, or the server stopped).
    """


class BrokerRefused(Exception):
    """
    The broker refused the connection's login or vhost (connection.close
    403 or 530 during the handshake): the publish failed without being
    sent, as every one does while the broker keeps refusing.
    """


class _Entry(Entry):
    """
    One publish on its way: queued, in flight, then settled exactly once.
    """
    __slots__ = ("exchange", "routing_key", "body", "properties", "attempts")

    def __init__(self, exchange, routing_key, body, properties, queued_at, settlement, sub):
        # (Entry's fields set here: one call less per notification)
        self.sub = sub
        self.settlement = settlement
        self.queued_at = queued_at
        self.size = 0
        self.share = None
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.attempts = 0

    def refused(self, reason: str):
        """
        Failed: the broker refuses the login or the vhost.
        """
        self.failed(reason)


class _Published(_Entry):
    """
    The entry of L{BrokerConnection.publish}: it settles a Deferred of its
    own, failing with L{PublishNacked}, L{PublishDropped} or
    L{BrokerRefused}.
    """
    __slots__ = ("deferred",)

    def __init__(self, exchange, routing_key, body, properties, queued_at):
        super().__init__(exchange, routing_key, body, properties, queued_at, None, None)
        self.deferred = defer.Deferred()

    def _settle(self, error):
        self.release()
        d, self.deferred = self.deferred, None
        if d is None:
            return
        if error is None:
            d.callback(True)
        else:
            d.errback(Failure(error))

    def delivered(self):
        self._settle(None)

    def failed(self, reason):
        self._settle(PublishNacked(reason))

    def dropped(self, reason):
        self._settle(PublishDropped(reason))

    def refused(self, reason):
        self._settle(BrokerRefused(reason))


class _QuietClientService(ClientService):
    # ClientService logs every retry at info level; evsrv logs once per
    # outage instead (BrokerConnection._went_down).
    _log = Logger(observer=lambda event: None)


class _ObservedEndpoint:
    """
    Tells the connection about failed TCP connects (ClientService only
    logs them) so its state and log say the broker is unreachable.
    """

    def __init__(self, endpoint, owner):
        self._endpoint = endpoint
        self._owner = owner

    def connect(self, factory):
        def failed(failure):
            self._owner._handshake_failed(None, _failure_text(failure))
            return failure
        return self._endpoint.connect(factory).addErrback(failed)


class BrokerConnection:
    """
    The one connection to a broker (host, port, vhost, user, password, tls)
    and its bounded queue of publishes.

    Statistics (group C{evi_rabbitmq}, C{NAME} = L{ConnectionKey.label}):
    C{NAME:state} (0 idle, 1 connecting, 2 ready, 3 down, 4 stopped),
    C{NAME:queued}, C{NAME:in_flight}, C{NAME:confirmed}, C{NAME:nacked},
    C{NAME:dropped}, C{NAME:refused}, C{NAME:republished}, C{NAME:connects}.

    While the broker refuses the login or the vhost (L{BrokerRefused}),
    notifications to it fail at once, counted as failed with the reason,
    instead of waiting in the queue to be dropped C{max_age} seconds later:
    a wrong password does not fix itself in that time, and the subscriber's
    counters and C{last_error} should say so now. The connection keeps
    retrying with backoff meanwhile (the operator may fix the user on the
    broker) and queues again as soon as the broker accepts the login, or
    fails in another way (down, timeout: that may pass).

    What the transport gives it: C{reactor}, C{name}, C{statistics}, the
    settings (C{window}, C{queue_size}, C{max_age}, C{heartbeat},
    C{connect_timeout}, C{reconnect_min}, C{reconnect_max}), the queue
    rules (C{_rules}), C{endpoint(key)} and C{properties(...)}.
    """
    _log = Logger()

    def __init__(self, transport, key: ConnectionKey, label: str):
        self.transport = transport
        self.key = key
        self.label = label
        self.state = IDLE
        statistics = transport.statistics
        group = f"evi_{transport.name}"
        self.confirmed = statistics.counter(group, f"{label}:confirmed")
        self.nacked = statistics.counter(group, f"{label}:nacked")
        self.dropped = statistics.counter(group, f"{label}:dropped")
        self.refused_count = statistics.counter(group, f"{label}:refused")
        self.republished = statistics.counter(group, f"{label}:republished")
        self.connects = statistics.counter(group, f"{label}:connects")
        # every drop of the queue's own (full, too old, byte budget) counts
        # in NAME:dropped
        self.queue = PendingQueue(transport._rules, self, self.dropped)
        self.in_flight = {}  # delivery tag -> entry, in tag order
        self.next_tag = 1
        self.protocol = None  # the ready one
        self.current = None   # the one connected, ready or not
        self.channel = None
        self.service = None
        self._failures = 0  # consecutive failed connection attempts
        self.refused = None  # why the broker refused the last attempt (see above)
        self.spell = FailingSpell(self._log, label, key="connection", failing=UNAVAILABLE,
                                  recovered=CONNECTED_AGAIN, transport=transport.name)
        self._channel_ids = 1
        self._reopening = False
        statistics.gauge(group, f"{label}:state", lambda: self.state)
        statistics.gauge(group, f"{label}:queued", lambda: len(self.queue))
        statistics.gauge(group, f"{label}:in_flight", lambda: len(self.in_flight))

    # -- the ClientService ---------------------------------------------------------

    def _endpoint(self):
        # the address checked when subscribing, never a fresh DNS answer
        # (the transport makes it: it holds the TLS settings)
        return _ObservedEndpoint(self.transport.endpoint(self.key), self)

    def start(self):
        if self.service is not None:
            return
        t = self.transport
        policy = backoffPolicy(t.reconnect_min, t.reconnect_max)
        # ClientService counts TCP failures only; a broker that accepts TCP
        # and then fails the handshake must back off too.
        self.service = _QuietClientService(
            self._endpoint(), _ProtocolFactory(self),
            retryPolicy=lambda attempts: policy(max(attempts, self._failures)),
            clock=t.reactor)
        self.service.setName(self.label)
        self._set_state(CONNECTING)
        self.service.startService()

    def stop(self, flush_timeout=0.0):
        """
        Stop: wait up to C{flush_timeout} seconds for what is queued and in
        flight to be confirmed, then close; anything left is dropped and
        counted.
        """
        if self.service is None:
            self._set_state(STOPPED)
            self._drop_all("server stopping")
            return defer.succeed(None)
        reactor = self.transport.reactor
        if flush_timeout > 0 and not self.flushed():
            d = wait_drained(reactor, reactor.seconds() + flush_timeout, self.flushed)
        else:
            d = defer.succeed(None)

        def close(_):
            service, self.service = self.service, None
            self._set_state(STOPPED)
            stopped = service.stopService()
            self._drop_all("server stopping")
            # ClientService closes gracefully, which waits for the socket's
            # send buffer to drain: a hung broker never reads it. Abort then.
            abort = reactor.callLater(STOP_GRACE, self._abort_current)

            def done(result):
                if abort.active():
                    abort.cancel()
                return result
            return stopped.addBoth(done)
        return d.addCallback(close)

    def flushed(self) -> bool:
        """
        Whether nothing is queued or awaiting its confirm.
        """
        return not (self.queue or self.in_flight)

    def _abort_current(self):
        protocol = self.current
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()

    def _set_state(self, state):
        self.state = state

    # -- protocol callbacks ----------------------------------------------------------

    def _ready(self, protocol, channel):
        if self.state == STOPPED:
            protocol.transport.abortConnection()
            return
        self.protocol = protocol
        self.channel = channel
        self.next_tag = 1
        self._failures = 0
        self.refused = None
        self.connects.value += 1
        self._set_state(READY)
        if not self.spell.success(queued=len(self.queue)):
            self._log.info("rabbitmq: {connection} connected", connection=self.label,
                           transport=self.transport.name)
        self._pump()

    def _handshake_failed(self, protocol, reason, refusal=None):
        """
        A connection attempt failed: C{reason} says why in one line;
        C{refusal}, if set, is the short reason of a broker that refused
        the login or vhost (e.g. C{authentication failed (ACCESS_REFUSED)}).
        """
        self._failures += 1
        self._went_down(reason, refusal)

    def _went_down(self, reason, refusal=None):
        if self.state == STOPPED:
            return
        self._set_state(DOWN)
        self.refused = refusal
        t = self.transport
        # Logged once per outage, and once more each time it turns from
        # unreachable to refused or back, not at every retry; the next
        # line is the reconnect.
        if refusal is None:
            self.spell.failure("unavailable", reason, size=t.queue_size, age=t.max_age)
        else:
            self.spell.failure(refusal, reason, REFUSED, refusal=refusal, user=self.key.user,
                               retry=t.reconnect_max)
            self._refuse_queued()

    def _refuse_queued(self):
        # (nothing is in flight: the connection never got ready)
        for entry in self.queue.clear():
            self._refuse(entry)

    def _refuse(self, entry):
        self.refused_count.value += 1
        entry.refused(self.refused)

    def _lost(self, protocol, reason):
        if protocol is not self.protocol:
            return  # never got ready: _handshake_failed counted it
        self.protocol = self.channel = None
        self._requeue_in_flight()
        self._went_down(reason)

    def _requeue_in_flight(self):
        """
        Unconfirmed publishes go back to the head of the queue, oldest first:
        the broker may or may not have them (at-least-once).
        """
        if not self.in_flight:
            return
        entries = list(self.in_flight.values())
        self.in_flight.clear()
        self.republished.value += len(entries)
        self.queue.push_front(entries)  # (their max_age still counts from the raise)
        self.queue.trim()

    def _confirmed(self, protocol, channel, tag, multiple, ok):
        if protocol is not self.protocol or channel is not self.channel:
            return
        in_flight = self.in_flight
        if multiple:
            done = []
            for t in in_flight:
                if t > tag:
                    break
                done.append(t)
            entries = [in_flight.pop(t) for t in done]
        else:
            entry = in_flight.pop(tag, None)
            entries = [entry] if entry is not None else []
        if ok:
            self.confirmed.value += len(entries)
            for entry in entries:
                entry.delivered()
        else:
            self.nacked.value += len(entries)
            for entry in entries:
                entry.failed("nacked by the broker")
        self._pump()

    def _channel_failed(self, protocol, channel, reason):
        """
        The broker closed the publishing channel (e.g. 404: no such
        exchange). Fail what caused it, publish the rest on a new channel.
        """
        if protocol is not self.protocol or channel is not self.channel:
            return
        # txamqp hands over the channel.close Message itself
        code = getattr(reason, "reply_code", None)
        message = getattr(reason, "reply_text", None) or str(reason)
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        detail = f"{code} {message}" if code else message
        failure = f"broker closed the channel: {detail}"
        self.channel = None
        entries = list(self.in_flight.values())
        self.in_flight.clear()
        match = re.search(r"no exchange '(.*?)' in vhost", message)
        culprit = match.group(1).encode() if match else None
        keep = []
        for entry in entries:
            entry.attempts += 1
            if (culprit is not None and entry.exchange == culprit) \
                    or entry.attempts >= MAX_CHANNEL_ATTEMPTS:
                self.nacked.value += 1
                entry.failed(failure)
            else:
                keep.append(entry)
        if culprit is not None:
            # Also fail the queued ones to that exchange now, instead of
            # killing the next channel with them.
            for entry in self.queue.remove(lambda e: e.exchange == culprit):
                self.nacked.value += 1
                entry.failed(failure)
        self.republished.value += len(keep)
        self.queue.push_front(keep)
        self._log.warn("rabbitmq: {connection}: channel closed by the broker ({detail}); "
                       "reopening it", connection=self.label, transport=self.transport.name,
                       detail=detail)
        self._reopen_channel(protocol)

    def _reopen_channel(self, protocol):
        self._channel_ids += 1
        channel_id = self._channel_ids

        @defer.inlineCallbacks
        def reopen():
            channel = yield protocol.channel(channel_id)
            yield channel.channel_open()
            yield channel.confirm_select()
            return channel

        def opened(channel):
            if protocol is self.protocol:
                self.channel = channel
                self.next_tag = 1
                self._pump()

        def failed(failure):
            # The connection is going away; _lost() handles the rest.
            if protocol is self.protocol and protocol.transport is not None:
                protocol.transport.abortConnection()
        reopen().addCallbacks(opened, failed)

    # -- queue ------------------------------------------------------------------------

    def enqueue(self, entry):
        """
        Publish now if possible, else queue (never waits).
        """
        if self.state == STOPPED:
            entry.dropped("server stopping")
            return
        if self.service is None:
            self.start()
        if self.refused is not None:
            self._refuse(entry)  # see the class docstring
            return
        # held (and charged to the byte budget) until the broker confirms
        # it; one that does not fit is dropped
        if (self.channel is not None and not self.queue.entries
                and len(self.in_flight) < self.transport.window):
            if self.queue.admit(entry, len(entry.body)):
                self._send(entry)
            return
        self.queue.add(entry, len(entry.body))

    def publish(self, exchange: bytes, routing_key: bytes, body: bytes, persistent=False,
                content_type="application/json"):
        """
        Publish one message; the Deferred fires on the broker's ack and fails
        with L{PublishNacked}, L{PublishDropped} or L{BrokerRefused}.
        """
        entry = _Published(exchange, routing_key, body,
                           self.transport.properties(content_type, persistent),
                           self.transport.reactor.seconds())
        d = entry.deferred  # (gone from the entry once it settles)
        self.enqueue(entry)
        return d

    def _send(self, entry):
        tag = self.next_tag
        self.next_tag = tag + 1
        self.in_flight[tag] = entry
        self.protocol.publish(self.channel.id, entry.exchange, entry.routing_key, entry.body,
                              entry.properties)

    def _pump(self):
        queue = self.queue
        entries = queue.entries
        if not entries or self.channel is None:
            return
        window = self.transport.window
        while entries and len(self.in_flight) < window and self.channel is not None:
            entry = queue.pop()  # (one queued for longer than max_age is dropped)
            if entry is None:
                break
            self._send(entry)

    def _drop(self, entry, reason):
        self.dropped.value += 1
        entry.dropped(f"{reason} ({self.label} {STATE_NAMES[self.state]})")

    def _drop_all(self, reason):
        entries = list(self.in_flight.values()) + self.queue.clear()
        self.in_flight.clear()
        for entry in entries:
            self._drop(entry, reason)


def queue_full(connection) -> str:
    """
    The reason of a publish dropped from a full queue (L{kit.QueueRules}).
    """
    return f"queue full ({connection.label} {STATE_NAMES[connection.state]})"


def queued_too_long(connection) -> str:
    """
    The reason of a publish that waited longer than C{max_age}.
    """
    return f"queued too long ({connection.label} {STATE_NAMES[connection.state]})"
