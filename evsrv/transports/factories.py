"""
Plugin factories of the built-in transports.
"""

from zope.interface import implementer

from evsrv.interfaces import IEventTransportFactory
from evsrv.plugin_factory import PluginFactory
from evsrv.transports import choice, parse_host_port


@implementer(IEventTransportFactory)
class TransportFactory(PluginFactory):
    """
    A transport plugin: also the socket C{schemes} it handles, and whether it
    is C{builtin} (enabled when the ini does not list transports).
    """

    def __init__(self, name, schemes, options, build, description="", builtin=True):
        super().__init__(name, options, build, description)
        self.schemes = tuple(schemes)
        self.builtin = builtin


_FORMAT = ("json", choice("json", "text"),
           "json: JSON-RPC notification (OpenSIPS 3.x); text: the 1.x name::value lines")


def _build_udp(settings, context):
    from evsrv.transports.datagram import UDPTransport
    host, port = settings["source"]
    return UDPTransport("udp", settings["format"], context.statistics, context.reactor,
                        host, port)


def _build_unix(settings, context):
    from evsrv.transports.datagram import UNIXTransport
    return UNIXTransport("unix", settings["format"], context.statistics)


udpTransport = TransportFactory(
    "udp", ("udp",),
    {"format": _FORMAT,
     "source": (":0", parse_host_port,
                "local address notifications are sent from (HOST:PORT; port 0 = any)")},
    _build_udp, "UDP datagrams (event_datagram)")

unixTransport = TransportFactory(
    "unix", ("unix",), {"format": _FORMAT}, _build_unix,
    "UNIX datagrams (event_datagram)")


def _build_route(settings, context):
    from evsrv.script.transport import RouteTransport
    return RouteTransport("route", context.statistics)


routeTransport = TransportFactory(
    "route", ("route",), {}, _build_route,
    "the routing script's event routes (event_route)")
