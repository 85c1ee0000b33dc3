# -*- test-case-name: tests.test_datagram_transport -*-
"""
The C{udp:} and C{unix:} transports (OpenSIPS event_datagram, spec §4.1).

Every subscriber of a transport receives from one socket, so always from the
same source address (§9 D14). Sends go straight to a non-blocking socket:

 - a slow receiver whose buffer is full (EAGAIN/ENOBUFS) loses that
   notification, counted as dropped; the reactor never waits;
 - a UNIX path with no socket, or a socket nobody reads from any more
   (ENOENT, ECONNREFUSED), counts as failed for that subscriber;
 - a closed UDP port (ICMP port unreachable) counts as failed for the
   subscriber at that address: the UDP socket asks for ICMP errors
   (IP_RECVERR); the kernel reports one as ECONNREFUSED on the next send,
   which is then retried after the error queue has been read to learn which
   destination refused (so an error is never blamed on the wrong subscriber);
 - a payload too large for one datagram (EMSGSIZE) counts as failed.

Twisted's own UNIX datagram port drops silently on EAGAIN, which is why the
sockets here are plain non-blocking sockets that are only written to.
"""

import errno
import os
import socket

from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.logger import Logger
from zope.interface import implementer

from evsrv.evi.notification import Outcome
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import BadSocket, ICounted, IEventTransport, IListing, IPeerHosts
from evsrv.transports import TransportCounters, choice, resolve_once
from evsrv.transports.factories import TransportFactory
from evsrv.util.hostport import parse_host_port
from evsrv.util.wire import to_bytes

_TRANSIENT = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
SEND_BUFFER = 4 * 1024 * 1024
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
REFUSED = "Connection refused (ICMP port unreachable)"
MAX_REFUSED_ADDRESSES = 4096


def parse_port(text: str, socket_text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise BadSocket(f"bad port {text[:20]!r} in {socket_text[:120]!r}")
    port = int(text)
    if not 1 <= port <= 65535:  # OpenSIPS takes it modulo 65536 (§9 D19)
        raise BadSocket(f"port {port} out of range 1-65535 in {socket_text[:120]!r}")
    return port


def split_host_port(scheme: str, rest: str):
    """
    Split C{host:port} at the first colon (as OpenSIPS), or C{[v6]:port}.
    """
    text = f"{scheme}:{rest}"
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
        if not sep or not isIPv6Address(host):
            raise BadSocket(f"bad IPv6 address in {text[:120]!r}")
        return f"[{host}]", host, parse_port(port, text)
    host, sep, port = rest.partition(":")
    if not sep or not host:
        raise BadSocket(f"expected {scheme}:HOST:PORT, got {text[:120]!r}")
    if any(c.isspace() for c in host):
        raise BadSocket(f"bad host in {text[:120]!r}")
    return host, host, parse_port(port, text)


class _DatagramSender(Service):
    """
    Shared send loop of both datagram transports.
    """
    _log = Logger()
    schemes = ()
    learns_refusals = False

    def __init__(self, name, fmt, statistics):
        self.name = name
        self.format = fmt
        self.counters = TransportCounters(statistics, name)
        self._sockets = {}
        self._refused = {}  # destination address -> refusals not yet counted

    def _socket(self, family):
        # Opened on first use: an enabled transport costs nothing until
        # something subscribes to it.
        sock = self._sockets.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:
                pass
            self._bind(sock, family)
            self._sockets[family] = sock
        return sock

    def _bind(self, sock, family):
        pass

    def stopService(self):
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        return super().stopService()

    def deliver(self, notification, subscriptions):
        payload = notification.payload(self.format)
        outcome = Outcome()
        sent = 0
        refused = self._refused
        socket_for = self._socket_for
        for sub in subscriptions:
            address = sub.address
            if refused and address in refused:
                self._refused_earlier(sub, address)
            try:
                socket_for(address).sendto(payload, address)
            except OSError as e:
                if not self._send_failed(e, sub, payload, address, outcome):
                    continue
            sub.sent += 1
            sent += 1
        outcome.delivered = sent
        self.counters.sent.value += sent
        self.counters.failed.value += outcome.failed
        self.counters.dropped.value += outcome.dropped
        return outcome

    def _send_failed(self, error, sub, payload, address, outcome) -> bool:
        """
        Count a failed send, or recover from a UDP refusal report.

        @return: whether the datagram went out after all.
        """
        if error.errno == errno.ECONNREFUSED and self.learns_refusals:
            # On UDP this reports an ICMP error caused by an EARLIER datagram:
            # learn which destinations refused, then send this one again.
            sock = self._socket_for(address)
            self._learn_refusals(sock)
            if address in self._refused:
                self._refused_earlier(sub, address)
            try:
                sock.sendto(payload, address)
                return True
            except OSError as again:
                error = again
        reason = os.strerror(error.errno) if error.errno else str(error)
        if error.errno in _TRANSIENT:
            sub.drop(reason)
            outcome.dropped += 1
        else:
            sub.failure(reason)
            outcome.failed += 1
        outcome.errors.append((sub.socket, reason))
        self._log.debug("{transport}: send to {socket} failed: {reason}",
                        transport=self.name, socket=sub.socket, reason=reason)
        return False

    def _learn_refusals(self, sock):
        """
        Read the socket's error queue (IP_RECVERR): each entry names the
        destination of a datagram that was refused.
        """
        while True:
            try:
                _, _, _, origin = sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
            except OSError:
                return  # queue empty (EAGAIN) or not supported
            if origin and len(self._refused) < MAX_REFUSED_ADDRESSES:
                key = tuple(origin[:2])
                self._refused[key] = self._refused.get(key, 0) + 1

    def _refused_earlier(self, sub, address):
        # An earlier notification to this subscriber was refused: it was
        # counted as sent when it left, and is now a failure instead (one
        # notification, one outcome; this raise's datagram is still sent).
        # The transport's notifications_sent stays as it was: a Prometheus
        # counter must never go down, so there it counts datagrams that left.
        count = self._refused.pop(address)
        sub.sent -= min(count, sub.sent)
        sub.failure(REFUSED, count)
        self.counters.failed.value += count


@implementer(IEventTransport, IPeerHosts, IListing, ICounted)
class UDPTransport(_DatagramSender):
    """
    C{udp:HOST:PORT}; HOST may be an IPv4 address, C{[IPv6]} or a name
    resolved once, at subscribe time.
    """
    schemes = ("udp",)
    learns_refusals = True

    def __init__(self, name, fmt, statistics, reactor, source_host="", source_port=0):
        super().__init__(name, fmt, statistics)
        self.reactor = reactor
        self.source = (source_host, source_port)

    def _bind(self, sock, family):
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        except OSError:
            pass  # not Linux: closed ports simply go unnoticed
        host, port = self.source
        if family == socket.AF_INET6:
            host = "::" if not host or not isIPv6Address(host) else host
        elif not host or isIPv6Address(host):
            host = "0.0.0.0"
        sock.bind((host, port))

    def _socket_for(self, address):
        return self._socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)

    def parse(self, scheme, rest):
        # The key (host as written, port) doubles as the send address for an
        # IPv4 literal: one tuple per subscription instead of three objects.
        shown, host, port = split_host_port(scheme, rest)
        key = (shown, port)
        if isIPAddress(host):
            return Destination(key, key)
        return resolve_once(self.reactor, host, lambda ip: Destination(key, (ip, port)))

    @staticmethod
    def peer_hosts(destination):
        # the address datagrams go to: the literal, or what the name
        # resolved to when subscribing (for the [policy])
        return (destination.address[0],)

    @staticmethod
    def describe(key) -> str:
        return f"udp:{key[0]}:{key[1]}"


