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
