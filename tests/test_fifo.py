"""
The MI FIFO (evsrv/mi/fifo.py, spec §3.3): the framing rule on its own;
the protocol, the replies and the FIFO file over real FIFOs in a temporary
directory (a L{Clock} where time matters); a server in the test's reactor;
and real evsrv processes with the real opensips-cli and opensips-mi, with
an ini and with the embedded default's FIFO at /tmp/opensips_fifo.

Every FIFO and file descriptor a test opens is closed by its fixture.
"""

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock

from evsrv.config import DEFAULT_INI, ConfigError, read_config
from evsrv.mi.commands import CoreCommands, EVICommands
from evsrv.mi.controller import MIController
from evsrv.mi.dispatch import MIDispatcher
from evsrv.mi.fifo import (PIPE_BUF, REPLY_OPEN_DELAY, REPLY_OPEN_RETRIES, FIFOError,
                           FIFOFraming, FIFOReplies, MIFIFOListener, MIFIFOProtocol,
                           reply_name_ok)
from evsrv.server import EvsrvService, transport_factories
from evsrv.testing import memory_evi
from evsrv.util.statistics import Statistics
from tests.conftest import BASE_INI, make_config, udp_receiver, until

BIN = Path(sys.executable).parent
OPENSIPS_CLI = BIN / "opensips-cli"
OPENSIPS_MI = BIN / "opensips-mi"

WHICH = b'{"jsonrpc":"2.0","method":"which","id":1}'
# to the memory event interface's test: transport
SUBSCRIBE = b'{"jsonrpc":"2.0","method":"event_subscribe","params":["E_TEST","test:x",60],"id":1}'


def frame(framing, *chunks):
    found = []
    for chunk in chunks:
        found.extend(framing.feed(chunk))
    return found


def kinds(found):
    return [(f.kind, f.request.reply if f.request else f.reply,
             f.request.body if f.request else f.dialect) for f in found]


# -- the framing rule --------------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    # opensips-cli: no newline after the JSON
    (b":r:" + WHICH, [("request", b"r", WHICH)]),
    (b":r:" + WHICH + b"\n", [("request", b"r", WHICH)]),
    (b"\n  :r:" + WHICH + b":s:" + WHICH, [("request", b"r", WHICH), ("request", b"s", WHICH)]),
    (b"::" + WHICH, [("request", b"", WHICH)]),                      # no reply
    (b":r: \n " + WHICH, [("request", b"r", WHICH)]),                # JSON on the next line
    (b':r:{"a":"}{\\"[","b":[{}]}', [("request", b"r", b'{"a":"}{\\"[","b":[{}]}')]),
    (b":r:[1]", [("request", b"r", b"[1]")]),
    # 1.x: the command, the reply FIFO, arguments, an empty line
    (b":which:r\n\n", [("request", b"r", b":which:\n")]),
    (b":which:\n\n", [("request", b"", b":which:\n")]),
    (b":event_subscribe:r\nE_TEST\nudp:127.0.0.1:9\n60\n\n",
     [("request", b"r", b":event_subscribe:\nE_TEST\nudp:127.0.0.1:9\n60\n")]),
    (b":event_subscribe:\nE_TEST\r\nudp:1.2.3.4:5\r\n\r\n:r:" + WHICH,
     [("request", b"", b":event_subscribe:\nE_TEST\r\nudp:1.2.3.4:5\r\n"),
      ("request", b"r", WHICH)]),
    (b":events_list: r \n\n", [("request", b"r", b":events_list:\n")]),
])
def test_framing(data, expected):
    assert kinds(FIFOFraming(65536).feed(data)) == expected
    # the same, a byte at a time
    framing = FIFOFraming(65536)
    assert kinds(frame(framing, *[data[i:i + 1] for i in range(len(data))])) == expected
    assert not framing.pending


@pytest.mark.parametrize("name", [b"../x", b"a/b", b".hidden", b"a\\b", b"x.y"])
def test_a_reply_name_that_is_not_a_bare_file_name_is_refused(name):
    assert not reply_name_ok(name)
    assert kinds(FIFOFraming(65536).feed(b":" + name + b":" + WHICH + b":r:" + WHICH)) == [
        ("bad_reply_name", name, "json"), ("request", b"r", WHICH)]
    assert kinds(FIFOFraming(65536).feed(b":which:" + name + b"\n\n")) == [
        ("bad_reply_name", name, "text")]