@implementer(IEventTransport, IPeerHosts, ICounted)
class UNIXTransport(_DatagramSender):
    """
    C{unix:PATH} (also a bare absolute path): a UNIX datagram socket.
    """
    schemes = ("unix",)

    def parse(self, scheme, rest):
        if not rest or "\0" in rest:
            raise BadSocket(f"expected unix:PATH, got {('unix:' + rest)[:120]!r}")
        if len(to_bytes(rest)) > 107:
            raise BadSocket(f"UNIX socket path longer than 107 bytes: {rest[:120]!r}")
        # bytes: the path leaves exactly as given, whatever its encoding
        return Destination(f"unix:{rest}", to_bytes(rest))

    @staticmethod
    def peer_hosts(destination):
        return ()  # a local path: nothing for the [policy] to check

    def _socket_for(self, address):
        return self._socket(socket.AF_UNIX)


# -- plugins ----------------------------------------------------------------------

def _source_address(text: str) -> tuple:
    # HOST may be empty (any address), as in ":0"
    return parse_host_port(text, empty_host=True)


_FORMAT = ("json", choice("json", "text"),
           "json: JSON-RPC notification (OpenSIPS 3.x); text: the 1.x name::value lines")


def _build_udp(settings, context):
    host, port = settings["source"]
    return UDPTransport("udp", settings["format"], context.statistics, context.reactor,
                        host, port)


def _build_unix(settings, context):
    return UNIXTransport("unix", settings["format"], context.statistics)


udpTransport = TransportFactory(
    "udp", ("udp",),
    {"format": _FORMAT,
     "source": (":0", _source_address,
                "local address notifications are sent from (HOST:PORT; port 0 = any)")},
    _build_udp, "UDP datagrams (event_datagram)")

unixTransport = TransportFactory(
    "unix", ("unix",), {"format": _FORMAT}, _build_unix,
    "UNIX datagrams (event_datagram)")
