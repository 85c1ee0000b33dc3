# -*- test-case-name: tests.test_flatstore_transport -*-
"""
The C{flatstore:} transport (OpenSIPS event_flatstore, spec §4.7): one line
per raise appended to a file, C{EVENT,v1,v2\\n}.

Writing. Each line leaves in one C{write(2)} on a file opened with
C{O_APPEND}, from the reactor thread: a line is never split, lines of
different events never interleave, and a plain write to a local file costs
microseconds (it only copies into the page cache), so the reactor is not
held up. A file on a slow network filesystem would block the reactor on
every raise: keep flatstore files local. Several subscriptions to one path
share one file descriptor, and one raise writes one line per file however
many of its subscriptions name it.

Failures. A file that cannot be opened or written (directory removed,
permissions, disk full, a FIFO nobody reads, anything that is not a regular
file) fails that notification for its subscribers, counted as
C{write_errors} and logged once per failing streak, and is retried at the
next raise. A write cut short by an error is truncated back, so no partial
line is left behind.

Rotation. An external tool renames the file, then asks evsrv to reopen it:
MI C{evi_flat_rotate PATH} closes that file at once, SIGHUP closes every
file; the next line creates the file anew. Lines written before went to the
renamed file (same inode), the next ones to the new file: nothing is lost
or split, because rotation and writes both run in the reactor thread, never
in the middle of a write.

Handles. The transport is not told when a subscription expires or is
removed, so it does not count them: a file not written for C{close_idle}
seconds is closed (the next line reopens it). A file with live subscribers
therefore stays open while events flow, and a forgotten one is released
soon after.
"""

import errno
import os
import signal
import stat

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from evsrv.encoding import flatstore_line
from evsrv.evi.notification import Outcome
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import BadSocket, ICounted, IEventTransport, IMICommands, IPeerHosts
from evsrv.command import Command, MIError
from evsrv.util.coercers import seconds
from evsrv.transports import LateBinding, TransportCounters
from evsrv.transports.factories import TransportFactory
from evsrv.transports.kit import FailingSpell
from evsrv.util.wire import from_bytes

_OPEN_FLAGS = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NOCTTY", 0)
               # a FIFO without a reader would block open(2): fail instead (ENXIO)
               | getattr(os, "O_NONBLOCK", 0))
# What a file's failing spell logs (kit.FailingSpell).
WRITE_FAILING = "flatstore: cannot write to {path}: {reason} (retried at every raise; logged once)"
WRITE_RECOVERED = "flatstore: writing to {path} again"


def split_line(line, delimiter: str = ",") -> list:
    """
    The fields of a flatstore line, escapes undone (the reverse of
    L{evsrv.encoding.flatstore_line}); the event name is the first field
    unless C{suppress_event_name} was set.
    """
    if isinstance(line, bytes):
        line = from_bytes(line)
    if line.endswith("\n"):
        line = line[:-1]
    fields, current, i = [], [], 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            nxt = line[i + 1]
            current.append({"n": "\n", "r": "\r"}.get(nxt, nxt))
            i += 2
        elif c == delimiter:
            fields.append("".join(current))
            current = []
            i += 1
        else:
            current.append(c)
            i += 1
    fields.append("".join(current))
    return fields


class _OpenFile:
    __slots__ = ("path", "fd", "last_write")

    def __init__(self, path, fd, now):
        self.path = path
        self.fd = fd
        self.last_write = now


