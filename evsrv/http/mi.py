# -*- test-case-name: tests.test_http_mi -*-
"""
The MI over HTTP, as OpenSIPS mi_http: a JSON-RPC 2.0 request in the body
of a POST, answered by the same controller (through its own L{MIDispatcher},
without a size limit) with the same bytes as the datagram MI.

Statuses: 200 for every JSON-RPC reply, results and errors alike, and an
empty 200 for a notification (no C{id}); a body that is not JSON gets the
datagram MI's C{400 Parse_error} text with status 400. Other methods get
405 with C{Allow: POST}. The body size cap (413) is enforced by the site's
request class before the body is stored (see L{evsrv.http.site}).

The MI request gates (pike) are asked as on the datagram MI, with the
client's C{(host, port)}: a refusal with an error is answered with that
error's code as the HTTP status (C{429} for pike, 403 for a non-HTTP code)
and the JSON-RPC error as the body; a silent refusal closes the connection.
"""

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from evsrv.mi.dispatch import run_gates
from evsrv.mi.jsonrpc import PARSE_ERROR


def method_not_allowed(request, *allowed):
    request.setResponseCode(405)
    request.setHeader(b"Allow", b", ".join(allowed))
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"405 Method Not Allowed"


class MIResource(Resource):
    isLeaf = True
    _log = Logger()

    def __init__(self, dispatcher, filters=()):
        super().__init__()
        self.dispatcher = dispatcher
        self.filters = filters  # the MI request gates, shared with the datagram MI
        self._filtered = dispatcher.controller.statistics.counter("mi", "requests_filtered")

    def render(self, request):
        if request.method != b"POST":
            return method_not_allowed(request, b"POST")
        return self.render_POST(request)

    def render_POST(self, request):
        data = request.content.read()
        if self.filters:
            peer = request.getClientAddress()
            # gates see (host, port) as for UDP; anything else as a local client
            source = (peer.host, peer.port) if hasattr(peer, "host") else str(peer)
            refusal = run_gates(self.filters, source)
            if refusal is not None:
                self._filtered.value += 1
                return self._refuse(request, data, refusal)
        gone = []
        # A client that hangs up before the reply: the command still runs
        # (it may have side effects), the reply is just not written.
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = self.dispatcher.handle_json(data)
        d.addCallback(self._reply, request, gone)
        d.addErrback(self._internal_error, request, gone)
        return NOT_DONE_YET

    def _refuse(self, request, data, refusal):
        if refusal.error is None:
            # A gate's silent "no" (a plain false answer): no service, as on
            # the datagram MI; the connection is closed without a response.
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        # The error is answered even when rate_capped: that cap keeps spoofed
        # datagram sources from using us as a reflector, and a TCP peer
        # cannot be spoofed; holding or dropping the request would cost more.
        code = refusal.error.code
        request.setResponseCode(code if isinstance(code, int) and 400 <= code < 600 else 403)
        body = self.dispatcher.refusal_reply(data, refusal.error, json_only=True) or b""
        request.setHeader(b"Content-Type", b"application/json")
        return body  # (twisted.web adds the Content-Length)

    def _reply(self, reply, request, gone):
        if gone:
            return
        if reply is None:
            body, content_type = b"", b"application/json"  # a notification
        elif reply == PARSE_ERROR:
            request.setResponseCode(400)
            body, content_type = reply, b"text/plain; charset=utf-8"
        else:
            body, content_type = reply, b"application/json"
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _internal_error(self, failure, request, gone):
        # The controller turns command failures into MIError replies; this is
        # a bug in the encoding path, logged once with its traceback.
        self._log.failure("HTTP MI request failed", failure)
        if gone:
            return
        request.setResponseCode(500)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.write(b"500 Internal error")
        request.finish()
