# -*- test-case-name: tests.test_http_mi -*-
"""
The twisted.web site on the C{[http]} port: the MI resource at C{mi_path},
the metrics at C{metrics_path} and the status page at C{status_path}; any
other path is a 404.

Hostile or broken clients:
 - a client whose address is not in C{[http] allow} (default: loopback) is
   disconnected as soon as it is accepted, with no service at all, counted in
   C{http:connections_refused} and logged at most once per 10 s;
 - a request body larger than C{max_request} is refused with 413 and the
   connection closed as soon as its C{Content-Length} (or, chunked, the bytes
   received) says so; nothing beyond the cap is kept in memory;
 - request line and headers are capped by twisted.web (16 KiB, 500 headers:
   400 and the connection closed);
 - a slow or silent client only holds its own connection: twisted.web reads
   and writes without blocking, and closes a connection idle for
   C{idle_timeout} seconds; a client that does not read a large reply only
   grows its own connection's send buffer;
 - a client cannot keep a connection by dribbling (slowloris: a byte now and
   then resets the idle timer): the request line and headers must be
   complete within C{header_timeout} of the connection's start (on a
   keep-alive connection, of the next request's first byte: the wait for it
   is C{idle_timeout}'s), and the body within C{idle_timeout} of the
   headers' end, however steadily the bytes come. Past either deadline a
   request begun is answered 408 and the connection closed, counted in
   C{http:requests_timed_out} and logged at most once per 10 s; a
   connection that sent nothing at all is just closed, as an idle one.
Access lines are logged at debug level only (one per request would drown the
log of a scraped server).
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from evsrv.http.metrics import MetricsResource
from evsrv.http.mi import MIResource
from evsrv.http.status import StatusResource
from evsrv.util.ratelimit import RateLimitedLog

_TOO_LARGE = b"413 Request body too large"
_TIMED_OUT = b"408 Request Timeout"
_PARTS = {"head": "request line and headers", "body": "body"}


class HTTPListenError(Exception):
    """
    The HTTP port could not be opened; the message says where and why.
    """


class CappedRequest(Request):
    """
    A request whose body may not exceed the site's C{max_request} bytes.
    """
    _too_large = False
    _received = 0

    def gotLength(self, length):
        self._received = 0
        if length is not None and length > self.channel.site.max_request:
            super().gotLength(0)
            self._refuse()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data):
        if self._too_large:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_request:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self._too_large:
            return  # already answered; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse(self):
        # Answered at once (not after reading a body we will not keep), then
        # the connection is closed: the client cannot make us read more.
        self._too_large = True
        # twisted.web would answer "100 Continue" right after this call
        self.requestHeaders.removeHeader(b"Expect")
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Request Entity Too Large\r\n"
                        b"Content-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                        % (len(_TOO_LARGE), _TOO_LARGE))
        self.channel.site.too_large.value += 1
        self.channel.loseConnection()


class EvsrvChannel(HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel with deadlines on receiving a request
    (twisted.web only has the idle timer, which every byte resets), and the
    bookkeeping of the site's open connections.

    Deadlines: the head from the connection's start, or on a keep-alive
    connection from the next request's first byte (the silent wait before it
    stays C{idle_timeout}'s, as a scraper polling every 30 s expects); the
    body from the head's end. None runs while a request is being answered.
    """
    _deadline = None   # the running deadline's DelayedCall, or the close's abort
    _waiting = False   # keep-alive, between requests: the next byte starts a head
    _begun = False     # bytes of the current request have come
    _gone = None

    def connectionMade(self):
        self._gone = Deferred()
        self.site.connections[self.transport] = self._gone
        super().connectionMade()
        self._expect("head", self.site.header_timeout)

    def dataReceived(self, data):
        # (pipelined bytes held while the previous request was answered come
        # through here too, replayed by requestDone: timed from then)
        if self._waiting:
            self._waiting = False
            self._expect("head", self.site.header_timeout)
        # (bytes that come while a request is answered belong to the next
        # one; requestDone forgets them here and they come back through)
        self._begun = True
        super().dataReceived(data)

    def allHeadersReceived(self):
        self._cancel()
        super().allHeadersReceived()
        if self.length != 0:  # a body follows (None: chunked)
            # idle_timeout, not header_timeout: a body may be up to
            # max_request (1 MiB and more) where a head is at most 16 KiB
            self._expect("body", self.site.timeOut)

    def allContentReceived(self):
        self._cancel()
        super().allContentReceived()

    def requestDone(self, request):
        if self.persistent:
            self._waiting, self._begun = True, False
        super().requestDone(request)

    def connectionLost(self, reason):
        self._cancel()
        if self._gone is None:
            return super().connectionLost(reason)
        self.site.connections.pop(self.transport, None)
        try:
            super().connectionLost(reason)
        finally:
            self._gone.callback(None)

    def _expect(self, part, timeout):
        self._cancel()
        if timeout:
            self._deadline = self.callLater(timeout, self._timed_out, part, timeout)

    def _cancel(self):
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _timed_out(self, part, timeout):
        self._deadline = None
        if self.transport.disconnecting:
            # Already answered (400, 413) and closing, waiting for the client
            # to read it: it had the deadline to do so; no 408 after those.
            self.transport.abortConnection()
            return
        if not self._begun:
            # Nothing of a request came: an idle connection (browsers open
            # spare ones), closed quietly rather than counted as an attack.
            self.loseConnection()
            return
        self.site.request_timed_out(self, part, timeout)
        # Nothing of a response has been started (no deadline runs once a
        # request is being answered): the client may learn why.
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\n"
                             b"Content-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(_TIMED_OUT), _TIMED_OUT))
        self.loseConnection()
        # A client that reads nothing (its window full of an earlier reply)
        # would hold the clean close open forever: cut off after
        # abortTimeout, as twisted.web does after its own idle timeout.
        if self.abortTimeout is not None:
            self._deadline = self.callLater(self.abortTimeout, self.transport.abortConnection)


