"""
evsrv's plugin package: built-in transports and, through
C{pluginPackagePaths}, C{evsrv/plugins/} directories of other distributions
(which must not have an C{__init__.py}).
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
