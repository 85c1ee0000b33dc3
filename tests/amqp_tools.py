"""
Test helpers for the rabbitmq: transport: the broker check, a TCP proxy the
test can cut and restore, a TLS-terminating proxy with throw-away
certificates, a "broker" that accepts TCP and never answers, and pika
helpers to set up and read queues on the real broker.
"""

import datetime
import ipaddress
import os
import socket
import subprocess
import uuid

import pytest
from twisted.internet import protocol, reactor
from twisted.internet.defer import maybeDeferred
from twisted.protocols import portforward

BROKER = ("127.0.0.1", 5672)


def broker_reachable(address=None, timeout=1.0) -> bool:
    try:
        socket.create_connection(address or BROKER, timeout=timeout).close()
        return True
    except OSError:
        return False


def require_broker():
    """
    Skip when no broker answers, unless EVSRV_REQUIRE_BROKER=1 (CI): then
    fail, saying how to get one.
    """
    if broker_reachable():
        return
    message = (f"no AMQP broker on {BROKER[0]}:{BROKER[1]} (run tools/ensure-rabbitmq, or "
               f"install rabbitmq-server)")
    if os.environ.get("EVSRV_REQUIRE_BROKER") == "1":
        pytest.fail("EVSRV_REQUIRE_BROKER=1: " + message, pytrace=False)
    pytest.skip(message)


def unique(prefix="evsrv-test"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- pika (blocking; only between evsrv's work, never while it must run) --------------


def pika_connection(user="guest", password="guest", vhost="/", port=BROKER[1]):
    import pika
    return pika.BlockingConnection(pika.ConnectionParameters(
        host=BROKER[0], port=port, virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password),
        blocked_connection_timeout=10, socket_timeout=5))


def drain(channel, queue, limit=100000):
    """
    Every message now in C{queue}: list of (body, properties, routing key).
    """
    out = []
    while len(out) < limit:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append((body, props, method.routing_key))
    return out


def rabbitmqctl(*args):
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                          text=True, timeout=60)


# -- proxies ---------------------------------------------------------------------------


class _Server(portforward.ProxyServer):
    noisy = False

    def connectionMade(self):
        if not self.factory.up:
            self.transport.abortConnection()
            return
        self.factory.live.add(self)
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.live.discard(self)
        super().connectionLost(reason)

    def dataReceived(self, data):
        if not self.factory.frozen:
            super().dataReceived(data)


class _Client(portforward.ProxyClient):
    noisy = False

    def connectionMade(self):
        if not self.peer.transport.connected:  # cut while this was connecting
            self.transport.abortConnection()
            return
        super().connectionMade()

    def dataReceived(self, data):
        if not self.peer.factory.frozen:
            super().dataReceived(data)


class _ClientFactory(portforward.ProxyClientFactory):
    noisy = False
    protocol = _Client


class CutProxy(portforward.ProxyFactory):
    """
    A TCP proxy to the broker. C{cut()} aborts every proxied connection and
    refuses (accepts and aborts) new ones until C{restore()}; C{frozen}
    true swallows every byte both ways (a hung broker), connections stay.
    """
    noisy = False
    protocol = _Server

    def __init__(self, host=BROKER[0], port=BROKER[1]):
        super().__init__(host, port)
        self.up = True
        self.frozen = False
        self.live = set()
        self.listening = None  # (self.port is the broker's, in ProxyFactory)

    def listen(self, tls_context=None):
        if tls_context is None:
            self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        else:
            self.listening = reactor.listenSSL(0, self, tls_context, interface="127.0.0.1")
        return self.listening.getHost().port

    def cut(self):
        self.up = False
        for server in list(self.live):
            if server.peer is not None and server.peer.transport is not None:
                server.peer.transport.abortConnection()
            server.transport.abortConnection()

    def restore(self):
        self.up = True

    def close(self):
        """
        Stop listening and close what is left; a Deferred.
        """
        self.cut()
        return maybeDeferred(self.listening.stopListening)


_Server.clientProtocolFactory = _ClientFactory


class _Mute(protocol.Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.factory.received += len(data)


class SilentBroker(protocol.Factory):
    """
    Accepts TCP and never says a word.
    """
    noisy = False
    protocol = _Mute

    def __init__(self):
        self.connections = []
        self.received = 0
        self.port = None

    def listen(self):
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.port.getHost().port

    def close(self):
        for conn in self.connections:
            if conn.transport.connected:
                conn.transport.abortConnection()
        return maybeDeferred(self.port.stopListening)


# -- throw-away certificates ------------------------------------------------------------


def make_certificates(directory, hostname="127.0.0.1"):
    """
    A CA and a server certificate for C{hostname} signed by it, as PEM files
    in C{directory}: returns dict of paths (ca, cert, key) plus C{other_ca},
    a CA that did not sign anything here.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = ca("evsrv test CA")
    _, other_cert = ca("evsrv other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        san = x509.DNSName(hostname)
    cert = (x509.CertificateBuilder().subject_name(name(hostname)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = {}
    for label, data in (
            ("ca", ca_cert.public_bytes(pem)),
            ("other_ca", other_cert.public_bytes(pem)),
            ("cert", cert.public_bytes(pem)),
            ("key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))):
        path = os.path.join(directory, f"{label}.pem")
        with open(path, "wb") as f:
            f.write(data)
        paths[label] = path
    return paths


def server_tls_context(paths):
    from twisted.internet import ssl
    with open(paths["cert"], "rb") as f:
        cert = f.read()
    with open(paths["key"], "rb") as f:
        key = f.read()
    return ssl.PrivateCertificate.loadPEM(cert + b"\n" + key).options()
