# -*- test-case-name: tests.test_smoke, tests.test_interfaces -*-
"""
Assembles a running evsrv from a L{Config}: the transports, the policy, the
store, the event interface, the expiry timer, the MI, the modules and the
script, under one MultiService, each part made in order and given what it
needs (L{create_server_from_config}, L{EvsrvService}).
"""

from twisted.application.service import IService, MultiService
from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.plugin import getPlugins

from evsrv import __version__, plugins
from evsrv.config import CORE_EVENTS, LATE_CORE_EVENTS, Config, ConfigError
from evsrv.evi import EventInterface, Limits
from evsrv.evi.expiry import ExpiryService
from evsrv.http.site import HTTPListenError, HTTPService, build_site
from evsrv.ingest import IngestListenError, build_ingest
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
from evsrv.mi.fifo import FIFOError, FIFOReplies, MIFIFOListener, MIFIFOProtocol
from evsrv.mi.protocol import (ListeningPorts, ListenError, MIDatagramProtocol, listen_udp,
                               listen_unix)
from evsrv.script import ScriptLoadError, ScriptRunner
from evsrv.shutdown import close_listeners, stop_server
from evsrv.util.statistics import Statistics
from evsrv.transports import LateBinding, TransportContext


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


def create_server_from_config(config: Config, reactor, *, factories=None, modules=None,
                              ignore_store=False):
    """
    Build a whole evsrv from C{config}: every part made in order and handed
    what it needs (see L{EvsrvService}). Nothing listens yet: call
    C{listen()} (a taken address fails before the reactor runs), then start
    it, or give it a parent service.

    @param factories: transport plugins by name (default: those found in
        C{evsrv.plugins}).
    @param modules: module plugins by name (default: those found).
    @param ignore_store: set an unusable subscription store aside and
        start with no subscriptions (C{--ignore-store}).
    @return: the L{EvsrvService}.
    @raise ConfigError: naming the file, section and key at fault.
    """
    return EvsrvService(config, reactor, factories=factories, modules=modules,
                        ignore_store=ignore_store)


def build_transports(config: Config, factories: dict, context: TransportContext,
                     parent: MultiService) -> dict:
    """
    Every enabled transport, by name, built from its plugin factory and its
    C{[transport:NAME]} settings; one that is a service gets C{parent}.

    @raise ConfigError: a factory refused its settings (L{PluginConfigError}).
    """
    log = EvsrvService._log
    transports = {}
    for name, settings in config.transports.items():
        try:
            transport = factories[name].build(settings, context)
        except PluginConfigError as e:
            raise ConfigError(config.source, f"transport:{name}", e.key, e.message) from None
        transports[name] = transport
        legacy = declare_legacy_capabilities(transport)
        if legacy:
            # a plugin written before the capability interfaces: it keeps
            # working, and its author learns what to declare
            log.warn("transport {transport} has the methods of {interfaces} without "
                     "declaring them; declare them with @implementer(...) (from "
                     "evsrv.interfaces)", transport=name, interfaces=", ".join(legacy))
        if IService.providedBy(transport):
            transport.setServiceParent(parent)
    return transports


def open_store(config: Config, reactor, statistics, ignore_store=False):
    """
    Open the subscription store of C{[store]} (before the event interface,
    which is given the journal).

    @return: C{(journal, stored rows)}; C{(None, [])} when the store is off.
    @raise ConfigError: the store cannot be used (and C{ignore_store} cannot
        help, or is not given).
    """
    store = config.store
    if store.path is None:
        return None, []
    log = EvsrvService._log
    try:
        database = SubscriptionDatabase(store.path, store.sync)
        stored = database.load()
    except StoreNotWritable as e:
        # nothing to set aside: --ignore-store would fail the same way
        raise ConfigError(config.source, "store", None, str(e)) from None
    except StoreError as e:
        if not ignore_store:
            raise ConfigError(config.source, "store", None,
                              f"{e}; move it away, or start with --ignore-store to set it "
                              "aside and start with no subscriptions") from None
        aside = move_aside(store.path)
        log.warn("{error}; --ignore-store: set aside as {aside}, starting with no "
                 "stored subscriptions", error=str(e), aside=str(aside))
        try:
            database = SubscriptionDatabase(store.path, store.sync)
        except StoreError as again:
            raise ConfigError(config.source, "store", None, str(again)) from None
        stored = []
    journal = SubscriptionJournal(database, reactor, statistics, store.batch_delay)
    return journal, stored


