# -*- test-case-name: tests.test_upstream -*-
"""
Non-blocking JSON-RPC MI clients for an OpenSIPS proxy (spec §2.1, §3.2):
C{udp:HOST:PORT} (mi_datagram) through a connected UDP socket, and
C{http://HOST:PORT/PATH} (mi_http) through C{twisted.web.client.Agent}.
Both answer C{call(method, params)} with a Deferred of the result, failing
with L{MIErrorReply} when the MI answered with an error and with
L{MIUnavailable} when it did not answer usefully.

What a proxy can do to them, and what happens:

 - down or unreachable: UDP gets "connection refused" from the kernel (a
   connected socket hears the ICMP error) or no answer; HTTP a refused or
   timed-out connect. Either way the call fails after at most C{timeout}
   seconds, and the UDP socket is closed so that the next call resolves
   the name again (a proxy that came back on another address is found);
 - slow: a call not answered within C{timeout} fails; a late UDP answer
   (its id no longer waited for) is ignored;
 - malicious: answers from other addresses never reach a connected UDP
   socket; a datagram is at most 64 KiB; an HTTP body longer than
   L{MAX_REPLY} bytes is cut off and the call fails; anything that is not
   a JSON-RPC answer fails the call, never the client.
"""

import ipaddress
import json

from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import TimeoutError as TwistedTimeout
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

from evsrv import encoding
from evsrv.util.web import BytesBody

MAX_REPLY = 1024 * 1024  # bytes of an HTTP MI answer


class MIErrorReply(Exception):
    """
    The MI answered with a JSON-RPC error.
    """

    def __init__(self, code, message, data=None):
        super().__init__(f"{code} {message}" + (f" ({data})" if data else ""))
        self.code = code
        self.message = message
        self.data = data


class MIUnavailable(Exception):
    """
    No useful answer: timed out, refused, unreachable, not JSON-RPC.
    """


def _request(method, params, ident) -> bytes:
    request = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        request["params"] = params
    request["id"] = ident
    return encoding.dumps(request)


def _answer(data: bytes):
    """
    @return: C{(id, result, error)} of a JSON-RPC answer.
    @raise MIUnavailable: not one.
    """
    try:
        reply = json.loads(encoding.from_bytes(data))
    except (ValueError, RecursionError):
        raise MIUnavailable(f"not a JSON-RPC answer: {bytes(data[:60])!r}") from None
    if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
        raise MIUnavailable(f"not a JSON-RPC answer: {bytes(data[:60])!r}")
    error = reply.get("error")
    if error is not None:
        if not isinstance(error, dict):
            error = {"code": None, "message": str(error)}
        error = MIErrorReply(error.get("code"), error.get("message"), error.get("data"))
    return reply.get("id"), reply.get("result"), error


class MIDatagramClientProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, client):
        self.client = client
        self.closing = False  # the client closes the port itself

    def datagramReceived(self, data, addr):
        self.client._received(data)

    def connectionRefused(self):
        self.client._down(self, "connection refused")

    def stopProtocol(self):
        # Twisted's epoll reactor closes a connected UDP port when the ICMP
        # error of a dead peer arrives (an error event with nothing to read)
        if not self.closing:
            self.client._down(self, "connection refused")


class DatagramMIClient:
    """
    The MI of C{udp:HOST:PORT}. Calls may overlap (answers are matched by
    id); an answer that is not JSON (mi_datagram's plain C{400 Parse_error})
    fails the oldest call waiting.

    @param reactor: for the socket and name resolution.
    @param clock: for the timeouts (default: C{reactor}).
    """
    def __init__(self, reactor, host, port, timeout, clock=None):
        self.reactor = reactor
        self.clock = reactor if clock is None else clock
        self.host = host
        self.port = port
        self.timeout = timeout
        self.label = f"udp:{host}:{port}"
        self._listening = None
        self._opening = None
        self._pending = {}  # id -> (Deferred, DelayedCall), oldest first
        self._next_id = 0
        self._closed = False

    def call(self, method, params=None) -> Deferred:
        if self._closed:
            return fail(MIUnavailable("the client is closed"))
        self._next_id = self._next_id % (2 ** 31 - 1) + 1
        ident = self._next_id
        d = Deferred()
        timer = self.clock.callLater(self.timeout, self._timed_out, ident)
        self._pending[ident] = (d, timer)
        data = _request(method, params, ident)

        def send(_):
            if ident in self._pending and self._listening is not None:
                try:
                    self._listening.write(data)
                except OSError as e:
                    self._down(self._listening.protocol, e.strerror or str(e))
        self._open().addCallbacks(send, lambda f: self._fail(ident, MIUnavailable(
            f"cannot reach it: {f.getErrorMessage()}")))
        return d

    def _open(self):
        if self._listening is not None:
            return succeed(None)
        if self._opening is not None:
            waiter = Deferred()
            self._opening.append(waiter)
            return waiter
        self._opening = []
        try:
            ipaddress.ip_address(self.host)
            resolved = succeed(self.host)
        except ValueError:
            resolved = self.reactor.resolve(self.host)

        def connect(ip):
            interface = "::" if ":" in ip else "0.0.0.0"
            listening = self.reactor.listenUDP(0, MIDatagramClientProtocol(self),
                                               interface=interface, maxPacketSize=65536)
            listening.connect(ip, self.port)
            if self._closed:
                listening.stopListening()
                raise MIUnavailable("the client is closed")
            self._listening = listening

        def done(result):
            waiters, self._opening = self._opening, None
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)
            return result
        return resolved.addCallback(connect).addBoth(done)

    def _received(self, data):
        try:
            ident, result, error = _answer(data)
        except MIUnavailable as e:
            if self._pending:
                self._fail(next(iter(self._pending)), e)
            return
        entry = self._pending.pop(ident, None) if type(ident) is int else None
        if entry is None:
            return  # late (timed out already) or not ours
        d, timer = entry
        if timer.active():
            timer.cancel()
        if error is not None:
            d.errback(error)
        else:
            d.callback(result)

    def _fail(self, ident, error):
        entry = self._pending.pop(ident, None)
        if entry is None:
            return
        d, timer = entry
        if timer.active():
            timer.cancel()
        d.errback(error)

    def _timed_out(self, ident):
        self._fail(ident, MIUnavailable(f"no answer in {self.timeout:g} s"))
        self._reset()

    def _down(self, protocol, reason):
        if self._listening is None or self._listening.protocol is not protocol:
            return  # an old socket
        for ident in list(self._pending):
            self._fail(ident, MIUnavailable(reason))
        self._reset()

    def _reset(self):
        # the next call opens a new socket, resolving the name again
        listening, self._listening = self._listening, None
        if listening is not None:
            listening.protocol.closing = True
            if listening.connected:
                listening.stopListening()

    def close(self):
        """
        Fail every call waiting and close the socket. @return: a Deferred.
        """
        self._closed = True
        for ident in list(self._pending):
            self._fail(ident, MIUnavailable("the client is closed"))
        listening, self._listening = self._listening, None
        if listening is None or not listening.connected:
            return succeed(None)
        listening.protocol.closing = True
        return maybeDeferred(listening.stopListening)


