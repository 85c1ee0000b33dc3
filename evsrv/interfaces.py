# -*- test-case-name: tests.test_interfaces -*-
"""
The extension points of evsrv. Plugins for them live in an C{evsrv/plugins/}
directory of any distribution and are enabled by name from the ini file.
"""

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, alsoProvides


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
    never delays another one. What a transport may offer besides is one
    small interface per capability below (L{IPeerHosts}, L{IAdmission},
    L{IListing}, L{IDrainable}, L{IDestinationReport}, L{IMICommands},
    L{IFailFast}, L{ICounted}); callers ask for a capability with
    C{I....providedBy(transport)}, never by looking for a method.
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

        @return: an L{evsrv.evi.notification.Outcome}, or a Deferred firing
            with one when delivery completes later.
        """


class IPeerHosts(Interface):
    """
    A transport that tells the C{[policy]} where it sends. Without it, its
    subscribers are not checked (and the server warns at start-up).
    """

    def peer_hosts(destination):
        """
        @return: the IP address texts (C{"192.0.2.7"}, C{"2001:db8::1"}) a
            parsed destination sends to or connects to, already resolved, or
            an empty iterable for a destination that is not on the network
            (a file, a UNIX socket). A transport that resolves names does it
            in C{parse} and then uses only the resolved address, so that the
            address checked is the one used.
        """


class IAdmission(Interface):
    """
    A transport that takes resources for a subscription (a broker
    connection), only once the C{[policy]} has passed it.
    """

    def admit(destination):
        """
        @return: the destination (or a Deferred of it), ready for delivery.
        @raise BadSocket: the transport cannot take one more (a limit).
        """


class IListing(Interface):
    """
    A transport whose destination keys are not their own listing text.
    """

    def describe(key):
        """
        @return: the listing text (C{subscribers_list}'s C{socket}) of a
            destination C{key} that is not a C{str}; never a password.
        """


class IDrainable(Interface):
    """
    A transport that holds notifications (queued, in flight, awaiting a reply
    or a confirm). A transport without it is taken to hold nothing: every
    notification leaves in C{deliver}.
    """

    def drain(deadline):
        """
        At shutdown, after the MI has closed and before the transport is
        stopped: go on delivering (and accepting raises) as usual, and say
        when nothing is held any more, at C{deadline} (a clock time) at the
        latest. Never fails and drops nothing itself (C{stopService} follows
        and drops what is left). A drain that has not answered shortly after
        the deadline is cancelled and not waited for.

        @return: a L{evsrv.transports.kit.DrainResult} (or a Deferred of it):
            per destination, how many notifications are still undelivered
            and why.
        """


class IDestinationReport(Interface):
    """
    A transport with per-destination state worth showing in the metrics.
    """

    def destinations():
        """
        @return: C{{destination text: {statistic: number}}} (queue depth,
            connection state, ...), for the Prometheus exposition.
        """


class IMICommands(Interface):
    """
    A transport (or module) with MI commands of its own.
    """

    def mi_commands():
        """
        @return: the L{evsrv.command.Command}s to register.
        """


class IFailFast(Interface):
    """
    A transport that can fail a notification at once when its destination
    is known to be down, instead of waiting for it; a C{virtual:} group asks
    this of a member that has another member after it.
    """

    def deliver(notification, subscriptions, fail_fast=False):
        """
        As L{IEventTransport.deliver}; with C{fail_fast}, a notification for
        a destination that is down fails as soon as that is known.
        """


class ICounted(Interface):
    """
    A transport that keeps the C{evi_NAME} notification counters.
    """

    counters = Attribute("L{evsrv.transports.TransportCounters}: sent, failed, dropped.")


# Capabilities a transport written before the interfaces existed may have
# by method name only: (interface, attribute). See evsrv.server's check.
CAPABILITIES = (
    (IPeerHosts, "peer_hosts"), (IAdmission, "admit"), (IListing, "describe"),
    (IDrainable, "drain"), (IDestinationReport, "destinations"), (IMICommands, "mi_commands"),
    (ICounted, "counters"),
)


def declare_legacy_capabilities(transport) -> list:
    """
    For a transport that has a capability's method but does not declare its
    interface (a plugin written before them): declare it on the instance,
    so that it keeps working.

    @return: the names of the interfaces so declared (the server warns once
        per transport).
    """
    declared = []
    for interface, attribute in CAPABILITIES:
        if not interface.providedBy(transport) and getattr(transport, attribute, None) is not None:
            alsoProvides(transport, interface)
            declared.append(interface.__name__)
    return declared


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
