# -*- test-case-name: tests.test_server -*-
"""
Assembles a running evsrv from a L{Config}: the event interface, the
transports, the expiry timer and the MI listeners, under one MultiService.
"""

import collections

from twisted.application.service import IService, MultiService
from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.plugin import getPlugins

from evsrv import __version__, plugins
from evsrv.config import CORE_EVENTS, LATE_CORE_EVENTS, Config, ConfigError
from evsrv.evi import EventInterface
from evsrv.evi.expiry import ExpiryService
from evsrv.http.site import HTTPListenError, HTTPService, build_site
from evsrv.interfaces import (IEventTransportFactory, IMICommands, IModule, PluginConfigError,
                              declare_legacy_capabilities)
from evsrv.mi.commands import CoreCommands, EVICommands
from evsrv.mi.controller import Command, MIController, MIError
from evsrv.modules import ModuleContext
from evsrv.mi.dispatch import MIDispatcher
from evsrv.persistence import (StoreError, StoreNotWritable, SubscriptionDatabase,
                                SubscriptionJournal)
from evsrv.persistence.database import move_aside
from evsrv.evi.policy import DestinationPolicy
from evsrv.mi.protocol import (ListeningPorts, ListenError, MIDatagramProtocol, listen_udp,
                               listen_unix)
from evsrv.script import ScriptLoadError, ScriptRunner
from evsrv.shutdown import stop_server
from evsrv.util.statistics import Statistics
from evsrv.transports import TransportContext


def transport_factories() -> dict:
    """
    Every transport plugin found in C{evsrv.plugins}, by name.
    """
    return {f.name: f for f in getPlugins(IEventTransportFactory, plugins)}


def module_factories() -> dict:
    """
    Every module plugin found in C{evsrv.plugins}, by name.
    """
    return {f.name: f for f in getPlugins(IModule, plugins)}


