# -*- test-case-name: tests.test_fifo -*-
"""
The MI FIFO, as OpenSIPS C{mi_fifo} (spec §3.3): the default transport of
opensips-cli and opensips-mi. A client writes a request into the server's
FIFO and reads the reply from a FIFO of its own, named in the request.

Framing. Every writer's bytes arrive in one byte stream, with nothing that
marks where one writer stopped: the requests frame themselves.

 - Whitespace between requests is skipped. A request starts with C{:}, a
   NAME (at most 255 bytes, no white space, control bytes or C{"{}[],}) and
   a second C{:}.
 - JSON-RPC (3.x): when the first byte after the second C{:} that is not
   white space is C{{} (or C{[}), NAME is the reply FIFO and the request is
   that one JSON value: it ends at its closing brace (brackets counted
   outside JSON strings), with or without a newline after it, and the next
   request may follow at once.
 - 1.x text: otherwise NAME is the command, the rest of that line the reply
   FIFO, then one argument per line; the request ends at the first empty
   line (C{:command:reply_fifo\\nargs...\\n\\n}). It runs as the 1.x text
   MI on the datagram sockets does; its reply ends with an empty line, as
   1.x mi_fifo's.
 - An empty reply FIFO name runs the command and answers nothing, as a
   JSON-RPC notification (no C{id}) does.
 - The reply FIFO is a bare file name in C{[mi] fifo_reply_dir}: a name
   holding C{.}, C{/} or C{\\} (as OpenSIPS: no way out of the directory,
   no hidden files) is refused, the request not run, counted in
   C{mi:fifo_bad_reply_names}.
 - Bytes that cannot start a request are skipped up to the next C{:};
   each run of them is counted once in C{mi:fifo_requests_malformed}.
 - A request larger than C{[mi] fifo_max_request} is not kept: the rest of
   it is read and dropped (the framing goes on, so the requests after it
   are fine), it is answered with an error and counted in
   C{mi:fifo_requests_too_large}.
 - A request still incomplete after L{STALL_TIMEOUT} seconds without a
   byte (its writer went away half way) is answered with an error, counted
   in C{mi:fifo_requests_truncated}, and the stream is read again from the
   next possible request start after its head, so a whole request written
   meanwhile by another client is found and answered.

Concurrent writers. A C{write()} of at most C{PIPE_BUF} (4096) bytes to a
FIFO is atomic: its bytes are never mixed with another writer's, so
requests of clients writing at the same time arrive whole, one after the
other (in some order), and each gets its own reply. What atomicity does not
give: a request larger than 4096 bytes, or one written in several
C{write()} calls (a shell's C{printf} piece by piece), may be split by
another writer's request. Then the bytes of both form one request: it fails
(C{400 Parse_error} to the first client), and the second client's request
is lost, unless the first one stays incomplete (then the second is found
after the stall, as above). Keep requests below 4096 bytes when several
clients may write at once (opensips-cli's are), or use the datagram or
HTTP MI, which frame each request apart.

Peers. Nothing here blocks the reactor:
 - The FIFO is read non-blocking through the reactor. The server holds a
   write end of its own FIFO, so a writer that closes (opensips-cli opens
   and closes the FIFO before each command to check it) never makes the
   FIFO report end-of-file, and an idle FIFO costs nothing.
 - A reply FIFO is opened C{O_WRONLY|O_NONBLOCK|O_NOFOLLOW}: while nobody
   has it open for reading, or it does not exist yet, the open is retried
   L{REPLY_OPEN_RETRIES} times, L{REPLY_OPEN_DELAY} s apart (1 s in all),
   then the reply is dropped. A reply FIFO that is not a FIFO, a symbolic
   link or has other hard links is never written (a local user cannot
   make the server write into a file of their choice). A reply is written
   as the client reads it; one not read within L{REPLY_WRITE_TIMEOUT} s
   is dropped; at most L{MAX_PENDING_REPLIES} replies wait at once. Every
   reply dropped is counted in C{mi:fifo_replies_failed} and logged (at
   most once per 10 s).
 - A writer that floods the FIFO fills it (the kernel holds 64 KiB), then
   its writes block: in the writer. The server reads at most
   L{READ_PER_TURN} bytes per reactor turn.
 - Access is the FIFO file's mode and owner (C{[mi] fifo_mode},
   C{fifo_owner}, C{fifo_group}); the request gates (pike) see the FIFO's
   label, not an address (local clients, as on the UNIX socket).
 - The FIFO deleted (or replaced) while the server runs is noticed within
   L{CHECK_INTERVAL} s and made again (counted in C{mi:fifo_recreated}); a
   file put there by someone else is left alone and logged.

Start-up never takes another program's file: a path that exists and is
not a FIFO, a FIFO of another user, or a FIFO another process reads (an
OpenSIPS, another evsrv: a probe open finds a reader; evsrv servers also
hold an exclusive C{flock}) is refused with one line saying so (or
skipped, C{[mi] fifo_taken = skip}). A FIFO of this user that nobody reads
(left by a server that died) is taken over. On stop the FIFO file is
removed, if it is still the one the server made or took.
"""