def test_bytes_that_are_not_a_request_are_skipped_and_counted_once_per_run():
    found = FIFOFraming(65536).feed(b'{"jsonrpc":"2.0"} hello:a b:\n:r:' + WHICH
                                    + b"junk \x00\n:s:" + WHICH)
    assert kinds(found) == [("malformed", b"", None), ("request", b"r", WHICH),
                            ("malformed", b"", None), ("request", b"s", WHICH)]


def test_empty_input_and_white_space_hold_nothing():
    framing = FIFOFraming(65536)
    assert framing.feed(b"") == [] and framing.feed(b" \n\t\r\n") == []
    assert not framing.pending


def test_a_request_larger_than_the_limit_is_skipped_to_its_end():
    framing = FIFOFraming(1024)
    big = b':r:{"jsonrpc":"2.0","method":"raise_event","params":["E","' + b"x" * 3000 + b'"]}'
    found = frame(framing, *[big[i:i + 500] for i in range(0, len(big), 500)], b":s:" + WHICH)
    assert kinds(found) == [("too_large", b"r", "json"), ("request", b"s", WHICH)]
    assert len(framing._buf) == 0
    # whole in one read, and in the 1.x form (a long line, then the empty line)
    assert kinds(FIFOFraming(1024).feed(big + b":s:" + WHICH)) == [
        ("too_large", b"r", "json"), ("request", b"s", WHICH)]
    text = b":raise_event:r\nE\n" + b"y" * 3000 + b"\n\n"
    framing = FIFOFraming(1024)
    assert kinds(frame(framing, *[text[i:i + 100] for i in range(0, len(text), 100)],
                       b":which:s\n\n")) == [("too_large", b"r", "text"),
                                             ("request", b"s", b":which:\n")]
    assert len(framing._buf) < 200  # never held


def test_a_half_request_then_another_writer_s_request():
    framing = FIFOFraming(65536)
    assert framing.feed(b':r1:{"jsonrpc":"2.0","method":"wh') == []
    assert framing.feed(b":r2:" + WHICH) == []  # taken for the rest of the first
    assert framing.pending
    assert kinds(framing.stall()) == [("truncated", b"r1", "json"), ("request", b"r2", WHICH)]
    assert not framing.pending


@pytest.mark.parametrize("data, expected", [
    (b":opensips_fifo_re", [("truncated", b"", None)]),
    (b":which:r\n", [("truncated", b"r", "text")]),  # 1.x without its empty line
    (b":r:" + WHICH[:-1], [("truncated", b"r", "json")]),
])
def test_a_request_cut_short(data, expected):
    framing = FIFOFraming(65536)
    assert framing.feed(data) == []
    assert kinds(framing.stall()) == expected
    assert not framing.pending


def test_a_name_longer_than_a_file_name_is_not_a_request():
    framing = FIFOFraming(65536)
    assert kinds(framing.feed(b":" + b"n" * 300 + b":" + WHICH)) == [("malformed", b"", None)]


# -- protocol, replies and the FIFO file, with real FIFOs ------------------------------------


class ReplyFIFO:
    """
    A client's reply FIFO, held open for reading (non-blocking) unless
    C{reading} is false.
    """

    def __init__(self, directory: Path, name="reply", reading=True):
        self.path = directory / name
        os.mkfifo(self.path, 0o666)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK) if reading else -1
        self.data = b""

    def open(self):
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)

    def read(self) -> bytes:
        try:
            self.data += os.read(self.fd, 1 << 20)
        except BlockingIOError:
            pass
        return self.data

    @inlineCallbacks
    def lines(self, count=1, timeout=5.0):
        """
        The next C{count} reply lines (each ending in a newline).
        """
        yield until(lambda: self.read().count(b"\n") >= count, timeout)
        parts = self.data.split(b"\n")
        self.data = b"\n".join(parts[count:])
        return [part + b"\n" for part in parts[:count]]

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@pytest.fixture
def reply_fifos(tmpdir_short):
    made = []

    def make(name="reply", reading=True):
        fifo = ReplyFIFO(tmpdir_short, name, reading)
        made.append(fifo)
        return fifo
    yield make
    for fifo in made:
        fifo.close()


def write(path, data: bytes):
    """
    One client's write into the server's FIFO (at most PIPE_BUF bytes: atomic).
    """
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


