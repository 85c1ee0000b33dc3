"""
What the benchmark scripts share.
"""

import signal


def interrupt_on_sigterm():
    """
    SIGTERM (and SIGINT, even when inherited as ignored) raise
    KeyboardInterrupt, so that the cleanup in ``finally`` blocks runs.
    """
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def default_signals():
    """
    For child processes: die quietly on SIGTERM/SIGINT (the parent's
    handlers, inherited by fork, would print a traceback).
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