import errno
import fcntl
import os
import pwd
import re
import stat

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from evsrv import encoding
from evsrv.mi import text
from evsrv.mi.dispatch import run_gates
from evsrv.mi.protocol import ListenError, _owner_ids
from evsrv.util.ratelimit import RateLimitedLog
from evsrv.util.wire import from_bytes

PIPE_BUF = 4096             # POSIX minimum is 512; Linux's, and what the docs promise
READ_PER_TURN = 16 * 1024   # as the datagram MI: a backlog must not hold the reactor
MAX_NAME = 255              # a file name (NAME_MAX)
STALL_TIMEOUT = 2.0         # seconds an incomplete request may wait for its next byte
REPLY_OPEN_RETRIES = 10     # OpenSIPS: 4 x 80 ms; a busy machine needs longer
REPLY_OPEN_DELAY = 0.1
REPLY_WRITE_TIMEOUT = 10.0  # seconds a client has to read its whole reply
MAX_PENDING_REPLIES = 1000
CHECK_INTERVAL = 5.0        # seconds between checks that the FIFO is still there

_COLON, _LF, _QUOTE = ord(":"), ord("\n"), ord('"')
_OPENERS = frozenset(b"{[")
_WS = b" \t\r\n"
_BLANK = b" \t\r"
# bytes that cannot be in a NAME: a request head holding one is not a request
# (this also keeps resynchronisation from taking JSON text for a head)
_NOT_IN_NAME = frozenset(range(0x21)) | frozenset(b'\x7f"{}[],:')
# bytes a reply FIFO name may not hold (OpenSIPS get_reply_filename)
_REFUSED_IN_REPLY = frozenset(b"./\\")
_STRUCTURE = re.compile(rb'[][{}"]')
_IN_STRING = re.compile(rb'["\\]')


def reply_name_ok(name: bytes) -> bool:
    """
    Whether C{name} is a reply FIFO name the server writes to (empty: no
    reply, also false).
    """
    return bool(name) and not any(c in _REFUSED_IN_REPLY for c in name)


# -- framing ------------------------------------------------------------------------


class FIFORequest:
    """
    One framed request.

    @ivar dialect: C{"json"} or C{"text"} (1.x).
    @ivar reply: the reply FIFO name (C{b""}: no reply).
    @ivar body: what the dispatcher gets: the JSON text, or for 1.x
        C{:command:\\n} and the argument lines.
    @ivar command: the 1.x command (C{None} for JSON).
    """
    __slots__ = ("dialect", "reply", "body", "command")

    def __init__(self, dialect, reply, body, command=None):
        self.dialect = dialect
        self.reply = reply
        self.body = body
        self.command = command

    def __repr__(self):
        return f"FIFORequest({self.dialect!r}, {self.reply!r}, {self.body!r})"


class Framed:
    """
    What the framing found: C{kind} is C{"request"} (with C{request}),
    C{"malformed"}, C{"bad_reply_name"}, C{"too_large"} or C{"truncated"}
    (with the C{reply} name and C{dialect} when the head was read).
    """
    __slots__ = ("kind", "request", "reply", "dialect")

    def __init__(self, kind, request=None, reply=b"", dialect=None):
        self.kind = kind
        self.request = request
        self.reply = reply
        self.dialect = dialect

    def __repr__(self):
        if self.request is not None:
            return f"Framed({self.kind!r}, {self.request!r})"
        return f"Framed({self.kind!r}, reply={self.reply!r}, dialect={self.dialect!r})"