class Parts:
    """
    A dispatcher on a memory event interface, FIFO replies and one FIFO
    listener at C{path}, on C{clock} (a L{Clock}) for every timer.
    """

    def __init__(self, directory: Path, clock, **protocol_args):
        self.statistics = Statistics()
        self.evi, _, self.transport = memory_evi("E_TEST", clock=clock,
                                                 statistics=self.statistics)
        controller = MIController(self.statistics, clock)
        for command in EVICommands(self.evi).commands():
            controller.register(command)
        for command in CoreCommands(controller, self.statistics, clock).commands():
            controller.register(command)
        self.dispatcher = MIDispatcher(controller, None)
        self.replies = FIFOReplies(reactor, directory, self.statistics, clock=clock)
        self.protocol = MIFIFOProtocol(self.dispatcher, clock, "fifo:test", self.replies,
                                       protocol_args.pop("max_request", 65536), **protocol_args)
        self.path = directory / "fifo"
        self.listener = MIFIFOListener(reactor, self.path, self.protocol, self.statistics,
                                       clock=clock)

    def stat(self, name):
        return self.statistics.get([f"mi:{name}"])[f"mi:{name}"]

    def close(self):
        self.listener.stopListening()
        self.replies.stopListening()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def parts(tmpdir_short, clock):
    made = []

    def make(listen=True, **protocol_args):
        p = Parts(tmpdir_short, clock, **protocol_args)
        if listen:
            p.listener.listen()
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


@pytest_twisted.inlineCallbacks
def test_a_request_is_answered_on_its_reply_fifo(parts, reply_fifos):
    p = parts()
    mode = os.stat(p.path).st_mode
    assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o660
    reply = reply_fifos()
    write(p.path, b":reply:" + SUBSCRIBE)
    assert (yield reply.lines()) == [b'{"jsonrpc":"2.0","result":"OK","id":1}\n']
    assert [s.socket for s in p.evi.subscribers(p.evi.event("E_TEST"))] == ["test:x"]
    # spec §8 vectors 21 and 32, over the FIFO: the bytes of the datagram MI and a newline
    write(p.path, b':reply:{"jsonrpc":"2.0","method":"event_subscribe",'
                  b'"params":["E_TEST"],"id":3}\n:reply:{hello}')
    assert (yield reply.lines(2)) == [
        b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params",'
        b'"data":"Too few or too many parameters"},"id":3}\n', b"400 Parse_error\n"]
    assert p.stat("fifo_requests") == 3 and p.stat("fifo_replies_failed") == 0


@pytest_twisted.inlineCallbacks
def test_1x_text_requests_get_1x_fifo_replies(parts, reply_fifos):
    p = parts()
    reply = reply_fifos()
    write(p.path, b":event_subscribe:reply\nE_TEST\ntest:x\n60\n\n")
    write(p.path, b":no_such:reply\n\n")
    write(p.path, b":events_list:reply\n\n")
    data = yield until(lambda: reply.read().count(b"\n\n") >= 3)
    assert data and reply.data == (
        b"200 OK\n\n"
        b"500 command 'no_such' not available\n\n"
        b"200 OK\nEvent:: E_TEST id=0\n\n")
    assert p.evi.has_subscribers("E_TEST")


@pytest_twisted.inlineCallbacks
def test_no_reply_fifo_and_notifications_run_and_answer_nothing(parts, reply_fifos):
    p = parts()
    reply = reply_fifos()
    write(p.path, b"::" + SUBSCRIBE)
    write(p.path, b':reply:{"jsonrpc":"2.0","method":"raise_event","params":["E_TEST"]}')
    write(p.path, b":reply:" + WHICH)  # answered: the two before were not
    (line,) = yield reply.lines()
    assert json.loads(line)["id"] == 1
    assert [(event, socket) for event, _, socket in p.transport.delivered] == [
        ("E_TEST", "test:x")]
    assert p.stat("fifo_requests") == 3


@pytest_twisted.inlineCallbacks
def test_opening_and_closing_the_fifo_without_writing_is_nothing(parts, reply_fifos):
    p = parts()
    for _ in range(20):  # opensips-cli does it before every command
        os.close(os.open(p.path, os.O_WRONLY | os.O_NONBLOCK))
    reply = reply_fifos()
    write(p.path, b":reply:" + WHICH)
    yield reply.lines()
    assert p.stat("fifo_requests") == 1
    assert p.stat("fifo_requests_malformed") == p.stat("fifo_requests_truncated") == 0
    assert p.listener in reactor.getReaders()


