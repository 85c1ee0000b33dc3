# -*- test-case-name: tests.test_mi_controller -*-
"""
The MI controller: the command table, shared by every MI dialect and
listener; it runs a command and answers within C{request_timeout}.
"""

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

# The command vocabulary lives below the MI (evsrv.command); these names
# stay importable from here, the path plugins were told to use.
from evsrv.command import (INT32_MAX, INT32_MIN, Call, Command, MIError, Named,  # noqa: F401
                           bad_type, clamp, invalid_params)


class MIController:
    """
    Runs MI commands; every listener (datagram, later HTTP) and dialect shares it.
    """
    _log = Logger()

    def __init__(self, statistics, clock=None, request_timeout=None):
        self.commands = {}
        self.names = []
        self.statistics = statistics
        self.clock = clock
        # callables (method, seconds) told how long each command took
        # (the core module's E_CORE_THRESHOLD); empty: nothing is measured
        self._observers = []
        self._requests = statistics.counter("mi", "requests")
        self._errors = statistics.counter("mi", "errors")
        # seconds a command that answers later (a subscribe waiting for its
        # name or its disk write) may take before the client is answered
        # that it timed out; None: no bound (needs a clock)
        self.request_timeout = request_timeout if clock is not None else None
        self._timed_out = statistics.counter("mi", "requests_timed_out")

    def observe_commands(self, observer) -> None:
        """
        Tell C{observer(method, seconds)} how long each command takes (the
        core module's E_CORE_THRESHOLD); nothing is timed until one is
        registered.
        """
        self._observers.append(observer)

    def register(self, command: Command) -> None:
        for name in (command.name, *command.aliases):
            if name in self.commands:
                raise ValueError(f"MI command {name!r} registered twice")
            self.commands[name] = command
        self.names.append(command.name)

    def lookup(self, method: str):
        return self.commands.get(method)

    def execute(self, method: str, params, dialect: str = "json"):
        """
        Run C{method}.

        @return: Deferred firing with the result, or failing with L{MIError}.
        """
        self._requests.value += 1
        if self._observers and self.clock is not None:
            d = maybeDeferred(self._run, method, params, dialect)
            d.addBoth(self._timed, method, self.clock.seconds())
        else:
            d = maybeDeferred(self._run, method, params, dialect)
        d.addErrback(self._failed, method)
        if self.request_timeout and not d.called:
            return self._bounded(d, method)
        return d

    def _bounded(self, d, method):
        """
        The answer to a command still running: its result, or past
        C{request_timeout} an error saying so. The command itself runs on
        (a subscribe may still be stored), so the error says its outcome is
        unknown; every MI command may safely be repeated.
        """
        answer = Deferred()

        def timed_out():
            self._timed_out.value += 1
            self._log.warn("MI command {method} still running after {timeout} s: answered "
                           "as timed out", method=method, timeout=self.request_timeout)
            answer.errback(MIError(
                500, "Request timed out",
                f"{method} did not finish within {self.request_timeout:g} s; its outcome is "
                f"unknown, repeat it", legacy=(500, "request timed out")))
        timer = self.clock.callLater(self.request_timeout, timed_out)

        def finished(result):
            if timer.active():
                timer.cancel()
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(result)
            # else: answered already; an unexpected failure was logged by _failed
        d.addBoth(finished)
        return answer

    def _timed(self, result, method, started):
        elapsed = self.clock.seconds() - started
        for observer in self._observers:
            observer(method, elapsed)
        return result

    def _run(self, method, params, dialect):
        command = self.commands.get(method)
        if command is None:
            raise MIError(-32601, "Method not found", legacy=(500, "command not available"))
        command.calls += 1
        if dialect == "text" and command.text_no_input:
            params = None
        return command.handler(command.bind(params, dialect))

    def _failed(self, failure, method):
        self._errors.value += 1
        command = self.commands.get(method)
        if command is not None:
            command.errors += 1
        if failure.check(MIError):
            return failure
        self._log.failure("MI command {method} failed", failure, method=method)
        raise MIError(500, "Internal error", f"{method}: {failure.getErrorMessage()}"[:200],
                      legacy=(500, "command failed"))