class _Body:
    """
    The request being read, once its head is known.
    """
    __slots__ = ("dialect", "reply", "command", "start", "pos", "skipping", "depth",
                 "in_string", "escape", "dirty", "args_end")

    def __init__(self, dialect, reply, command, start):
        self.dialect = dialect
        self.reply = reply
        self.command = command
        self.start = start   # offset of the JSON value / the first argument line
        self.pos = start     # where scanning goes on
        self.skipping = False  # too large: read to its end, keep nothing
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.dirty = False   # 1.x, skipping: the current line had a non-blank byte
        self.args_end = start


class FIFOFraming:
    """
    Requests out of the FIFO's byte stream (the rule: the module
    docstring). Pure: bytes in, L{Framed} out; the caller calls L{stall}
    when no byte came for a while and L{pending} is true.
    """

    def __init__(self, max_request: int):
        self.max_request = max_request
        self._buf = bytearray()
        self._body = None
        self._garbage = False  # inside a run of bytes already counted malformed

    @property
    def pending(self) -> bool:
        """
        Part of a request is held (waiting for the rest).
        """
        return self._body is not None or bool(self._buf)

    def feed(self, data: bytes) -> list:
        self._buf += data
        found = []
        going = True
        while going:
            going = self._head(found) if self._body is None else self._scan(found)
        return found

    def stall(self) -> list:
        """
        No byte came for a while: drop the incomplete request, and read the
        bytes held again from the next possible request start after its
        head; then nothing is held.
        """
        found = []
        body, buf = self._body, self._buf
        self._body = None
        if body is not None and body.skipping:
            buf.clear()  # an oversized request, counted already
        elif buf:
            if body is not None:
                found.append(Framed("truncated", reply=body.reply, dialect=body.dialect))
                resume = body.start
            else:
                found.append(Framed("truncated"))
                resume = 1
            start = buf.find(b":", resume)
            del buf[:start if start >= 0 else len(buf)]
            # what is left of the truncated request is not counted again
            self._garbage = True
        found.extend(self.feed(b""))
        # Every byte held is stale now: whole requests of other writers
        # among them were found; the start of one that is not whole will
        # never be (a new writer starts a request of its own).
        self._buf.clear()
        self._body = None
        return found

    # -- the head: ":NAME:" and what follows ----------------------------------------

    def _head(self, found) -> bool:
        buf = self._buf
        n = len(buf)
        i = 0
        while i < n and buf[i] in _WS:
            i += 1
        if i:
            del buf[:i]
            n -= i
        if not n:
            return False
        if buf[0] != _COLON:
            return self._skip(found, 1)
        j = 1
        limit = min(n, MAX_NAME + 2)
        while j < limit and buf[j] != _COLON:
            if buf[j] in _NOT_IN_NAME:
                return self._skip(found, 1)
            j += 1
        if j == limit:
            return self._skip(found, 1) if n > MAX_NAME + 1 else False
        name = bytes(buf[1:j])
        k = j + 1
        while k < n and buf[k] in _BLANK:
            k += 1
        if k == n:
            return False
        if buf[k] in _OPENERS:
            return self._start(_Body("json", name, None, k))
        if buf[k] == _LF:
            # nothing more on the line: JSON on the next one, or 1.x with
            # no reply FIFO (and an empty line right away: no arguments)
            m = k + 1
            while m < n and buf[m] in _BLANK:
                m += 1
            if m == n:
                return False
            if buf[m] in _OPENERS:
                return self._start(_Body("json", name, None, m))
            return self._start(_Body("text", b"", name, k + 1))
        end = buf.find(b"\n", k)
        if end < 0:
            return self._skip(found, 1) if n - k > MAX_NAME + 1 else False
        reply = bytes(buf[k:end]).rstrip(_BLANK)
        if len(reply) > MAX_NAME or any(c in _NOT_IN_NAME for c in reply):
            return self._skip(found, 1)
        return self._start(_Body("text", reply, name, end + 1))

    def _start(self, body) -> bool:
        self._body = body
        self._garbage = False
        return True

    def _skip(self, found, start) -> bool:
        """
        Not a request: drop up to the next C{:} at or after C{start}.
        """
        buf = self._buf
        colon = buf.find(b":", start)
        del buf[:colon if colon >= 0 else len(buf)]
        if not self._garbage:
            self._garbage = True
            found.append(Framed("malformed"))
        return True

    # -- the body ---------------------------------------------------------------

    def _scan(self, found) -> bool:
        body, buf = self._body, self._buf
        end = self._json_end(body) if body.dialect == "json" else self._text_end(body)
        if end < 0:
            if not body.skipping and len(buf) > self.max_request:
                body.skipping = True
                found.append(Framed("too_large", reply=body.reply, dialect=body.dialect))
            if body.skipping:
                # keep none of it: only the scanner's state
                del buf[:body.pos]
                body.pos = body.start = 0
            return False
        self._body = None
        if body.skipping:
            del buf[:end]
            return True
        if end > self.max_request:
            found.append(Framed("too_large", reply=body.reply, dialect=body.dialect))
        elif body.reply and not reply_name_ok(body.reply):
            found.append(Framed("bad_reply_name", reply=body.reply, dialect=body.dialect))
        elif body.dialect == "json":
            found.append(Framed("request", FIFORequest("json", body.reply,
                                                       bytes(buf[body.start:end]))))
        else:
            request = b":" + body.command + b":\n" + bytes(buf[body.start:body.args_end])
            found.append(Framed("request", FIFORequest("text", body.reply, request,
                                                       from_bytes(body.command))))
        del buf[:end]
        return True

    def _json_end(self, body) -> int:
        """
        The offset just past the JSON value, or -1 (scanned so far: kept).
        """
        buf = self._buf
        n = len(buf)
        pos = body.pos
        while pos < n:
            if body.escape:
                body.escape = False
                pos += 1
            elif body.in_string:
                match = _IN_STRING.search(buf, pos)
                if match is None:
                    pos = n
                    break
                pos = match.end()
                if buf[match.start()] == _QUOTE:
                    body.in_string = False
                else:
                    body.escape = True
            else:
                match = _STRUCTURE.search(buf, pos)
                if match is None:
                    pos = n
                    break
                pos = match.end()
                c = buf[match.start()]
                if c == _QUOTE:
                    body.in_string = True
                elif c in _OPENERS:
                    body.depth += 1
                else:
                    body.depth -= 1
                    if body.depth <= 0:
                        body.pos = pos
                        return pos
        body.pos = pos
        return -1

    def _text_end(self, body) -> int:
        """
        The offset just past the empty line that ends a 1.x request, or -1.
        """
        buf = self._buf
        pos = body.pos
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                if body.skipping:
                    body.dirty = body.dirty or bool(buf[pos:].strip(_BLANK))
                    pos = len(buf)
                body.pos = pos
                return -1
            if not body.dirty and not buf[pos:end].strip(_BLANK):
                body.args_end = pos
                return end + 1
            body.dirty = False
            pos = end + 1


