"""
The routing script: a Python file with startup, timer, event and named
routes, loaded from C{[script] path}.
"""

from evsrv.script.api import (EventContext, EventTimeout, ScriptError, TooManyWaiters,
                              event_params)
from evsrv.script.runner import ScriptLoadError, ScriptRunner
from evsrv.script.waiters import MAX_WAITERS

__all__ = ["EventContext", "EventTimeout", "ScriptError", "TooManyWaiters", "event_params",
           "ScriptLoadError", "ScriptRunner", "MAX_WAITERS"]
