# -*- test-case-name: tests.test_ctl -*-
"""
evsrv-ctl: run evsrv MI commands from the shell, the way C{opensipsctl fifo}
or C{opensips-mi} do for OpenSIPS, over the MI datagram sockets (JSON-RPC 2.0
over UDP or a UNIX datagram socket, as OpenSIPS 3.x mi_datagram).

Usage::

    evsrv-ctl [-a HOST:PORT | -s PATH] [-t SECONDS] [-j JSON] [--raw] COMMAND [ARG ...]
    evsrv-ctl [options] listen EVENT [--expire N] [--bind HOST:PORT] [--count K] [--pretty]

Requests
========

One compact JSON-RPC 2.0 object with a random integer C{id}; the reply must
echo it, and datagrams with another C{id} are ignored until the timeout.

 - Positional arguments are sent as JSON strings, in order (the server takes
   numeric strings for integer parameters, and a JSON string holding an
   object for C{raise_event}'s params): C{evsrv-ctl event_subscribe E_X
   udp:127.0.0.1:8888 1200}.
 - C{get_statistics}, C{list_statistics} and C{reset_statistics} send their
   arguments as the one named parameter they take: C{{"statistics": [...]}}.
 - C{-j JSON} gives the params directly, an object (named) or an array
   (positional), e.g. C{-j '["E_X", ["a", 7]]'}; no positional argument may
   be given with it.
 - Options may come before or after COMMAND; C{--} ends the options, so an
   argument starting with C{-} is sent as it is: C{evsrv-ctl raise_event E_X
   -- -odd}.
 - The MI is C{-a HOST:PORT} (UDP; default C{$EVSRV_MI}, else
   C{127.0.0.1:8080}) or C{-s PATH} (UNIX datagram). With C{-s} the client
   binds a socket file of its own in the temporary directory for the reply,
   writable by all so that a server running as another user can answer, and
   removes it afterwards. C{--http URL} uses the HTTP MI instead (JSON-RPC
   by POST, e.g. C{http://127.0.0.1:8888/mi}; default C{$EVSRV_MI_HTTP} when
   set), whose replies have no size limit.

Output
======

 - a string result is printed as it is (C{OK});
 - an object or array result is printed as JSON indented by 2, keys in the
   order the server sent them, non-ASCII characters unescaped; any other
   result (number, boolean, null) as its JSON text;
 - an error reply prints C{error CODE: MESSAGE} (followed by C{ (DATA)}
   when the error has data) on stderr;
 - a reply that is not JSON-RPC (C{400 Parse_error}, or a 1.x text reply) is
   printed as it is;
 - C{--raw} prints the reply bytes as received instead, whatever they are
   (on stdout; the exit status is the same).

C{listen} subscribes C{udp:HOST:PORT} of a UDP socket of its own to EVENT
and prints each notification received on it as one line (the datagram as
received; C{--pretty}: a JSON one indented by 2), until C{--count}
notifications, Ctrl-C or SIGTERM; then it unsubscribes (C{expire 0}). It
re-subscribes C{min(60, expire / 2)} seconds before the subscription
expires. Only the notifications go to stdout; its remarks go to stderr.
C{--bind} chooses the local address, which is what gets subscribed: give one
the server can send to (not a wildcard address).

Exit status: 0 success; 1 an error reply, a reply that is not JSON-RPC, or
(listen) the local socket could not be bound, or the subscribe or the final
unsubscribe failed; 2 no reply within the timeout, MI socket unreachable, or
bad usage (as argparse); 130 interrupted (other than listen, whose Ctrl-C is
the normal way out).
"""

import argparse
import json
import os
import select
import signal
import socket
import sys
import time

from evsrv import __version__
# the MI clients live in evsrv.client; their names stay importable from here
from evsrv.client import (DEFAULT_TIMEOUT, EXIT_NO_REPLY, RECV_SIZE,  # noqa: F401
                          CtlError, HTTPMIClient, MIClient, Reply, os_error_text, resolve_address,
                          split_host_port, udp_socket_text)