def text_reply(reply: bytes, command: str) -> bytes:
    """
    A 1.x text reply of the dispatcher (datagram framing) in 1.x mi_fifo's:
    the unknown command named, an empty line at the end.
    """
    if reply == text.NOT_AVAILABLE:
        reply = f"500 command '{command}' not available\n".encode("utf-8", "surrogateescape")
    return reply + b"\n"


def error_reply(dialect: str, code: int, message: str, data: str) -> bytes:
    """
    The reply to a request that could not be read whole (its C{id} unknown).
    """
    if dialect == "json":
        return encoding.jsonrpc_error(None, code, message, data) + b"\n"
    return f"{code} {message}\n\n".encode()


# -- replies ------------------------------------------------------------------------


class _ReplyPipe(FileDescriptor):
    """
    The write end of one client's reply FIFO, written as the client reads.
    """

    def __init__(self, fd, reactor, done):
        super().__init__(reactor)
        self.fd = fd
        self.connected = 1
        self._done = done

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "mi-fifo-reply"

    def writeSomeData(self, data):
        try:
            return os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            # EPIPE: the client closed its end before reading everything
            return e

    def connectionLost(self, reason):
        super().connectionLost(reason)
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        done, self._done = self._done, None
        if done is not None:
            done(reason)


class _Reply:
    __slots__ = ("name", "data", "tries", "timer", "pipe")

    def __init__(self, name, data):
        self.name = name
        self.data = data
        self.tries = 0
        self.timer = None
        self.pipe = None


