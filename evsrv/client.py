# -*- test-case-name: tests.test_client -*-
"""
Clients of the evsrv MI, for programs and tests: one C{call(method,
params) -> Reply} interface over every way in.

 - L{MIClient}: blocking, JSON-RPC 2.0 over a UDP or UNIX datagram MI
   socket (what C{evsrv-ctl} uses);
 - L{HTTPMIClient}: blocking, the HTTP MI (JSON-RPC by POST);
 - L{StubMI}: the test double, as treq's C{StubTreq}: requests go straight
   through an in-process server's dispatcher and must be answered at once,
   so a test gets the very bytes a datagram client would, without sockets.

A request is one compact JSON-RPC object with a random integer C{id}; the
reply must echo it (datagrams with another C{id} are ignored until the
timeout).
"""

import errno
import json
import os
import secrets
import socket
import tempfile
import time
import urllib.error
import urllib.request

from evsrv.util.hostport import parse_host_port

DEFAULT_TIMEOUT = 2.0
RECV_SIZE = 65536
EXIT_NO_REPLY = 2  # the status a command-line tool exits with when nothing answered


class CtlError(Exception):
    """
    A failure to show as one line on stderr, with the exit status to use.
    """

    def __init__(self, message: str, status: int = EXIT_NO_REPLY):
        super().__init__(message)
        self.status = status


class Reply:
    """
    The answer to one request.

    @ivar kind: C{"result"}, C{"error"} or C{"text"} (not a JSON-RPC reply).
    @ivar value: the result; the error object; or the text.
    @ivar data: the datagram as received.
    """
    __slots__ = ("kind", "value", "data")

    def __init__(self, kind, value, data: bytes):
        self.kind = kind
        self.value = value
        self.data = data

    @property
    def ok(self) -> bool:
        return self.kind == "result"


def split_host_port(text: str):
    """
    C{HOST:PORT} or C{[IPv6]:PORT} as C{(host, port)} (HOST may be a name).

    @raise ValueError: malformed.
    """
    return parse_host_port(text)


def udp_socket_text(host: str, port: int) -> str:
    return f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"


def resolve_address(host: str, port: int, what: str):
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise CtlError(f"cannot resolve {what} {host!r}: {e.strerror}") from None
    # IPv4 first: "localhost" often resolves to ::1 first, while an MI
    # usually listens on 127.0.0.1 (IPv6 literals still give IPv6).
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def os_error_text(e: OSError) -> str:
    return e.strerror or str(e)


class _Client:
    """
    What every client shares: C{with client:} closes it.
    """

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MIClient(_Client):
    """
    A blocking MI datagram client; one socket for every call.

    @param address: C{(host, port)} of a UDP MI socket, or C{None}.
    @param path: a UNIX datagram MI socket, or C{None}. The client binds a
        socket file of its own in the temporary directory to receive the
        replies (writable by all, so that a server running as another user
        can answer), removed by L{close}.
    """

    def __init__(self, address=None, path=None, timeout=DEFAULT_TIMEOUT):
        self.timeout = timeout
        self._own_path = None
        if path is not None:
            self.where = f"unix:{path}"
            self._target = path
            self._udp = False
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                self._bind_own_path()
            except BaseException:
                self._sock.close()
                raise
        else:
            host, port = address
            self.where = udp_socket_text(host, port)
            family, self._target = resolve_address(host, port, "MI host")
            self._udp = True
            self._sock = socket.socket(family, socket.SOCK_DGRAM)

    def _bind_own_path(self):
        directory = tempfile.gettempdir()
        if len(directory.encode()) > 60:
            directory = "/tmp"  # UNIX socket paths are limited to 107 bytes
        for _ in range(10):
            candidate = os.path.join(
                directory, f"evsrv-ctl.{os.getpid()}.{secrets.token_hex(6)}.sock")
            try:
                self._sock.bind(candidate)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise CtlError(f"cannot bind a reply socket in {directory}: "
                               f"{os_error_text(e)}") from None
            self._own_path = candidate
            try:
                os.chmod(candidate, 0o666)
            except OSError:
                pass  # a server running as this user can still answer
            return
        raise CtlError(f"cannot bind a reply socket in {directory}")

    def close(self):
        self._sock.close()
        if self._own_path is not None:
            try:
                os.unlink(self._own_path)
            except FileNotFoundError:
                pass
            self._own_path = None

    def call(self, method: str, params=None) -> Reply:
        """
        Send one request and wait for its reply.

        @param params: a list, a dict, or C{None} (no params member).
        @raise CtlError: nothing could be sent, or no reply within the timeout.
        """
        request_id = secrets.randbelow(2 ** 31 - 1) + 1  # echoed as a 32-bit int
        request = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            request["params"] = params
        request["id"] = request_id
        payload = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
        try:
            self._sock.sendto(payload.encode("utf-8", "surrogateescape"), self._target)
        except OSError as e:
            hint = (": is evsrv running?" if e.errno in (errno.ENOENT, errno.ECONNREFUSED)
                    else "")
            raise CtlError(f"cannot send to {self.where}: {os_error_text(e)}{hint}") from None
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._sock.settimeout(left)
            try:
                data, source = self._sock.recvfrom(RECV_SIZE)
            except socket.timeout:
                break
            except OSError as e:
                if e.errno == errno.ECONNREFUSED:
                    continue  # an ICMP error for an earlier datagram: keep waiting
                raise CtlError(f"cannot receive from {self.where}: {os_error_text(e)}") from None
            reply = self._match(data, source, request_id)
            if reply is not None:
                return reply
        raise CtlError(f"no reply from {self.where} within {self.timeout:g}s: "
                       f"is evsrv running?")

    def _match(self, data: bytes, source, request_id):
        """
        The reply to C{request_id} in C{data}, or C{None} for a stray datagram.

        A JSON-RPC reply is ours when it echoes the id (or when it is an error
        with a null id: the server could not read ours); other JSON-RPC
        messages are ignored. A reply that is not JSON-RPC carries no id: on
        UDP it is taken when it comes from the MI port (not the address: a
        server bound to a wildcard address may answer from another one of its
        addresses).
        """
        text = data.decode("utf-8", "replace")
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if isinstance(message, dict) and ("result" in message or "error" in message
                                          or "method" in message):
            reply_id = message.get("id")
            if "method" in message or isinstance(reply_id, bool):
                return None
            if reply_id == request_id:
                if "error" in message:
                    return Reply("error", message["error"], data)
                return Reply("result", message["result"], data)
            if reply_id is None and "error" in message:
                return Reply("error", message["error"], data)
            return None
        if self._udp and source[1] != self._target[1]:
            return None
        return Reply("text", text, data)


