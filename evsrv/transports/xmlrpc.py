# -*- test-case-name: tests.test_xmlrpc_transport -*-
"""
The C{xmlrpc:HOST:PORT[/PATH]:METHOD} transport (OpenSIPS event_xmlrpc,
spec §4.3), on C{twisted.web.xmlrpc.Proxy}.

The call is C{METHOD(event_name, {name: value}, ..., value, ...)}: one
one-member struct per named parameter and a plain value per unnamed one, in
raise order (OpenSIPS' C{use_struct_param} layout, valid XML-RPC, §9 D10).
Ints outside XML-RPC's 32-bit C{<int>} travel as their decimal string;
characters XML 1.0 cannot carry (control characters other than tab, CR and
LF, and bytes that were not UTF-8) become U+FFFD.

Each call is an HTTP/1.0 POST on a new TCP connection (Proxy's way, like
OpenSIPS). Unlike OpenSIPS the answer is read: a notification counts as
delivered on a method response, and as failed on a fault, an HTTP error, a
refused or timed out connection, or no complete answer within C{timeout}
seconds (then the connection is closed). A destination (one socket text) has
at most C{max_in_flight} calls open; more notifications wait behind them in
a queue of C{queue_size}, and when that is full the oldest waiting one is
dropped and counted. So a slow or hanging destination costs one connection
per call slot and a bounded queue, and never delays another destination.
A failing destination is logged once when it starts failing (or fails
differently) and once when it works again, never once per notification.
"""

import collections
import re
import warnings

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import Logger
with warnings.catch_warnings():
    # Proxy is built on HTTPClient, deprecated since Twisted 24.7 but still
    # what Proxy uses: the warning is about Twisted's internals, not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web.xmlrpc import Fault, Proxy, QueryFactory
from zope.interface import implementer

from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import BadSocket, IEventTransport
from evsrv.transports import TransportCounters, resolve_once
from evsrv.transports.datagram import parse_port
from evsrv.transports.factories import TransportFactory
from evsrv.transports.stream import STOPPING, DeliveryBatch, Health, count, seconds

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


def _failure_kind(reason):
    """
    C{(kind, text)} of a failed call; the kind decides whether it is logged
    again (a change of kind is a change of state).
    """
    if reason.check(Fault):
        fault = reason.value
        return "fault", f"fault {fault.faultCode}: {str(fault.faultString)[:200]}"
    if reason.check(TimeoutError):
        return "timeout", "no answer in time"
    if reason.check(error.ConnectionRefusedError):
        return "refused", "connection refused"
    if reason.check(error.TimeoutError):
        return "connect", "connect timed out"
    if reason.check(error.ConnectError):
        return "connect", f"cannot connect: {reason.getErrorMessage()}"
    if reason.check(ValueError) and len(reason.value.args) == 2:
        status, message = reason.value.args  # Proxy's badStatus(status, message)
        status = status.decode("latin-1") if isinstance(status, bytes) else status
        message = message.decode("latin-1") if isinstance(message, bytes) else message
        return "http", f"HTTP {status} {message}"[:200]
    return "error", f"{reason.type.__name__}: {reason.getErrorMessage()}"[:200]


class _Job:
    __slots__ = ("args", "sub", "batch")

    def __init__(self, args, sub, batch):
        self.args = args
        self.sub = sub
        self.batch = batch


class _XMLRPCDestination:
    """
    One socket text: its Proxy, calls in flight and the queue behind them.
    """

    def __init__(self, transport, key, ip, port, path, method):
        self.transport = transport
        self.key = key
        self.method = method
        url = f"http://{ip}:{port}/".encode()
        self.proxy = Proxy(url, connectTimeout=transport.connect_timeout,
                           reactor=transport.reactor)
        self.proxy.path = (path or DEFAULT_PATH).encode("ascii")
        self.proxy.queryFactory = transport._query_factory
        self.calls = set()  # Deferreds in flight
        self.queue = collections.deque()
        self.health = Health(transport._log, key, transport.name)

    def send(self, job):
        t = self.transport
        if len(self.calls) < t.max_in_flight:
            self._call(job)
            return
        self.queue.append(job)
        if len(self.queue) > t.queue_size:
            oldest = self.queue.popleft()
            oldest.batch.dropped(oldest.sub, f"queue full ({t.queue_size} waiting behind "
                                             f"{t.max_in_flight} calls)")

    def _call(self, job):
        t = self.transport
        try:
            d = self.proxy.callRemote(self.method, *job.args)
        except Exception as e:  # e.g. a value the marshaller refuses
            job.batch.failed(job.sub, f"cannot encode the call: {e}"[:200])
            return
        d.addTimeout(t.timeout, t.reactor)
        self.calls.add(d)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(job,), errbackArgs=(job,))
        d.addBoth(self._done, d)

    def _answered(self, result, job):
        self.health.success()
        job.batch.delivered(job.sub)

    def _failed(self, reason, job):
        t = self.transport
        if t._stopped and reason.check(CancelledError):
            job.batch.dropped(job.sub, STOPPING)
            return
        kind, text = _failure_kind(reason)
        if kind == "timeout":
            text = f"no answer within {t.timeout} s"
        self.health.failure(kind, text)
        job.batch.failed(job.sub, text)

    def _done(self, _, d):
        t = self.transport
        self.calls.discard(d)
        while self.queue and not t._stopped and len(self.calls) < t.max_in_flight:
            self._call(self.queue.popleft())
        if not self.calls and not self.queue:
            t._idle(self)

    def close(self):
        for job in self.queue:
            job.batch.dropped(job.sub, STOPPING)
        self.queue.clear()
        for d in list(self.calls):
            d.cancel()


