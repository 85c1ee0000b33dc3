# -*- test-case-name: tests.test_ingest -*-
"""
The ingest listeners: thin protocols that cut what OpenSIPS sends into
notifications and hand each to the L{IngestController}.

 - C{[ingest] udp} and C{unix}: one datagram is one notification
   (event_datagram, spec §4.1). Nothing is ever sent back on a datagram
   listener, not even to a request with an C{id}: a spoofed source must not
   turn evsrv into a reflector. A flood beyond the kernel's receive buffer
   is dropped by the kernel; what is read is at most 16 KiB per reactor
   turn (as the MI), so a flood cannot hold the reactor.
 - C{[ingest] tcp}: JSON objects back to back on a persistent connection
   (event_stream, §4.4), cut by L{evsrv.util.jsonstream.ObjectSplitter}.
   Replies (reliable mode) are written in the order the notifications came.
   A peer that does not read its replies stops being read once Twisted holds
   64 KiB for it (we are its streaming producer), so it cannot make evsrv
   buffer without bound; a peer over the rate stops being read until the
   rate allows more; a peer that sends something that is not a JSON object
   is disconnected (the stream cannot be resynchronised); one that sends
   half an object and goes quiet holds at most C{max_size} bytes until it
   closes, and at most C{max_connections} connections are open at once (the
   next is closed at once, counted in C{ingest:connections_refused}).

Who may send: C{[ingest] allow} for UDP and TCP (checked before anything
else: a refused source costs a lookup, is counted in C{ingest:denied} and
gets nothing); UNIX senders by the socket file's mode (C{unix_mode}).
"""

import os
from collections import deque

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger

from evsrv.mi.protocol import ListenError, listen_udp, listen_unix
from evsrv.util.jsonstream import OVERSIZE, ObjectSplitter, StreamError

CLOSE_GRACE = 1.0  # seconds TCP connections get to take their last replies at stop


class IngestListenError(Exception):
    """
    An ingest address could not be opened; C{key} is its C{[ingest]} key.
    """

    def __init__(self, key, message):
        super().__init__(message)
        self.key = key


class IngestDatagramProtocol(DatagramProtocol):
    """
    One C{[ingest] udp} or C{unix} socket.
    """
    noisy = False

    def __init__(self, controller, label):
        self.controller = controller
        self.label = label

    def datagramReceived(self, data, addr):
        if isinstance(addr, tuple):
            host = addr[0]
            if not self.controller.allowed(host, self.label):
                return
            source = f"udp:{host}:{addr[1]}"
        else:
            # UNIX senders: let in by the file mode; one rate for them all
            host = self.label
            source = self.label
        if not data:
            return
        if self.controller.wait(host):
            self.controller.flood(source)
            return
        self.controller.take(data, source)  # a reply is never sent (see the module docstring)


class IngestStreamProtocol(Protocol):
    """
    One event_stream connection.
    """

    def __init__(self, controller, clock):
        self.controller = controller
        self.clock = clock
        self.splitter = ObjectSplitter(controller.max_size)
        self.backlog = deque()  # notifications read, waiting for the rate
        self._paused = set()     # why reading stopped: "rate", "peer"
        self._resume = None
        self.host = self.source = None
        self.closed = None  # a Deferred fired at connectionLost, when the service waits

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.host = peer.host
        self.source = f"tcp:{peer.host}:{peer.port}"
        self.controller.connections.add(self)
        # the peer's reading speed paces ours: see pauseProducing
        self.transport.registerProducer(self, True)

    def dataReceived(self, data):
        try:
            self.backlog.extend(self.splitter.feed(data))
        except StreamError as e:
            self.controller.bad(self.source, f"{e}; disconnected")
            self.backlog.clear()
            self.transport.abortConnection()
            return
        self._work()

    def _work(self):
        controller = self.controller
        while self.backlog and not self._paused:
            wait = controller.wait(self.host)
            if wait:
                controller.slowed(self.source)
                self._pause("rate")
                self._resume = self.clock.callLater(wait, self._rate_allows)
                return
            item = self.backlog.popleft()
            if item is OVERSIZE:
                controller.bad(self.source, f"an object longer than [ingest] max_size "
                                            f"({controller.max_size} bytes), skipped")
                continue
            reply = controller.take(item, self.source)
            if reply is not None:
                self.transport.write(reply)

    def _rate_allows(self):
        self._resume = None
        self._unpause("rate")

    def _pause(self, reason):
        if not self._paused:
            self.transport.pauseProducing()  # stop reading the socket
        self._paused.add(reason)

    def _unpause(self, reason):
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused:
            self._work()
            if not self._paused and self.transport.connected:
                self.transport.resumeProducing()

    # IPushProducer, for the replies: Twisted pauses us when it holds 64 KiB
    # the peer has not read
    def pauseProducing(self):
        self._pause("peer")

    def resumeProducing(self):
        self._unpause("peer")

    def stopProducing(self):
        self.backlog.clear()

    def connectionLost(self, reason):
        self.controller.connections.discard(self)
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        self.backlog.clear()
        waiter, self.closed = self.closed, None
        if waiter is not None:
            waiter.callback(None)


