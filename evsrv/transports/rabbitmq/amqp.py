# -*- test-case-name: tests.test_rabbitmq_unit -*-
"""
The AMQP 0-9-1 side of the C{rabbitmq:} transport, on txamqp: the vendored
spec, one connection's protocol (the handshake, publishing, confirms, the
broker's refusals and oversized frames) and its factory. Everything
txamqp-specific lives in this package, so that swapping the AMQP library
touches nothing else.

txamqp workarounds (see the ecosystem notes §1.8): the spec file is vendored
(C{evsrv/specs}); bodies, exchange and routing keys are always bytes (its
codec counts characters, not bytes); start-ok is encoded here (its table
encoder knows no booleans or nested tables, and it sends no client
properties); ack/nack handlers are added to the delegate; nothing is ever
consumed and C{mandatory} is never set (its read path mangles content); the
AMQP handshake runs inside the protocol, not in ClientService's
C{prepareConnection} (a connection lost while preparing hits a missing
transition in ClientService's state machine).

The protocol reports to its owner, a
L{evsrv.transports.rabbitmq.connection.BrokerConnection}.
"""

import struct
import sys
from importlib import resources

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from txamqp import spec as amqp_spec_module
from txamqp.client import Closed, TwistedDelegate
from txamqp.connection import Frame, Header, Method
from txamqp.protocol import AMQClient

from evsrv import __version__

SPEC_FILE = "amqp0-9-1.stripped.extended.xml"
MAX_FRAME = 131072  # largest AMQP frame accepted from (and sent to) a broker

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
