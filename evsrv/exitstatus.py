# -*- test-case-name: tests.test_shutdown -*-
"""
The process exit status after a graceful shutdown (L{evsrv.shutdown}):

 - C{0}: every notification handed to a transport was delivered, and the
   subscriptions were saved (or there is no store);
 - C{75} (C{EX_TEMPFAIL}, L{UNDELIVERED}): notifications were left
   undelivered (the log says which, per destination);
 - C{74} (C{EX_IOERR}, L{NOT_PERSISTED}): the subscriptions could not be
   saved; this wins over 75.

Start-up errors keep exiting with 1, as before.

Why this module touches Twisted's internals: on SIGTERM or SIGINT, C{twist}
and C{twistd} (Twisted 26) stop the reactor, then send the same signal to
the process again (C{twisted.application.app._exitWithSignal}) so that it
dies "killed by SIGTERM". Twisted offers no public way for an application
to choose the exit status, and an C{atexit} handler cannot change it either.
L{install} therefore replaces that one function, in the two modules that
call it, with one that exits with the recorded status instead: the
C{SystemExit} is raised after the reactor has stopped and twist/twistd have
done their own cleanup (pid file, log), and it ends their C{main} with that
status. Nothing is recorded (a process that stopped no evsrv server):
Twisted's behaviour is kept. If a later Twisted renames the function,
L{install} says so in the log and the process dies by the signal as before.

The C{evsrv} console script (L{evsrv.run}) also applies the status when the
reactor was stopped without a signal.
"""

from twisted.logger import Logger

from evsrv.util.twisted_private import replace_exit_with_signal

OK = 0
NOT_PERSISTED = 74  # EX_IOERR
UNDELIVERED = 75    # EX_TEMPFAIL

# how bad each status is: several servers in one process report the worst
_RANK = {OK: 0, UNDELIVERED: 1, NOT_PERSISTED: 2}

_log = Logger(namespace="evsrv.exitstatus")

class _State:
    recorded = None   # the worst status recorded, or None
    installed = False


_state = _State()


def record(status: int):
    """
    Record the outcome of a server's shutdown; the worst one recorded is the
    process exit status.
    """
    if _state.recorded is None or _RANK.get(status, 3) > _RANK.get(_state.recorded, 3):
        _state.recorded = status


def recorded():
    """
    @return: the status recorded so far, or C{None}.
    """
    return _state.recorded


def reset():
    """
    Forget what was recorded (tests).
    """
    _state.recorded = None


def exit_with_status(signal_number, reraise_signal):
    """
    What replaces Twisted's re-raise of the stopping signal: exit with the
    recorded status, or (nothing recorded) let C{reraise_signal} do as before.
    """
    status = _state.recorded
    if status is None:
        return reraise_signal(signal_number)
    raise SystemExit(status)


def install():
    """
    Make the recorded status the process exit status under C{twist},
    C{twistd} and the C{evsrv} script. Idempotent; harmless in a process that
    does not run them (tests, embedding code that does not use their
    C{main}).
    """
    if _state.installed:
        return
    _state.installed = True
    def make_replacement(original):
        def replacement(sig):
            return exit_with_status(sig, original)
        return replacement
    missing = replace_exit_with_signal(make_replacement)
    if missing:
        _log.warn("exit status: this Twisted has no {names}; a process stopped by a signal "
                  "dies by it instead of exiting with 0/74/75", names=", ".join(missing))

