# -*- test-case-name: tests.test_mi_controller -*-
"""
The MI controller: the command table, parameter recipes and typed parameter
access (spec §2.1), shared by every MI dialect and listener.
"""

import re

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]+\Z")
_UNSIGNED = re.compile(r"[0-9]+\Z")  # 1.x text ints are unsigned decimals (str2int)


class MIError(Exception):
    """
    An error reply.

    @ivar code: JSON-RPC error code (OpenSIPS uses SIP-like 4xx/5xx codes too).
    @ivar message: the error message.
    @ivar data: optional detail (JSON C{data} member).
    @ivar legacy: C{(code, reason)} of the 1.x text reply, when it differs.
    """

    def __init__(self, code: int, message: str, data: str | None = None, legacy=None):
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data
        self.legacy = legacy or (code, message)


def invalid_params(data: str, legacy=None) -> MIError:
    return MIError(-32602, "Invalid params", data, legacy or (400, "Too few or too many arguments"))


def bad_type(name: str) -> MIError:
    return invalid_params(f"Bad type for parameter '{name}'", (400, "Bad parameter"))


def clamp(value, low: int, high: int) -> int:
    """
    A JSON number as an integer the way cJSON's C{valueint} is: truncated
    toward zero and clamped (also for infinities, e.g. C{1e400}).
    """
    if value >= high:
        return high
    if value <= low:
        return low
    return int(value)


class Call:
    """
    The parameters of one command call, by recipe name, with OpenSIPS' typed
    getters: strings accept JSON numbers, ints accept numeric strings.
    """
    __slots__ = ("command", "params", "dialect")

    def __init__(self, command, params: dict, dialect: str):
        self.command = command
        self.params = params
        self.dialect = dialect

    def has(self, name: str) -> bool:
        return name in self.params

    def raw(self, name: str, default=None):
        return self.params.get(name, default)

    def string(self, name: str, nonempty: bool = True) -> str:
        value = self.params[name]
        if isinstance(value, str):
            if nonempty and not value:
                raise bad_type(name)
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(clamp(value, INT32_MIN, INT32_MAX))
        raise bad_type(name)

    def int(self, name: str) -> int:
        value = self.params[name]
        if isinstance(value, bool):
            raise bad_type(name)
        if isinstance(value, (int, float)):
            return clamp(value, INT32_MIN, INT32_MAX)
        pattern = _UNSIGNED if self.dialect == "text" else _DECIMAL
        if isinstance(value, str) and pattern.match(value):
            number = int(value)
            if INT32_MIN <= number <= INT32_MAX:
                return number
        raise bad_type(name)

    def strings(self, name: str) -> list:
        """
        An array of strings (a single string is taken as a one-item array).
        """
        value = self.params[name]
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise invalid_params(f"Bad type for array item in parameter '{name}'",
                                 (400, "Bad parameter"))
        return value


class Command:
    """
    An MI command.

    @param recipes: accepted parameter-name lists, in positional order.
    @param handler: C{handler(call)} returning the result or a Deferred.
    @param text_lines: renders the result as 1.x text lines (C{None}: generic).
    @param text_extra_args: 1.x only: extra arguments are ignored rather than refused.
    @param text_no_input: 1.x only: the command takes no input; arguments are ignored.
    """

    def __init__(self, name, recipes, handler, help="", aliases=(), text_lines=None,
                 text_extra_args=False, text_no_input=False):
        self.name = name
        self.recipes = [list(r) for r in recipes]
        self.handler = handler
        self.help = help
        self.aliases = tuple(aliases)
        self.text_lines = text_lines
        self.text_extra_args = text_extra_args
        self.text_no_input = text_no_input
        self.calls = 0
        self.errors = 0

    def bind(self, params, dialect: str) -> Call:
        """
        Choose the recipe for C{params}: C{None}, a list (positional) or a list
        of C{(name, value)} pairs wrapped in L{Named}.
        """
        if params is None:
            if any(not r for r in self.recipes):
                return Call(self, {}, dialect)
            raise invalid_params("Too few or too many parameters")
        if isinstance(params, Named):
            pairs = params.pairs
            names = [k for k, _ in pairs]
            same_count = [r for r in self.recipes if len(r) == len(names)]
            for recipe in same_count:
                if set(recipe) == set(names):
                    values = {}
                    for k, v in pairs:
                        values.setdefault(k, v)
                    return Call(self, values, dialect)
            raise invalid_params("Named parameters do not match" if same_count
                                 else "Too few or too many parameters")
        same_count = [r for r in self.recipes if len(r) == len(params)]
        if not same_count and dialect == "text" and self.text_extra_args:
            longest = max(self.recipes, key=len)
            if len(params) > len(longest):
                params, same_count = params[:len(longest)], [longest]
        if not same_count:
            raise invalid_params("Too few or too many parameters")
        if len(same_count) > 1:
            raise invalid_params("Ambiguous call, use named parameters instead")
        return Call(self, dict(zip(same_count[0], params)), dialect)


class Named:
    """
    Named parameters as ordered C{(name, value)} pairs (JSON objects may repeat keys).
    """
    __slots__ = ("pairs",)

    def __init__(self, pairs):
        self.pairs = list(pairs)


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
        self.observers = []
        self._requests = statistics.counter("mi", "requests")
        self._errors = statistics.counter("mi", "errors")
        # seconds a command that answers later (a subscribe waiting for its
        # name or its disk write) may take before the client is answered
        # that it timed out; None: no bound (needs a clock)
        self.request_timeout = request_timeout if clock is not None else None
        self._timed_out = statistics.counter("mi", "requests_timed_out")

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
        if self.observers and self.clock is not None:
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
        for observer in self.observers:
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