class _Paths(Resource):
    """
    Exact paths to leaf resources (C{/mi}, C{/metrics}), whatever they are
    configured to be.
    """
    isLeaf = True

    def __init__(self, routes):
        super().__init__()
        self.routes = routes

    def render(self, request):
        target = self.routes.get(request.path)
        if target is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"404 Not Found"
        return target.render(request)


class EvsrvSite(Site):
    """
    The site; it also keeps its open connections so that stopping the server
    closes them (and their timers) rather than leaving them to the reactor.
    """
    # The channel itself rather than twisted.web's default wrapper, which
    # only adds switching to HTTP/2 after TLS ALPN; this site has no TLS.
    protocol = EvsrvChannel
    requestFactory = CappedRequest
    _log = Logger()

    def __init__(self, resource, reactor, max_request, idle_timeout, statistics, allow=None,
                 header_timeout=None):
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)
        self.max_request = max_request
        self.allow = allow  # NetworkList of client addresses served; None: every client
        self.header_timeout = header_timeout  # None: no deadline on request heads
        self.too_large = statistics.counter("http", "requests_too_large")
        self._requests = statistics.counter("http", "requests")
        self._refused = statistics.counter("http", "connections_refused")
        self._timed_out = statistics.counter("http", "requests_timed_out")
        self._warn_refused = RateLimitedLog(self._log, reactor)
        self._warn_timed_out = RateLimitedLog(self._log, reactor)
        self.connections = {}  # transport -> Deferred fired when it is gone

    def buildProtocol(self, addr):
        # (addr None: built in-process, as tests do; a listening port always gives one)
        if self.allow is not None and addr is not None and addr.host not in self.allow:
            # No protocol: Twisted closes the accepted socket at once, before
            # a byte is read, so a refused client costs no buffer or timer.
            self._refused.value += 1
            self._warn_refused.warn("HTTP connection from {source} refused: not in [http] "
                                    "allow ({allow})", source=addr.host, allow=str(self.allow))
            return None
        return super().buildProtocol(addr)

    def request_timed_out(self, channel, part, timeout):
        """
        Count and log a request that missed its deadline (see L{EvsrvChannel}).
        """
        self._timed_out.value += 1
        peer = channel.transport.getPeer()
        self._warn_timed_out.warn("HTTP client {peer} timed out: {part} not received within "
                                  "{timeout:g} s; answered 408, connection closed",
                                  peer=getattr(peer, "host", peer), part=_PARTS[part],
                                  timeout=timeout)

    # Twisted's access log (and its once-a-second clock) is replaced by a
    # debug line per request.
    def startFactory(self):
        pass

    def stopFactory(self):
        pass

    def log(self, request):
        self._requests.value += 1
        self._log.debug("HTTP {method} {path} {code} {length}",
                        method=request.method.decode("latin-1"),
                        path=request.uri.decode("latin-1")[:200],
                        code=request.code, length=request.sentLength)

    def close_connections(self):
        """
        Close every open connection. @return: Deferred fired once all are gone.
        """
        waiting = list(self.connections.values())
        for transport in list(self.connections):
            transport.abortConnection()
        return gatherResults(waiting)


def build_site(http_config, reactor, statistics, evi, controller, dispatcher, mi_filters=()):
    """
    @param http_config: L{evsrv.config.HTTPConfig}.
    @param dispatcher: the MI dispatcher of the HTTP MI (no reply size limit).
    @param mi_filters: the MI request gates (pike), asked for every HTTP MI
        request as for the datagram MI.
    """
    routes = {}
    if http_config.mi_path:
        routes[http_config.mi_path.encode()] = MIResource(dispatcher, mi_filters)
    if http_config.metrics_path:
        routes[http_config.metrics_path.encode()] = MetricsResource(statistics, evi, controller)
    if http_config.status_path:
        routes[http_config.status_path.encode()] = StatusResource(statistics, evi, reactor)
    return EvsrvSite(_Paths(routes), reactor, http_config.max_request,
                     http_config.idle_timeout, statistics, http_config.allow,
                     http_config.header_timeout)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class HTTPService(Service):
    """
    The listening HTTP port: opened by L{listen} before the reactor runs (so
    a taken address stops start-up), closed with its connections at stop.
    """
    _log = Logger()

    def __init__(self, site, reactor, host, port):
        self.site = site
        self.reactor = reactor
        self.host = host
        self.port = port
        self.listening = None
        self.base_url = None  # "http://HOST:PORT" once listening (the real port)

    def listen(self):
        try:
            self.listening = self.reactor.listenTCP(self.port, self.site, interface=self.host)
        except CannotListenError as e:
            raise HTTPListenError(f"cannot listen on http://{url_host(self.host)}:{self.port}: "
                                  f"{e.socketError}") from None
        address = self.listening.getHost()
        self.base_url = f"http://{url_host(address.host)}:{address.port}"
        return self.listening

    def stopService(self):
        super().stopService()
        if self.listening is None:
            return None
        listening, self.listening = self.listening, None
        return gatherResults([maybeDeferred(listening.stopListening),
                             self.site.close_connections()])