class IngestStreamFactory(Factory):
    noisy = False

    def __init__(self, controller, clock, label, max_connections):
        self.controller = controller
        self.clock = clock
        self.label = label
        self.max_connections = max_connections

    def buildProtocol(self, addr):
        # returning None closes the connection at once
        if not self.controller.allowed(addr.host, self.label):
            return None
        if len(self.controller.connections) >= self.max_connections:
            self.controller.too_many(f"tcp:{addr.host}:{addr.port}", self.max_connections)
            return None
        protocol = IngestStreamProtocol(self.controller, self.clock)
        protocol.factory = self
        return protocol


class IngestService(Service):
    """
    The ingest listeners, opened by L{listen} before the reactor runs (a
    taken address stops start-up), closed when the server stops: ports,
    UNIX socket files, then the TCP connections (given L{CLOSE_GRACE}
    seconds to take their last replies, then cut).
    """
    _log = Logger()

    def __init__(self, controller, reactor, *, udp=(), unix=(), unix_mode=0o660, tcp=(),
                 max_connections=64):
        self.controller = controller
        self.reactor = reactor
        self.udp = list(udp)
        self.unix = [str(p) for p in unix]
        self.unix_mode = unix_mode
        self.tcp = list(tcp)
        self.max_connections = max_connections
        self.ports = []
        self._paths = []
        self.addresses = []  # (kind, host, port) or ("unix", path, None), as bound

    def listen(self):
        """
        @raise IngestListenError: naming the key of the address that failed;
            nothing is left open.
        """
        try:
            for host, port in self.udp:
                protocol = IngestDatagramProtocol(self.controller, f"udp:{host}:{port}")
                try:
                    listening = listen_udp(self.reactor, protocol, host, port)
                except ListenError as e:
                    raise IngestListenError("udp", str(e)) from None
                self.ports.append(listening)
                bound = listening.getHost()
                self.addresses.append(("udp", bound.host, bound.port))
            for path in self.unix:
                protocol = IngestDatagramProtocol(self.controller, f"unix:{path}")
                try:
                    listening = listen_unix(self.reactor, protocol, path, self.unix_mode)
                except ListenError as e:
                    raise IngestListenError("unix", str(e)) from None
                self.ports.append(listening)
                self._paths.append(path)
                self.addresses.append(("unix", path, None))
            for host, port in self.tcp:
                factory = IngestStreamFactory(self.controller, self.reactor,
                                              f"tcp:{host}:{port}", self.max_connections)
                try:
                    listening = self.reactor.listenTCP(port, factory, interface=host)
                except CannotListenError as e:
                    raise IngestListenError(
                        "tcp", f"cannot listen on tcp:{host}:{port}: {e.socketError}") from None
                self.ports.append(listening)
                bound = listening.getHost()
                self.addresses.append(("tcp", bound.host, bound.port))
        except IngestListenError:
            self.stop_listening()
            raise

    def stop_listening(self):
        """
        Close the ports at once (start-up failed after L{listen}).
        """
        for listening in self.ports:
            listening.stopListening()
        self.ports = []
        self.addresses = []
        self._unlink()

    def address(self, kind):
        """
        The first bound address of C{kind} (C{"udp"}, C{"tcp"}, C{"unix"}),
        or C{None}.
        """
        for address in self.addresses:
            if address[0] == kind:
                return address
        return None

    def startService(self):
        super().startService()
        for kind, host, port in self.addresses:
            where = host if kind == "unix" else f"{host}:{port}"
            self._log.info("ingest listening on {kind}:{where}", kind=kind, where=where)

    def stopService(self):
        super().stopService()
        ports, self.ports = self.ports, []
        d = DeferredList([maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
        d.addCallback(lambda _: self._unlink())
        d.addCallback(lambda _: self._close_connections())
        return d

    def _unlink(self):
        for path in self._paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                self._log.warn("ingest: cannot remove {path}: {error}", path=path,
                               error=e.strerror)
        self._paths = []

    def _close_connections(self):
        connections = list(self.controller.connections)
        if not connections:
            return succeed(None)
        waits = []
        for protocol in connections:
            protocol.closed = Deferred()
            waits.append(protocol.closed)
            # no producer left registered: loseConnection then closes as
            # soon as what is written has gone
            protocol.transport.unregisterProducer()
            protocol.transport.loseConnection()

        def cut():
            for protocol in list(self.controller.connections):
                protocol.transport.abortConnection()
        guard = self.reactor.callLater(CLOSE_GRACE, cut)

        def done(result):
            if guard.active():
                guard.cancel()
            return result
        return DeferredList(waits).addCallback(done)
