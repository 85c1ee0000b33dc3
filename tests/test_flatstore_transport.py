"""
The flatstore: transport: line bytes, escaping, shared handles, rotation by
MI and SIGHUP (in process and in a real server process), write errors.
"""

import json
import os
import signal
import socket
import stat
import time

import pytest
import pytest_twisted
from hypothesis import given, settings, strategies as st
from twisted.internet import reactor, task
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher

from evsrv.encoding import flatstore_line
from evsrv.evi import EventInterface
from evsrv.evi.params import make_params
from evsrv.interfaces import BadSocket
from evsrv.util.statistics import Statistics
from evsrv.transports.flatstore import FlatstoreTransport, _delimiter, split_line
from tests.conftest import BASE_INI, udp_receiver
from tests.test_evi import result_of


# -- line bytes ------------------------------------------------------------------

def test_vector_37():
    params = make_params({"a": "x", "n": -3, "e": ""})
    assert flatstore_line("E_TEST", params) == b"E_TEST,x,-3,\n"


def test_no_params_suppress_event_name_and_delimiter():
    assert flatstore_line("E_TEST", ()) == b"E_TEST\n"
    params = make_params(["a", "b"])
    assert flatstore_line("E_TEST", params, ";", True) == b"a;b\n"
    assert flatstore_line("E_TEST", params, "\t") == b"E_TEST\ta\tb\n"


def test_escapes_are_documented_and_reversible():
    params = make_params(["a,b", "back\\slash", "two\nlines\r", "\\,", ""])
    line = flatstore_line("E,T", params)
    assert line == b"E\\,T,a\\,b,back\\\\slash,two\\nlines\\r,\\\\\\,,\n"
    assert line.count(b"\n") == 1
    assert split_line(line) == ["E,T", "a,b", "back\\slash", "two\nlines\r", "\\,", ""]


@pytest.mark.parametrize("value, written", [
    ("a\rb", b"a\\rb"), ("\r", b"\\r"), ("a\nb", b"a\\nb"), ("a\\b", b"a\\\\b"),
    ("a,b", b"a\\,b")])
def test_a_lone_special_character_is_escaped(value, written):
    # each special character alone is enough to escape the field
    line = flatstore_line("E_X", make_params([value]))
    assert line == b"E_X," + written + b"\n"
    assert split_line(line) == ["E_X", value]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(), st.integers(-2 ** 63, 2 ** 63 - 1))),
       st.sampled_from([",", ";", "|", "\t", " ", ":"]))
def test_escape_round_trip(values, delimiter):
    params = make_params([v if isinstance(v, str) else v for v in values]) if values else ()
    line = flatstore_line("E_X", params, delimiter)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert split_line(line, delimiter) == ["E_X", *[str(v) for v in values]]


@pytest.mark.parametrize("text, value", [(",", ","), ("tab", "\t"), ("\\t", "\t"),
                                         ("space", " "), ("|", "|")])
def test_delimiter_setting(text, value):
    assert _delimiter(text) == value


@pytest.mark.parametrize("text", ["", ",,", "a", "7", "\\", "n"])
def test_bad_delimiter_setting(text):
    with pytest.raises(ValueError):
        _delimiter(text)


# -- the transport on an in-memory event interface --------------------------------

class Fixture:
    def __init__(self, base_dir, **kw):
        self.clock = Clock()
        self.statistics = Statistics()
        self.flat = FlatstoreTransport("flatstore", self.statistics, self.clock, base_dir, **kw)
        self.evi = EventInterface(self.clock, {"flatstore": self.flat}, self.statistics)
        for name in ("E_TEST", "E_OTHER"):
            self.evi.publish(name)

    def subscribe(self, text, event="E_TEST"):
        return result_of(self.evi.subscribe(event, text))

    def stat(self, name):
        return self.statistics.value(f"evi_flatstore:{name}")