DEFAULT_ADDRESS = "127.0.0.1:8080"
DEFAULT_EXPIRE = 3600
ENV_ADDRESS = "EVSRV_MI"
ENV_HTTP = "EVSRV_MI_HTTP"
STATISTICS_COMMANDS = ("get_statistics", "list_statistics", "reset_statistics")

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


# -- output ----------------------------------------------------------------------


def _write(stream, text: str):
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))


def _write_bytes(data: bytes):
    """
    Bytes to stdout as they are (through its text layer when it has no buffer).
    """
    if not data.endswith(b"\n"):
        data += b"\n"
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        _write(sys.stdout, data.decode("utf-8", "replace"))
    else:
        sys.stdout.flush()
        buffer.write(data)
        buffer.flush()


def format_result(result) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, (dict, list)):
        return json.dumps(result, indent=2, ensure_ascii=False)
    return json.dumps(result)


def format_error(error) -> str:
    if not isinstance(error, dict):
        return f"error: {json.dumps(error, ensure_ascii=False)}"
    text = f"error {error.get('code')}: {error.get('message')}"
    if error.get("data") is not None:
        data = error["data"]
        text += f" ({data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)})"
    return text


def _describe(reply: Reply) -> str:
    """
    A reply that is not a result, in one line.
    """
    if reply.kind == "error":
        return format_error(reply.value)
    return " ".join(reply.value.split())


def _report(reply: Reply, raw: bool) -> int:
    if raw:
        _write_bytes(reply.data)
    elif reply.kind == "result":
        _write(sys.stdout, format_result(reply.value) + "\n")
    elif reply.kind == "error":
        _write(sys.stderr, format_error(reply.value) + "\n")
    else:
        _write(sys.stdout, reply.value if reply.value.endswith("\n") else reply.value + "\n")
    return EXIT_OK if reply.ok else EXIT_ERROR


def _hint(options, reply: Reply):
    """
    What to do instead, for an error the command line itself caused. The
    server's reply stays OpenSIPS' own bytes (C{400 Bad Params}, no reason):
    the advice is the client's.
    """
    if reply.kind != "error" or options.json is not None or options.command not in (
            "raise_event", "evi:raise") or len(options.args) != 2:
        return None
    error = reply.value if isinstance(reply.value, dict) else {}
    if error.get("code") != 400 or error.get("message") != "Bad Params":
        return None
    if options.args[1].lstrip().startswith("["):
        event = json.dumps(options.args[0])
        return (f"a params ARG is sent as a string, which must hold a JSON object; for an "
                f"array of values use -j: evsrv-ctl raise_event -j "
                f"'{{\"event\":{event},\"params\":{options.args[1].strip()}}}'")
    return "the params ARG must be a JSON object, e.g. '{\"ip\":\"10.0.0.1\"}'"


def _warn(message: str):
    _write(sys.stderr, f"evsrv-ctl: {message}\n")


# -- command line ------------------------------------------------------------------

DESCRIPTION = """\
Run an evsrv MI command over the MI datagram socket (JSON-RPC 2.0, as OpenSIPS
mi_datagram) and print its result.

  evsrv-ctl event_subscribe E_PIKE_BLOCKED udp:127.0.0.1:8888 1200
  evsrv-ctl events_list
  evsrv-ctl subscribers_list E_X
  evsrv-ctl raise_event E_X '{"ip":"1.2.3.4"}'
  evsrv-ctl -j '["E_X", ["a", 7]]' raise_event
  evsrv-ctl get_statistics evi: mi:
  evsrv-ctl listen E_X --count 1
"""

