"""
The routing script: a Python file with startup, timer, event and named
routes, loaded from C{[script] path}.
"""

from evsrv.script.api import EventContext, ScriptError, event_params
from evsrv.script.runner import ScriptLoadError, ScriptRunner

__all__ = ["EventContext", "ScriptError", "event_params", "ScriptLoadError", "ScriptRunner"]
