# -*- test-case-name: tests.test_mi_protocol -*-
"""
The MI datagram listeners (UDP and UNIX): a thin protocol that hands each
datagram to the dispatcher and sends the reply back to its source.

A client that floods the MI gets its datagrams dropped by the kernel once the
receive buffer is full; a client that does not read its replies (or a UNIX
client that did not bind a path) loses them, counted in C{mi:replies_failed}.
Nothing here ever blocks.
"""

import errno
import os
import socket
import stat

from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

MAX_DATAGRAM = 65457  # OpenSIPS mi_datagram's default socket_buf_size
RECEIVE_BUFFER = 4 * 1024 * 1024


class RateLimitedLog:
    """
    Logs a repeated warning at most once per C{period} seconds, with the
    number of occurrences suppressed in between.
    """

    def __init__(self, log, clock, period=10.0):
        self.log = log
        self.clock = clock
        self.period = period
        self._last = None
        self._suppressed = 0

    def warn(self, fmt, **kw):
        now = self.clock.seconds()
        if self._last is not None and now - self._last < self.period:
            self._suppressed += 1
            return
        self._last = now
        self.log.warn(fmt + " ({suppressed} similar messages suppressed)",
                      suppressed=self._suppressed, **kw)
        self._suppressed = 0


class MIDatagramProtocol(DatagramProtocol):
    """
    One MI socket. Replies go from the same socket to the request's source
    address (for UNIX: the client's bound path).
    """
    _log = Logger()
    noisy = False  # the server logs its own "MI listening on ..." line

    def __init__(self, dispatcher, clock, label, filters=(), allow=None):
        self.dispatcher = dispatcher
        self.allow = allow  # NetworkList of UDP sources served; None: every source
        self.label = label
        # request gates (pike, later ACLs): any false answer ignores the datagram
        self.filters = filters
        statistics = dispatcher.controller.statistics
        self._failed = statistics.counter("mi", "replies_failed")
        self._warn = RateLimitedLog(self._log, clock)

    def datagramReceived(self, data, addr):
        if not data:
            return  # OpenSIPS ignores empty datagrams too
        for allow in self.filters:
            if not allow(addr):
                return
        d = self.dispatcher.handle(data)
        d.addCallback(self._reply, addr)
        d.addErrback(self._log.failure, "MI request from {addr} on {label} failed",
                     addr=addr, label=self.label)

    def _reply(self, reply, addr):
        if reply is None:
            return
        if not addr:
            self._failed.value += 1
            self._warn.warn("{label}: cannot reply to an unbound UNIX client", label=self.label)
            return
        try:
            self.transport.socket.sendto(reply, addr)
        except OSError as e:
            self._failed.value += 1
            self._warn.warn("{label}: reply to {addr} lost: {error}", label=self.label,
                            addr=addr, error=os.strerror(e.errno) if e.errno else e)


class ListenError(Exception):
    """
    An MI socket could not be opened; the message says which and why.
    """


def _grow_receive_buffer(port):
    try:
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError:
        pass


def listen_udp(reactor, protocol, host: str, port: int):
    from twisted.internet.error import CannotListenError
    try:
        listening = reactor.listenUDP(port, protocol, interface=host, maxPacketSize=65536)
    except CannotListenError as e:
        raise ListenError(f"cannot listen on udp:{host}:{port}: {e.socketError}") from None
    _grow_receive_buffer(listening)
    return listening


def _clear_stale_socket(path: str):
    """
    Remove a socket file left by a server that is gone; refuse to take over
    one that a live server still answers on.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"cannot listen on {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError as e:
        raise ListenError(f"cannot listen on {path}: {e.strerror}") from None
    finally:
        probe.close()
    raise ListenError(f"cannot listen on {path}: another process is serving it")


def listen_unix(reactor, protocol, path: str, mode: int, owner=None, group=None):
    from twisted.internet.error import CannotListenError
    _clear_stale_socket(path)
    try:
        listening = reactor.listenUNIXDatagram(path, protocol, maxPacketSize=65536, mode=mode)
    except CannotListenError as e:
        raise ListenError(f"cannot listen on {path}: {e.socketError}") from None
    _grow_receive_buffer(listening)
    return listening


class ListeningPorts(Service):
    """
    Ports opened before the reactor runs (so a taken address stops start-up
    with a clear error), closed when the server stops; UNIX socket files are
    removed.
    """

    def __init__(self, ports, paths=()):
        self.ports = list(ports)
        self.paths = list(paths)

    def stopService(self):
        super().stopService()
        from twisted.internet.defer import gatherResults, maybeDeferred
        d = gatherResults([maybeDeferred(p.stopListening) for p in self.ports])
        self.ports = []

        def unlink(result):
            for path in self.paths:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        raise
            return result
        return d.addCallback(unlink)
