# -*- test-case-name: tests.test_server -*-
"""
Assembles a running evsrv from a L{Config}: the event interface, the
transports, the expiry timer and the MI listeners, under one MultiService.
"""

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.plugin import getPlugins

from evsrv import __version__, plugins
from evsrv.config import CORE_EVENTS, LATE_CORE_EVENTS, Config, ConfigError
from evsrv.evi import EventInterface
from evsrv.evi.expiry import ExpiryService
from evsrv.interfaces import IEventTransportFactory
from evsrv.mi.commands import CoreCommands, EVICommands
from evsrv.mi.controller import MIController
from evsrv.mi.dispatch import MIDispatcher
from evsrv.mi.protocol import (ListeningPorts, ListenError, MIDatagramProtocol, listen_udp,
                               listen_unix)
from evsrv.statistics import Statistics
from evsrv.transports import TransportContext


def transport_factories() -> dict:
    """
    Every transport plugin found in C{evsrv.plugins}, by name.
    """
    return {f.name: f for f in getPlugins(IEventTransportFactory, plugins)}


class EvsrvService(MultiService):
    """
    The whole server. Its parts are attributes so that embedding code and
    tests reach them directly: C{evi}, C{controller}, C{statistics},
    C{transports}, C{mi_ports}.
    """
    _log = Logger()

    def __init__(self, config: Config, reactor, factories=None):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.statistics = Statistics()
        factories = transport_factories() if factories is None else factories
        context = TransportContext(reactor, self.statistics, config.base_dir)
        self.transports = {}
        by_scheme = {}
        for name, settings in config.transports.items():
            transport = factories[name].build(settings, context)
            self.transports[name] = transport
            for scheme in transport.schemes:
                by_scheme[scheme] = transport
            if IService.providedBy(transport):
                transport.setServiceParent(self)

        self.evi = context.evi = EventInterface(reactor, by_scheme, self.statistics)
        for name in (*CORE_EVENTS, *config.events, *LATE_CORE_EVENTS):
            self.evi.publish(name)
        ExpiryService(self.evi, config.expiry_interval, clock=reactor).setServiceParent(self)

        self.controller = MIController(self.statistics)
        for command in EVICommands(self.evi).commands():
            self.controller.register(command)
        for command in CoreCommands(self.controller, self.statistics, reactor).commands():
            self.controller.register(command)
        for transport in self.transports.values():
            for command in getattr(transport, "mi_commands", lambda: [])():
                self.controller.register(command)
        self.dispatcher = MIDispatcher(
            self.controller, config.mi.max_datagram,
            "ask for less (e.g. subscribers_list EVENT, or EVENT SOCKET)")
        self.mi_ports = []
        self._mi_paths = []

    def listen(self):
        """
        Open the MI sockets now, so that a taken address fails before the
        reactor runs.

        @raise ConfigError: naming the ini key of the address that failed.
        """
        mi = self.config.mi
        try:
            for host, port in mi.udp:
                label = f"udp:{host}:{port}"
                protocol = MIDatagramProtocol(self.dispatcher, self.reactor, label)
                self.mi_ports.append(listen_udp(self.reactor, protocol, host, port))
            for path in mi.unix:
                protocol = MIDatagramProtocol(self.dispatcher, self.reactor, f"unix:{path}")
                self.mi_ports.append(listen_unix(self.reactor, protocol, str(path),
                                                 mi.unix_mode))
                self._mi_paths.append(str(path))
        except ListenError as e:
            for port in self.mi_ports:
                port.stopListening()
            self.mi_ports = []
            key = "udp" if str(e).startswith("cannot listen on udp:") else "unix"
            raise ConfigError(self.config.source, "mi", key, str(e)) from None
        ListeningPorts(self.mi_ports, self._mi_paths).setServiceParent(self)
        return self.mi_ports

    def startService(self):
        super().startService()
        for port in self.mi_ports:
            host = port.getHost()
            where = (f"udp:{host.host}:{host.port}" if hasattr(host, "port")
                     else f"unix:{host.name.decode() if isinstance(host.name, bytes) else host.name}")
            self._log.info("MI listening on {where}", where=where)
        self._log.info("evsrv {version} started: {events} events, transports {transports}",
                       version=__version__, events=len(self.evi.events),
                       transports=", ".join(self.transports) or "none")

    def mi_udp_address(self, index=0):
        """
        C{(host, port)} of the C{index}-th UDP MI socket (handy with port 0).
        """
        udp = [p for p in self.mi_ports if hasattr(p.getHost(), "port")]
        host = udp[index].getHost()
        return host.host, host.port
