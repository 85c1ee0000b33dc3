# -*- test-case-name: tests.test_rabbitmq -*-
"""
The C{rabbitmq:} transport (OpenSIPS event_rabbitmq, spec §4.2) on txamqp.

Everything txamqp-specific lives in this package, behind evsrv's transport
interface, so that swapping the AMQP library touches nothing else:

 - L{evsrv.transports.rabbitmq.syntax}: the socket syntax
   (C{rabbitmq:[user[:password]@]host[:port]/[params?]routing_key}) and the
   listing;
 - L{evsrv.transports.rabbitmq.amqp}: the AMQP protocol work (handshake,
   publishing, confirms, the broker's refusals), on txamqp;
 - L{evsrv.transports.rabbitmq.connection}: one L{BrokerConnection} per
   broker, kept up with backoff, and its bounded queue of publishes;
 - this module: the transport and its plugin factory.

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
 - What every connection holds (queued, and unconfirmed) is charged to
   the server's byte budget (C{[limits] max_queued_bytes},
   L{evsrv.transports.kit.ByteBudget}): a publish that does not fit is
   dropped and counted.
"""

import re

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import (BadSocket, IAdmission, ICounted, IDrainable, IEventTransport,
                              IPeerHosts, PluginConfigError)
from evsrv.transports import TransportCounters, choice, resolve_once
from evsrv.transports.factories import TransportFactory
from evsrv.transports.kit import (DROPPED, ByteBudget, DrainResult, QueueRules, Settlement,
                                  wait_drained)
# (the names tests and plugins import from the package: re-exported)
from evsrv.transports.rabbitmq.amqp import (  # noqa: F401
    CLIENT_PROPERTIES, MAX_FRAME, REFUSALS, SPEC_FILE, _AMQPProtocol, _Delegate,
    _failure_text, _one_line, _ProtocolFactory, amqp_spec, start_ok_payload)
from evsrv.transports.rabbitmq.connection import (  # noqa: F401
    CONNECTING, DOWN, IDLE, MAX_CHANNEL_ATTEMPTS, READY, STATE_NAMES, STOP_GRACE, STOPPED,
    BrokerConnection, BrokerRefused, PublishDropped, PublishNacked, _Entry, queue_full,
    queued_too_long)
from evsrv.transports.rabbitmq.syntax import (  # noqa: F401
    DEFAULT_PORT, DEFAULT_TLS_PORT, ConnectionKey, Target, parse_socket)

__all__ = [
    "RabbitMQTransport", "rabbitmqTransport", "TLSFilesError",
    "parse_socket", "ConnectionKey", "Target", "DEFAULT_PORT", "DEFAULT_TLS_PORT",
    "BrokerConnection", "PublishNacked", "PublishDropped", "BrokerRefused",
    "IDLE", "CONNECTING", "READY", "DOWN", "STOPPED", "STATE_NAMES", "STOP_GRACE",
    "MAX_CHANNEL_ATTEMPTS", "amqp_spec", "start_ok_payload", "CLIENT_PROPERTIES", "REFUSALS",
    "SPEC_FILE", "MAX_FRAME",
]


class TLSFilesError(ValueError):
    """
    The TLS files of [transport:rabbitmq] cannot be used. @ivar key: the
    setting (C{tls_ca}, C{tls_cert} or C{tls_key}) whose file failed.
    """

    def __init__(self, key, message):
        super().__init__(message)
        self.key = key


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
                 stop_timeout=2.0, tls_ca=None, tls_cert=None, tls_key=None, budget=None):
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
        budget = ByteBudget() if budget is None else budget
        # aged out: dropped (the broker never had it), as full
        self._rules = QueueRules(queue_size, budget.share(statistics, name), reactor, queue_full,
                                 max_age=max_age, expired=DROPPED,
                                 expired_reason=queued_too_long)
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

    def endpoint(self, key: ConnectionKey):
        """
        Where the connection of C{key} connects: the address checked when
        subscribing (never a fresh DNS answer), through TLS verifying the
        host name for a C{tls} socket.
        """
        endpoint = HostnameEndpoint(self.reactor, key.address or key.host, key.port,
                                    timeout=self.connect_timeout)
        if key.tls:
            endpoint = wrapClientTLS(self.tls_options(key.host), endpoint)
        return endpoint

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
        settlement = Settlement(self.counters, len(subscriptions))
        now = self.reactor.seconds()
        plain = self.properties(self.content_type, False)
        durable = self.properties(self.content_type, True)
        for sub in subscriptions:
            target = sub.address
            target.connection.enqueue(_Entry(
                target.exchange, target.routing_key, body,
                durable if target.persistent else plain, now, settlement, sub))
        return settlement.result()

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
        now = self.reactor.seconds()
        timeout = min(self.stop_timeout, deadline - now)
        busy = [conn for conn in self.connections.values() if not conn.flushed()]
        if busy and timeout > 0:
            d = wait_drained(self.reactor, now + timeout,
                             lambda: all(conn.flushed() for conn in busy))
        else:
            d = defer.succeed(None)

        def left(_):
            result = DrainResult()
            for conn in self.connections.values():
                if conn.queue or conn.in_flight:
                    result.add(conn.label, len(conn.queue) + len(conn.in_flight),
                               f"{STATE_NAMES[conn.state]}, {len(conn.in_flight)} "
                               "unconfirmed")
            return result
        return d.addCallback(left)

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
        stop_timeout=settings["stop_timeout"], budget=context.budget, **tls)


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