@pytest.fixture
def fx(tmp_path):
    fixture = Fixture(tmp_path)
    yield fixture
    fixture.flat.stopService()


def test_one_line_per_raise_and_relative_paths(fx, tmp_path):
    sub = fx.subscribe("flatstore:events.log")
    assert sub.socket == "flatstore:events.log"
    assert sub.address == str(tmp_path / "events.log")
    report = result_of(fx.evi.raise_event("E_TEST", {"a": "x", "n": -3, "e": ""}))
    assert report.delivered == 1
    result_of(fx.evi.raise_event("E_TEST"))
    assert (tmp_path / "events.log").read_bytes() == b"E_TEST,x,-3,\nE_TEST\n"
    assert sub.sent == 2
    assert (fx.stat("lines_written"), fx.stat("notifications_sent")) == (2, 2)


def test_default_file_mode_and_ini_mode(tmp_path):
    fx = Fixture(tmp_path)
    fx.subscribe(f"flatstore:{tmp_path}/a.log")
    result_of(fx.evi.raise_event("E_TEST"))
    assert stat.S_IMODE(os.stat(tmp_path / "a.log").st_mode) == 0o644
    fx.flat.stopService()
    fx = Fixture(tmp_path, file_mode=0o600)
    fx.subscribe(f"flatstore:{tmp_path}/b.log")
    result_of(fx.evi.raise_event("E_TEST"))
    assert stat.S_IMODE(os.stat(tmp_path / "b.log").st_mode) == 0o600
    fx.flat.stopService()


def test_subscriptions_to_one_path_share_one_handle(fx, tmp_path):
    fx.subscribe("flatstore:shared.log")
    fx.subscribe(f"flatstore:{tmp_path}/shared.log")  # another key, same file
    fx.subscribe("flatstore:./shared.log", "E_OTHER")
    assert fx.evi.store.size == 3
    result_of(fx.evi.raise_event("E_TEST", ["1"]))
    result_of(fx.evi.raise_event("E_OTHER", ["2"]))
    assert list(fx.flat.files) == [str(tmp_path / "shared.log")]
    assert fx.stat("open_files") == 1
    # one line per raise per file, even with two subscriptions naming it
    assert (tmp_path / "shared.log").read_bytes() == b"E_TEST,1\nE_OTHER,2\n"


def test_escaping_does_not_change_what_other_subscribers_receive(tmp_path):
    from evsrv.transports.datagram import UDPTransport
    statistics = Statistics()
    clock = Clock()
    udp = UDPTransport("udp", "json", statistics, reactor)
    flat = FlatstoreTransport("flatstore", statistics, clock, tmp_path)
    evi = EventInterface(clock, {"udp": udp, "flatstore": flat}, statistics)
    evi.publish("E_TEST")
    r = udp_receiver()
    try:
        result_of(evi.subscribe("E_TEST", "udp:127.0.0.1:%d" % r.getsockname()[1]))
        result_of(evi.subscribe("E_TEST", "flatstore:x.log"))
        result_of(evi.subscribe("E_TEST", "udp:127.0.0.1:%d" % r.getsockname()[1]))
        result_of(evi.raise_event("E_TEST", {"v": "a,b"}))
        assert r.recv(1000) == b'{"jsonrpc":"2.0","method":"E_TEST","params":{"v":"a,b"}}'
        assert (tmp_path / "x.log").read_bytes() == b"E_TEST,a\\,b\n"
    finally:
        r.close()
        udp.stopService()
        flat.stopService()


@pytest.mark.parametrize("rest, reason", [
    ("", "expected flatstore:PATH"),
    ("no-such-dir/x.log", "does not exist"),
    (".", "is a directory"),
    ("sub/", "is a directory"),
    ("a\0b", "expected flatstore:PATH"),
])
def test_bad_paths(fx, tmp_path, rest, reason):
    (tmp_path / "sub").mkdir()
    failure = result_of(fx.evi.subscribe("E_TEST", "flatstore:" + rest))
    assert failure.check(BadSocket) and reason in str(failure.value)