@implementer(IEventTransport)
class XMLRPCTransport(Service):
    """
    C{xmlrpc:} subscribers. The listing text (and re-subscribe identity,
    §9 D7) is the socket as written: C{xmlrpc:HOST:PORT[/PATH]:METHOD}.
    """
    _log = Logger()
    schemes = ("xmlrpc",)

    def __init__(self, name, settings, statistics, reactor):
        self.name = name
        self.reactor = reactor
        self.connect_timeout = settings["connect_timeout"]
        self.timeout = settings["timeout"]
        self.max_in_flight = settings["max_in_flight"]
        self.queue_size = settings["queue_size"]
        self.counters = TransportCounters(statistics, name)
        # derived from the destinations (one is only forgotten when it has
        # nothing in flight or queued), so they can never drift
        statistics.gauge(f"evi_{name}", "in_flight",
                         lambda: sum(len(d.calls) for d in self._destinations.values()))
        statistics.gauge(f"evi_{name}", "queued",
                         lambda: sum(len(d.queue) for d in self._destinations.values()))
        self._destinations = {}
        self._stopped = False
        self._connections = set()  # query factories whose connection is open
        self._all_closed = None
        transport = self

        class TrackedQuery(QueryFactory):
            # Knows when its connection is really gone, so that stopping
            # waits for every socket to close.
            noisy = False

            def startFactory(self):
                transport._connections.add(self)

            def stopFactory(self):
                transport._closed(self)
        self._query_factory = TrackedQuery

    def parse(self, scheme, rest):
        host, port, path, method = parse_xmlrpc(rest)
        key = f"xmlrpc:{host}:{port}{path or ''}:{method}"
        return resolve_once(self.reactor, host,
                            lambda ip: Destination(key, (ip, port, path, method)))

    @staticmethod
    def peer_hosts(destination):
        # the address connected to: the literal, or what the name resolved
        # to when subscribing (for the [policy])
        return (destination.address[0],)

    def deliver(self, notification, subscriptions):
        batch = DeliveryBatch(self.counters)
        batch.pending = len(subscriptions)
        if self._stopped:
            for sub in subscriptions:
                batch.dropped(sub, STOPPING)
            return batch.result()
        args = xmlrpc_arguments(notification.event, notification.params)
        for sub in subscriptions:
            destination = self._destinations.get(sub.key)
            if destination is None:
                ip, port, path, method = sub.address
                destination = self._destinations[sub.key] = _XMLRPCDestination(
                    self, sub.key, ip, port, path, method)
            destination.send(_Job(args, sub, batch))
        return batch.result()

    def _idle(self, destination):
        # Nothing in flight: forget a healthy destination (a failing one is
        # kept so that its next failure is not logged again).
        if destination.health.kind is None and \
                self._destinations.get(destination.key) is destination:
            del self._destinations[destination.key]

    def _closed(self, factory):
        self._connections.discard(factory)
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
                   "failing": int(destination.health.kind is not None)}

    def drain(self, deadline):
        """
        Shutdown: go on calling until no call is open and nothing is queued,
        or until C{deadline} (a call counts once answered, so nothing is
        left half-delivered). See L{evsrv.interfaces.IEventTransport}.

        @return: Deferred firing with a L{DrainResult} of what is left.
        """
        from evsrv.shutdown import DrainResult, wait_drained

        def drained():
            return not any(d.calls or d.queue for d in self._destinations.values())

        def left(_):
            result = DrainResult()
            for d in self._destinations.values():
                if d.calls or d.queue:
                    state = f"{len(d.calls)} call(s) unanswered"
                    if d.health.kind is not None:
                        state += f", {d.health.kind} failing"
                    result.add(d.key, len(d.calls) + len(d.queue), state)
            return result
        return wait_drained(self.reactor, deadline, drained).addCallback(left)

    def stopService(self):
        super().stopService()
        self._stopped = True
        for destination in list(self._destinations.values()):
            destination.close()
        self._destinations = {}
        if not self._connections:
            return None
        self._all_closed = Deferred()
        return self._all_closed


def _build(settings, context):
    return XMLRPCTransport("xmlrpc", settings, context.statistics, context.reactor)


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
