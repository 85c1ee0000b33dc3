"""
The built-in modules as plugins.
"""

from evsrv.modules.core import coreModule
from evsrv.modules.pike import pikeModule

__all__ = ["coreModule", "pikeModule"]
