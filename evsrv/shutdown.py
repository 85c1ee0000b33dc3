# -*- test-case-name: tests.test_shutdown -*-
"""
Graceful shutdown of an L{evsrv.server.EvsrvService}.
"""


def stop_server(server, stop_children):
    """
    Placeholder: stop every child service at once.
    """
    return stop_children()