@implementer(IEventTransport, IPeerHosts, IMICommands, ICounted)
class FlatstoreTransport(Service):
    """
    C{flatstore:PATH}; a relative PATH is taken from the ini's directory.

    @ivar files: the open files, by absolute path.
    """
    _log = Logger()
    schemes = ("flatstore",)

    def __init__(self, name, statistics, reactor, base_dir, delimiter=",",
                 suppress_event_name=False, file_mode=0o644, close_idle=60.0, events=None):
        self.name = name
        self.reactor = reactor
        self.base_dir = os.path.abspath(str(base_dir))
        self.delimiter = delimiter
        self.suppress_event_name = suppress_event_name
        self.file_mode = file_mode
        self.close_idle = close_idle
        # the event interface (for evi_flat_rotate on a file not open right
        # now) exists only once every transport is built: a LateBinding,
        # read late
        self.events = LateBinding("the event interface") if events is None else events
        self.files = {}
        self.counters = TransportCounters(statistics, name)
        group = f"evi_{name}"
        self.lines_written = statistics.counter(group, "lines_written")
        self.write_errors = statistics.counter(group, "write_errors")
        self.rotations = statistics.counter(group, "rotations")
        statistics.gauge(group, "open_files", lambda: len(self.files))
        self._failing = {}    # path -> its FailingSpell, while writing to it fails
        self._reopen_all = False  # set by SIGHUP, acted on in the reactor thread
        self._idle = None

    # -- subscribing --------------------------------------------------------

    def resolve(self, text: str) -> str:
        return os.path.normpath(os.path.join(self.base_dir, text))

    def parse(self, scheme, rest):
        if not rest or "\0" in rest or "\n" in rest:
            raise BadSocket(f"expected flatstore:PATH, got {('flatstore:' + rest)[:120]!r}")
        path = self.resolve(rest)
        if os.path.isdir(path) or rest.endswith("/"):
            raise BadSocket(f"flatstore: {rest[:120]!r} is a directory")
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise BadSocket(f"flatstore: directory {directory[:120]!r} does not exist")
        if os.path.exists(path):
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise BadSocket(f"flatstore: {rest[:120]!r} is not a regular file")
            if not os.access(path, os.W_OK):
                raise BadSocket(f"flatstore: {rest[:120]!r} is not writable")
        elif not os.access(directory, os.W_OK | os.X_OK):
            raise BadSocket(f"flatstore: cannot create files in {directory[:120]!r}")
        # Key and listing: the path as written (§9 D7: exact); the address,
        # shared by every subscription naming the same file, is absolute.
        return Destination(f"flatstore:{rest}", path)

    @staticmethod
    def peer_hosts(destination):
        return ()  # a local file: nothing for the [policy] to check

    # -- writing ------------------------------------------------------------

    def deliver(self, notification, subscriptions):
        outcome = Outcome()
        line = None
        results = {}  # path -> None (written) or the reason it failed
        for sub in subscriptions:
            path = sub.address
            try:
                reason = results[path]
            except KeyError:
                if line is None:
                    line = flatstore_line(notification.event, notification.params,
                                          self.delimiter, self.suppress_event_name)
                reason = results[path] = self._write(path, line)
            if reason is None:
                outcome.sent_to(sub)
            else:
                outcome.failed_for(sub, reason)
        self.counters.sent.value += outcome.delivered
        self.counters.failed.value += outcome.failed
        return outcome

    def _write(self, path, line):
        """
        Append C{line} to C{path}. @return: C{None}, or why it failed.
        """
        if self._reopen_all:
            self._apply_sighup()
        now = self.reactor.seconds()
        f = self.files.get(path)
        if f is None:
            try:
                f = self._open(path, now)
            except OSError as e:
                return self._failed(path, e)
        view = memoryview(line)
        done = 0
        try:
            while done < len(view):
                done += os.write(f.fd, view[done:])
        except OSError as e:
            if done:
                self._truncate(f, done)
            self._close(path)  # reopened at the next line: the error may be the file's
            return self._failed(path, e)
        f.last_write = now
        self.lines_written.value += 1
        if path in self._failing:
            self._failing.pop(path).success()
        return None

    def _truncate(self, f, done):
        # Never leave half a line: cut the file back to where this line began
        # (lines are appended by this one thread, so that is the end minus done).
        try:
            os.ftruncate(f.fd, os.lseek(f.fd, 0, os.SEEK_END) - done)
        except OSError:
            pass

    def _open(self, path, now):
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_EXCL, self.file_mode)
            created = True
        except FileExistsError:
            fd = os.open(path, _OPEN_FLAGS, self.file_mode)
            created = False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if created:
                os.fchmod(fd, self.file_mode)  # the ini's mode, whatever the umask
        except OSError:
            os.close(fd)
            raise
        f = self.files[path] = _OpenFile(path, fd, now)
        if self.close_idle and self._idle is None:
            self._idle = LoopingCall(self._close_idle)
            self._idle.clock = self.reactor
            self._idle.start(self.close_idle, now=False)
        return f

    def _failed(self, path, error):
        reason = os.strerror(error.errno) if error.errno else str(error)
        self.write_errors.value += 1
        spell = self._failing.get(path)
        if spell is None:
            spell = self._failing[path] = FailingSpell(
                self._log, path, key="path", failing=WRITE_FAILING, recovered=WRITE_RECOVERED,
                transport=self.name)
        spell.failure("write", reason)  # logged once per failing streak, whatever the errors
        return reason

    def _close(self, path):
        f = self.files.pop(path, None)
        if f is not None:
            try:
                os.close(f.fd)
            except OSError:
                pass
        if not self.files and self._idle is not None:
            self._idle.stop()
            self._idle = None

    def _close_idle(self):
        limit = self.reactor.seconds() - self.close_idle
        for path in [p for p, f in self.files.items() if f.last_write < limit]:
            self._close(path)

    # -- rotation -------------------------------------------------------------

    def rotate(self, text: str) -> bool:
        """
        Close the file of C{text} (a path as subscribed, or absolute) so that
        the next line reopens it.

        @return: whether the path is known: open, or named by a live subscription.
        """
        if text.startswith("flatstore:"):
            text = text[len("flatstore:"):]
        path = self.resolve(text)
        known = path in self.files or self._subscribed(path)
        if known:
            self._close(path)
            self.rotations.value += 1
            self._log.info("flatstore: {path} reopened at its next line (rotate)", path=path,
                           transport=self.name)
        return known

    def _subscribed(self, path) -> bool:
        evi = self.events.get()
        if evi is None:
            return False
        now = evi.clock.seconds()
        for event in evi.events:
            for sub in event.subscriptions.values():
                if sub.transport is self and sub.address == path and not sub.is_expired(now):
                    return True
        return False

    def _sighup(self):
        # Runs between two bytecodes of the reactor thread, maybe inside a
        # write: only set a flag; files are closed at the next write or on
        # the next reactor turn, whichever comes first.
        self._reopen_all = True
        call_from_thread = getattr(self.reactor, "callFromThread", None)
        if call_from_thread is not None:
            call_from_thread(self._apply_sighup)

    def _apply_sighup(self):
        if not self._reopen_all:
            return
        self._reopen_all = False
        self.rotations.value += 1
        for path in list(self.files):
            self._close(path)
        self._log.info("flatstore: SIGHUP, every file reopened at its next line",
                       transport=self.name)

    def mi_commands(self):
        def rotate(call):
            if not self.rotate(call.string("path_to_file")):
                raise MIError(400, "File not found")
            return "OK"
        return [Command("evi_flat_rotate", [["path_to_file"]], rotate,
                        help="Reopens a flatstore file at its next line (after an external "
                             "rename).", aliases=("event_flatstore:rotate",))]

    # -- service --------------------------------------------------------------

    def startService(self):
        super().startService()
        _SIGHUP.add(self)

    def stopService(self):
        _SIGHUP.remove(self)
        for path in list(self.files):
            self._close(path)
        return super().stopService()