def _unsafe(fd, lst) -> str | None:
    """
    Why the reply FIFO opened as C{fd} must not be written (C{lst}: its
    C{lstat} before the open): hard-linked, or swapped between the two
    looks (a symbolic link is refused by C{O_NOFOLLOW}).
    """
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (lst.st_dev, lst.st_ino) or not stat.S_ISFIFO(fst.st_mode):
        return "it was replaced while being opened"
    if fst.st_nlink > 1:
        return "it has other hard links"
    return None


class FIFOReplies:
    """
    Writes replies to the clients' reply FIFOs in C{reply_dir}, without
    ever blocking (see the module docstring); shared by the server's FIFOs.
    """
    _log = Logger()

    def __init__(self, reactor, reply_dir, statistics, clock=None,
                 retries=REPLY_OPEN_RETRIES, delay=REPLY_OPEN_DELAY,
                 write_timeout=REPLY_WRITE_TIMEOUT, max_pending=MAX_PENDING_REPLIES):
        self.reactor = reactor
        self.clock = reactor if clock is None else clock
        self.reply_dir = os.fsencode(reply_dir)
        self.retries = retries
        self.delay = delay
        self.write_timeout = write_timeout
        self.max_pending = max_pending
        self._pending = set()
        self._closed = False
        self._failed = statistics.counter("mi", "fifo_replies_failed")
        self._warn = RateLimitedLog(self._log, self.clock)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def send(self, name: bytes, data: bytes) -> None:
        """
        Write C{data} to the reply FIFO C{name} (a checked bare name).
        """
        if self._closed:
            self._failed.value += 1  # answered after the MI closed (shutdown)
            return
        if len(self._pending) >= self.max_pending:
            self._fail(name, f"{self.max_pending} replies are waiting for their clients")
            return
        reply = _Reply(name, data)
        self._pending.add(reply)
        self._open(reply)

    def _open(self, reply):
        reply.timer = None
        path = self.reply_dir + b"/" + reply.name
        try:
            # look before opening: a device or a file is never opened at all
            lst = os.lstat(path)
            if not stat.S_ISFIFO(lst.st_mode):
                self._finish(reply, f"it is {_describe(lst.st_mode)}")
                return
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            # ENOENT: not made yet; ENXIO: nobody has opened it for reading yet
            waiting = e.errno in (errno.ENOENT, errno.ENXIO)
            if waiting and reply.tries < self.retries:
                reply.tries += 1
                reply.timer = self.clock.callLater(self.delay, self._open, reply)
                return
            reason = ("nobody opened it for reading" if e.errno == errno.ENXIO
                      else os.strerror(e.errno))
            if waiting:
                reason += f" within {self.retries * self.delay:g} s"
            self._finish(reply, reason)
            return
        reason = _unsafe(fd, lst)
        if reason is not None:
            os.close(fd)
            self._finish(reply, reason)
            return
        self._write(reply, fd)

    def _write(self, reply, fd):
        reply.pipe = _ReplyPipe(fd, self.reactor, lambda why: self._written(reply, why))
        reply.timer = self.clock.callLater(self.write_timeout, self._too_slow, reply)
        reply.pipe.write(reply.data)
        reply.pipe.loseConnection()

    def _written(self, reply, why):
        if why.check(ConnectionDone):
            self._finish(reply, None)
        else:
            self._finish(reply, why.getErrorMessage())

    def _too_slow(self, reply):
        reply.timer = None
        pipe = reply.pipe
        if pipe is not None and pipe.connected:
            pipe.connectionLost(Failure(TimeoutError(
                f"the client did not read it within {self.write_timeout:g} s")))

    def _finish(self, reply, reason):
        if reply not in self._pending:
            return
        self._pending.discard(reply)
        if reply.timer is not None and reply.timer.active():
            reply.timer.cancel()
        reply.timer = None
        if reason is not None:
            self._fail(reply.name, reason)

    def _fail(self, name, reason):
        self._failed.value += 1
        self._warn.warn("MI FIFO reply to {reply} lost: {reason}",
                        reply=os.fsdecode(self.reply_dir + b"/" + name), reason=reason)

    def stopListening(self):
        """
        Drop the replies still waiting (the MI is closing); later ones are
        dropped too. Counted in C{mi:fifo_replies_failed}.
        """
        self._closed = True
        for reply in list(self._pending):
            pipe = reply.pipe
            if pipe is not None and pipe.connected:
                pipe.connectionLost(Failure(ConnectionAbortedError("the MI closed")))
            else:
                self._finish(reply, "the MI closed")


