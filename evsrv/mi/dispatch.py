# -*- test-case-name: tests.test_mi_malformed -*-
"""
From request bytes to reply bytes: picks the dialect (1.x text when the
datagram starts with C{:}, else JSON-RPC), runs the command through the
controller and encodes the reply. Shared by every MI listener.
"""

from twisted.internet.defer import Deferred, succeed

from evsrv.mi import jsonrpc, text
from evsrv.mi.controller import MIError


class Refusal:
    """
    A request gate's refusal (see L{evsrv.modules.ModuleContext.mi_filters}).
    It is false, so code that asks C{if not gate(address)} still reads it
    as a refusal.

    @ivar error: the L{MIError} to answer with, or C{None}: ignore the
        request without a reply.
    @ivar rate_capped: the gate has already answered this source recently:
        the datagram listeners send nothing (a spoofed source must not turn
        the server into a reflector), while the HTTP MI still answers with
        C{error} (a TCP peer has proven its address, a reply reaches only it).
    """
    __slots__ = ("error", "rate_capped")

    def __init__(self, error: MIError | None = None, rate_capped: bool = False):
        self.error = error
        self.rate_capped = rate_capped

    def __bool__(self):
        return False

    def __repr__(self):
        return f"Refusal({self.error!r}, rate_capped={self.rate_capped})"


_IGNORE = Refusal()


def run_gates(gates, address) -> Refusal | None:
    """
    Ask every gate about C{address}, in order; the first refusal wins.

    @return: C{None} when every gate lets the request through, else a
        L{Refusal} (a plain false answer becomes one without an error).
    """
    for gate in gates:
        verdict = gate(address)
        if isinstance(verdict, Refusal):
            return verdict
        if not verdict:
            return _IGNORE
    return None


class MIDispatcher:
    """
    @param max_reply: the largest reply that can be sent (one datagram); a
        larger one is replaced by an error saying so. C{None}: no limit.
    """

    def __init__(self, controller, max_reply=None, large_reply_hint=""):
        self.controller = controller
        self.max_reply = max_reply
        self.large_reply_hint = large_reply_hint
        statistics = controller.statistics
        self._parse_errors = statistics.counter("mi", "parse_errors")
        self._too_large = statistics.counter("mi", "replies_too_large")

    def handle(self, data: bytes) -> Deferred:
        """
        @return: Deferred firing with the reply bytes, or C{None} for no reply.
        """
        if data[:1] == b":":
            return self._text(data)
        return self._json(data)

    def handle_json(self, data: bytes) -> Deferred:
        """
        JSON-RPC only (the HTTP MI, as OpenSIPS mi_http: no 1.x text).

        @return: as L{handle}.
        """
        return self._json(data)

    def refusal_reply(self, data: bytes, error: MIError, json_only=False) -> bytes | None:
        """
        The reply bytes for a request refused with C{error} before it ran, in
        the request's dialect: JSON-RPC echoes its C{id} (C{null} when it
        cannot be read), a notification gets none; 1.x text gets
        C{<code> <reason>}. Only decodes the request, never runs it.

        @param json_only: the HTTP MI (no 1.x text).
        """
        if data[:1] == b":" and not json_only:
            return text.error_reply(error)
        try:
            request = jsonrpc.decode(data)
        except jsonrpc.ParseError:
            return jsonrpc.error_reply(None, error)
        except jsonrpc.InvalidRequest as e:
            return jsonrpc.error_reply(e.id, error)
        if request.is_notification:
            return None
        return jsonrpc.error_reply(request.id, error)

    # -- JSON-RPC -------------------------------------------------------------

    def _json(self, data):
        try:
            request = jsonrpc.decode(data)
        except jsonrpc.ParseError:
            self._parse_errors.value += 1
            return succeed(jsonrpc.PARSE_ERROR)
        except jsonrpc.InvalidRequest as e:
            self._parse_errors.value += 1
            return succeed(jsonrpc.invalid_request_reply(e.id))
        d = self.controller.execute(request.method, request.params, "json")
        return d.addCallbacks(self._json_result, self._json_error,
                              callbackArgs=(request,), errbackArgs=(request,))

    def _json_result(self, result, request):
        reply = jsonrpc.result_reply(request, result)
        if reply is not None and self.max_reply is not None and len(reply) > self.max_reply:
            return jsonrpc.error_reply(request.id, self._too_large_error(len(reply)))
        return reply

    def _json_error(self, failure, request):
        failure.trap(MIError)
        if request.is_notification:
            return None
        return jsonrpc.error_reply(request.id, failure.value)

    def _too_large_error(self, size):
        self._too_large.value += 1
        detail = (f"the reply is {size} bytes, more than one datagram can carry "
                  f"({self.max_reply} bytes)")
        if self.large_reply_hint:
            detail += f"; {self.large_reply_hint}"
        return MIError(500, "Reply too large", detail, legacy=(500, f"Reply too large: {detail}"))

    # -- 1.x text -------------------------------------------------------------------

    def _text(self, data):
        request = text.decode(data)
        if request is None:
            self._parse_errors.value += 1
            return succeed(text.NOT_AVAILABLE)
        command = self.controller.lookup(request.method)
        args = None
        if command is not None and not command.text_no_input:
            try:
                args = request.arguments()
            except text.TextParseError:
                self._parse_errors.value += 1
                return succeed(text.PARSE_ERROR)
        d = self.controller.execute(request.method, args, "text")
        return d.addCallbacks(self._text_result, self._text_error,
                              callbackArgs=(command,))

    def _text_result(self, result, command):
        reply = text.result_reply(command, result)
        if self.max_reply is not None and len(reply) > self.max_reply:
            return text.error_reply(self._too_large_error(len(reply)))
        return reply

    @staticmethod
    def _text_error(failure):
        failure.trap(MIError)
        return text.error_reply(failure.value)
