"""
The factory shape of transport plugins (each built-in transport defines its
own factory beside it; C{evsrv.plugins} lists them).
"""

from zope.interface import implementer

from evsrv.interfaces import IEventTransportFactory
from evsrv.util.plugin_factory import PluginFactory


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