EPILOG = """\
Positional ARGs are sent as JSON strings; get_statistics, list_statistics and
reset_statistics send theirs as {"statistics": [ARG, ...]}. Options may follow
COMMAND; "--" ends them. A string result is printed as is, an object or array
as JSON indented by 2; an error reply as "error CODE: MESSAGE (DATA)" on
stderr. Exit status: 0 ok, 1 error reply, 2 no reply or bad usage.

listen EVENT [--expire N] [--bind HOST:PORT] [--count K] [--pretty]: subscribe
a UDP socket of its own to EVENT and print each notification on one line,
until K notifications, Ctrl-C or SIGTERM, then unsubscribe
(see "evsrv-ctl listen -h").
"""


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _host_port(text: str):
    try:
        return split_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _json_params(text: str):
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, (dict, list)):
        raise argparse.ArgumentTypeError("must be a JSON object or array")
    return value


def _add_common(parser, suppress: bool, with_request=True):
    """
    The options every form takes; with C{suppress}, absent ones leave the
    namespace alone (for the second parsing pass, after COMMAND).
    """
    default = argparse.SUPPRESS if suppress else None
    where = parser.add_argument_group("MI socket")
    where.add_argument("-a", "--address", metavar="HOST:PORT", type=_host_port,
                       default=default,
                       help=f"UDP MI address (default: ${ENV_ADDRESS} or {DEFAULT_ADDRESS})")
    where.add_argument("-s", "--socket", metavar="PATH", default=default,
                       help="UNIX datagram MI socket, instead of UDP")
    where.add_argument("--http", metavar="URL", default=default,
                       help=f"the HTTP MI (e.g. http://127.0.0.1:8888/mi; default: "
                            f"${ENV_HTTP} when set), instead of UDP")
    where.add_argument("-t", "--timeout", metavar="SECONDS", type=_timeout,
                       default=argparse.SUPPRESS if suppress else DEFAULT_TIMEOUT,
                       help=f"how long to wait for a reply (default: {DEFAULT_TIMEOUT:g})")
    if with_request:
        parser.add_argument("-j", "--json", metavar="JSON", type=_json_params, default=default,
                            help="the params as a JSON object or array, instead of ARGs")
        parser.add_argument("--raw", action="store_true",
                            default=argparse.SUPPRESS if suppress else False,
                            help="print the reply bytes as received")


def _command_parser(second_pass: bool):
    """
    The parser of C{evsrv-ctl [options] COMMAND [ARG ...]}. The first pass
    finds COMMAND (options before it only); the second parses what follows
    it, where options may be mixed with the ARGs.
    """
    parser = argparse.ArgumentParser(
        prog="evsrv-ctl", description=DESCRIPTION, epilog=EPILOG,
        usage="%(prog)s [-a HOST:PORT | -s PATH | --http URL] [-t SECONDS] [-j JSON] "
              "[--raw] COMMAND [ARG ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    if second_pass:
        _add_common(parser, suppress=True)
        parser.add_argument("args", metavar="ARG", nargs="*")
        return parser
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser, suppress=False)
    parser.add_argument("command", metavar="COMMAND",
                        help="an MI command (evsrv-ctl which lists them), or listen")
    parser.add_argument("rest", metavar="ARG", nargs=argparse.REMAINDER,
                        help="its arguments, sent as JSON strings")
    return parser


def _listen_parser():
    parser = argparse.ArgumentParser(
        prog="evsrv-ctl listen",
        usage="%(prog)s [-a HOST:PORT | -s PATH] [-t SECONDS] EVENT [--expire N] "
              "[--bind HOST:PORT] [--count K] [--pretty]",
        description="Subscribe a UDP socket of this process to EVENT and print each "
                    "notification received on it as one line. Re-subscribes before the "
                    "subscription expires; on Ctrl-C, SIGTERM or after --count "
                    "notifications, unsubscribes and exits.")
    _add_common(parser, suppress=True, with_request=False)
    parser.add_argument("event", metavar="EVENT")
    parser.add_argument("--expire", metavar="N", type=_positive_int, default=DEFAULT_EXPIRE,
                        help=f"subscription expire, seconds (default: {DEFAULT_EXPIRE})")
    parser.add_argument("--bind", metavar="HOST:PORT", type=_host_port,
                        default=("127.0.0.1", 0),
                        help="the local UDP address to receive on, which is what gets "
                             "subscribed (default: 127.0.0.1:0, any free port)")
    parser.add_argument("--count", metavar="K", type=_positive_int, default=None,
                        help="exit after K notifications")
    parser.add_argument("--pretty", action="store_true",
                        help="print JSON notifications indented (several lines each)")
    return parser


