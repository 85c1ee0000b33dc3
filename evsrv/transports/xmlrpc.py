# -*- test-case-name: tests.test_xmlrpc_transport -*-
"""
The C{xmlrpc:HOST:PORT[/PATH]:METHOD} transport (OpenSIPS event_xmlrpc,
spec §4.3), on C{twisted.web.client.Agent} with a pool of persistent
HTTP/1.1 connections.

The call is C{METHOD(event_name, {name: value}, ..., value, ...)}: one
one-member struct per named parameter and a plain value per unnamed one, in
raise order (OpenSIPS' C{use_struct_param} layout, valid XML-RPC, §9 D10).
Ints outside XML-RPC's 32-bit C{<int>} travel as their decimal string;
characters XML 1.0 cannot carry (control characters other than tab, CR and
LF, and bytes that were not UTF-8) become U+FFFD.

Each call is an HTTP/1.1 POST to the address HOST resolved to when
subscribing, with C{Host: HOST:PORT} as written (as OpenSIPS). A connection
the receiver keeps open is reused by the next call to the same address
(idle ones are closed after L{IDLE_TIMEOUT} seconds); one that closes after
each answer (an HTTP/1.0 receiver) gets a new connection per call, as with
OpenSIPS. A call sent on a reused connection that the receiver closed just
before reading it (the keep-alive race: no byte of an answer came back) is
sent once more on another connection.

Unlike OpenSIPS the answer is read: a notification counts as delivered on a
method response, and as failed on a fault, an HTTP status other than 200, a
refused or timed out connection, an answer larger than L{ANSWER_LIMIT}
bytes, or no complete answer within C{timeout} seconds (then the connection
is closed). A refused connection fails the call at once, so a C{virtual:}
FAILOVER moves on to its next member without waiting. A destination (one
socket text) has at most C{max_in_flight} calls open, so at most that many
connections; more notifications wait behind them in a queue of
C{queue_size}, and when that is full the oldest waiting one is dropped and
counted. So a slow or hanging destination costs one connection per call
slot and a bounded queue, and never delays another destination. The bodies
of the calls in flight and queued are charged to the server's byte budget
(C{[limits] max_queued_bytes}): a notification that does not fit is dropped
and counted. A failing destination is logged once when it starts failing
(or fails differently) and once when it works again, never once per
notification.
"""

import re
import xmlrpc.client

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent, HTTPConnectionPool, PotentialDataLoss, RequestNotSent, RequestTransmissionFailed,
    ResponseDone, ResponseFailed, ResponseNeverReceived)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import (BadSocket, ICounted, IDestinationReport, IDrainable,
                              IEventTransport, IPeerHosts)
from evsrv.transports import TransportCounters, resolve_once
from evsrv.transports.datagram import parse_port
from evsrv.transports.factories import TransportFactory
from evsrv.transports.stream import STOPPING, count
from evsrv.util.coercers import positive_seconds as seconds
from evsrv.transports.kit import (ByteBudget, DrainResult, Entry, FailingSpell, PendingQueue,
                                  QueueRules, Settlement, wait_drained)
from evsrv.util.web import BytesBody

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
DEFAULT_PATH = "/RPC2"  # what OpenSIPS posts to when the socket names no path
_METHOD = re.compile(r"[A-Za-z0-9_.:/-]+\Z")  # XML-RPC method name characters
_PATH = re.compile(r"/[\x21-\x7e]*\Z")
# Characters XML 1.0 cannot carry (lone surrogates included).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def xmlrpc_arguments(event: str, params) -> tuple:
    """
    The call arguments of one raise (§9 D10): the event name, then a
    C{{name: value}} struct per named parameter and the bare value of each
    unnamed one.
    """
    args = [xml_text(event)]
    for p in params:
        value = p.value
        if isinstance(value, int):
            if not INT32_MIN <= value <= INT32_MAX:
                value = str(value)  # <int> is 32-bit; the i8 extension is not standard
        else:
            value = xml_text(value)
        args.append(value if p.name is None else {xml_text(p.name): value})
    return tuple(args)


