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
from evsrv.plugin_factory import PluginFactory


@dataclass
class ModuleContext:
    """
    @ivar mi_filters: callables C{(address) -> bool} asked before every MI
        request; a false answer ignores the request (no reply).
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