def parse_arguments(argv):
    """
    @return: the options namespace, with C{args} (MI commands) or the listen
        options, and C{address}/C{socket} resolved.
    @raise SystemExit: bad usage, or -h/--version.
    """
    parser = _command_parser(second_pass=False)
    options = parser.parse_args(argv)
    if options.command == "listen":
        if options.json is not None:
            parser.error("-j/--json is not used by listen")
        _listen_parser().parse_args(options.rest, namespace=options)
    else:
        # "--" is split off by hand: parse_intermixed_args mishandles
        # positionals after it (Python 3.11).
        rest = options.rest
        verbatim = []
        if "--" in rest:
            rest, verbatim = rest[:rest.index("--")], rest[rest.index("--") + 1:]
        _command_parser(second_pass=True).parse_intermixed_args(rest, namespace=options)
        options.args += verbatim
        if options.json is not None and options.args:
            parser.error("give the params either as ARGs or with -j/--json, not both")
    del options.rest
    if sum(o is not None for o in (options.socket, options.address, options.http)) > 1:
        parser.error("-a/--address, -s/--socket and --http are exclusive")
    if options.http is not None and not options.http.startswith(("http://", "https://")):
        parser.error(f"--http: expected an http:// URL, got {options.http!r}")
    if (options.socket is None and options.address is None and options.http is None
            and os.environ.get(ENV_HTTP)):
        options.http = os.environ[ENV_HTTP]
    if options.socket is None and options.address is None and options.http is None:
        env = os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS
        try:
            options.address = split_host_port(env)
        except ValueError as e:
            parser.error(f"${ENV_ADDRESS}: {e}")
    return options


def request_params(command: str, args, json_params=None):
    """
    The params member of the request for C{command} (C{None}: no params).
    """
    if json_params is not None:
        return json_params
    if not args:
        return None
    if command in STATISTICS_COMMANDS:
        return {"statistics": list(args)}
    return list(args)


def _client(options):
    if options.http is not None:
        return HTTPMIClient(options.http, options.timeout)
    return MIClient(options.address, options.socket, options.timeout)


def main(argv=None) -> int:
    """
    Run evsrv-ctl with C{argv} (default: C{sys.argv[1:]}).

    @return: the exit status.
    """
    try:
        options = parse_arguments(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_NO_REPLY)
    try:
        if options.command == "listen":
            return Listener(options).run()
        with _client(options) as client:
            reply = client.call(options.command,
                                request_params(options.command, options.args, options.json))
        status = _report(reply, options.raw)
        hint = _hint(options, reply)
        if hint:
            _warn(hint)
        return status
    except CtlError as e:
        _warn(str(e))
        return e.status
    except KeyboardInterrupt:
        _warn("interrupted")
        return EXIT_INTERRUPTED


# -- listen ------------------------------------------------------------------------


class _Stop(KeyboardInterrupt):
    """
    Raised by the SIGINT/SIGTERM handler to leave the listen loop.
    """


def _stop(signum, frame):
    raise _Stop(signum)