class EvsrvService(MultiService):
    """
    The whole server. Its parts are attributes so that embedding code and
    tests reach them directly: C{evi}, C{controller}, C{statistics},
    C{transports}, C{journal}, C{modules}, C{script}, C{mi_ports}, C{http},
    C{ingest} (the L{evsrv.ingest.IngestService}), C{upstreams} (the
    L{evsrv.ingest.UpstreamService}).

    The parts are made in this order, each given what it needs (nothing is
    filled in afterwards):

     1. the statistics;
     2. the transports, from their plugins; their L{TransportContext}
        carries a L{LateBinding} of the event interface, which is made from
        them (step 5);
     3. the destination policy (C{[policy]});
     4. the subscription store: its journal, and the rows to restore at
        start;
     5. the L{EventInterface}, given the transports, the policy, the
        journal, the C{[limits]} and how many raises the status page shows;
        then the transports' binding is bound to it: the one two-phase step;
     6. the core events, the expiry timer, the MI controller and its
        commands (the EVI's, the core's, the transports');
     7. the modules (their events after the core's, as in OpenSIPS), the
        C{[events]}, the routing script, the late core events;
     8. the MI dispatchers; L{listen} opens the MI and HTTP sockets.

    Use L{create_server_from_config}.
    """
    _log = Logger()

    def __init__(self, config: Config, reactor, factories=None, modules=None,
                 ignore_store=False):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.statistics = Statistics()

        events = LateBinding("the event interface")
        self._script_binding = LateBinding("the routing script")
        context = TransportContext(reactor, self.statistics, config.base_dir,
                                   event_interface=events, script=self._script_binding,
                                   max_queued_bytes=config.limits.max_queued_bytes)
        self.transports = build_transports(
            config, transport_factories() if factories is None else factories, context, self)
        by_scheme = {scheme: transport for transport in self.transports.values()
                     for scheme in transport.schemes}

        policy = DestinationPolicy(config.policy.allow_destinations,
                                   config.policy.deny_destinations, self.statistics)
        policy.warn_unchecked(self.transports.values())

        # stored subscriptions are restored at start (every event they name
        # is published by then)
        self.journal, self._stored = open_store(config, reactor, self.statistics,
                                                ignore_store)
        try:
            self._assemble(config, reactor, by_scheme, policy, events,
                           module_factories() if modules is None else modules)
        except BaseException:
            if self.journal is not None:
                self.journal.database.close()  # no thread runs yet: close it here
            raise

    def _assemble(self, config, reactor, by_scheme, policy, events, modules):
        """
        Steps 5 to 8 (see the class docstring), on the parts made before.

        @param events: the transports' L{LateBinding} of the event interface.
        """
        limits = config.limits
        status_page = config.http.listen is not None and config.http.status_path
        self.evi = EventInterface(
            reactor, by_scheme, self.statistics, policy=policy, journal=self.journal,
            limits=Limits(limits.max_subscriptions, limits.max_subscriptions_per_event,
                          limits.max_params_bytes),
            recent=config.http.status_recent if status_page else 0)
        events.bind(self.evi)
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
        self.modules = {}
        for name, settings in config.modules.items():
            try:
                module = modules[name].build(settings, module_context)
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

        # OpenSIPS proxies as publishers ([ingest], [upstream:NAME]): the
        # ingest listens in listen(), the upstreams subscribe once it does
        self.ingest, self.upstreams = build_ingest(config.ingest, config.upstreams, reactor,
                                                   self.evi, self.statistics)
        if self.upstreams.upstreams:
            for command in self.upstreams.mi_commands():
                self.controller.register(command)

        self.restored = None  # Deferred of the restore, once started
        self.dispatcher = MIDispatcher(
            self.controller, config.mi.max_datagram,
            "ask for less (e.g. subscribers_list EVENT, or EVENT SOCKET)")
        self.mi_ports = []
        self._mi_paths = []
        self.fifo_listeners = []  # MIFIFOListener, once listen() opened them
        self.fifo_replies = None  # their FIFOReplies
        self.http = None  # the HTTPService once listening
        self.http_dispatcher = MIDispatcher(self.controller, None)  # no size limit

    @property
    def mi_socket_paths(self) -> tuple:
        """
        The UNIX socket files of the MI, once L{listen} made them.
        """
        return tuple(self._mi_paths)

    def close_mi(self):
        """
        Stop taking MI requests: the datagram MI ports and the HTTP port stop
        listening (HTTP connections are closed) and the UNIX socket files are
        removed. The first step of a graceful stop (L{evsrv.shutdown}).

        @return: a Deferred firing once closed; it does not fail (a listener
            that fails to close is logged).
        """
        services = [child for child in self if isinstance(child, ListeningPorts)]
        covered = {id(port) for service in services for port in service.ports}
        if self.http is not None:
            services.append(self.http)
        # ports listed in mi_ports that no ListeningPorts holds (embedding code)
        stray = [port for port in self.mi_ports if id(port) not in covered]
        return close_listeners(services, stray, self._mi_paths)

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
        self._script_binding.bind(self.script)
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
        try:
            self.ingest.listen()  # first: nothing else is open if it fails
        except IngestListenError as e:
            raise ConfigError(self.config.source, "ingest", e.key, str(e)) from None
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
            self._listen_fifos()
            http = self._listen_http()
        except (ListenError, HTTPListenError) as e:
            self.ingest.stop_listening()
            for port in self.mi_ports:
                port.stopListening()
            self.mi_ports = []
            for fifo in self.fifo_listeners:
                fifo.stopListening()
            self.fifo_listeners = []
            if isinstance(e, FIFOError):
                raise ConfigError(self.config.source, "mi", "fifo", str(e)) from None
            if isinstance(e, HTTPListenError):
                raise ConfigError(self.config.source, "http", "listen", str(e)) from None
            key = "udp" if str(e).startswith("cannot listen on udp:") else "unix"
            raise ConfigError(self.config.source, "mi", key, str(e)) from None
        ListeningPorts(self.mi_ports, self._mi_paths).setServiceParent(self)
        self.ingest.setServiceParent(self)
        self.upstreams.setServiceParent(self)  # after the ingest: its address is bound
        if self.fifo_replies is not None:
            # closed by close_mi with the other MI listeners: the FIFOs first
            # (their files removed), then the replies still waiting dropped
            ListeningPorts([*self.fifo_listeners, self.fifo_replies]).setServiceParent(self)
        if http is not None:
            self.http = http
            http.setServiceParent(self)
            if self.config.http.mi_path:
                self.dispatcher.large_reply_hint += (
                    f", or use the HTTP MI {self.http_mi_url()}, which has no size limit")
        return self.mi_ports

    def _listen_fifos(self):
        """
        Open the MI FIFOs of C{[mi] fifo}; one that cannot be had fails
        start-up (L{FIFOError}), or with C{fifo_taken = skip} is logged and
        left out.
        """
        mi = self.config.mi
        if not mi.fifo:
            return
        self.fifo_replies = FIFOReplies(self.reactor, mi.fifo_reply_dir, self.statistics)
        # no size limit: a FIFO reply is written as the client reads it
        dispatcher = MIDispatcher(self.controller, None)
        for path in mi.fifo:
            protocol = MIFIFOProtocol(dispatcher, self.reactor, f"fifo:{path}",
                                      self.fifo_replies, mi.fifo_max_request, self.mi_filters)
            listener = MIFIFOListener(self.reactor, path, protocol, self.statistics,
                                      mi.fifo_mode, mi.fifo_owner, mi.fifo_group)
            try:
                listener.listen()
            except FIFOError as e:
                if mi.fifo_taken != "skip":
                    raise
                self._log.warn("MI FIFO {path} skipped ([mi] fifo_taken = skip): {reason}",
                               path=str(path), reason=str(e))
                continue
            self.fifo_listeners.append(listener)

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
            paused = [p for p in [*self.mi_ports, *self.fifo_listeners]
                      if getattr(p, "connected", False)]
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
        for fifo in self.fifo_listeners:
            self._log.info("MI listening on fifo:{path} (replies in {reply_dir})",
                           path=fifo.path, reply_dir=str(self.config.mi.fifo_reply_dir))
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

    def unsubscribe_upstreams(self):
        """
        Tell every C{[upstream:NAME]} proxy to stop sending (expire 0); a
        step of L{evsrv.shutdown}. @return: a Deferred that does not fail.
        """
        return self.upstreams.unsubscribe()

    def stopService(self):
        """
        Graceful shutdown (see L{evsrv.shutdown}): stop taking MI requests,
        flush what the transports hold for up to C{[shutdown] timeout}
        seconds, persist state, and report what could not be delivered.
        """
        return stop_server(self, super().stopService)