class _SighupHandler:
    """
    One process-wide SIGHUP handler for every running flatstore transport
    (several servers may run in one process, e.g. in tests): installed
    when the first one starts, the previous handler put back when the last
    one stops, and chained to meanwhile.
    """
    _log = Logger()

    def __init__(self):
        self.transports = []
        self.previous = None
        self.installed = False

    def add(self, transport):
        if not self.transports and hasattr(signal, "SIGHUP"):
            try:
                self.previous = signal.signal(signal.SIGHUP, self)
                self.installed = True
            except ValueError:  # not the main thread: MI rotation only
                self._log.warn("flatstore: SIGHUP handler not installed (not the main thread)")
        self.transports.append(transport)

    def remove(self, transport):
        if transport in self.transports:
            self.transports.remove(transport)
        if not self.transports and self.installed:
            self.installed = False
            if signal.getsignal(signal.SIGHUP) is self:
                signal.signal(signal.SIGHUP, self.previous if self.previous is not None
                              else signal.SIG_DFL)
            self.previous = None

    def __call__(self, signum, frame):
        for transport in list(self.transports):
            transport._sighup()
        if callable(self.previous):
            self.previous(signum, frame)


_SIGHUP = _SighupHandler()


def _delimiter(text: str) -> str:
    value = {"tab": "\t", "\\t": "\t", "space": " "}.get(text.strip().lower(), text.strip())
    if len(value) != 1 or value.isalnum() or value in "\\\r\n":
        raise ValueError("must be one character that is not a letter, digit or backslash "
                         "(or 'tab', 'space')")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError("must be yes or no")


def _file_mode(text: str) -> int:
    value = int(text.strip(), 8)
    if not 0 <= value <= 0o7777:
        raise ValueError("must be an octal file mode such as 0644")
    return value


def _build(settings, context):
    return FlatstoreTransport(
        "flatstore", context.statistics, context.reactor, context.base_dir,
        settings["delimiter"], settings["suppress_event_name"], settings["file_mode"],
        settings["close_idle"], events=context.event_interface)


flatstoreTransport = TransportFactory(
    "flatstore", ("flatstore",),
    {"delimiter": (",", _delimiter,
                   "separator between the fields of a line (one character; 'tab', 'space')"),
     "suppress_event_name": ("no", _boolean, "yes: lines start with the first value"),
     "file_mode": ("0644", _file_mode, "mode of the files flatstore creates (octal)"),
     "close_idle": ("60", seconds,
                    "seconds after which a file not written to is closed (0: never)")},
    _build, "one line per raise appended to a file (event_flatstore)")
