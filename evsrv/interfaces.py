"""
The extension points of evsrv. Plugins for them live in an C{evsrv/plugins/}
directory of any distribution and are enabled by name from the ini file.
"""

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface


class BadSocket(ValueError):
    """
    A subscriber socket string a transport cannot use. The message says why;
    it reaches the log and the MI error's C{data}.
    """


class DestinationRefused(BadSocket):
    """
    The socket is valid but names a destination the C{[policy]} forbids
    (MI error 403 "Destination not allowed").
    """


class StoreWriteError(Exception):
    """
    A subscription change could not be stored (the disk failed, or the
    change itself cannot be written); the MI answers 500 "Subscription not
    stored". Raised by the subscription journal (L{evsrv.persistence}).
    """


class PluginConfigError(ValueError):
    """
    Raised by a plugin factory's C{build} when its settings cannot be used
    together (a file a setting names is missing, say). The server reports
    it as a configuration error naming the ini file, the plugin's section
    and C{key}.

    @ivar key: the ini key at fault, or C{None} for the section as a whole.
    """

    def __init__(self, key, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


class LimitExceeded(Exception):
    """
    A C{[limits]} value would be exceeded; the message names the limit and
    its ini key.
    """


class IEventTransportFactory(IPlugin):
    """
    A transport plugin: builds the transport from its ini section.
    """

    name = Attribute("Name used in C{[transports] enabled = ...} and in C{[transport:NAME]}.")
    schemes = Attribute("Tuple of socket prefixes handled, e.g. C{('udp',)}.")
    builtin = Attribute("True for evsrv's own transports: enabled when the ini does not say.")
    options = Attribute(
        "Mapping of ini key to (default text, coercer, help). The coercer turns the text "
        "into a value or raises C{ValueError} with a reason.")

    def build(settings, context):
        """
        Make the transport.

        @param settings: mapping of every key of L{options} to its coerced value.
        @param context: L{evsrv.transports.TransportContext} (reactor, statistics, paths).
        @return: an L{IEventTransport}; if it also provides C{IService} it is
            started and stopped with the server.
        """


class IEventTransport(Interface):
    """
    Delivers notifications to the subscribers of its schemes.

    A transport never blocks the reactor, and a slow or dead destination
    never delays another one.

    Optional method C{peer_hosts(destination)} (not declared below, so that
    older transports still provide the interface): the IP address texts
    (C{"192.0.2.7"}, C{"2001:db8::1"}) a parsed destination sends to or
    connects to, already resolved, or an empty iterable for a destination
    that is not on the network (a file, a UNIX socket). The C{[policy]}
    refuses a subscription when any of them is denied or not allowed. A
    transport that resolves names must do it in C{parse} and then use only
    the resolved address, so that the address checked is the one used. A
    transport without C{peer_hosts} is not checked, and the server logs a
    warning about it at start-up.

    Optional method C{drain(deadline)} (not declared below either), for a
    transport that holds notifications (queued, in flight, awaiting a reply
    or a confirm): at shutdown, after the MI has closed and before the
    transport is stopped, L{evsrv.shutdown} calls it with C{deadline}, a
    clock time (the reactor's C{seconds()}). The transport goes on
    delivering, and accepting new raises, as usual; it returns a Deferred
    (or the result itself) firing as soon as it holds nothing more, and at
    C{deadline} at the latest, with an L{evsrv.shutdown.DrainResult}: per
    destination, how many notifications are still undelivered and why
    (e.g. C{"connecting"}). It does not fail, and does not drop anything
    itself: C{stopService} follows and drops what is left. A drain that has
    not answered shortly after the deadline is cancelled and not waited
    for. A transport without C{drain} is taken to hold nothing (every
    notification leaves in C{deliver}, as udp, unix, flatstore and route
    do).
    """

    name = Attribute("The factory's name, used for statistics.")
    schemes = Attribute("Tuple of socket prefixes handled.")

    def parse(scheme, rest):
        """
        Parse the text after C{scheme:}.

        @return: a L{evsrv.evi.subscriptions.Destination}, or a Deferred firing
            with one (e.g. after name resolution).
        @raise BadSocket: the text is not a valid socket for this transport.
        """

    def deliver(notification, subscriptions):
        """
        Send one raise to the given subscriptions (all of this transport).

        Updates each subscription's counters; never raises for delivery
        errors.

        @return: an L{evsrv.evi.report.Outcome}, or a Deferred firing with one
            when delivery completes later.
        """


class IModule(IPlugin):
    """
    A module plugin: code that publishes events at start-up and raises them
    later (pike, core thresholds, third-party modules). Enabled by name from
    C{[modules] load = ...}, configured from its C{[module:NAME]} section.
    """

    name = Attribute("Name used in C{[modules] load = ...} and in C{[module:NAME]}.")
    options = Attribute("Mapping of ini key to (default text, coercer, help), as transports.")

    def build(settings, context):
        """
        Make the module.

        @param settings: every key of L{options}, coerced.
        @param context: L{evsrv.modules.ModuleContext}: reactor, statistics, the
            event interface C{evi}, the MI C{controller} (to register commands)
            and C{mi_filters} (request gates of the MI listeners).
        @return: the module; if it provides C{IService} it is started and
            stopped with the server.
        """
