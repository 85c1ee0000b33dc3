# -*- test-case-name: tests.test_rabbitmq -*-
"""
The C{rabbitmq:} transport (OpenSIPS event_rabbitmq, spec §4.2) on txamqp.

Everything txamqp-specific lives in this module, behind evsrv's transport
interface, so that swapping the AMQP library touches nothing else.

Socket: C{rabbitmq:[user[:password]@]host[:port]/[params?]routing_key}, params
a C{;}-separated list of C{exchange=NAME}, C{persistent}, and evsrv's
C{vhost=NAME} and C{tls}. A lone bare word as params is the exchange (the
2.x-3.1 form, which is also what the listing prints, so a listed socket
can be given back, e.g. to unsubscribe).

How delivery works, and what a slow, dead or hostile broker can do:

 - One L{BrokerConnection} per (host, port, vhost, user, password, tls)
   and the address the host name resolved to when subscribing (it connects
   to that address only, the one the [policy] checked; TLS still verifies
   the name), shared by every subscription to it. It connects on its first
   publish (nothing happens for a subscription that never receives) and then stays
   connected, reconnecting with a growing delay (ClientService).
 - Publisher confirms are on. A publish counts as sent when the broker acks
   it and failed when it nacks it. At most C{window} publishes per
   connection wait for their confirm; the rest wait in a bounded queue
   (C{queue_size}, C{max_age}), also while the broker is down. Beyond the
   bound the oldest are dropped and counted; so are those older than
   C{max_age}. Memory per connection is therefore bounded whatever the
   broker does.
 - When a connection dies, the publishes not yet confirmed go back to the
   head of the queue and are published again after the reconnect
   (at-least-once: a consumer may see a duplicate, never a silent loss
   within the bound).
 - A broker that accepts TCP and then says nothing is cut after
   C{connect_timeout} (the whole handshake: TLS, AMQP login, channel,
   confirm.select); once connected, one that stops answering is cut after
   three missed heartbeats (C{heartbeat}). Publishing never waits for the
   broker: L{deliver} only queues or writes to a socket buffer, so neither
   the MI nor other transports are ever delayed; the Deferred it returns
   fires when every publish of the raise is settled.
 - A publish the broker rejects at channel level (e.g. an exchange that
   does not exist: 404 closes the channel) fails the publishes to that
   exchange; the others are published again on a new channel. A publish
   that keeps killing channels for an unknown reason fails after a few
   attempts, so one bad subscriber cannot wedge its connection.
 - A broker that refuses the login or the vhost (connection.close 403 or
   530 while connecting; start-ok asks RabbitMQ for
   C{authentication_failure_close}, else it just drops the connection)
   fails the notifications to it at once, with the reason, and keeps being
   retried with backoff (see L{BrokerConnection}). The MI subscribe still
   answers OK without asking the broker: subscribing never waits for it.
 - A publish the broker cannot route (no queue bound) is acked and lost
   by the broker, as in OpenSIPS: C{mandatory} is not used.
 - A hostile broker cannot make us buffer more than one MAX_FRAME frame
   (frame_max is capped at tune time, a bigger frame cuts the connection),
   nor hold the server's shutdown: a close that does not complete in
   STOP_GRACE seconds is aborted.

txamqp workarounds (see the ecosystem notes §1.8): the spec file is vendored
(C{evsrv/specs}); bodies, exchange and routing keys are always bytes (its
codec counts characters, not bytes); start-ok is encoded here (its table
encoder knows no booleans or nested tables, and it sends no client
properties); ack/nack handlers are added to the
delegate; nothing is ever consumed and C{mandatory} is never set (its read
path mangles content); the AMQP handshake runs inside the protocol, not in
ClientService's C{prepareConnection} (a connection lost while preparing hits
a missing transition in ClientService's state machine).
"""

import collections
import re
import struct
import sys
from importlib import resources
from urllib.parse import quote

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txamqp import spec as amqp_spec_module
from txamqp.client import Closed, TwistedDelegate
from txamqp.connection import Frame, Header, Method
from txamqp.protocol import AMQClient

from evsrv import __version__
from evsrv.evi.notification import Outcome
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import (BadSocket, IAdmission, ICounted, IDrainable, IEventTransport,
                              IPeerHosts, PluginConfigError)
from evsrv.transports import TransportCounters, choice, resolve_once
from evsrv.transports.factories import TransportFactory
from evsrv.transports.kit import DrainResult

SPEC_FILE = "amqp0-9-1.stripped.extended.xml"
DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671
MAX_CHANNEL_ATTEMPTS = 3  # publishes of one entry that ended in a channel error
MAX_FRAME = 131072  # largest AMQP frame accepted from (and sent to) a broker
STOP_GRACE = 1.0  # seconds a closing connection may take before it is aborted

# Connection states, as the C{…:state} statistic shows them.
IDLE, CONNECTING, READY, DOWN, STOPPED = 0, 1, 2, 3, 4
STATE_NAMES = {IDLE: "idle", CONNECTING: "connecting", READY: "ready", DOWN: "down",
               STOPPED: "stopped"}

_spec = None


def amqp_spec():
    """
    The vendored RabbitMQ 0-9-1 extended spec, loaded once.
    """
    global _spec
    if _spec is None:
        with resources.as_file(resources.files("evsrv") / "specs" / SPEC_FILE) as path:
            _spec = amqp_spec_module.load(str(path))
    return _spec


class TLSFilesError(ValueError):
    """
    The TLS files of [transport:rabbitmq] cannot be used. @ivar key: the
    setting (C{tls_ca}, C{tls_cert} or C{tls_key}) whose file failed.
    """

    def __init__(self, key, message):
        super().__init__(message)
        self.key = key


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