def test_fifo_is_refused_and_never_blocks(fx, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    failure = result_of(fx.evi.subscribe("E_TEST", "flatstore:fifo"))
    assert failure.check(BadSocket) and "not a regular file" in str(failure.value)
    # a FIFO put there after subscribing fails the write instead of blocking
    sub = fx.subscribe("flatstore:later")
    os.mkfifo(tmp_path / "later")
    report = result_of(fx.evi.raise_event("E_TEST"))
    assert report.failed == 1 and sub.last_error


def test_write_errors_are_counted_logged_once_and_retried(fx, tmp_path):
    (tmp_path / "d").mkdir()
    sub = fx.subscribe("flatstore:d/x.log")
    result_of(fx.evi.raise_event("E_TEST", ["1"]))
    fx.flat.rotate("d/x.log")  # closed: the next line reopens
    os.rename(tmp_path / "d", tmp_path / "gone")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for n in range(3):
            report = result_of(fx.evi.raise_event("E_TEST", [str(n)]))
            assert report.failed == 1
        assert sub.failed == 3 and sub.last_error == "No such file or directory"
        assert fx.stat("write_errors") == 3
        (tmp_path / "d").mkdir()
        assert result_of(fx.evi.raise_event("E_TEST", ["back"])).delivered == 1
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (tmp_path / "d" / "x.log").read_bytes() == b"E_TEST,back\n"
    path = str(tmp_path / "d" / "x.log")
    assert [formatEvent(e) for e in events if e.get("path") == path] == [
        f"flatstore: cannot write to {path}: No such file or directory (retried at every "
        "raise; logged once)",
        f"flatstore: writing to {path} again"]


def test_idle_files_are_closed_and_reopened(tmp_path):
    fx = Fixture(tmp_path, close_idle=10)
    fx.subscribe("flatstore:x.log")
    result_of(fx.evi.raise_event("E_TEST", ["1"]))
    assert len(fx.flat.files) == 1
    fx.clock.advance(10)
    result_of(fx.evi.raise_event("E_TEST", ["2"]))  # keeps it open
    fx.clock.advance(10)
    assert len(fx.flat.files) == 1
    fx.clock.advance(10)
    assert fx.flat.files == {} and not fx.clock.getDelayedCalls()
    result_of(fx.evi.raise_event("E_TEST", ["3"]))
    assert (tmp_path / "x.log").read_bytes() == b"E_TEST,1\nE_TEST,2\nE_TEST,3\n"
    fx.flat.stopService()
    assert fx.flat.files == {} and not fx.clock.getDelayedCalls()


def test_rotate_known_and_unknown_paths(fx, tmp_path):
    fx.subscribe("flatstore:x.log")
    assert not fx.flat.rotate("y.log")
    # known through its subscription even before the file is open
    fx.flat.events.bind(fx.evi)
    assert fx.flat.rotate("x.log")
    result_of(fx.evi.raise_event("E_TEST", ["1"]))
    os.rename(tmp_path / "x.log", tmp_path / "x.log.1")
    result_of(fx.evi.raise_event("E_TEST", ["2"]))  # still the renamed file
    assert fx.flat.rotate(str(tmp_path / "x.log"))
    result_of(fx.evi.raise_event("E_TEST", ["3"]))
    assert (tmp_path / "x.log.1").read_bytes() == b"E_TEST,1\nE_TEST,2\n"
    assert (tmp_path / "x.log").read_bytes() == b"E_TEST,3\n"
    assert fx.stat("rotations") == 2


# -- through a real server ----------------------------------------------------------

FLAT_INI = BASE_INI + """\
[transport:flatstore]
delimiter = %s
suppress_event_name = %s
"""


def mi_call(server, method, *params):
    request = {"jsonrpc": "2.0", "method": method, "id": 1, "params": list(params)}
    reply = json.loads(result_of(server.dispatcher.handle(json.dumps(request).encode())))
    return reply.get("result", reply.get("error"))


def test_server_ini_settings_and_mi_rotate(server_factory, tmpdir_short):
    server = server_factory(FLAT_INI % ("|", "yes"))
    assert mi_call(server, "event_subscribe", "E_TEST", "flatstore:ev.log", 60) == "OK"
    assert mi_call(server, "subscribers_list", "E_TEST")["Event"]["Subscribers"][0][
        "socket"] == "flatstore:ev.log"
    assert mi_call(server, "raise_event", "E_TEST", '{"a":"x|y","n":5}') == "OK"
    path = tmpdir_short / "ev.log"
    assert path.read_bytes() == b"x\\|y|5\n"
    os.rename(path, tmpdir_short / "ev.log.1")
    assert mi_call(server, "evi_flat_rotate", "ev.log") == "OK"
    assert mi_call(server, "event_flatstore:rotate", str(path)) == "OK"
    assert mi_call(server, "evi_flat_rotate", "nope.log") == {"code": 400,
                                                               "message": "File not found"}
    assert result_of(server.dispatcher.handle(b":evi_flat_rotate:\nnope.log\n")) == (
        b"400 File not found\n")
    assert mi_call(server, "raise_event", "E_TEST", ["z"]) == "OK"
    assert path.read_bytes() == b"z\n"
    stats = mi_call(server, "get_statistics", ["evi_flatstore:"])
    assert stats["evi_flatstore:lines_written"] == 2
    assert stats["evi_flatstore:rotations"] == 2
    assert stats["evi_flatstore:open_files"] == 1


@pytest_twisted.inlineCallbacks
def test_sighup_reopens_and_handler_is_restored(server_factory, tmpdir_short):
    before = signal.getsignal(signal.SIGHUP)
    server = server_factory(FLAT_INI % (",", "no"))
    assert signal.getsignal(signal.SIGHUP) != before
    assert mi_call(server, "event_subscribe", "E_TEST", "flatstore:ev.log", 60) == "OK"
    assert mi_call(server, "raise_event", "E_TEST", ["1"]) == "OK"
    os.rename(tmpdir_short / "ev.log", tmpdir_short / "ev.log.1")
    os.kill(os.getpid(), signal.SIGHUP)
    flat = server.transports["flatstore"]
    deadline = time.monotonic() + 5
    while flat.files and time.monotonic() < deadline:  # closed on the next reactor turn
        yield deferLater(reactor, 0.01, lambda: None)
    assert not flat.files
    assert mi_call(server, "raise_event", "E_TEST", ["2"]) == "OK"
    assert (tmpdir_short / "ev.log.1").read_bytes() == b"E_TEST,1\n"
    assert (tmpdir_short / "ev.log").read_bytes() == b"E_TEST,2\n"
    yield server.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


def check_complete(files, total):
    """
    Every line of every file is whole, and the sequence numbers 0..total-1
    each appear exactly once across the files.
    """
    seen = []
    for path in files:
        if not path.exists():
            continue  # nothing written since the last rotation
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{path}: last line cut"
        for line in data.splitlines():
            fields = split_line(line)
            assert fields[0] == "E_TEST" and len(fields) == 3, line
            assert fields[2] == "x" * 40 + ",pad", line
            seen.append(int(fields[1]))
    assert sorted(seen) == list(range(total))


@pytest_twisted.inlineCallbacks
def test_rotation_under_load_loses_and_splits_no_line(server_factory, tmpdir_short):
    """
    A writer raises continuously (200 per reactor turn) while the test
    renames the file and rotates by MI and by SIGHUP several times.
    """
    server = server_factory(FLAT_INI % (",", "no"))
    assert mi_call(server, "event_subscribe", "E_TEST", "flatstore:load.log", 60) == "OK"
    raised = [0]
    running = [True]

    def writer():
        while running[0]:
            for _ in range(200):
                server.evi.raise_event("E_TEST", [str(raised[0]), "x" * 40 + ",pad"])
                raised[0] += 1
            yield None
    work = task.cooperate(writer())
    path = tmpdir_short / "load.log"
    rotated = []
    for n in range(6):
        yield deferLater(reactor, 0.02, lambda: None)
        target = tmpdir_short / f"load.log.{n}"
        os.rename(path, target)
        rotated.append(target)
        if n % 2:
            os.kill(os.getpid(), signal.SIGHUP)
        else:
            assert mi_call(server, "evi_flat_rotate", "load.log") == "OK"
    yield deferLater(reactor, 0.02, lambda: None)
    running[0] = False
    yield work.whenDone()
    assert raised[0] > 1000
    check_complete(rotated + [path], raised[0])
    assert all(p.stat().st_size > 0 for p in rotated[1:])


def test_rotation_in_a_real_server_process(server_process, tmpdir_short):
    """
    The real server process: MI raise_event pipelined over UDP (32 in
    flight), renames with SIGHUP and MI evi_flat_rotate in between. Every
    raise answered "OK" is in exactly one file, whole.
    """
    ini = BASE_INI.replace("unix = mi.sock\n", "")
    proc = server_process(ini)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(5)

    def call(method, params, request_id=0, wait=True):
        client.sendto(json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                                  "id": request_id}).encode(), proc.udp)
        if wait:
            return json.loads(client.recv(65536))

    try:
        assert call("event_subscribe", ["E_TEST", "flatstore:p.log", 120])["result"] == "OK"
        path = tmpdir_short / "p.log"
        rotated = []
        answered = 0
        total = 0
        for round_ in range(5):
            for _ in range(10):
                for _ in range(32):
                    call("raise_event", ["E_TEST", [str(total), "x" * 40 + ",pad"]], total,
                         wait=False)
                    total += 1
                for _ in range(32):
                    reply = json.loads(client.recv(65536))
                    assert reply["result"] == "OK"
                    answered += 1
            target = tmpdir_short / f"p.log.{round_}"
            os.rename(path, target)
            rotated.append(target)
            if round_ % 2:
                proc.process.send_signal(signal.SIGHUP)
            else:
                assert call("evi_flat_rotate", ["p.log"], -1)["result"] == "OK"
        # the last SIGHUP is handled before this answer (one reactor thread)
        assert call("get_statistics", [["evi_flatstore:"]], -2)["result"][
            "evi_flatstore:lines_written"] == total
        assert answered == total
        check_complete(rotated + [path], total)
    finally:
        client.close()
    assert "Traceback" not in proc.log()


@pytest_twisted.inlineCallbacks
def test_two_servers_in_one_process_share_the_sighup_handler(server_factory, tmpdir_short):
    before = signal.getsignal(signal.SIGHUP)
    first = server_factory(FLAT_INI % (",", "no"))
    second = server_factory(FLAT_INI.replace("udp = 127.0.0.1:0\nunix = mi.sock\n",
                                             "udp = 127.0.0.1:0\n") % (",", "no"))
    for server, name in ((first, "one.log"), (second, "two.log")):
        assert mi_call(server, "event_subscribe", "E_TEST", f"flatstore:{name}", 60) == "OK"
        assert mi_call(server, "raise_event", "E_TEST", ["1"]) == "OK"
    os.kill(os.getpid(), signal.SIGHUP)
    yield wait_closed(first, second)
    yield first.stopService()
    assert signal.getsignal(signal.SIGHUP) != before  # the second still runs
    yield second.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


@pytest_twisted.inlineCallbacks
def wait_closed(*servers):
    deadline = time.monotonic() + 5
    while any(s.transports["flatstore"].files for s in servers):
        assert time.monotonic() < deadline, "SIGHUP did not close the files"
        yield deferLater(reactor, 0.01, lambda: None)