def parse_xmlrpc(rest: str):
    """
    Split C{HOST:PORT[/PATH]:METHOD}. @return: C{(host, port, path, method)}
    with C{path} C{None} when not given.
    """
    text = f"xmlrpc:{rest}"
    host, sep, after = rest.partition(":")
    if not sep or not host or not after:
        raise BadSocket(f"expected xmlrpc:HOST:PORT[/PATH]:METHOD, got {text[:120]!r}")
    if host.startswith("[") or any(c.isspace() or not c.isprintable() for c in host):
        raise BadSocket(f"bad host {host[:60]!r} in {text[:120]!r} (no IPv6, as OpenSIPS)")
    port_text, sep, method = after.partition(":")
    path = None
    if "/" in port_text:
        port_text, _, path = port_text.partition("/")
        path = "/" + path
        if not _PATH.match(path):
            raise BadSocket(f"bad path {path[:60]!r} in {text[:120]!r}")
    if not sep or not method:
        raise BadSocket(f"no method in {text[:120]!r} (expected xmlrpc:HOST:PORT[/PATH]:METHOD)")
    if not _METHOD.match(method):
        raise BadSocket(f"bad method name {method[:60]!r} in {text[:120]!r} "
                        "(letters, digits and _ . : / -)")
    return host, parse_port(port_text, text), path, method


# The request body is byte for byte what twisted.web.xmlrpc.Proxy sent
# before (its payloadTemplate around xmlrpc.client.dumps of the arguments),
# so that receivers see no change.
_CALL = '<?xml version="1.0"?>\n<methodCall>\n<methodName>%s</methodName>\n%s\n</methodCall>\n'
USER_AGENT = b"OpenSIPS XMLRPC Notifier"  # what OpenSIPS sends (§4.3)
# As Proxy sent it: the charset says what the body is (RFC 3023 read a
# bare text/xml as US-ASCII, and values are UTF-8).
CONTENT_TYPE = b"text/xml; charset=utf-8"
# An answer to a notification is a few hundred bytes (a boolean or a
# fault): more is a receiver that talks too much, or never stops.
ANSWER_LIMIT = 64 * 1024
# The status line and headers of one answer; HTTP parsers keep every header
# line, so without a limit a receiver could grow our memory.
HEAD_LIMIT = 64 * 1024
# Below the 5 s keep-alive of common servers (Apache, Node.js): we close an
# idle connection before the receiver does, which keeps the keep-alive race
# rare; under load connections are reused long before this.
IDLE_TIMEOUT = 4.0


class AnswerTooLarge(Exception):
    pass


def xmlrpc_params(args: tuple) -> str:
    """
    The C{<params>} element of a call (the part every subscriber of a raise
    shares, whatever its method).
    """
    return xmlrpc.client.dumps(args)


def xmlrpc_body(method: str, params: str) -> bytes:
    """
    The request body of C{method} with the C{<params>} of L{xmlrpc_params}.
    """
    return (_CALL % (method, params)).encode("utf-8")


def _reasons_text(exc) -> str:
    # ResponseFailed and its kin wrap the real reasons in a list
    for reason in getattr(exc, "reasons", ()):
        if not reason.check(error.ConnectionDone):
            return f"{reason.type.__name__}: {reason.getErrorMessage()}"
    return "connection closed"


def _failure_kind(reason):
    """
    C{(kind, text)} of a failed request; the kind decides whether it is
    logged again (a change of kind is a change of state).
    """
    if reason.check(error.ConnectionRefusedError):
        return "refused", "connection refused"
    if reason.check(error.TimeoutError):
        return "connect", "connect timed out"
    if reason.check(error.ConnectError):
        return "connect", f"cannot connect: {reason.getErrorMessage()}"[:200]
    exc = reason.value
    if any(r.check(AnswerTooLarge) for r in getattr(exc, "reasons", ())):
        return "answer", f"answer headers larger than {HEAD_LIMIT} bytes"
    if reason.check(ResponseNeverReceived):
        return "closed", "connection closed without an answer"
    if reason.check(RequestTransmissionFailed, RequestNotSent):
        return "closed", "connection lost while sending the call"
    if reason.check(ResponseFailed):
        return "error", f"bad answer: {_reasons_text(exc)}"[:200]
    return "error", f"{reason.type.__name__}: {reason.getErrorMessage()}"[:200]