class HTTPMIClient(_Client):
    """
    A blocking client of the HTTP MI (JSON-RPC 2.0 by POST), with the
    interface of L{MIClient}.
    """

    def __init__(self, url: str, timeout=DEFAULT_TIMEOUT):
        self.url = url
        self.where = url
        self.timeout = timeout


    def call(self, method: str, params=None) -> Reply:
        request_id = secrets.randbelow(2 ** 31 - 1) + 1
        request = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            request["params"] = params
        request["id"] = request_id
        payload = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
        http_request = urllib.request.Request(
            self.url, payload.encode("utf-8", "surrogateescape"),
            {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout) as answer:
                data = answer.read()
        except urllib.error.HTTPError as e:
            data = e.read()  # 400 Parse_error and the like: shown as text
            e.close()
            return Reply("text", data.decode("utf-8", "replace") or f"HTTP {e.code}", data)
        except urllib.error.URLError as e:
            raise CtlError(f"cannot reach {self.url}: {getattr(e, 'reason', e)}: "
                           f"is evsrv running?") from None
        except (OSError, ValueError) as e:
            raise CtlError(f"no reply from {self.url}: {e}") from None
        return parse_reply(data, request_id)


def parse_reply(data: bytes, request_id) -> Reply:
    """
    The reply C{data} to the request C{request_id}: its result or error when
    it is the JSON-RPC answer to it (or an error with a null id: the server
    could not read the id), else the text as it is.
    """
    text = data.decode("utf-8", "replace")
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if isinstance(message, dict) and message.get("id") in (request_id, None):
        if "error" in message:
            return Reply("error", message["error"], data)
        if "result" in message:
            return Reply("result", message["result"], data)
    return Reply("text", text, data)


class StubMI(_Client):
    """
    An MI client that runs each request through C{dispatcher} (an
    L{evsrv.mi.dispatch.MIDispatcher}, e.g. C{server.dispatcher}) in
    process. The request must be answered synchronously (a command waiting
    on a resolver or a disk write is not: use a real client for those).

    @ivar requests: every request sent, as bytes.
    """

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.where = "in-process"
        self.requests = []
        self._next_id = 0

    def raw(self, data: bytes):
        """
        @return: the reply bytes to C{data} (C{None}: no reply).
        @raise AssertionError: no synchronous answer.
        """
        self.requests.append(data)
        results = []
        self.dispatcher.handle(data).addBoth(results.append)
        assert results, f"no synchronous answer to {data[:200]!r}"
        if hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def call(self, method: str, params=None) -> Reply:
        self._next_id += 1
        request = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
        if params is not None:
            request["params"] = params
        data = self.raw(json.dumps(request, separators=(",", ":"), ensure_ascii=False)
                        .encode("utf-8", "surrogateescape"))
        return parse_reply(data or b"", self._next_id)