class Listener:
    """
    C{evsrv-ctl listen}: subscribe, print notifications, re-subscribe,
    unsubscribe at the end.
    """

    def __init__(self, options):
        self.options = options
        self.event = options.event
        self.expire = options.expire
        self.refresh_every = self.expire - min(60, self.expire / 2)
        self.received = 0

    def run(self) -> int:
        host, port = self.options.bind
        family, sockaddr = resolve_address(host, port, "--bind host")
        sink = socket.socket(family, socket.SOCK_DGRAM)
        try:
            try:
                sink.bind(sockaddr)
            except OSError as e:
                raise CtlError(f"cannot bind udp {host}:{port}: {os_error_text(e)}",
                               EXIT_ERROR) from None
            bound = sink.getsockname()
            self.socket_text = udp_socket_text(bound[0], bound[1])
            with _client(self.options) as client:
                return self._run(client, sink)
        finally:
            sink.close()

    def _subscribe(self, client, expire) -> Reply:
        return client.call("event_subscribe", [self.event, self.socket_text, str(expire)])

    def _run(self, client, sink) -> int:
        previous = _set_handlers({signal.SIGINT: _stop, signal.SIGTERM: _stop})
        subscribed = False
        try:
            try:
                reply = self._subscribe(client, self.expire)
                if not reply.ok:
                    _report(reply, raw=False)
                    return EXIT_ERROR
                subscribed = True
                _warn(f"listening for {self.event} on {self.socket_text} "
                      f"(expire {self.expire}s); Ctrl-C to stop")
                self._loop(client, sink)
            except _Stop:
                subscribed = True  # even during the subscribe: it may have arrived
            except BrokenPipeError:
                _silence_stdout()
            # While unsubscribing, SIGTERM waits and a second Ctrl-C interrupts.
            _set_handlers({signal.SIGINT: previous.get(signal.SIGINT, signal.default_int_handler),
                           signal.SIGTERM: signal.SIG_IGN})
            return self._unsubscribe(client) if subscribed else EXIT_OK
        finally:
            _set_handlers(previous)

    def _loop(self, client, sink):
        refresh_at = time.monotonic() + self.refresh_every
        while self.options.count is None or self.received < self.options.count:
            wait = refresh_at - time.monotonic()
            if wait <= 0:
                refresh_at = time.monotonic() + self._refresh(client)
                continue
            readable, _, _ = select.select([sink], [], [], wait)
            if readable:
                data = sink.recv(RECV_SIZE)
                self.received += 1
                self._print(data)

    def _refresh(self, client) -> float:
        """
        Re-subscribe. @return: seconds until the next refresh (sooner after a failure).
        """
        try:
            reply = self._subscribe(client, self.expire)
        except CtlError as e:
            _warn(f"re-subscribe failed: {e}")
        else:
            if reply.ok:
                return self.refresh_every
            _warn(f"re-subscribe failed: {_describe(reply)}")
        return min(5.0, self.refresh_every)

    def _unsubscribe(self, client) -> int:
        try:
            reply = self._subscribe(client, 0)
        except CtlError as e:
            _warn(f"unsubscribe failed: {e}")
            return EXIT_ERROR
        if not reply.ok:
            _warn(f"unsubscribe failed: {_describe(reply)}")
            return EXIT_ERROR
        return EXIT_OK

    def _print(self, data: bytes):
        if self.options.pretty:
            try:
                value = json.loads(data.decode("utf-8", "replace"))
            except ValueError:
                pass
            else:
                _write(sys.stdout, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
                sys.stdout.flush()
                return
        _write_bytes(data)


def _set_handlers(handlers: dict) -> dict:
    """
    Install signal handlers; nothing when not in the main thread.

    @return: the handlers replaced, to restore with the same function.
    """
    previous = {}
    try:
        for signum, handler in handlers.items():
            old = signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            previous[signum] = old
    except ValueError:
        pass  # not the main thread
    return previous


def _silence_stdout():
    """
    Stdout was closed by its reader (C{listen | head -1}): send whatever is
    left to /dev/null, so that the final flush does not fail again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