def _may_repeat(reason) -> bool:
    """
    Whether a request failed only because its reused connection was closed
    by the receiver before any byte of an answer: then the receiver has not
    answered it, and it goes once more on another connection.
    """
    if reason.check(RequestNotSent):
        return True
    if not reason.check(ResponseNeverReceived, RequestTransmissionFailed):
        return False
    return all(r.check(error.ConnectionClosed) for r in reason.value.reasons)


class _Guard(ProtocolWrapper):
    """
    Between a TCP connection and Twisted's HTTP client protocol (whose
    transport it is):

     - cuts the connection when an answer exceeds L{HEAD_LIMIT} +
       L{ANSWER_LIMIT} bytes. The body alone is cut earlier by L{_Answer};
       this bounds the status line and headers, which Twisted keeps without
       a limit.
     - marks an HTTP/1.0 answer C{Connection: close}. HTTP/1.0 closes after
       each answer unless it says otherwise (RFC 9112 §9.3), but Twisted's
       pool would keep the connection and hand it to the next call, which
       then fails when the close arrives. So Python's stdlib servers, and
       other HTTP/1.0 receivers, get a new connection per call, as before.
    """

    def __init__(self, factory, http):
        super().__init__(factory, http)
        self.received = 0    # bytes of the current answer
        self.status = b""    # its status line so far; None once passed on
        self.cut = False

    def request(self, request):
        # what Agent calls on a new connection (on a reused one, the pool
        # calls the HTTP protocol itself)
        return self.wrappedProtocol.request(request)

    def write(self, data):
        self._request_starts()
        self.transport.write(data)

    def writeSequence(self, data):
        self._request_starts()
        self.transport.writeSequence(data)

    def _request_starts(self):
        # A request is written at once (its body is in memory), before any
        # byte of its answer: what is received next is that answer.
        self.received = 0
        self.status = b""

    def dataReceived(self, data):
        if self.cut:
            return
        self.received += len(data)
        if self.received > HEAD_LIMIT + ANSWER_LIMIT:
            self.cut = True
            self.wrappedProtocol.connectionLost(Failure(AnswerTooLarge()))
            self.transport.abortConnection()
            return
        if self.status is not None:
            data = self.status + data
            end = data.find(b"\n")
            if end < 0:
                self.status = data
                return
            self.status = None
            if data.startswith(b"HTTP/1.0 "):
                data = data[:end + 1] + b"Connection: close\r\n" + data[end + 1:]
        self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason):
        if self.cut:  # the HTTP protocol was told already, with the reason
            self.factory.unregisterProtocol(self)
            return
        super().connectionLost(reason)


class _Tracked(Factory):
    """
    Wraps the pool's factory of one connection: guards it (L{_Guard}), and
    lets the transport know which connections are open or opening, so that
    stopping waits until every socket is closed.
    """
    noisy = False

    def __init__(self, transport, factory):
        self.transport = transport
        self.factory = factory

    def buildProtocol(self, addr):
        return _Guard(self, self.factory.buildProtocol(addr))

    def registerProtocol(self, protocol):
        pass  # (ProtocolWrapper's hooks: start/stopFactory cover attempts too)

    def unregisterProtocol(self, protocol):
        pass

    def startFactory(self):
        self.transport._connections.add(self)

    def stopFactory(self):
        self.transport._closed(self)


