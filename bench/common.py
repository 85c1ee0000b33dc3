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
