# -*- test-case-name: tests.test_mi_commands, tests.test_mi_malformed -*-
"""
An MI command as every provider declares it (the EVI and core commands,
modules, transports): its parameter recipes and typed parameter access
(spec §2.1), and the error reply a handler raises. Below every layer that
declares commands, so that a transport or module needs nothing of the MI
listeners; L{evsrv.mi.controller} runs them.
"""

import re

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