# -- the protocol ---------------------------------------------------------------------


class MIFIFOProtocol:
    """
    One FIFO's requests: framing, gates, the dispatcher, and the reply to
    the client's FIFO. Thin: the commands are the dispatcher's.
    """
    _log = Logger()

    def __init__(self, dispatcher, clock, label, replies, max_request, filters=(),
                 stall_timeout=STALL_TIMEOUT):
        self.dispatcher = dispatcher
        self.clock = clock
        self.label = label
        self.replies = replies
        self.max_request = max_request
        self.filters = filters
        self.stall_timeout = stall_timeout
        self.framing = FIFOFraming(max_request)
        self._stall = None
        statistics = dispatcher.controller.statistics
        self._counters = {kind: statistics.counter("mi", name) for kind, name in (
            ("request", "fifo_requests"), ("malformed", "fifo_requests_malformed"),
            ("truncated", "fifo_requests_truncated"), ("too_large", "fifo_requests_too_large"),
            ("bad_reply_name", "fifo_bad_reply_names"))}
        self._filtered = statistics.counter("mi", "requests_filtered")
        # one limiter per kind, so that one flood cannot hide the others
        self._warn = {kind: RateLimitedLog(self._log, clock) for kind in self._counters}

    def dataReceived(self, data: bytes) -> None:
        self._handle(self.framing.feed(data))
        self._arm()

    def connectionLost(self) -> None:
        """
        The FIFO closed: what was held of an incomplete request is dropped.
        """
        self._cancel()
        self.framing = FIFOFraming(self.max_request)

    def _cancel(self):
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def _arm(self):
        if not self.framing.pending:
            self._cancel()
        elif self._stall is not None and self._stall.active():
            self._stall.reset(self.stall_timeout)
        else:
            self._stall = self.clock.callLater(self.stall_timeout, self._stalled)

    def _stalled(self):
        self._stall = None
        self._handle(self.framing.stall())
        self._arm()

    def _handle(self, events):
        for event in events:
            self._counters[event.kind].value += 1
            if event.kind == "request":
                self._run(event.request)
                continue
            reply = from_bytes(event.reply)
            if event.kind == "malformed":
                self._warn[event.kind].warn(
                    "{label}: bytes that are not an MI request skipped (a request is "
                    "':REPLY_FIFO:' and JSON, or ':command:REPLY_FIFO' and lines)",
                    label=self.label)
            elif event.kind == "bad_reply_name":
                self._warn[event.kind].warn(
                    "{label}: request not run: its reply FIFO {reply!r} is not a bare file "
                    "name (no '.', '/' or '\\')", label=self.label, reply=reply)
            elif event.kind == "too_large":
                self._warn[event.kind].warn(
                    "{label}: request larger than {limit} bytes ([mi] fifo_max_request) "
                    "skipped", label=self.label, limit=self.max_request)
                self._answer_error(event, 413, "Request too large",
                                   f"more than {self.max_request} bytes ([mi] fifo_max_request)")
            else:
                self._warn[event.kind].warn(
                    "{label}: incomplete request dropped: no byte for {seconds:g} s (its "
                    "writer went away, or wrote it in pieces mixed with another's)",
                    label=self.label, seconds=self.stall_timeout)
                self._answer_error(event, 400, "Incomplete request",
                                   f"no byte for {self.stall_timeout:g} s before its end")

    def _answer_error(self, event, code, message, data):
        if event.dialect is not None and reply_name_ok(event.reply):
            self.replies.send(event.reply, error_reply(event.dialect, code, message, data))

    def _run(self, request):
        if self.filters:
            refusal = run_gates(self.filters, self.label)
            if refusal is not None:
                self._filtered.value += 1
                if refusal.error is not None and not refusal.rate_capped:
                    reply = self.dispatcher.refusal_reply(request.body, refusal.error,
                                                          json_only=request.dialect == "json")
                    self._answer(reply, request)
                return
        if request.dialect == "json":
            d = self.dispatcher.handle_json(request.body)
        else:
            d = self.dispatcher.handle(request.body)
        d.addCallback(self._answer, request)
        d.addErrback(lambda f: self._log.failure("MI request on {label} failed", f,
                                                 label=self.label))

    def _answer(self, reply, request):
        if reply is None or not request.reply:
            return
        if request.dialect == "text":
            reply = text_reply(reply, request.command)
        else:
            reply += b"\n"  # one line (compact JSON has no newline)
        self.replies.send(request.reply, reply)


