# -*- test-case-name: tests.test_mi_acl -*-
"""
The MI datagram listeners (UDP and UNIX): a thin protocol that hands each
datagram to the dispatcher and sends the reply back to its source.

A client that floods the MI gets its datagrams dropped by the kernel once the
receive buffer is full; a client that does not read its replies (or a UNIX
client that did not bind a path) loses them, counted in C{mi:replies_failed}.
Nothing here ever blocks.

Access: a UDP listener serves only the sources of its C{allow} list
(C{[mi] allow}, or its C{[mi:udp:HOST:PORT]} section); anything else gets no
service and no reply, counted in C{mi:requests_refused} and logged at most
once per 10 s. UNIX clients are let in by the socket file's mode and owner
(C{[mi] unix_mode}, C{unix_owner}, C{unix_group}). Then the request gates
(pike) may refuse a request, with or without an error reply (counted in
C{mi:requests_filtered}).
"""

import errno
import grp
import os
import pwd
import socket
import stat

from twisted.application.service import Service
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from evsrv.mi.dispatch import run_gates
from evsrv.util.ratelimit import RateLimitedLog

MAX_DATAGRAM = 65457  # OpenSIPS mi_datagram's default socket_buf_size
RECEIVE_BUFFER = 4 * 1024 * 1024


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
        # request gates (pike, ...): see evsrv.modules.ModuleContext.mi_filters
        self.filters = filters
        statistics = dispatcher.controller.statistics
        self._failed = statistics.counter("mi", "replies_failed")
        self._refused = statistics.counter("mi", "requests_refused")
        self._filtered = statistics.counter("mi", "requests_filtered")
        self._warn = RateLimitedLog(self._log, clock)
        # its own limiter, so refusals cannot hide lost replies and vice versa
        self._warn_refused = RateLimitedLog(self._log, clock)

    def datagramReceived(self, data, addr):
        # The access list comes first: a refused source (possibly spoofed)
        # costs one cached lookup, gets no reply (nothing to reflect), and
        # never reaches the gates, so it cannot fill pike's table either.
        if self.allow is not None and addr[0] not in self.allow:
            self._refused.value += 1
            self._warn_refused.warn("{label}: MI request from {source} refused: not in the "
                                    "allow list ({allow})", label=self.label,
                                    source=addr[0], allow=str(self.allow))
            return
        if not data:
            return  # OpenSIPS ignores empty datagrams too
        if self.filters:
            refusal = run_gates(self.filters, addr)
            if refusal is not None:
                self._filtered.value += 1
                # rate_capped: the gate already answered this source lately
                if refusal.error is not None and not refusal.rate_capped:
                    self._reply(self.dispatcher.refusal_reply(data, refusal.error), addr)
                return
        d = self.dispatcher.handle(data)
        d.addCallback(self._reply, addr)
        d.addErrback(lambda f: self._log.failure("MI request from {addr} on {label} failed", f,
                                                 addr=addr, label=self.label))

    def _reply(self, reply, addr):
        if reply is None:
            return
        if not addr:
            self._failed.value += 1
            self._warn.warn("{label}: cannot reply to an unbound UNIX client", label=self.label)
            return
        # an answer that comes after the MI closed (shutdown) has no socket
        sock = getattr(self.transport, "socket", None)
        if sock is None:
            self._failed.value += 1
            return
        try:
            sock.sendto(reply, addr)
        except OSError as e:
            self._failed.value += 1
            self._warn.warn("{label}: reply to {addr} lost: {error}", label=self.label,
                            addr=addr, error=os.strerror(e.errno) if e.errno else e)


class ListenError(Exception):
    """
    An MI socket could not be opened; the message says which and why.
    """


# Bytes of MI datagrams read in one reactor turn (Twisted's default is
# 256 KiB): a backlog of raises, each fanned out to many subscribers, must not
# hold the reactor for seconds while connections, timers and the store's
# answers wait; the kernel buffer keeps the rest for the next turn.
MI_BYTES_PER_TURN = 16 * 1024


def _tune_mi_port(port):
    port.maxThroughput = MI_BYTES_PER_TURN
    try:
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError:
        pass


def listen_udp(reactor, protocol, host: str, port: int):
    try:
        listening = reactor.listenUDP(port, protocol, interface=host, maxPacketSize=65536)
    except CannotListenError as e:
        raise ListenError(f"cannot listen on udp:{host}:{port}: {e.socketError}") from None
    _tune_mi_port(listening)
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


def _owner_ids(path: str, owner, group):
    """
    C{(uid, gid)} for C{os.chown} from user and group names (-1: unchanged).
    """
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
    except KeyError:
        raise ListenError(f"cannot set the owner of {path}: no such user {owner!r}") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError:
        raise ListenError(f"cannot set the group of {path}: no such group {group!r}") from None
    return uid, gid


def listen_unix(reactor, protocol, path: str, mode: int, owner=None, group=None):
    """
    Bind a UNIX datagram socket at C{path} with file mode C{mode} (applied by
    Twisted right after bind) and, when given, owner and group names.

    @raise ListenError: the socket cannot be made or given its owner (e.g.
        C{unix_owner} set while the server does not run as root); nothing is
        left listening and the socket file is removed.
    """
    uid, gid = _owner_ids(path, owner, group)  # before bind: nothing to undo
    _clear_stale_socket(path)
    try:
        listening = reactor.listenUNIXDatagram(path, protocol, maxPacketSize=65536, mode=mode)
    except CannotListenError as e:
        raise ListenError(f"cannot listen on {path}: {e.socketError}") from None
    if uid != -1 or gid != -1:
        # Until this runs the file has the server's owner and C{mode}: never
        # wider than asked.
        try:
            os.chown(path, uid, gid)
        except OSError as e:
            # Closed now, not with stopListening's reactor turn: start-up is
            # failing and the reactor may never run.
            listening.stopReading()
            listening.connectionLost(None)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise ListenError(f"cannot give {path} owner {owner or '(unchanged)'} and group "
                              f"{group or '(unchanged)'}: {e.strerror}") from None
    _tune_mi_port(listening)
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