class _BoundedBody(Protocol):
    """
    Reads an HTTP body of at most L{MAX_REPLY} bytes.
    """

    def __init__(self, finished):
        self.finished = finished
        self.parts = []
        self.size = 0

    def dataReceived(self, data):
        if self.finished is None:
            return
        self.size += len(data)
        if self.size > MAX_REPLY:
            finished, self.finished = self.finished, None
            self.transport.stopProducing()
            finished.errback(MIUnavailable(f"answer longer than {MAX_REPLY} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        finished, self.finished = self.finished, None
        if finished is None:
            return
        if reason.check(ResponseDone):
            finished.callback(b"".join(self.parts))
        else:
            finished.errback(MIUnavailable(f"answer cut off: {reason.getErrorMessage()}"))


class HTTPMIClient:
    """
    The MI of C{http://HOST:PORT/PATH} (or https), one POST per call, no
    connection kept between calls (a proxy is asked a few times a minute).
    """

    def __init__(self, reactor, url, timeout, clock=None):
        self.reactor = reactor
        self.clock = reactor if clock is None else clock
        self.url = url
        self.label = url
        self.timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent(reactor, connectTimeout=timeout, pool=self._pool)
        self._next_id = 0
        self._calls = set()
        self._closed = False

    def call(self, method, params=None) -> Deferred:
        if self._closed:
            return fail(MIUnavailable("the client is closed"))
        self._next_id = self._next_id % (2 ** 31 - 1) + 1
        body = BytesBody(_request(method, params, self._next_id))
        d = self._agent.request(b"POST", self.url.encode(),
                                Headers({b"Content-Type": [b"application/json"]}), body)

        def read(response):
            finished = Deferred()
            response.deliverBody(_BoundedBody(finished))
            return finished.addCallback(lambda data: (response.code, data))

        def parse(result):
            code, data = result
            try:
                _, value, error = _answer(data)
            except MIUnavailable:
                raise MIUnavailable(f"HTTP {code}, not a JSON-RPC answer") from None
            if error is not None:
                raise error
            return value

        def failed(failure):
            if failure.check(MIErrorReply, MIUnavailable):
                return failure
            if failure.check(TwistedTimeout, CancelledError):
                raise MIUnavailable(f"no answer in {self.timeout:g} s")
            raise MIUnavailable(failure.getErrorMessage() or failure.type.__name__)
        d.addCallback(read)
        d.addCallback(parse)
        d.addTimeout(self.timeout, self.clock)
        d.addErrback(failed)
        self._calls.add(d)
        d.addBoth(self._forget, d)
        return d

    def _forget(self, result, d):
        self._calls.discard(d)
        return result

    def close(self):
        """
        Cancel the calls in flight. @return: a Deferred.
        """
        self._closed = True
        for d in list(self._calls):
            d.cancel()
        return self._pool.closeCachedConnections()


def mi_client(reactor, mi, timeout, clock=None):
    """
    The client of an C{[upstream:NAME] mi} value: C{("udp", host, port)} or
    C{("http", url)}.
    """
    if mi[0] == "udp":
        return DatagramMIClient(reactor, mi[1], mi[2], timeout, clock)
    return HTTPMIClient(reactor, mi[1], timeout, clock)
