"""
A fake OpenSIPS 3.x proxy, written from ../shared/spec/opensips-evi.md (no
real OpenSIPS runs here): its JSON-RPC MI over a real UDP socket answers
C{event_subscribe}, C{subscribers_list}, C{events_list} and C{uptime}
(§2.1, §3.2: compact replies, key order, error codes), and L{FakeOpenSIPS.raise_event}
sends what event_datagram (§4.1: one datagram per subscriber, from a
socket of its own, as OpenSIPS' per-process sockets) and event_stream
(§4.4: one persistent TCP connection per destination, bodies back to back;
reliable mode: a numeric C{id} first, and the replies collected) send.

Its expiry is OpenSIPS' (§1.4): lazy, strict C{subscription_time + expire <
now} in whole seconds; C{expire 0} is gone from the next second on.
L{FakeOpenSIPS.restart} is a proxy restart: every subscription lost, a new
start time, the MI down for a moment when asked.
"""

import json
import socket
import time

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol

CORE = ["E_CORE_SR_STATUS_CHANGED", "E_CORE_THRESHOLD", "E_CORE_SHM_THRESHOLD",
        "E_CORE_PKG_THRESHOLD", "E_CORE_PROC_AUTO_SCALE", "E_CORE_TCP_DISCONNECT"]


def compact(value) -> bytes:
    # cJSON's compact layout (§2.1): no spaces, '/' and non-ASCII raw
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def payload(event, params, ident=None) -> bytes:
    """
    §4.0: C{id} (reliable mode only), C{jsonrpc}, C{method}, C{params}
    only when there are some (a dict: named; a list: unnamed).
    """
    body = {} if ident is None else {"id": ident}
    body["jsonrpc"] = "2.0"
    body["method"] = event
    if params:
        body["params"] = params
    return compact(body)


class _MI(DatagramProtocol):
    noisy = False

    def __init__(self, fake):
        self.fake = fake

    def datagramReceived(self, data, addr):
        reply = self.fake.mi_request(data)
        if reply is not None:
            self.transport.write(reply, addr)


class _Stream(Protocol):
    def __init__(self, connection):
        self.connection = connection

    def connectionMade(self):
        self.connection.made(self)

    def dataReceived(self, data):
        self.connection.received(data)

    def connectionLost(self, reason):
        self.connection.lost(self)


class _StreamFactory(ClientFactory):
    noisy = False

    def __init__(self, connection):
        self.connection = connection

    def buildProtocol(self, addr):
        return _Stream(self.connection)

    def clientConnectionFailed(self, connector, reason):
        self.connection.failed(reason)


class StreamConnection:
    """
    event_stream's persistent connection to one destination: connects on
    the first message, writes bodies back to back, reconnects after a
    close; in reliable mode it keeps what the peer answered.
    """

    def __init__(self, reactor, host, port):
        self.reactor = reactor
        self.host = host
        self.port = port
        self.protocol = None
        self.waiting = []   # bodies for the connection being made
        self.replies = b""  # what the peer sent back
        self.connecting = False
        self._closed = []

    def send(self, body):
        if self.protocol is not None:
            self.protocol.transport.write(body)
            return
        self.waiting.append(body)
        if not self.connecting:
            self.connecting = True
            self.reactor.connectTCP(self.host, self.port, _StreamFactory(self), timeout=2)

    def made(self, protocol):
        self.connecting = False
        self.protocol = protocol
        waiting, self.waiting = self.waiting, []
        for body in waiting:
            protocol.transport.write(body)

    def received(self, data):
        self.replies += data

    def failed(self, reason):
        self.connecting = False
        self.waiting = []  # event_stream drops what it cannot send

    def lost(self, protocol):
        if self.protocol is protocol:
            self.protocol = None
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)

    def close(self):
        if self.protocol is None:
            return succeed(None)
        d = Deferred()
        self._closed.append(d)
        self.protocol.transport.loseConnection()
        return d

    def cut(self):
        """
        The link lost: the connection aborted.
        """
        if self.protocol is None:
            return succeed(None)
        d = Deferred()
        self._closed.append(d)
        self.protocol.transport.abortConnection()
        return d