@pytest_twisted.inlineCallbacks
def test_concurrent_writers_each_get_their_own_reply(parts, reply_fifos):
    p = parts()
    clients = [reply_fifos(f"r{n}") for n in range(20)]
    requests = [b':r%d:{"jsonrpc":"2.0","method":"which","id":%d}' % (n, n) for n in range(20)]
    # 20 writers at once, each request in one write (atomic below PIPE_BUF)
    fds = [os.open(p.path, os.O_WRONLY | os.O_NONBLOCK) for _ in requests]
    barrier = threading.Barrier(len(fds))

    def client(fd, request):
        barrier.wait()
        os.write(fd, request)
        os.close(fd)
    threads = [threading.Thread(target=client, args=pair) for pair in zip(fds, requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, fifo in enumerate(clients):
        (line,) = yield fifo.lines()
        assert json.loads(line)["id"] == n
    assert p.stat("fifo_requests") == 20


@pytest_twisted.inlineCallbacks
def test_a_writer_that_goes_away_half_way(parts, reply_fifos, clock):
    p = parts()
    first, second = reply_fifos("first"), reply_fifos("second")
    write(p.path, b':first:{"jsonrpc":"2.0","method":"wh')
    write(p.path, b":second:" + WHICH)
    yield until(lambda: b":second:" in p.protocol.framing._buf)
    assert second.read() == b""
    clock.advance(2.0)  # no byte for 2 s: the first is dropped, the second found
    (line,) = yield second.lines()
    assert json.loads(line)["result"]
    (line,) = yield first.lines()
    assert json.loads(line) == {"jsonrpc": "2.0", "error": {
        "code": 400, "message": "Incomplete request",
        "data": "no byte for 2 s before its end"}, "id": None}
    assert p.stat("fifo_requests_truncated") == 1 and p.stat("fifo_requests") == 1
    assert not p.protocol.framing.pending


@pytest_twisted.inlineCallbacks
def test_a_request_larger_than_the_limit(parts, reply_fifos):
    p = parts(max_request=1024)
    big, small = reply_fifos("big"), reply_fifos("small")
    request = b':big:{"jsonrpc":"2.0","method":"raise_event","params":["E_TEST","' \
        + b"x" * 3000 + b'"],"id":7}'
    assert len(request) < PIPE_BUF
    write(p.path, request + b":small:" + WHICH)
    (line,) = yield big.lines()
    assert line == (b'{"jsonrpc":"2.0","error":{"code":413,"message":"Request too large",'
                    b'"data":"more than 1024 bytes ([mi] fifo_max_request)"},"id":null}\n')
    (line,) = yield small.lines()
    assert json.loads(line)["id"] == 1
    assert p.stat("fifo_requests_too_large") == 1 and p.stat("fifo_requests") == 1


@pytest_twisted.inlineCallbacks
def test_a_bad_reply_name_is_refused_and_nothing_is_written(parts, reply_fifos, tmpdir_short):
    p = parts()
    outside = tmpdir_short / "sub"
    outside.mkdir()
    os.mkfifo(outside / "x")
    reply = reply_fifos()
    write(p.path, b":sub/x:" + SUBSCRIBE + b":../reply:" + SUBSCRIBE + b":reply:" + WHICH)
    yield reply.lines()
    assert p.stat("fifo_bad_reply_names") == 2
    assert not p.evi.has_subscribers("E_TEST")  # not run
    os.unlink(outside / "x")


@pytest_twisted.inlineCallbacks
def test_a_reply_fifo_nobody_opens_does_not_block(parts, reply_fifos, clock):
    p = parts()
    waiting = reply_fifos("nobody", reading=False)
    write(p.path, b":nobody:" + WHICH)
    yield until(lambda: p.replies.pending == 1)
    # meanwhile the server answers others
    other = reply_fifos("other")
    write(p.path, b":other:" + WHICH)
    yield other.lines()
    for _ in range(REPLY_OPEN_RETRIES):
        clock.advance(REPLY_OPEN_DELAY)
    assert p.replies.pending == 0 and p.stat("fifo_replies_failed") == 1
    # one that opens its FIFO late, within the retries, is answered
    write(p.path, b":nobody:" + WHICH)
    yield until(lambda: p.replies.pending == 1)
    clock.advance(REPLY_OPEN_DELAY * 3)
    waiting.open()
    clock.advance(REPLY_OPEN_DELAY)
    (line,) = yield waiting.lines()
    assert json.loads(line)["id"] == 1
    assert p.stat("fifo_replies_failed") == 1


@pytest.mark.parametrize("kind", ["file", "symlink", "missing"])
@pytest_twisted.inlineCallbacks
def test_a_reply_name_that_is_not_a_fifo_is_never_written(parts, tmpdir_short, clock, kind):
    p = parts()
    target = tmpdir_short / "precious"
    target.write_bytes(b"keep me")
    if kind == "file":
        os.link(target, tmpdir_short / "reply")
    elif kind == "symlink":
        os.symlink(target, tmpdir_short / "reply")
    write(p.path, b":reply:" + WHICH)
    yield until(lambda: p.stat("fifo_requests") == 1)
    for _ in range(REPLY_OPEN_RETRIES + 1):
        clock.advance(REPLY_OPEN_DELAY)
    yield until(lambda: p.stat("fifo_replies_failed") == 1)
    assert target.read_bytes() == b"keep me"


@pytest_twisted.inlineCallbacks
def test_a_client_that_does_not_read_its_whole_reply(parts, reply_fifos, clock):
    p = parts()
    reply = reply_fifos()
    # a reply larger than the pipe holds: written as the client reads
    for n in range(6000):
        yield p.evi.subscribe("E_TEST", f"test:destination-{n:06}", 600)
    write(p.path, b':reply:{"jsonrpc":"2.0","method":"subscribers_list","id":1}')
    yield until(lambda: p.replies.pending == 1 and reply.read())
    (line,) = yield reply.lines()
    assert len(line) > 4 * 65536  # four times what the pipe holds
    assert len(json.loads(line)["result"]["Events"][0]["Subscribers"]) == 6000
    # and one that stops reading
    write(p.path, b':reply:{"jsonrpc":"2.0","method":"subscribers_list","id":2}')
    yield until(lambda: p.replies.pending == 1 and reply.read())
    clock.advance(10.0)
    assert p.replies.pending == 0 and p.stat("fifo_replies_failed") == 1


@pytest_twisted.inlineCallbacks
def test_the_fifo_deleted_under_a_running_server_is_made_again(parts, reply_fifos, clock):
    p = parts()
    os.unlink(p.path)
    clock.advance(5.0)
    assert stat.S_ISFIFO(os.stat(p.path).st_mode)
    assert p.stat("fifo_recreated") == 1
    reply = reply_fifos()
    write(p.path, b":reply:" + WHICH)
    yield reply.lines()


def test_a_fifo_replaced_by_another_file_is_left_alone(parts, clock, tmpdir_short):
    p = parts()
    os.unlink(p.path)
    p.path.write_text("someone else's")
    clock.advance(5.0)
    assert not p.listener.connected and p.listener not in reactor.getReaders()
    clock.advance(5.0)  # logged once, checked again
    p.close()
    assert p.path.read_text() == "someone else's"  # not removed on stop either
    p.path.unlink()
    clock.advance(5.0)  # stopped: nothing runs any more
    assert not p.path.exists()


def test_stop_removes_the_fifo_file(parts):
    p = parts()
    p.close()
    assert not p.path.exists() and p.listener not in reactor.getReaders()


@pytest.mark.parametrize("what, message", [
    ("file", "it exists and is a regular file; it is left alone"),
    ("directory", "it exists and is a directory; it is left alone"),
    ("symlink", "it exists and is a symbolic link; it is left alone"),
    ("read", "another process reads it (an OpenSIPS, another evsrv?); it is left alone"),
    ("other user", "it belongs to user nobody; it is left alone"),
])
def test_a_taken_path_is_refused_and_left_alone(parts, tmpdir_short, what, message):
    p = parts(listen=False)
    holder = -1
    if what == "file":
        p.path.write_text("x")
    elif what == "directory":
        p.path.mkdir()
    elif what == "symlink":
        os.symlink(tmpdir_short / "elsewhere", p.path)
    else:
        os.mkfifo(p.path)
        if what == "read":
            holder = os.open(p.path, os.O_RDONLY | os.O_NONBLOCK)
        elif os.geteuid() == 0:
            os.chown(p.path, 65534, 65534)
        else:
            pytest.skip("needs root to make a FIFO of another user")
    before = os.lstat(p.path)
    try:
        with pytest.raises(FIFOError) as e:
            p.listener.listen()
        assert str(e.value) == f"cannot use the MI FIFO {p.path}: {message}"
        after = os.lstat(p.path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
        assert p.listener not in reactor.getReaders()
    finally:
        if holder >= 0:
            os.close(holder)


def test_a_stale_fifo_of_ours_is_taken_over(parts):
    p = parts(listen=False)
    os.mkfifo(p.path, 0o600)
    inode = os.stat(p.path).st_ino
    p.listener.listen()
    st = os.stat(p.path)
    assert st.st_ino == inode and stat.S_IMODE(st.st_mode) == 0o660


def test_a_second_server_on_the_same_fifo_is_refused(parts):
    p, q = parts(), parts(listen=False)
    with pytest.raises(FIFOError, match="another process reads it"):
        q.listener.listen()
    assert p.listener.connected and p.path.exists()


# -- a server in the test's reactor ----------------------------------------------------------------


def mi_ini(lines, text=BASE_INI):
    """
    C{text} with C{lines} added to its C{[mi]} section.
    """
    return text.replace("[mi]\n", "[mi]\n" + lines, 1)


FIFO_INI = mi_ini("fifo = fifo, fifo2\nfifo_reply_dir = .\n")


def test_the_embedded_default_listens_where_the_clients_look():
    config = read_config(None, transport_factories())
    assert config.mi.fifo == [Path("/tmp/opensips_fifo")]
    assert config.mi.fifo_taken == "skip" and config.mi.fifo_reply_dir == Path("/tmp")
    assert config.mi.fifo_mode == 0o660


def test_fifo_settings(tmpdir_short):
    config = make_config(mi_ini("fifo_mode = 0600\nfifo_max_request = 2048\n", FIFO_INI),
                         tmpdir_short)
    assert config.mi.fifo == [tmpdir_short / "fifo", tmpdir_short / "fifo2"]
    assert config.mi.fifo_reply_dir == tmpdir_short
    assert (config.mi.fifo_mode, config.mi.fifo_max_request) == (0o600, 2048)
    assert make_config(BASE_INI, tmpdir_short).mi.fifo == []
    for extra, message in (("fifo = nodir/fifo\n", "directory .* does not exist"),
                           ("fifo = a, a\n", "listed twice"),
                           ("fifo = a\nfifo_reply_dir = nodir\n", "does not exist"),
                           ("fifo_taken = maybe\n", "must be one of fail, skip"),
                           ("fifo_max_request = 10\n", "between 1024")):
        with pytest.raises(ConfigError, match=message):
            make_config(mi_ini(extra), tmpdir_short)


@pytest_twisted.inlineCallbacks
def test_server_answers_on_every_fifo_and_removes_them_at_stop(server_factory, tmpdir_short,
                                                              reply_fifos, udp_collector):
    server = server_factory(FIFO_INI)
    assert [f.path for f in server.fifo_listeners] == [str(tmpdir_short / "fifo"),
                                                       str(tmpdir_short / "fifo2")]
    reply = reply_fifos()
    for fifo in ("fifo", "fifo2"):
        write(tmpdir_short / fifo, b':reply:{"jsonrpc":"2.0","method":"events_list","id":8}')
        (line,) = yield reply.lines()
        # byte for byte the datagram MI's reply, and a newline
        client = udp_collector()
        datagram, _ = yield client.request(b'{"jsonrpc":"2.0","method":"events_list","id":8}',
                                           server.mi_udp_address())
        assert line == datagram + b"\n"
    stats = server.statistics.get(["mi:"])
    assert stats["mi:fifo_requests"] == 2 and stats["mi:fifo_replies_failed"] == 0
    yield server.close_mi()
    assert not (tmpdir_short / "fifo").exists() and not (tmpdir_short / "fifo2").exists()


@pytest_twisted.inlineCallbacks
def test_which_lists_the_recipes_of_a_command(server_factory, tmpdir_short, reply_fifos):
    server_factory(FIFO_INI)
    reply = reply_fifos()
    for params in (b'{"command":"event_subscribe"}', b'{"command":"evi:subscribe"}',
                   b'["events_list"]', b'{"command":"nope"}', b'{"cmd":"x"}'):
        write(tmpdir_short / "fifo",
              b':reply:{"jsonrpc":"2.0","method":"which","params":' + params + b',"id":1}')
    assert (yield reply.lines(5)) == [
        b'{"jsonrpc":"2.0","result":[["event","socket"],["event","socket","expire"]],"id":1}\n',
        b'{"jsonrpc":"2.0","result":[["event","socket"],["event","socket","expire"]],"id":1}\n',
        b'{"jsonrpc":"2.0","result":[[]],"id":1}\n',
        b'{"jsonrpc":"2.0","error":{"code":404,"message":"unknown MI command"},"id":1}\n',
        b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params",'
        b'"data":"Named parameters do not match"},"id":1}\n']
    # which still lists both name styles; 1.x which takes no input
    write(tmpdir_short / "fifo", b":reply:" + WHICH + b":which:reply\nignored\n\n")
    (line,) = yield reply.lines()
    names = json.loads(line)["result"]
    assert {"event_subscribe", "evi:subscribe", "subscribers_list", "evi:subscribers"} <= set(names)
    yield until(lambda: reply.read().endswith(b"\n\n"))
    assert reply.data.startswith(b"200 OK\n:: event_subscribe\n")


def test_a_taken_fifo_stops_start_up_with_one_line(tmpdir_short):
    (tmpdir_short / "fifo").write_text("not mine")
    ini = "[mi]\nfifo = fifo2, fifo\nfifo_reply_dir = .\n[store]\nbackend = none\n"
    service = EvsrvService(make_config(ini, tmpdir_short), reactor)
    with pytest.raises(ConfigError) as e:
        service.listen()
    assert str(e.value) == (f"<test>: [mi] fifo: cannot use the MI FIFO {tmpdir_short}/fifo: "
                            "it exists and is a regular file; it is left alone")
    assert service.mi_ports == [] and service.fifo_listeners == []
    assert (tmpdir_short / "fifo").read_text() == "not mine"
    assert not (tmpdir_short / "fifo2").exists()  # made, then removed: nothing left


@pytest_twisted.inlineCallbacks
def test_with_fifo_taken_skip_start_up_goes_on(server_factory, tmpdir_short):
    (tmpdir_short / "fifo").write_text("not mine")
    server = server_factory(mi_ini("fifo_taken = skip\n", FIFO_INI))
    assert [f.path for f in server.fifo_listeners] == [str(tmpdir_short / "fifo2")]
    yield server.close_mi()
    assert (tmpdir_short / "fifo").read_text() == "not mine"


# -- real processes: the official clients over the FIFO ----------------------------------------


def client_env(home: Path):
    """
    The clients' environment: no C{OPENSIPS_*} of ours, and a HOME of the
    test's (opensips-cli reads ~/.opensips-cli.cfg).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSIPS_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def run(argv, home, timeout=30):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, env=client_env(home), cwd=str(home))


def ok(result, proc):
    assert result.returncode == 0 and "ERROR" not in result.stdout + result.stderr, (
        f"argv: {result.args}\nrc: {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}\nserver log:\n{proc.log()}")
    return json.loads(result.stdout)


def exercise(cli, mi, proc, home):
    """
    The commands of issue 13 through opensips-cli (C{cli}: argv before
    C{-x}) and opensips-mi (C{mi}: argv before the command).
    """
    names = ok(run([*cli, "-x", "mi", "which"], home), proc)
    assert {"event_subscribe", "evi:subscribe", "raise_event"} <= set(names)
    assert ok(run([*cli, "-x", "mi", "which", "command=event_subscribe"], home), proc) == [
        ["event", "socket"], ["event", "socket", "expire"]]
    events = ok(run([*mi, "events_list"], home), proc)["Events"]
    assert "E_TEST" in [e["name"] for e in events]
    receiver = udp_receiver()
    try:
        host, port = receiver.getsockname()
        socket = f"udp:{host}:{port}"
        assert ok(run([*cli, "-x", "mi", "event_subscribe", "E_TEST", socket, "60"], home),
                  proc) == "OK"
        listed = ok(run([*mi, "subscribers_list", "E_TEST"], home), proc)["Event"]
        assert [s["socket"] for s in listed["Subscribers"]] == [socket]
        assert ok(run([*cli, "-x", "mi", "subscribers_list"], home), proc)["Events"][0][
            "Subscribers"][0]["socket"] == socket
        assert ok(run([*mi, "raise_event", "E_TEST", '{"ip":"1.2.3.4","n":5}'], home),
                  proc) == "OK"
        assert receiver.recv(65535) == (b'{"jsonrpc":"2.0","method":"E_TEST",'
                                        b'"params":{"ip":"1.2.3.4","n":5}}')
        assert ok(run([*cli, "-x", "mi", "raise_event", "E_TEST", "a", "b"], home),
                  proc) == "OK"
        assert receiver.recv(65535) == b'{"jsonrpc":"2.0","method":"E_TEST","params":["a","b"]}'
    finally:
        receiver.close()
    stats = ok(run([*mi, "-s", "mi:"], home), proc)
    assert stats["mi:fifo_requests"] >= 8 and stats["mi:fifo_replies_failed"] == 0
    assert stats["mi:fifo_requests_malformed"] == stats["mi:fifo_requests_truncated"] == 0
    stats = ok(run([*cli, "-x", "mi", "get_statistics", "mi:fifo_requests"], home), proc)
    assert list(stats) == ["mi:fifo_requests"]


@pytest.fixture
def clients():
    # installed by the [test] extra: missing means a broken environment
    for tool in (OPENSIPS_CLI, OPENSIPS_MI):
        assert tool.exists(), f"{tool} is missing: `make test` installs opensipscli and opensips"


@pytest.mark.slow
def test_official_clients_over_a_fifo_named_in_the_ini(server_process, tmpdir_short, clients):
    (tmpdir_short / "replies").mkdir()
    proc = server_process(mi_ini("fifo = mi.fifo\nfifo_reply_dir = replies\n")
                          + "[store]\nbackend = none\n")
    fifo, replies = tmpdir_short / "mi.fifo", tmpdir_short / "replies"
    assert f"MI listening on fifo:{fifo} (replies in {replies})" in proc.log()
    cfg = tmpdir_short / "cli.cfg"
    cfg.write_text(f"[default]\nfifo_file = {fifo}\nfifo_reply_dir = {replies}\n"
                   "output_type = pretty-print\n")
    exercise([OPENSIPS_CLI, "-f", cfg], [OPENSIPS_MI, "-t", "fifo", "-f", fifo, "-fd", replies],
             proc, tmpdir_short)
    # the same with -o, and clients at once (each request below PIPE_BUF)
    cli = [OPENSIPS_CLI, "-o", f"fifo_file={fifo}", "-o", f"fifo_reply_dir={replies}"]
    many = [subprocess.Popen([str(a) for a in [*cli, "-x", "mi", "uptime"]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=client_env(tmpdir_short)) for _ in range(8)]
    for client in many:
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0 and "Up time" in out, (out, err, proc.log())
    assert list(replies.iterdir()) == []  # every reply FIFO answered and removed
    assert proc.stop() == 0
    assert not fifo.exists()


@pytest.mark.slow
def test_the_embedded_default_fifo_with_no_client_options(server_process, tmpdir_short,
                                                          clients):
    # The embedded default's [mi] FIFO lines, as they are; its UDP, UNIX and
    # HTTP addresses moved aside (other tests and sessions use them).
    ini = DEFAULT_INI.replace("udp = 127.0.0.1:8080", "udp = 127.0.0.1:0")
    ini = ini.replace("unix = /tmp/evsrv_mi.sock", "unix = mi.sock")
    ini = ini.replace("listen = 127.0.0.1:8888", "listen = 127.0.0.1:0")
    assert "fifo = /tmp/opensips_fifo\nfifo_taken = skip\n" in ini
    proc = server_process(ini + "[events]\npublish = E_TEST\n[store]\nbackend = none\n")
    log = proc.log()
    if "MI FIFO /tmp/opensips_fifo skipped ([mi] fifo_taken = skip): cannot use the MI " \
       "FIFO /tmp/opensips_fifo: " in log:
        # taken by another program (another session's server): start-up went on
        assert "MI listening on fifo:/tmp/opensips_fifo" not in log
        assert os.path.exists("/tmp/opensips_fifo")
        return
    assert "MI listening on fifo:/tmp/opensips_fifo (replies in /tmp)" in log, log
    if os.path.exists("/var/run/opensips/opensips_fifo"):
        pytest.skip("an OpenSIPS FIFO at /var/run/opensips: the clients would use it")
    exercise([OPENSIPS_CLI], [OPENSIPS_MI], proc, tmpdir_short)
    inode = os.stat("/tmp/opensips_fifo").st_ino
    assert proc.stop() == 0
    # removed at stop, unless another server made its own there since
    assert not os.path.exists("/tmp/opensips_fifo") or \
        os.stat("/tmp/opensips_fifo").st_ino != inode