class EvsrvService(MultiService):
    """
    The whole server. Its parts are attributes so that embedding code and
    tests reach them directly: C{evi}, C{controller}, C{statistics},
    C{transports}, C{mi_ports}.
    """
    _log = Logger()

    def __init__(self, config: Config, reactor, factories=None, modules=None,
                 ignore_store=False):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.statistics = Statistics()
        factories = transport_factories() if factories is None else factories
        context = TransportContext(reactor, self.statistics, config.base_dir)
        self.transports = {}
        by_scheme = {}
        for name, settings in config.transports.items():
            try:
                transport = factories[name].build(settings, context)
            except PluginConfigError as e:
                raise ConfigError(config.source, f"transport:{name}", e.key, e.message) from None
            self.transports[name] = transport
            legacy = declare_legacy_capabilities(transport)
            if legacy:
                # a plugin written before the capability interfaces: it keeps
                # working, and its author learns what to declare
                self._log.warn("transport {transport} has the methods of {interfaces} without "
                               "declaring them; declare them with @implementer(...) (from "
                               "evsrv.interfaces)", transport=name, interfaces=", ".join(legacy))
            for scheme in transport.schemes:
                by_scheme[scheme] = transport
            if IService.providedBy(transport):
                transport.setServiceParent(self)

        self.evi = context.evi = EventInterface(reactor, by_scheme, self.statistics)
        self.evi.destination_policy = DestinationPolicy(
            config.policy.allow_destinations, config.policy.deny_destinations, self.statistics)
        self.evi.destination_policy.warn_unchecked(self.transports.values())
        if config.http.listen is not None and config.http.status_path:
            self.evi.recent_raises = collections.deque(maxlen=config.http.status_recent)
        for name in CORE_EVENTS:
            self.evi.publish(name)
        ExpiryService(self.evi, config.expiry_interval, clock=reactor).setServiceParent(self)

        self.controller = MIController(self.statistics, clock=reactor,
                                       request_timeout=config.mi.request_timeout)
        for command in EVICommands(self.evi).commands():
            self.controller.register(command)
        for command in CoreCommands(self.controller, self.statistics, reactor).commands():
            self.controller.register(command)
        for transport in self.transports.values():
            if IMICommands.providedBy(transport):
                for command in transport.mi_commands():
                    self.controller.register(command)

        # Modules publish their events after the core's, as in OpenSIPS.
        self.mi_filters = []
        module_context = ModuleContext(reactor, self.statistics, self.evi, self.controller,
                                       self.mi_filters, config.base_dir)
        factories = module_factories() if modules is None else modules
        self.modules = {}
        for name, settings in config.modules.items():
            try:
                module = factories[name].build(settings, module_context)
            except PluginConfigError as e:
                raise ConfigError(config.source, f"module:{name}", e.key, e.message) from None
            self.modules[name] = module
            if IService.providedBy(module):
                module.setServiceParent(self)
        for name in config.events:
            self.evi.publish(name)

        self.script = None
        if config.script is not None:
            self._load_script(config.script)
        for name in LATE_CORE_EVENTS:
            self.evi.publish(name)

        limits = config.limits
        self.evi.max_subscriptions = limits.max_subscriptions
        self.evi.max_subscriptions_per_event = limits.max_subscriptions_per_event
        self.evi.max_params_bytes = limits.max_params_bytes
        # the store is read last: every event a stored subscription names
        # is published by now
        self.journal = None
        self._stored = []
        self.restored = None  # Deferred of the restore, once started
        if config.store.path is not None:
            self._open_store(config.store, ignore_store)

        self.dispatcher = MIDispatcher(
            self.controller, config.mi.max_datagram,
            "ask for less (e.g. subscribers_list EVENT, or EVENT SOCKET)")
        self.mi_ports = []
        self._mi_paths = []
        self.http = None  # the HTTPService once listening
        self.http_dispatcher = MIDispatcher(self.controller, None)  # no size limit

    def _open_store(self, store, ignore_store):
        try:
            database = SubscriptionDatabase(store.path, store.sync)
            self._stored = database.load()
        except StoreNotWritable as e:
            # nothing to set aside: --ignore-store would fail the same way
            raise ConfigError(self.config.source, "store", None, str(e)) from None
        except StoreError as e:
            if not ignore_store:
                raise ConfigError(self.config.source, "store", None,
                                  f"{e}; move it away, or start with --ignore-store to set it "
                                  "aside and start with no subscriptions") from None
            aside = move_aside(store.path)
            self._log.warn("{error}; --ignore-store: set aside as {aside}, starting with no "
                           "stored subscriptions", error=str(e), aside=str(aside))
            try:
                database = SubscriptionDatabase(store.path, store.sync)
            except StoreError as again:
                raise ConfigError(self.config.source, "store", None, str(again)) from None
            self._stored = []
        self.journal = self.evi.journal = SubscriptionJournal(
            database, self.reactor, self.statistics, store.batch_delay)

    def _restore(self):
        """
        Subscribe the stored subscriptions again with their own times, so
        their TTLs kept counting while evsrv was down; expired ones are left
        out (and purged from the file by the next write).

        @return: Deferred firing with C{(restored, expired, skipped)}.
        """
        rows, self._stored = self._stored, []
        now = self.reactor.seconds()
        live = [row for row in rows if row.deadline > now]
        skipped = []

        def failed(failure, row):
            # kept in the file until it expires: a transport or event that
            # comes back with the next configuration restores it then
            skipped.append(row)
            if len(skipped) <= 10:
                self._log.warn("stored subscription {socket} to {event} not restored: "
                               "{reason}", socket=row.destination, event=row.event,
                               reason=failure.getErrorMessage() or failure.type.__name__)
        pending = [self.evi.subscribe(row.event, row.socket, row.expire, origin="mi",
                                      subscribed_at=row.subscribed_at, record=False)
                   .addErrback(failed, row) for row in live]

        def done(_):
            result = (len(live) - len(skipped), len(rows) - len(live), len(skipped))
            if rows:
                self._log.info("restored {restored} stored subscription(s); {expired} expired "
                               "while evsrv was down, {skipped} not restored",
                               restored=result[0], expired=result[1], skipped=result[2])
            return result
        return gatherResults(pending).addCallback(done)

    def _load_script(self, path):
        self.script = ScriptRunner(path, self.evi, self.reactor, self.statistics)
        try:
            self.script.prepare()
        except ScriptLoadError as e:
            raise ConfigError(self.config.source, "script", "path", str(e)) from None
        route = self.transports.get("route")
        if route is not None:
            route.runner = self.script
        self.controller.register(Command(
            "reload_routes", [[]], self._reload_routes,
            help="Loads the routing script again; MI subscriptions stay. On an error the "
                 "running script stays and the error says why."))
        # Last child: the transports and modules are up when startup_route runs.
        self.script.setServiceParent(self)

    def _reload_routes(self, call):
        try:
            self.script.reload()
        except ScriptLoadError as e:
            self._log.warn("reload_routes failed, the running script stays: {error}",
                           error=str(e))
            raise MIError(500, "Reload failed", str(e)) from None
        return "OK"

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
                protocol = MIDatagramProtocol(self.dispatcher, self.reactor, label,
                                              self.mi_filters,
                                              allow=mi.allow_for((host, port)))
                self.mi_ports.append(listen_udp(self.reactor, protocol, host, port))
            for path in mi.unix:
                # UNIX clients are let in by the socket file's mode and owner
                protocol = MIDatagramProtocol(self.dispatcher, self.reactor, f"unix:{path}",
                                              self.mi_filters)
                self.mi_ports.append(listen_unix(self.reactor, protocol, str(path),
                                                 mi.unix_mode, mi.unix_owner, mi.unix_group))
                self._mi_paths.append(str(path))
            http = self._listen_http()
        except (ListenError, HTTPListenError) as e:
            for port in self.mi_ports:
                port.stopListening()
            self.mi_ports = []
            if isinstance(e, HTTPListenError):
                raise ConfigError(self.config.source, "http", "listen", str(e)) from None
            key = "udp" if str(e).startswith("cannot listen on udp:") else "unix"
            raise ConfigError(self.config.source, "mi", key, str(e)) from None
        ListeningPorts(self.mi_ports, self._mi_paths).setServiceParent(self)
        if http is not None:
            self.http = http
            http.setServiceParent(self)
            if self.config.http.mi_path:
                self.dispatcher.large_reply_hint += (
                    f", or use the HTTP MI {self.http_mi_url()}, which has no size limit")
        return self.mi_ports

    def _listen_http(self):
        http = self.config.http
        if http.listen is None:
            return None
        site = build_site(http, self.reactor, self.statistics, self.evi, self.controller,
                          self.http_dispatcher, self.mi_filters)
        service = HTTPService(site, self.reactor, *http.listen)
        service.listen()
        return service

    def http_mi_url(self):
        """
        The URL of the HTTP MI (with the real port), or C{None} when it is off.
        """
        if self.http is None or not self.config.http.mi_path:
            return None
        return self.http.base_url + self.config.http.mi_path

    def http_url(self, path=""):
        """
        C{http://HOST:PORT} of the HTTP site plus C{path} (handy with port 0).
        """
        return self.http.base_url + path

    def startService(self):
        super().startService()
        self.restored = self._restore()
        if not self.restored.called:
            # a stored socket needed name resolution: MI requests wait
            # (queued by the kernel) so none races the restore
            paused = [p for p in self.mi_ports if getattr(p, "connected", False)]
            for port in paused:
                port.stopReading()

            def resume(result):
                for port in paused:
                    if getattr(port, "connected", False):
                        port.startReading()
                return result
            self.restored.addBoth(resume)
        for port in self.mi_ports:
            host = port.getHost()
            where = (f"udp:{host.host}:{host.port}" if hasattr(host, "port")
                     else f"unix:{host.name.decode() if isinstance(host.name, bytes) else host.name}")
            self._log.info("MI listening on {where}", where=where)
        if self.http is not None:
            # one line per thing the site serves, the MI first (ServerProcess
            # takes the first "HTTP listening on URL" for the HTTP MI)
            http = self.config.http
            served = [(path, what) for path, what in ((http.mi_path, "MI"),
                                                      (http.metrics_path, "metrics"),
                                                      (http.status_path, "status page"))
                      if path]
            nothing = ("/", "nothing: mi_path, metrics_path and status_path are off")
            for path, what in served or [nothing]:
                self._log.info("HTTP listening on {url} ({serves})",
                               url=self.http.base_url + path, serves=what)
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

    def stopService(self):
        """
        Graceful shutdown (see L{evsrv.shutdown}): stop taking MI requests,
        flush what the transports hold for up to C{[shutdown] timeout}
        seconds, persist state, and report what could not be delivered.
        """
        return stop_server(self, super().stopService)
