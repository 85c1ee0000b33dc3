"""
Built-in modules (pike, core) and what every module gets.

The internal-module API is the L{EventInterface} itself:
C{evi.publish(name)}, C{evi.raise_event(name, params)} (a Deferred
delivery report), C{evi.probe(name)} / C{evi.has_subscribers(name)} to skip
building parameters nobody will receive, and
L{evsrv.script.api.event_params} for the script's attrs/values pairing.
"""

from dataclasses import dataclass, field
from pathlib import Path

from zope.interface import implementer

from evsrv.interfaces import IModule
from evsrv.util.plugin_factory import PluginFactory


@dataclass
class ModuleContext:
    """
    @ivar mi_filters: request gates: callables C{(address)} asked, in
        order, before every MI request that passed the listener's access
        list, on the datagram and HTTP MI. C{address} is C{(host, port)} for
        UDP and HTTP clients (4-tuple for IPv6 UDP), a path (or C{None}) for
        UNIX clients. A gate answers:
         - true: go on (the next gate, then the command);
         - L{evsrv.mi.dispatch.Refusal}C{(error)}: refused, answered with
           the L{MIError} C{error} in the request's dialect (HTTP: its code
           as the status when 4xx/5xx, else 403); with C{rate_capped=True}
           the datagram MI sends nothing (a gate that answers floods must cap
           its replies, or spoofed sources make it a reflector);
         - any other false value (C{False}, C{Refusal()}): ignored silently
           (no reply; HTTP closes the connection).
        Every refusal is counted in C{mi:requests_filtered}. Gates run on the
        hot path: keep them cheap and their memory bounded.
    """
    reactor: object
    statistics: object
    evi: object
    controller: object
    mi_filters: list = field(default_factory=list)
    base_dir: Path = field(default_factory=Path.cwd)


@implementer(IModule)
class ModuleFactory(PluginFactory):
    """
    A module plugin described by data.
    """