class FakeOpenSIPS:
    """
    @param clock: its time (subscriptions, uptime): a C{task.Clock} or the
        reactor.
    @param events: the module and script events it publishes after the
        core ones (ids in that order, §1.1).
    @param reliable: event_stream C{reliable_mode}.
    """

    def __init__(self, clock=None, events=("E_TEST",), reliable=False, reactor=None):
        self.clock = global_reactor if clock is None else clock
        self.reactor = global_reactor if reactor is None else reactor
        self.events = CORE + [e for e in events if e not in CORE]
        self.reliable = reliable
        self.subscriptions = {}  # event -> [[socket, expire, subscribed_at]], newest first
        self.requests = []       # (method, params) of every MI request
        self.started = self.clock.seconds()
        self.started_wall = time.time()
        self.port = None
        self.mi_port = None
        self.streams = {}        # (host, port) -> StreamConnection
        self._next_id = 0
        self._sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    # -- the MI --------------------------------------------------------------

    def listen(self, port=0):
        """
        Open the MI on C{udp:127.0.0.1:PORT}. @return: the port.
        """
        self.port = self.reactor.listenUDP(port, _MI(self), interface="127.0.0.1")
        self.mi_port = self.port.getHost().port
        return self.mi_port

    def stop_listening(self):
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)

    def restart(self):
        """
        A new process: no subscriptions, a new start time.
        """
        self.subscriptions = {}
        self.started = self.clock.seconds()
        # "Up since" has whole seconds: a later start shows a later text
        self.started_wall = max(time.time(), self.started_wall + 1)

    def close(self):
        self._sender.close()
        waits = [self.stop_listening()] + [s.close() for s in self.streams.values()]
        return DeferredList(waits)

    def mi_request(self, data):
        try:
            request = json.loads(data)
        except ValueError:
            return b"400 Parse_error"
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" \
                or not isinstance(request.get("method"), str):
            return self._error(request.get("id") if isinstance(request, dict) else None,
                               -32600, "Invalid Request")
        ident = request.get("id")
        method = request["method"]
        params = request.get("params") or []
        if isinstance(params, dict):
            params = list(params.values())
        self.requests.append((method, params))
        handler = {"event_subscribe": self._subscribe, "subscribers_list": self._list,
                   "events_list": self._events_list, "uptime": self._uptime}.get(method)
        if handler is None:
            result = (-32601, "Method not found")
        else:
            result = handler(params)
        if "id" not in request:
            return None
        if isinstance(result, tuple):
            return self._error(ident, *result)
        return b'{"jsonrpc":"2.0","result":' + compact(result) + b',"id":' + compact(ident) + b"}"

    @staticmethod
    def _error(ident, code, message, data=None):
        error = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        return b'{"jsonrpc":"2.0","error":' + compact(error) + b',"id":' + compact(ident) + b"}"

    def _now(self):
        return int(self.clock.seconds())

    def _purge(self, event):
        now = self._now()
        subs = self.subscriptions.get(event, [])
        self.subscriptions[event] = [s for s in subs if not s[2] + s[1] < now]
        return self.subscriptions[event]

    @staticmethod
    def _parse(socket_text):
        proto, _, rest = socket_text.partition(":")
        if proto not in ("udp", "tcp", "unix") or not rest:
            return None
        if proto == "unix":
            return (proto, rest, None)
        host, _, port = rest.partition(":")  # the FIRST ':' (§4.1)
        port = port.partition("/")[0]
        if not host or not port.isdigit():
            return None
        return (proto, host, int(port))

    def _match(self, old, new):
        # §4.1: same kind, same port, host compared as a text prefix
        a, b = self._parse(old), self._parse(new)
        return a[0] == b[0] and a[2] == b[2] and a[1].startswith(b[1])

    def _subscribe(self, params):
        if len(params) not in (2, 3):
            return (-32602, "Invalid params", "Too few or too many parameters")
        event, sock = params[0], params[1]
        expire = int(params[2]) if len(params) == 3 else 3600
        if expire < 0:
            return (-32602, "Invalid params", "Negative expire value")
        if event not in self.events or self._parse(sock) is None:
            return (400, "Bad parameter value")
        subs = self.subscriptions.setdefault(event, [])
        for sub in subs:
            if self._match(sub[0], sock):
                sub[1] = expire
                sub[2] = self._now()
                return "OK"
        subs.insert(0, [sock, expire, self._now()])  # prepended: newest first (§1.3)
        return "OK"

    def _sub(self, sub):
        ttl = sub[1] - (self._now() - sub[2])
        return {"socket": sub[0], "expire": sub[1], "ttl": ttl if ttl > 0 else "expired"}

    def _list(self, params):
        if not params:
            return {"Events": [{"name": e, "id": i, "Subscribers": [self._sub(s) for s in subs]}
                               for i, e in enumerate(self.events)
                               for subs in [self._purge(e)] if subs]}
        event = params[0]
        if event not in self.events:
            return (404, "Event not published")
        subs = self._purge(event)
        ident = self.events.index(event)
        if len(params) == 1:
            if not subs:
                return {"Event": {}}
            return {"Event": {"name": event, "id": ident,
                              "Subscribers": [self._sub(s) for s in subs]}}
        if self._parse(params[1]) is None:
            return (404, "Subscriber does not exist")
        for sub in subs:
            if self._match(sub[0], params[1]):
                return {"Event": {"name": event, "id": ident, "Subscriber": self._sub(sub)}}
        return (404, "Subscriber does not exist")

    def _events_list(self, params):
        return {"Events": [{"name": e, "id": i} for i, e in enumerate(self.events)]}

    def _uptime(self, params):
        up = int(self.clock.seconds() - self.started)
        return {"Now": time.ctime(), "Up since": time.ctime(self.started_wall),
                "Up time": f"{up} [sec]"}

    # -- the proxy raising an event ----------------------------------------

    def subscribers(self, event):
        """
        C{[(socket, expire)]} of the live subscribers, newest first.
        """
        return [(s[0], s[1]) for s in self._purge(event)]

    def raise_event(self, event, params=None):
        """
        Send C{event} to every live subscriber as event_datagram /
        event_stream do. @return: how many subscribers it was sent to.
        """
        sent = 0
        for sock, _, _ in self._purge(event):
            proto, host, port = self._parse(sock)
            if proto == "udp":
                self._sender.sendto(payload(event, params), (host, port))
            elif proto == "unix":
                unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    unix.sendto(payload(event, params), host)
                finally:
                    unix.close()
            else:
                ident = None
                if self.reliable:
                    self._next_id += 1
                    ident = self._next_id
                self.stream(host, port).send(payload(event, params, ident))
            sent += 1
        return sent

    def stream(self, host, port) -> StreamConnection:
        key = (host, port)
        if key not in self.streams:
            self.streams[key] = StreamConnection(self.reactor, host, port)
        return self.streams[key]