def _one_line(text, limit=300) -> str:
    # Reasons go into one log line and into last_error: no object reprs
    # spread over lines, and a hostile broker's reply text stays short.
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _failure_text(failure) -> str:
    """
    One line saying why C{failure} happened. txamqp wraps the cause of a
    closed connection (a Failure, itself wrapping e.g. ConnectionLost) in
    its C{Closed}, whose text is the Failure's multi-line repr.
    """
    error = failure.value
    while isinstance(error, Closed) and error.args:
        inner = error.args[0]
        if isinstance(inner, Failure):
            error = inner.value
        elif isinstance(inner, BaseException):
            error = inner
        else:
            break
    return _one_line(str(error) or type(error).__name__)


# -- socket syntax ---------------------------------------------------------------

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _unescape(text: str, what: str, socket_text: str) -> str:
    """
    Decode C{%XX} escapes; the result must be printable (no control chars).
    """
    if "%" in text:
        if re.search(r"%(?![0-9A-Fa-f]{2})", text):
            raise BadSocket(f"truncated %-escape in the {what} of {socket_text[:120]!r}")
        raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
        try:
            text = raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise BadSocket(f"%-escapes in the {what} are not UTF-8 in {socket_text[:120]!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise BadSocket(f"control character in the {what} of {socket_text[:120]!r}")
    return text


def _escape(text: str, safe: str = "/:@") -> str:
    # For the listing only: what would not parse back is %-escaped.
    return quote(text, safe="!$&'()*+,-._~" + safe) if text else text


def _escape_host(host: str) -> str:
    return f"[{host}]" if ":" in host else _escape(host, "")


class ConnectionKey(tuple):
    """
    C{(host, port, vhost, user, password, tls[, address])}: what makes two
    subscriptions share one broker connection. The password is part of it so
    that a subscriber never rides on a connection opened with someone else's.

    C{address} is the IP address C{host} resolved to when subscribing (see
    L{pinned}): the connection connects there and nowhere else, so a later
    DNS answer cannot redirect it past the C{[policy]}, and a subscriber
    whose name resolved elsewhere (checked on its own) gets a connection of
    its own. Without it (a key from L{parse_socket}) the connection
    connects to C{host} by name.
    """
    __slots__ = ()

    host = property(lambda self: self[0])
    port = property(lambda self: self[1])
    vhost = property(lambda self: self[2])
    user = property(lambda self: self[3])
    password = property(lambda self: self[4])
    tls = property(lambda self: self[5])
    address = property(lambda self: self[6] if len(self) > 6 else None)

    def pinned(self, address: str) -> "ConnectionKey":
        """
        This key, connecting to the IP C{address} (C{host} stays the TLS
        server name).
        """
        return ConnectionKey(self[:6] + (address,))

    @property
    def label(self) -> str:
        """
        The connection's name in statistics and logs (no password).
        """
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{_escape(self.user, '')}@{_escape_host(self.host)}:{self.port}/{vhost}"


class Target:
    """
    A parsed C{rabbitmq:} socket: the subscription's C{address}.
    """
    __slots__ = ("connection", "exchange", "routing_key", "persistent")

    def __init__(self, connection, exchange, routing_key, persistent):
        self.connection = connection
        self.exchange = exchange
        self.routing_key = routing_key
        self.persistent = persistent

    def __repr__(self):
        return (f"<Target {self.connection.label} exchange={self.exchange!r} "
                f"key={self.routing_key!r} persistent={self.persistent}>")


def parse_socket(rest: str):
    """
    Parse the text after C{rabbitmq:}.

    @return: C{(listing text, Target)}.
    @raise BadSocket: with the reason.
    """
    text = "rabbitmq:" + rest
    authority, slash, path = rest.partition("/")
    if not slash:
        raise BadSocket(f"expected rabbitmq:[user[:password]@]host[:port]/[params?]key, "
                        f"got {text[:120]!r}")
    user = password = "guest"
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        user, colon, pw = userinfo.partition(":")
        user = _unescape(user, "user", text)
        if not user:
            raise BadSocket(f"empty user in {text[:120]!r}")
        if colon:
            password = _unescape(pw, "password", text)
    if authority.startswith("["):
        host, bracket, port_text = authority[1:].partition("]")
        if not bracket or not host or (port_text and not port_text.startswith(":")):
            raise BadSocket(f"bad IPv6 address in {text[:120]!r}")
        port_text = port_text[1:] if port_text else None
    else:
        host, colon, port_text = authority.partition(":")
        port_text = port_text if colon else None
        host = _unescape(host, "host", text)
    if not host or any(c.isspace() for c in host):
        raise BadSocket(f"bad or missing host in {text[:120]!r}")
    port = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
            raise BadSocket(f"bad port {port_text[:20]!r} in {text[:120]!r}")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise BadSocket(f"port {port} out of range 1-65535 in {text[:120]!r}")

    exchange, vhost, persistent, tls = "", "/", False, False
    params, question, key = path.partition("?")
    if not question:
        params, key = "", path
    tokens = [t for t in params.split(";") if t] if params else []
    if len(tokens) == 1 and "=" not in tokens[0] and tokens[0] not in ("persistent", "tls"):
        exchange = _unescape(tokens[0], "exchange", text)  # the 2.x-3.1 form
        tokens = []
    for token in tokens:
        name, eq, value = token.partition("=")
        if name == "exchange" and eq:
            exchange = _unescape(value, "exchange", text)
        elif name == "vhost" and eq:
            vhost = _unescape(value, "vhost", text)
            if not vhost:
                raise BadSocket(f"empty vhost in {text[:120]!r}")
        elif token == "persistent":
            persistent = True
        elif token == "tls":
            tls = True
        elif name == "tls_domain":
            raise BadSocket(f"tls_domain is not supported, use tls (certificates come from "
                            f"[transport:rabbitmq]) in {text[:120]!r}")
        else:
            raise BadSocket(f"unknown parameter {token[:40]!r} in {text[:120]!r} (known: "
                            f"exchange=NAME, vhost=NAME, persistent, tls)")
    key = _unescape(key, "routing key", text)
    for what, value in (("routing key", key), ("exchange", exchange), ("vhost", vhost),
                        ("user", user)):
        if len(value.encode()) > 255:
            raise BadSocket(f"{what} longer than 255 bytes in {text[:120]!r}")
    default_port = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    connection = ConnectionKey((host, port or default_port, vhost, user, password, tls))

    # The listing (and re-subscribe identity, §9 D7): OpenSIPS' print
    # user@host/[exchange?]key when nothing else differs from the defaults,
    # else the port and the params that set something.
    shown = f"rabbitmq:{_escape(user, '')}@{_escape_host(host)}"
    if port is not None and port != default_port:
        shown += f":{port}"
    shown += "/"
    extras = []
    if vhost != "/":
        extras.append("vhost=" + _escape(vhost))
    if persistent:
        extras.append("persistent")
    if tls:
        extras.append("tls")
    if extras:
        shown += ";".join(([f"exchange={_escape(exchange)}"] if exchange else []) + extras) + "?"
    elif exchange:
        shown += _escape(exchange) + "?"
    shown += _escape(key, "/:@=;")
    target = Target(connection, exchange.encode(), key.encode(), persistent)
    return shown, target


# -- publishing ---------------------------------------------------------------------


class _Entry:
    """
    One publish on its way: queued, in flight, then settled exactly once.
    """
    __slots__ = ("exchange", "routing_key", "body", "properties", "queued_at", "attempts",
                 "waiter", "sub")

    def __init__(self, exchange, routing_key, body, properties, queued_at, waiter, sub=None):
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.queued_at = queued_at
        self.attempts = 0
        self.waiter = waiter
        self.sub = sub


class _Raise:
    """
    The publishes of one L{RabbitMQTransport.deliver} call: fires its
    Deferred with the L{Outcome} once every one is settled.
    """
    __slots__ = ("remaining", "outcome", "deferred", "counters")

    def __init__(self, count, counters):
        self.remaining = count
        self.outcome = Outcome()
        self.deferred = defer.Deferred()
        self.counters = counters

    def settled(self, entry, error):
        sub = entry.sub
        if error is None:
            self.outcome.sent_to(sub)
            self.counters.sent.value += 1
        elif isinstance(error, PublishDropped):
            self.outcome.dropped_for(sub, str(error))
            self.counters.dropped.value += 1
        else:
            self.outcome.failed_for(sub, str(error))
            self.counters.failed.value += 1
        self.remaining -= 1
        if self.remaining == 0:
            self.deferred.callback(self.outcome)


class _Single:
    """
    The waiter of L{BrokerConnection.publish}: one Deferred.
    """
    __slots__ = ("deferred",)

    def __init__(self):
        self.deferred = defer.Deferred()

    def settled(self, entry, error):
        if error is None:
            self.deferred.callback(True)
        else:
            self.deferred.errback(Failure(error))


# What start-ok tells the broker about us. authentication_failure_close
# makes RabbitMQ answer a refused login with connection.close 403
# ACCESS_REFUSED; without it, it just drops the TCP connection (after a
# delay), which looks like any network failure.
CLIENT_PROPERTIES = {
    "product": "evsrv",
    "version": __version__,
    "platform": f"Python {sys.version.split()[0]} (Twisted, txamqp)",
    "capabilities": {"authentication_failure_close": True},
}
# reply codes of a connection.close during the handshake that mean "these
# credentials, this vhost: no", i.e. nothing a retry soon will change
REFUSALS = {403: "ACCESS_REFUSED", 530: "NOT_ALLOWED"}


def _shortstr(text) -> bytes:
    data = text if isinstance(text, bytes) else text.encode()
    return struct.pack("!B", len(data)) + data


def _longstr(text) -> bytes:
    data = text if isinstance(text, bytes) else text.encode()
    return struct.pack("!I", len(data)) + data


def _field_table(table: dict) -> bytes:
    """
    An AMQP 0-9-1 field table of str, bool and nested tables. txamqp's
    encoder writes everything that is not a str as a 32-bit integer, so it
    cannot send the capabilities table.
    """
    out = []
    for name, value in table.items():
        out.append(_shortstr(name))
        if isinstance(value, bool):
            out.append(b"t\x01" if value else b"t\x00")
        elif isinstance(value, dict):
            out.append(b"F" + _field_table(value))
        else:
            out.append(b"S" + _longstr(value))
    data = b"".join(out)
    return struct.pack("!I", len(data)) + data


def start_ok_payload(spec, mechanism, response, locale, properties=CLIENT_PROPERTIES) -> bytes:
    """
    The payload of the connection.start-ok method frame (class and method
    ids, then its four fields in the spec's order).
    """
    method = spec.classes.byname["connection"].methods.byname["start-ok"]
    return (struct.pack("!HH", method.klass.id, method.id) + _field_table(properties)
            + _shortstr(mechanism) + _longstr(response) + _shortstr(locale))


class _EncodedMethod:
    """
    A method frame payload encoded by us, in txamqp's Payload interface
    (what its frame writer calls).
    """
    type = Frame.METHOD

    def __init__(self, data: bytes):
        self.data = data

    def encode(self, codec):
        codec.encode_longbytes(self.data)


class _Delegate(TwistedDelegate):
    """
    txamqp's delegate lacks the confirm handlers: an ack would raise inside
    its dispatch loop and close the connection.
    """

    def connection_start(self, ch, msg):
        # As TwistedDelegate, but with client properties (see
        # CLIENT_PROPERTIES), which txamqp neither sends nor could encode.
        client = self.client
        client.stage = "login"
        ch.outgoing.put(Frame(ch.id, _EncodedMethod(start_ok_payload(
            client.spec, client.mechanism, client.response, client.locale))))

    def connection_tune(self, ch, msg):
        # As TwistedDelegate, but frames are capped at MAX_FRAME: the broker
        # decides how much we buffer for one incomplete frame otherwise
        # (0 = unlimited).
        client = self.client
        client.stage = "open"
        frame_max = min(msg.frame_max or MAX_FRAME, MAX_FRAME)
        client.MAX_LENGTH = frame_max
        ch.connection_tune_ok(msg.channel_max, frame_max, client.heartbeatInterval)
        client.started.fire()

    def basic_ack(self, ch, msg):
        self.client.confirmed(ch, msg.delivery_tag, msg.multiple, True)

    def basic_nack(self, ch, msg):
        self.client.confirmed(ch, msg.delivery_tag, msg.multiple, False)

    def connection_close(self, ch, msg):
        text = msg.reply_text
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.client.close_code = msg.reply_code
        self.client.close_reason = _one_line(f"{msg.reply_code} {text}")
        super().connection_close(ch, msg)


# Frame layout (AMQP 0-9-1 §4.2.3): type, channel, payload size, payload,
# frame-end; a content header's payload starts with class id, weight and
# the 64-bit body size.
_FRAME_HEAD = struct.Struct("!BHI")
_BODY_FRAME = 3
_FRAME_END = b"\xce"
_BODY_SIZE = struct.Struct("!Q")
_BODY_SIZE_AT = _FRAME_HEAD.size + 4


class _AMQPProtocol(AMQClient):
    """
    One AMQP connection: runs the handshake itself once TCP (and TLS) is up,
    then hands a ready channel to its L{BrokerConnection}.
    """
    owner = None
    close_code = None  # of the broker's connection.close, if it sent one
    close_reason = None
    reported = False  # a failed attempt has been told to the owner
    stage = "start"  # how far the handshake got, for the timeout's message
    _frames = None  # encoded frames kept by publish()
    _handshake_timer = None

    def connectionMade(self):
        super().connectionMade()
        owner = self.owner
        owner.current = self
        self._handshake_timer = self.clock.callLater(owner.transport.connect_timeout,
                                                     self._handshake_timed_out)
        self._handshake().addCallbacks(self._handshake_done, self._handshake_failed)

    @defer.inlineCallbacks
    def _handshake(self):
        key = self.owner.key
        # PLAIN with a bytes response: txamqp's AMQPLAIN table encoder
        # cannot take bytes, and its str encoder miscounts non-ASCII.
        yield self.start(b"\0" + key.user.encode() + b"\0" + key.password.encode(), "PLAIN")
        self.stage = "channel"  # (a 403/530 now is no longer about the login or vhost)
        channel = yield self.channel(1)
        yield channel.channel_open()
        yield channel.confirm_select()
        return channel

    def _handshake_done(self, channel):
        self._cancel_handshake_timer()
        if self.transport is not None and not self.closed:
            self.owner._ready(self, channel)

    def _handshake_failed(self, failure):
        self._cancel_handshake_timer()
        if self.close_reason:
            reason = self.close_reason
        elif self.stage == "login":
            # a broker that drops the connection instead of saying 403
            # (one without authentication_failure_close)
            reason = ("connection closed by the broker during login (wrong user or "
                      f"password?): {_failure_text(failure)}")
        else:
            reason = _failure_text(failure)
        self._report(reason, self._refusal())
        if self.transport is not None and self.connected:
            self.transport.abortConnection()

    def _refusal(self):
        """
        The short reason when the broker closed the handshake refusing
        the login or the vhost, else C{None}.
        """
        name = REFUSALS.get(self.close_code)
        if name is None:
            return None
        if self.stage == "login" and self.close_code == 403:
            return f"authentication failed ({name})"
        if self.stage == "open":
            return f"access to vhost {self.owner.key.vhost!r} refused ({name})"
        return None

    def _handshake_timed_out(self):
        self._handshake_timer = None
        timeout = self.owner.transport.connect_timeout
        if self.stage == "start":
            reason = f"no AMQP handshake within {timeout:g} s"
        elif self.stage == "login":
            # RabbitMQ answers a refused login by closing seconds later
            reason = f"login not answered within {timeout:g} s (wrong user or password?)"
        else:
            reason = f"no channel with confirms within {timeout:g} s"
        self._report(reason)
        self.transport.abortConnection()

    def _report(self, reason, refusal=None):
        if not self.reported:
            self.reported = True
            self.owner._handshake_failed(self, reason, refusal)

    def _cancel_handshake_timer(self):
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def publish(self, channel_id, exchange, routing_key, body, properties):
        """
        Write one basic.publish (method, header and body frames) in one
        write, without txamqp's per-call Deferred machinery.

        txamqp's encoder costs about 25 us per publish, so its output is
        kept: the method frame per (channel, exchange, key), the header
        frame per (channel, properties) with only the body size patched in.
        """
        frames = self._frames
        if frames is None or len(frames) > 4096:
            frames = self._frames = {}
        method_key = (channel_id, exchange, routing_key)
        method = frames.get(method_key)
        if method is None:
            basic = self.spec.classes.byname["basic"]
            method = frames[method_key] = self._pack_frame(Frame(channel_id, Method(
                basic.methods.byname["publish"], 0, exchange, routing_key, False, False)))
        header_key = (channel_id, id(properties))
        header = frames.get(header_key)
        if header is None:
            basic = self.spec.classes.byname["basic"]
            # (properties dicts are the transport's shared, never-freed ones)
            header = frames[header_key] = self._pack_frame(
                Frame(channel_id, Header(basic, 0, 0, **properties)))
        header = bytearray(header)
        _BODY_SIZE.pack_into(header, _BODY_SIZE_AT, len(body))
        parts = [method, header]
        chunk = self.MAX_LENGTH - 8
        end = _FRAME_END
        for start in range(0, len(body), chunk):
            piece = body[start:start + chunk]
            parts += (_FRAME_HEAD.pack(_BODY_FRAME, channel_id, len(piece)), piece, end)
        self.transport.write(b"".join(parts))
        if self.heartbeatInterval > 0:
            self.reschedule_send_heartbeat()  # as AMQClient.send_frame does

    def frameLengthExceeded(self, data):
        # (FrameReceiver calls this, txamqp never defines it) A broker that
        # sends a frame over the agreed size is cut.
        self.close_reason = f"frame over {self.MAX_LENGTH} bytes from the broker"
        self.transport.abortConnection()

    def confirmed(self, channel, tag, multiple, ok):
        self.owner._confirmed(self, channel, tag, multiple, ok)

    def channel_failed(self, channel, reason):
        self.owner._channel_failed(self, channel, reason.value)

    def connectionLost(self, reason):
        self._cancel_handshake_timer()
        super().connectionLost(reason)
        text = self.close_reason or _failure_text(reason)
        if self.owner.current is self:
            self.owner.current = None
        if self.owner.protocol is not self:
            self._report(text)
        self.owner._lost(self, text)


class _ProtocolFactory(Factory):
    noisy = False

    def __init__(self, owner):
        self.owner = owner

    def buildProtocol(self, addr):
        owner = self.owner
        protocol = _AMQPProtocol(_Delegate(), owner.key.vhost.encode(), amqp_spec(),
                                 heartbeat=owner.transport.heartbeat,
                                 clock=owner.transport.reactor)
        protocol.owner = owner
        protocol.factory = self
        return protocol


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
    """
    _log = Logger()

    def __init__(self, transport, key: ConnectionKey, label: str):
        self.transport = transport
        self.key = key
        self.label = label
        self.state = IDLE
        self.queue = collections.deque()
        self.in_flight = {}  # delivery tag -> entry, in tag order
        self.next_tag = 1
        self.protocol = None  # the ready one
        self.current = None   # the one connected, ready or not
        self.channel = None
        self.service = None
        self._age_timer = None
        self._failures = 0  # consecutive failed connection attempts
        self.refused = None  # why the broker refused the last attempt (see above)
        self._logged = None  # kind of failure logged in this outage (once each)
        self._channel_ids = 1
        self._reopening = False
        statistics = transport.statistics
        group = f"evi_{transport.name}"
        statistics.gauge(group, f"{label}:state", lambda: self.state)
        statistics.gauge(group, f"{label}:queued", lambda: len(self.queue))
        statistics.gauge(group, f"{label}:in_flight", lambda: len(self.in_flight))
        self.confirmed = statistics.counter(group, f"{label}:confirmed")
        self.nacked = statistics.counter(group, f"{label}:nacked")
        self.dropped = statistics.counter(group, f"{label}:dropped")
        self.refused_count = statistics.counter(group, f"{label}:refused")
        self.republished = statistics.counter(group, f"{label}:republished")
        self.connects = statistics.counter(group, f"{label}:connects")

    # -- the ClientService ---------------------------------------------------------

    def _endpoint(self):
        t = self.transport
        # the address checked when subscribing, never a fresh DNS answer
        endpoint = HostnameEndpoint(t.reactor, self.key.address or self.key.host,
                                    self.key.port, timeout=t.connect_timeout)
        if self.key.tls:
            endpoint = wrapClientTLS(t.tls_options(self.key.host), endpoint)
        return _ObservedEndpoint(endpoint, self)

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
        if flush_timeout > 0 and (self.queue or self.in_flight):
            d = self._wait_flushed(flush_timeout)
        else:
            d = defer.succeed(None)

        def close(_):
            service, self.service = self.service, None
            self._set_state(STOPPED)
            stopped = service.stopService()
            self._drop_all("server stopping")
            # ClientService closes gracefully, which waits for the socket's
            # send buffer to drain: a hung broker never reads it. Abort then.
            reactor = self.transport.reactor
            abort = reactor.callLater(STOP_GRACE, self._abort_current)

            def done(result):
                if abort.active():
                    abort.cancel()
                return result
            return stopped.addBoth(done)
        return d.addCallback(close)

    def _abort_current(self):
        protocol = self.current
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()

    def _wait_flushed(self, timeout):
        d = defer.Deferred()
        reactor = self.transport.reactor

        def check():
            if not (self.queue or self.in_flight):
                poller.stop()
        poller = LoopingCall(check)
        poller.clock = reactor
        done = poller.start(0.05)
        timer = reactor.callLater(timeout, lambda: poller.running and poller.stop())

        def finished(_):
            if timer.active():
                timer.cancel()
            d.callback(None)
        done.addCallback(finished)
        return d

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
        if self._logged is not None:
            self._log.info("rabbitmq: {connection} connected again; {queued} queued "
                           "notification(s) to publish",
                           connection=self.label, transport=self.transport.name, queued=len(self.queue))
        else:
            self._log.info("rabbitmq: {connection} connected", connection=self.label, transport=self.transport.name)
        self._logged = None
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
        # Logged once per outage, and once more each time it turns from
        # unreachable to refused or back, not at every retry; the next
        # line is the reconnect.
        kind = refusal or "unavailable"
        if self._logged != kind:
            self._logged = kind
            if refusal is None:
                self._log.warn("rabbitmq: {connection} unavailable ({reason}); notifications "
                               "are queued (up to {size}, {age:g} s) until it is back",
                               connection=self.label, transport=self.transport.name,
                               reason=reason, size=self.transport.queue_size,
                               age=self.transport.max_age)
            else:
                self._log.warn("rabbitmq: {connection}: {refusal} for user {user!r} "
                               "({reason}); notifications to it fail until the broker "
                               "accepts it, retrying with backoff (up to {retry:g} s)",
                               connection=self.label, transport=self.transport.name,
                               refusal=refusal, user=self.key.user, reason=reason,
                               retry=self.transport.reconnect_max)
        if refusal is not None:
            self._refuse_queued()

    def _refuse_queued(self):
        # (nothing is in flight: the connection never got ready)
        entries = list(self.queue)
        self.queue.clear()
        self._cancel_age_timer()
        for entry in entries:
            self._refuse(entry)

    def _refuse(self, entry):
        self.refused_count.value += 1
        entry.waiter.settled(entry, BrokerRefused(self.refused))

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
        self.queue.extendleft(reversed(entries))
        self._trim()
        self._arm_age_timer()

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
                entry.waiter.settled(entry, None)
        else:
            self.nacked.value += len(entries)
            for entry in entries:
                entry.waiter.settled(entry, PublishNacked("nacked by the broker"))
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
                entry.waiter.settled(entry, PublishNacked(f"broker closed the channel: {detail}"))
            else:
                keep.append(entry)
        if culprit is not None:
            # Also fail the queued ones to that exchange now, instead of
            # killing the next channel with them.
            queued = [e for e in self.queue if e.exchange == culprit]
            if queued:
                self.queue = collections.deque(e for e in self.queue if e.exchange != culprit)
                for entry in queued:
                    self.nacked.value += 1
                    entry.waiter.settled(entry, PublishNacked(
                        f"broker closed the channel: {detail}"))
        self.republished.value += len(keep)
        self.queue.extendleft(reversed(keep))
        self._log.warn("rabbitmq: {connection}: channel closed by the broker ({detail}); "
                       "reopening it", connection=self.label, transport=self.transport.name, detail=detail)
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
            entry.waiter.settled(entry, PublishDropped("server stopping"))
            return
        if self.service is None:
            self.start()
        if self.refused is not None:
            self._refuse(entry)  # see the class docstring
            return
        if (self.channel is not None and not self.queue
                and len(self.in_flight) < self.transport.window):
            self._send(entry)
            return
        self.queue.append(entry)
        self._trim()
        self._arm_age_timer()

    def publish(self, exchange: bytes, routing_key: bytes, body: bytes, persistent=False,
                content_type="application/json"):
        """
        Publish one message; the Deferred fires on the broker's ack and fails
        with L{PublishNacked}, L{PublishDropped} or L{BrokerRefused}.
        """
        waiter = _Single()
        self.enqueue(_Entry(exchange, routing_key, body,
                            self.transport.properties(content_type, persistent),
                            self.transport.reactor.seconds(), waiter))
        return waiter.deferred

    def _send(self, entry):
        tag = self.next_tag
        self.next_tag = tag + 1
        self.in_flight[tag] = entry
        self.protocol.publish(self.channel.id, entry.exchange, entry.routing_key, entry.body,
                              entry.properties)

    def _pump(self):
        queue = self.queue
        window = self.transport.window
        if not queue or self.channel is None:
            return
        deadline = self._deadline()
        while queue and len(self.in_flight) < window and self.channel is not None:
            entry = queue.popleft()
            if deadline is not None and entry.queued_at < deadline:
                self._drop(entry, "queued too long")
                continue
            self._send(entry)

    def _deadline(self):
        max_age = self.transport.max_age
        return None if not max_age else self.transport.reactor.seconds() - max_age

    def _trim(self):
        over = len(self.queue) - self.transport.queue_size
        for _ in range(over):
            self._drop(self.queue.popleft(), "queue full")

    def _drop(self, entry, reason):
        self.dropped.value += 1
        entry.waiter.settled(entry, PublishDropped(f"{reason} ({self.label} {STATE_NAMES[self.state]})"))

    def _drop_all(self, reason):
        entries = list(self.in_flight.values()) + list(self.queue)
        self.in_flight.clear()
        self.queue.clear()
        self._cancel_age_timer()
        for entry in entries:
            self._drop(entry, reason)

    def _arm_age_timer(self):
        max_age = self.transport.max_age
        if not max_age or not self.queue or self._age_timer is not None:
            return
        reactor = self.transport.reactor
        delay = max(0.0, self.queue[0].queued_at + max_age - reactor.seconds())
        self._age_timer = reactor.callLater(delay, self._expire_old)

    def _expire_old(self):
        self._age_timer = None
        deadline = self._deadline()
        queue = self.queue
        while queue and queue[0].queued_at <= deadline:
            self._drop(queue.popleft(), "queued too long")
        self._arm_age_timer()

    def _cancel_age_timer(self):
        if self._age_timer is not None and self._age_timer.active():
            self._age_timer.cancel()
        self._age_timer = None


@implementer(IEventTransport, IAdmission, IPeerHosts, IDrainable, ICounted)
class RabbitMQTransport(Service):
    """
    The C{rabbitmq:} transport: parses sockets, owns the broker connections.
    """
    _log = Logger()
    schemes = ("rabbitmq",)
    _drained = False  # a drain (shutdown) already gave the queues their time

    def __init__(self, name, reactor, statistics, *, format="json", heartbeat=10,
                 connect_timeout=5.0, reconnect_min=0.5, reconnect_max=10.0,
                 queue_size=10000, max_age=60.0, window=1000, max_connections=64,
                 stop_timeout=2.0, tls_ca=None, tls_cert=None, tls_key=None):
        self.name = name
        self.reactor = reactor
        self.statistics = statistics
        self.format = "text-bare" if format == "text" else "json"
        self.content_type = "text/plain" if format == "text" else "application/json"
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = max(reconnect_max, reconnect_min)
        self.queue_size = queue_size
        self.max_age = max_age
        self.window = window
        self.max_connections = max_connections
        self.stop_timeout = stop_timeout
        self.tls_ca = tls_ca
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self._tls_trust = None
        if tls_ca or tls_cert:
            self._load_tls()  # bad files fail at start-up, not at the first event
        self.counters = TransportCounters(statistics, name)
        self.connections = {}  # ConnectionKey -> BrokerConnection
        self._labels = set()
        self._properties = {}
        statistics.gauge(f"evi_{name}", "connections", lambda: len(self.connections))

    # -- sockets --------------------------------------------------------------------------

    def parse(self, scheme, rest):
        shown, target = parse_socket(rest)
        key = target.connection
        if key.tls:
            self._check_tls()
        if getattr(self.reactor, "resolve", None) is None:
            # A reactor that cannot resolve (a task.Clock in unit tests): the
            # name stays, and peer_hosts reports it, which no [policy] passes.
            return self._destination(shown, target, key)
        # the connection uses the address checked (ConnectionKey.pinned)
        return resolve_once(self.reactor, key.host,
                            lambda ip: self._destination(shown, target, key.pinned(ip)))

    @staticmethod
    def _destination(shown, target, key):
        # target.connection stays a ConnectionKey until admit(): a socket the
        # [policy] refuses must not take one of the max_connections
        target.connection = key
        return Destination(shown, target)

    def admit(self, destination):
        """
        Called by the event interface once the socket passed the [policy]:
        the connection object is made now (no I/O until the first publish),
        so deliver() never has to look it up.

        @raise BadSocket: one more broker connection than C{max_connections}.
        """
        target = destination.address
        key = target.connection
        if isinstance(key, BrokerConnection):
            return destination
        if key not in self.connections and len(self.connections) >= self.max_connections:
            raise BadSocket(f"too many broker connections ({self.max_connections}, "
                            f"[transport:{self.name}] max_connections)")
        target.connection = self.connection(key)
        return destination

    @staticmethod
    def peer_hosts(destination):
        # the broker address connected to (for the [policy]); the host name
        # itself only when nothing could resolve it, which no policy passes
        connection = destination.address.connection
        key = connection.key if isinstance(connection, BrokerConnection) else connection
        return (key.address or key.host,)

    def connection(self, key: ConnectionKey) -> BrokerConnection:
        conn = self.connections.get(key)
        if conn is None:
            label = key.label
            n = 1
            while label in self._labels:  # same user, another password
                n += 1
                label = f"{key.label}#{n}"
            self._labels.add(label)
            conn = self.connections[key] = BrokerConnection(self, key, label)
        return conn

    # -- TLS ---------------------------------------------------------------------------------

    def _check_tls(self):
        try:
            import OpenSSL  # noqa: F401
            import service_identity  # noqa: F401
        except ImportError:
            raise BadSocket("tls needs pyOpenSSL and service_identity (pip install "
                            "'twisted[tls]')") from None

    def _load_tls(self):
        """
        @raise TLSFilesError: a file is missing or not PEM, or no pyOpenSSL;
            its C{key} names the setting at fault.
        """
        try:
            self._check_tls()
        except BadSocket as e:
            raise TLSFilesError("tls_ca", str(e)) from None
        from twisted.internet import ssl  # pyOpenSSL is optional: only for tls sockets
        key_name, path = "tls_ca", self.tls_ca
        try:
            trust = None
            if self.tls_ca:
                trust = ssl.trustRootFromCertificates(
                    [ssl.Certificate.loadPEM(c) for c in _pem_certificates(self.tls_ca)])
            client = None
            if self.tls_cert:
                key_name, path = "tls_cert", self.tls_cert
                with open(self.tls_cert, "rb") as f:
                    cert = f.read()
                key = cert
                if self.tls_key:
                    key_name, path = "tls_key", self.tls_key
                    with open(self.tls_key, "rb") as f:
                        key = f.read()
                client = ssl.PrivateCertificate.loadPEM(cert + b"\n" + key)
        except Exception as e:  # OSError, ValueError, OpenSSL errors
            raise TLSFilesError(key_name, f"cannot load the TLS files ({path}): {e}") from None
        self._tls_trust = (trust, client)

    def tls_options(self, hostname):
        from twisted.internet import ssl  # pyOpenSSL is optional: only for tls sockets
        if self._tls_trust is None:
            self._load_tls()
        trust, client = self._tls_trust
        kwargs = {}
        if trust is not None:
            kwargs["trustRoot"] = trust
        if client is not None:
            kwargs["clientCertificate"] = client
        return ssl.optionsForClientTLS(hostname.strip("[]"), **kwargs)

    # -- delivery ------------------------------------------------------------------------------

    def properties(self, content_type, persistent):
        key = (content_type, persistent)
        props = self._properties.get(key)
        if props is None:
            props = {"content-type": content_type}
            if persistent:
                props["delivery-mode"] = 2
            self._properties[key] = props
        return props

    def deliver(self, notification, subscriptions):
        body = notification.payload(self.format)
        batch = _Raise(len(subscriptions), self.counters)
        now = self.reactor.seconds()
        plain = self.properties(self.content_type, False)
        durable = self.properties(self.content_type, True)
        for sub in subscriptions:
            target = sub.address
            target.connection.enqueue(_Entry(
                target.exchange, target.routing_key, body,
                durable if target.persistent else plain, now, batch, sub))
        return batch.deferred

    # -- service ------------------------------------------------------------------------------

    def drain(self, deadline):
        """
        Shutdown: wait for the queued and unconfirmed publishes to be
        confirmed, for C{stop_timeout} seconds at most and never past
        C{deadline}; L{stopService} then does not wait again. See
        L{evsrv.interfaces.IEventTransport}.

        @return: Deferred firing with a L{DrainResult} of what is left.
        """
        self._drained = True
        timeout = min(self.stop_timeout, deadline - self.reactor.seconds())
        busy = [conn for conn in self.connections.values() if conn.queue or conn.in_flight]
        waits = [conn._wait_flushed(timeout) for conn in busy] if timeout > 0 else []

        def left(_):
            result = DrainResult()
            for conn in self.connections.values():
                if conn.queue or conn.in_flight:
                    result.add(conn.label, len(conn.queue) + len(conn.in_flight),
                               f"{STATE_NAMES[conn.state]}, {len(conn.in_flight)} "
                               "unconfirmed")
            return result
        return defer.DeferredList(waits).addCallback(left)

    def stopService(self):
        super().stopService()
        flush = 0.0 if self._drained else self.stop_timeout
        stops = [conn.stop(flush) for conn in self.connections.values()]
        return defer.DeferredList(stops, consumeErrors=True).addCallback(lambda _: None)


def _pem_certificates(path):
    data = open(path, "rb").read()
    found = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
    if not found:
        raise ValueError(f"no PEM certificate in {path}")
    return found


# -- plugin --------------------------------------------------------------------------------


def _number(kind, low, high=None):
    def coerce(text: str):
        try:
            value = kind(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if value != value or value < low or (high is not None and value > high):
            raise ValueError(f"must be {'between %g and %g' % (low, high) if high else '>= %g' % low}")
        return value
    return coerce


def _optional_path(text: str):
    return text.strip() or None


def _build(settings, context):
    tls = {}
    for key in ("tls_ca", "tls_cert", "tls_key"):
        value = settings[key]
        if value is not None:
            value = context.base_dir / value
            if not value.is_file():
                raise PluginConfigError(key, f"no such file: {value}")
            value = str(value)
        tls[key] = value
    try:
        return _make_transport(settings, context, tls)
    except TLSFilesError as e:
        raise PluginConfigError(e.key, str(e)) from None


def _make_transport(settings, context, tls):
    return RabbitMQTransport(
        "rabbitmq", context.reactor, context.statistics,
        format=settings["format"], heartbeat=settings["heartbeat"],
        connect_timeout=settings["connect_timeout"],
        reconnect_min=settings["reconnect_min"], reconnect_max=settings["reconnect_max"],
        queue_size=settings["queue_size"], max_age=settings["max_age"],
        window=settings["window"], max_connections=settings["max_connections"],
        stop_timeout=settings["stop_timeout"], **tls)


def _make_factory():
    return TransportFactory(
        "rabbitmq", ("rabbitmq",), {
            "format": ("json", choice("json", "text"),
                       "json: JSON-RPC notification (application/json); text: the 1.x "
                       "name::value lines, no trailing newline (text/plain)"),
            "heartbeat": ("10", _number(int, 0, 65535),
                          "AMQP heartbeat in seconds (0 = off); a silent broker is cut "
                          "after three"),
            "connect_timeout": ("5", _number(float, 0.1),
                                "seconds for the TCP connect, and again for the TLS + AMQP "
                                "handshake"),
            "reconnect_min": ("0.5", _number(float, 0.01), "first reconnect delay, seconds"),
            "reconnect_max": ("10", _number(float, 0.01), "largest reconnect delay, seconds"),
            "queue_size": ("10000", _number(int, 1),
                           "notifications queued per connection while the broker is down or "
                           "slow; beyond it the oldest are dropped"),
            "max_age": ("60", _number(float, 0),
                        "seconds a notification may wait in the queue before it is dropped "
                        "(0 = no limit)"),
            "window": ("1000", _number(int, 1),
                       "publishes per connection awaiting the broker's confirm"),
            "max_connections": ("64", _number(int, 1),
                                "distinct broker connections; a subscription needing one more "
                                "is refused"),
            "stop_timeout": ("2", _number(float, 0),
                             "at shutdown, seconds to wait for queued notifications to be "
                             "confirmed"),
            "tls_ca": ("", _optional_path,
                       "PEM CA file to verify brokers with for tls sockets (empty: the "
                       "system's)"),
            "tls_cert": ("", _optional_path, "PEM client certificate for tls sockets"),
            "tls_key": ("", _optional_path,
                        "PEM key of tls_cert (empty: in the tls_cert file)"),
        }, _build, "RabbitMQ / AMQP 0-9-1 publisher with confirms (event_rabbitmq)")


rabbitmqTransport = _make_factory()