# -- the FIFO file ----------------------------------------------------------------------


class FIFOError(ListenError):
    """
    An MI FIFO could not be used; the message says which and why.
    """


def _describe(mode) -> str:
    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a regular file"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a FIFO"


def _user(uid) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


@implementer(IReadDescriptor)
class MIFIFOListener:
    """
    One MI FIFO file: made (or a stale one of ours taken over), read
    through the reactor, checked every C{check_interval} seconds and made
    again when it vanished, removed on L{stopListening}.

    @ivar connected: the FIFO is open (its requests are read unless
        paused with L{stopReading}).
    """
    _log = Logger()

    def __init__(self, reactor, path, protocol, statistics, mode=0o660, owner=None,
                 group=None, clock=None, check_interval=CHECK_INTERVAL):
        self.reactor = reactor
        self.clock = reactor if clock is None else clock
        self.path = str(path)
        self.protocol = protocol
        self.mode = mode
        self.owner = owner
        self.group = group
        self.check_interval = check_interval
        self.connected = False
        self._reading = False
        self._paused = False
        self._rfd = self._wfd = -1
        self._identity = None   # (st_dev, st_ino) of the FIFO we read
        self._check = None
        self._unavailable = None  # the reason last logged, while the FIFO cannot be had
        self._recreated = statistics.counter("mi", "fifo_recreated")

    def __repr__(self):
        return f"<MIFIFOListener {self.path}>"

    # -- IReadDescriptor -----------------------------------------------------------

    def fileno(self):
        return self._rfd

    def logPrefix(self):
        return "mi-fifo"

    def doRead(self):
        try:
            data = os.read(self._rfd, READ_PER_TURN)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            return e  # the reactor calls connectionLost
        if data:
            self.protocol.dataReceived(data)
        # b"": end of file cannot come while we hold a write end; nothing to do
        return None

    def connectionLost(self, reason):
        # the reactor's, after a read error: the next check opens it again
        self._close(unlink=False)
        self._log.warn("reading the MI FIFO {path} failed: {error}; opened again within "
                       "{interval:g} s", path=self.path, error=reason.getErrorMessage(),
                       interval=self.check_interval)

    # -- listening -----------------------------------------------------------------

    def listen(self):
        """
        @raise FIFOError: the FIFO cannot be had (see the module docstring);
            nothing is left open or made.
        """
        self._open()
        self._check = LoopingCall(self._verify)
        self._check.clock = self.clock
        self._check.start(self.check_interval, now=False)

    def stopReading(self):
        self._paused = True
        if self._reading:
            self.reactor.removeReader(self)
            self._reading = False

    def startReading(self):
        self._paused = False
        if self.connected and not self._reading:
            self.reactor.addReader(self)
            self._reading = True

    def stopListening(self):
        """
        Close the FIFO and remove its file (if it is still ours); what was
        held of an incomplete request is dropped.
        """
        if self._check is not None and self._check.running:
            self._check.stop()
        self._check = None
        self._close(unlink=True)
        self.protocol.connectionLost()

    def _open(self):
        path = self.path
        try:
            uid, gid = _owner_ids(path, self.owner, self.group)
        except ListenError as e:
            raise FIFOError(str(e)) from None
        made = None  # the identity of the FIFO we made, to remove it if we fail
        for _ in range(3):  # the path may come or go meanwhile (another server starting)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                try:
                    os.mkfifo(path, self.mode)
                    st = os.lstat(path)
                except FileExistsError:
                    continue
                except OSError as e:
                    raise FIFOError(f"cannot make the MI FIFO {path}: {e.strerror}") from None
                made = (st.st_dev, st.st_ino)
                break
            self._check_existing(st)
            break
        else:
            raise FIFOError(f"cannot use the MI FIFO {path}: it keeps appearing and vanishing")
        rfd = wfd = -1
        step = "open it"
        try:
            rfd = os.open(path, _READ_FLAGS)
            try:
                # another evsrv holds it: it took the FIFO between our looks
                fcntl.flock(rfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                made = None  # even if we made it: it is the other server's now
                raise FIFOError(f"cannot use the MI FIFO {path}: another evsrv reads it; it is "
                                "left alone") from None
            # our own write end: writers that close never make it report EOF
            wfd = os.open(path, _WRITE_FLAGS)
            st = os.fstat(rfd)
            lst = os.lstat(path)
            if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
                raise FIFOError(f"cannot use the MI FIFO {path}: it was replaced while "
                                "being opened")
            step = f"give it mode {self.mode:04o}"
            os.fchmod(rfd, self.mode)  # exactly the mode, whatever the umask
            if uid != -1 or gid != -1:
                step = (f"give it owner {self.owner or '(unchanged)'} and group "
                        f"{self.group or '(unchanged)'}")
                os.fchown(rfd, uid, gid)
        except (OSError, FIFOError) as e:
            for fd in (rfd, wfd):
                if fd >= 0:
                    os.close(fd)
            self._unlink_if(made)
            if isinstance(e, FIFOError):
                raise
            raise FIFOError(f"cannot use the MI FIFO {path}: cannot {step}: "
                            f"{e.strerror}") from None
        if made is None:
            self._log.info("MI FIFO {path}: took over the FIFO nobody was reading (left by a "
                           "server that stopped)", path=path)
        self._rfd, self._wfd = rfd, wfd
        self._identity = (st.st_dev, st.st_ino)
        self.connected = True
        if not self._paused:
            self.reactor.addReader(self)
            self._reading = True

    def _check_existing(self, st):
        path = self.path
        if not stat.S_ISFIFO(st.st_mode):
            raise FIFOError(f"cannot use the MI FIFO {path}: it exists and is "
                            f"{_describe(st.st_mode)}; it is left alone")
        if st.st_uid != os.geteuid():
            raise FIFOError(f"cannot use the MI FIFO {path}: it belongs to {_user(st.st_uid)}; "
                            "it is left alone")
        try:
            probe = os.open(path, _WRITE_FLAGS)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return  # nobody reads it: a stale FIFO of ours
            raise FIFOError(f"cannot use the MI FIFO {path}: {e.strerror}") from None
        os.close(probe)
        raise FIFOError(f"cannot use the MI FIFO {path}: another process reads it (an "
                        "OpenSIPS, another evsrv?); it is left alone")

    def _close(self, unlink):
        if self._reading:
            self.reactor.removeReader(self)
            self._reading = False
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = -1
        self.connected = False
        if unlink:
            self._unlink_if(self._identity)
        self._identity = None

    def _unlink_if(self, identity):
        """
        Remove the FIFO file if it is still the one we read.
        """
        if identity is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            self._log.warn("cannot remove the MI FIFO {path}: {error}", path=self.path,
                           error=e.strerror)

    def _verify(self):
        """
        The periodic check: the FIFO file still there and still ours, or
        made again.
        """
        if self._identity is not None:
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                self._close(unlink=False)
                self._log.warn("the MI FIFO {path} was removed: making it again", path=self.path)
            except OSError:
                return  # cannot look now; the next check will
            else:
                if (st.st_dev, st.st_ino) == self._identity:
                    return
                self._close(unlink=False)
                self._log.warn("the MI FIFO {path} was replaced by another file: no longer "
                               "reading it", path=self.path)
            self.protocol.connectionLost()
        try:
            self._open()
        except FIFOError as e:
            if str(e) != self._unavailable:
                self._unavailable = str(e)
                self._log.warn("{reason}; trying again every {interval:g} s", reason=str(e),
                               interval=self.check_interval)
            return
        self._unavailable = None
        self._recreated.value += 1
        self._log.info("MI listening on fifo:{path} again", path=self.path)