@implementer(IStreamClientEndpoint)
class _Endpoint:
    __slots__ = ("transport", "endpoint")

    def __init__(self, transport, endpoint):
        self.transport = transport
        self.endpoint = endpoint

    def connect(self, factory):
        self.transport._opened += 1  # a new connection, not a reused one
        return self.endpoint.connect(_Tracked(self.transport, factory))


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    The URIs name the resolved address, so the TCP connection goes there.
    """

    def __init__(self, transport):
        self.transport = transport

    def endpointForURI(self, uri):
        t = self.transport
        return _Endpoint(t, TCP4ClientEndpoint(t.reactor, uri.host.decode("ascii"), uri.port,
                                               timeout=t.connect_timeout))


class _Answer(Protocol):
    """
    Reads one answer body, at most L{ANSWER_LIMIT} bytes: beyond that the
    connection is closed and the call fails, so an endless body costs
    nothing but the limit.
    """

    def __init__(self, call, code, phrase):
        self.call = call
        self.code = code
        self.phrase = phrase
        self.chunks = []
        self.size = 0

    def dataReceived(self, data):
        if self.call is None:
            return
        self.size += len(data)
        if self.size > ANSWER_LIMIT:
            call = self.call
            self.abort()
            call._answer_failed("answer", f"answer larger than {ANSWER_LIMIT} bytes")
            return
        self.chunks.append(data)

    def connectionLost(self, reason):
        call, self.call = self.call, None
        if call is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            # (PotentialDataLoss: an HTTP/1.0 body that ends with the connection)
            call._answered(self.code, self.phrase, b"".join(self.chunks))
        else:
            call._answer_failed("error", f"answer cut: {_reasons_text(reason.value)}"[:200])

    def abort(self):
        self.call = None
        self.chunks = []
        if self.transport is not None:
            self.transport.stopProducing()  # closes the connection


class _Call:
    """
    One notification to one destination: the request, its answer, and at
    most one repeat (L{_may_repeat}), all within C{timeout} seconds.
    Settles its job exactly once.
    """
    __slots__ = ("destination", "job", "request", "answer", "timer", "repeated", "settled")

    def __init__(self, destination, job):
        self.destination = destination
        self.job = job
        self.request = None
        self.answer = None
        self.repeated = False
        self.settled = False
        t = destination.transport
        self.timer = t.reactor.callLater(t.timeout, self._timed_out)

    def send(self):
        d = self.destination
        t = d.transport
        opened = t._opened
        try:
            request = t._agent.request(b"POST", d.url, d.headers, BytesBody(self.job.body))
        except Exception as e:  # e.g. a URI Twisted refuses
            self._fail("error", f"cannot send: {e}"[:200])
            return
        self.request = request
        request.addCallbacks(self._response, self._not_answered,
                             errbackArgs=(t._opened == opened,))

    def _response(self, response):
        # (never after settling: that cancels the request, which then fails)
        self.request = None
        self.answer = _Answer(self, response.code, response.phrase)
        response.deliverBody(self.answer)

    def _not_answered(self, reason, reused):
        self.request = None
        if self.settled:
            return None  # cancelled by a timeout or by stopping
        if reused and not self.repeated and _may_repeat(reason):
            self.repeated = True
            self.send()
            return None
        self._fail(*_failure_kind(reason))
        return None

    def _answered(self, code, phrase, body):
        self.answer = None
        if code != 200:
            self._fail("http", f"HTTP {code} {phrase.decode('latin-1')}"[:200])
            return
        try:
            xmlrpc.client.loads(body)[0][0]
        except xmlrpc.client.Fault as fault:
            self._fail("fault", f"fault {fault.faultCode}: {str(fault.faultString)[:200]}")
        except Exception as e:  # not an XML-RPC method response
            self._fail("answer", f"bad answer: {type(e).__name__}: {e}"[:200])
        else:
            self._close()
            self.destination.spell.success()
            self.job.delivered()
            self.destination._done(self)

    def _answer_failed(self, kind, text):
        self.answer = None
        self._fail(kind, text)

    def _timed_out(self):
        self.timer = None
        self._fail("timeout", f"no answer within {self.destination.transport.timeout} s")

    def _fail(self, kind, text):
        if self.settled:
            return
        self._close()
        self.destination.spell.failure(kind, text)
        self.job.failed(text)
        self.destination._done(self)

    def stop(self):
        if self.settled:
            return
        self._close()
        self.job.dropped(STOPPING)
        self.destination._done(self)

    def _close(self):
        self.settled = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # what is still open is closed: a request is cancelled (which
        # closes its connection), an answer being read is cut
        if self.request is not None:
            request, self.request = self.request, None
            request.cancel()
        if self.answer is not None:
            answer, self.answer = self.answer, None
            answer.abort()


class _Job(Entry):
    """
    One call's body for one subscription, queued or in flight (no age
    limit: a call in flight has its own C{timeout}).
    """
    __slots__ = ("body",)

    def __init__(self, body, sub, settlement):
        super().__init__(sub, settlement, 0.0)
        self.body = body


class _XMLRPCDestination:
    """
    One socket text: its URI and headers, calls in flight and the queue
    behind them.
    """

    def __init__(self, transport, key, ip, port, path, method, host):
        self.transport = transport
        self.key = key
        self.method = method
        # a "#" would start a fragment, which is not sent
        target = (path or DEFAULT_PATH).replace("#", "%23")
        self.url = f"http://{ip}:{port}{target}".encode("ascii")
        self.headers = Headers({b"Host": [_host_header(host, port)],
                                b"User-Agent": [USER_AGENT],
                                b"Content-Type": [CONTENT_TYPE]})
        self.calls = set()  # _Call in flight
        self.queue = PendingQueue(transport._rules, self)
        self.spell = FailingSpell(transport._log, key, transport=transport.name)

    def send(self, job):
        # the body is held until the call settles, queued or in flight
        if not self.queue.admit(job, len(job.body)):
            return  # dropped: the byte budget is full
        if len(self.calls) < self.transport.max_in_flight:
            self._call(job)
            return
        self.queue.push(job)

    def _call(self, job):
        call = _Call(self, job)
        self.calls.add(call)
        call.send()

    def _done(self, call):
        t = self.transport
        self.calls.discard(call)
        queue = self.queue
        while queue.entries and not t._stopped and len(self.calls) < t.max_in_flight:
            self._call(queue.pop())
        if not self.calls and not queue.entries:
            t._idle(self)

    def close(self):
        for job in self.queue.clear():
            job.dropped(STOPPING)
        for call in list(self.calls):
            call.stop()


def _host_header(host: str, port: int) -> bytes:
    try:
        name = host.encode("ascii")
    except UnicodeError:
        try:
            name = host.encode("idna")  # how the name was looked up
        except UnicodeError:
            name = host.encode("utf-8")
    return b"%s:%d" % (name, port)


@implementer(IEventTransport, IPeerHosts, IDestinationReport, IDrainable, ICounted)
class XMLRPCTransport(Service):
    """
    C{xmlrpc:} subscribers. The listing text (and re-subscribe identity,
    §9 D7) is the socket as written: C{xmlrpc:HOST:PORT[/PATH]:METHOD}.
    """
    _log = Logger()
    schemes = ("xmlrpc",)

    def __init__(self, name, settings, statistics, reactor, budget=None):
        self.name = name
        self.reactor = reactor
        self.connect_timeout = settings["connect_timeout"]
        self.timeout = settings["timeout"]
        self.max_in_flight = settings["max_in_flight"]
        self.queue_size = settings["queue_size"]
        self.counters = TransportCounters(statistics, name)
        budget = ByteBudget() if budget is None else budget
        self._rules = QueueRules(
            self.queue_size, budget.share(statistics, name), reactor,
            lambda destination: (f"queue full ({self.queue_size} waiting behind "
                                 f"{self.max_in_flight} calls)"))
        # derived from the destinations (one is only forgotten when it has
        # nothing in flight or queued), so they can never drift
        statistics.gauge(f"evi_{name}", "in_flight",
                         lambda: sum(len(d.calls) for d in self._destinations.values()))
        statistics.gauge(f"evi_{name}", "queued",
                         lambda: sum(len(d.queue) for d in self._destinations.values()))
        self._destinations = {}
        self._stopped = False
        self._connections = set()  # one _Tracked per open (or opening) connection
        self._opened = 0  # connections ever started: tells a reused one from a new one
        self._all_closed = None
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        # a destination has at most max_in_flight calls open, so that many
        # idle connections per address are all it can use again
        self._pool.maxPersistentPerHost = self.max_in_flight
        self._pool.cachedConnectionTimeout = IDLE_TIMEOUT
        # (Twisted retries only idempotent methods, never a POST: _Call
        # repeats one itself when that is safe, see _may_repeat)
        self._pool.retryAutomatically = False
        self._agent = Agent.usingEndpointFactory(reactor, _Endpoints(self), pool=self._pool)

    def parse(self, scheme, rest):
        host, port, path, method = parse_xmlrpc(rest)
        key = f"xmlrpc:{host}:{port}{path or ''}:{method}"
        return resolve_once(self.reactor, host,
                            lambda ip: Destination(key, (ip, port, path, method, host)))

    @staticmethod
    def peer_hosts(destination):
        # the address connected to: the literal, or what the name resolved
        # to when subscribing (for the [policy])
        return (destination.address[0],)

    def deliver(self, notification, subscriptions):
        batch = Settlement(self.counters, len(subscriptions))
        if self._stopped:
            for sub in subscriptions:
                batch.dropped(sub, STOPPING)
            return batch.result()
        try:
            params = xmlrpc_params(xmlrpc_arguments(notification.event, notification.params))
        except Exception as e:  # e.g. a value the marshaller refuses
            for sub in subscriptions:
                batch.failed(sub, f"cannot encode the call: {e}"[:200])
            return batch.result()
        bodies = {}  # one body per method among the subscribers
        for sub in subscriptions:
            destination = self._destinations.get(sub.key)
            if destination is None:
                ip, port, path, method, host = sub.address
                destination = self._destinations[sub.key] = _XMLRPCDestination(
                    self, sub.key, ip, port, path, method, host)
            body = bodies.get(destination.method)
            if body is None:
                body = bodies[destination.method] = xmlrpc_body(destination.method, params)
            destination.send(_Job(body, sub, batch))
        return batch.result()

    def _idle(self, destination):
        # Nothing in flight: forget a healthy destination (a failing one is
        # kept so that its next failure is not logged again).
        if not destination.spell.failing and \
                self._destinations.get(destination.key) is destination:
            del self._destinations[destination.key]

    def _closed(self, connection):
        self._connections.discard(connection)
        if not self._connections and self._all_closed is not None:
            d, self._all_closed = self._all_closed, None
            d.callback(None)

    def destinations(self):
        """
        One snapshot per destination: calls in flight, queue depth, failing.
        """
        for destination in list(self._destinations.values()):
            yield {"destination": destination.key, "in_flight": len(destination.calls),
                   "queued": len(destination.queue),
                   "failing": int(destination.spell.failing)}

    def drain(self, deadline):
        """
        Shutdown: go on calling until no call is open and nothing is queued,
        or until C{deadline} (a call counts once answered, so nothing is
        left half-delivered). See L{evsrv.interfaces.IEventTransport}.

        @return: Deferred firing with a L{DrainResult} of what is left.
        """

        def drained():
            return not any(d.calls or d.queue for d in self._destinations.values())

        def left(_):
            result = DrainResult()
            for d in self._destinations.values():
                if d.calls or d.queue:
                    state = f"{len(d.calls)} call(s) unanswered"
                    if d.spell.failing:
                        state += f", {d.spell.kind} failing"
                    result.add(d.key, len(d.calls) + len(d.queue), state)
            return result
        return wait_drained(self.reactor, deadline, drained).addCallback(left)

    def stopService(self):
        """
        Drop what waits, cut the calls still open, close the idle
        connections; the Deferred fires once every socket is closed.
        """
        super().stopService()
        self._stopped = True
        for destination in list(self._destinations.values()):
            destination.close()
        self._destinations = {}
        # (its Deferred is not waited on: _connections covers these too, and
        # the connections being cut above)
        self._pool.closeCachedConnections()
        if not self._connections:
            return None
        self._all_closed = Deferred()
        return self._all_closed


def _build(settings, context):
    return XMLRPCTransport("xmlrpc", settings, context.statistics, context.reactor,
                           context.budget)


xmlrpcTransport = TransportFactory(
    "xmlrpc", ("xmlrpc",),
    {"connect_timeout": ("2", seconds, "seconds to wait for the TCP connection of a call"),
     "timeout": ("5", seconds,
                 "seconds a call may take in all (connect, send, answer); then it fails "
                 "and its connection is closed"),
     "max_in_flight": ("4", count(1, 1000), "calls open at once per destination"),
     "queue_size": ("1000", count(1, 1000000),
                    "notifications waiting per destination behind the calls in flight; "
                    "when full the oldest is dropped and counted")},
    _build, "XML-RPC calls over HTTP (event_xmlrpc)")
