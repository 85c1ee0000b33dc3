# -*- test-case-name: tests.test_rabbitmq_unit -*-
"""
The C{rabbitmq:} socket syntax:
C{rabbitmq:[user[:password]@]host[:port]/[params?]routing_key}, params a
C{;}-separated list of C{exchange=NAME}, C{persistent}, and evsrv's
C{vhost=NAME} and C{tls}. A lone bare word as params is the exchange (the
2.x-3.1 form, which is also what the listing prints, so a listed socket
can be given back, e.g. to unsubscribe).
"""

import re
from urllib.parse import quote

from evsrv.interfaces import BadSocket

DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671

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

