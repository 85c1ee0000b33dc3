"""
Subscriptions that survive restarts: the SQLite file, the group-commit
journal, restoring at start-up, and a real process killed with SIGKILL.
"""

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from evsrv.evi import Limits
from evsrv.persistence import StoreError, StoreWriteError, SubscriptionDatabase, \
    SubscriptionJournal
from evsrv.util.statistics import Statistics
from evsrv.testing import memory_evi
from tests.conftest import BASE_INI, ROOT

STORE_INI = BASE_INI + """\
[store]
directory = state
"""


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire synchronously"
    return out[0]


def rows(path):
    with sqlite3.connect(str(path)) as db:
        return db.execute("SELECT event, destination, socket, expire, subscribed_at "
                          "FROM subscriptions ORDER BY event, destination").fetchall()


class ManualRunner:
    """
    Runs the journal's database calls when the test says so, to see what
    waits for what.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        d = Deferred()
        self.calls.append((f, args, d))
        return d

    def run_next(self):
        f, args, d = self.calls.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)


def sync_runner(f, *args):
    return maybeDeferred(f, *args)


# -- the file ------------------------------------------------------------------------


def test_database_keeps_the_first_socket_text_and_the_latest_times(tmp_path):
    db = SubscriptionDatabase(tmp_path / "var" / "s.sqlite")
    db.write([("E_A", "rabbitmq:u@h/x", "rabbitmq:u:secret@h/x", 60, 100.0)], [])
    db.write([("E_A", "rabbitmq:u@h/x", "rabbitmq:u:other@h/x", 30, 200.0),
              ("E_B", "udp:127.0.0.1:9", "udp:127.0.0.1:9", 10, 200.0)], [])
    assert rows(db.path) == [("E_A", "rabbitmq:u@h/x", "rabbitmq:u:secret@h/x", 30, 200.0),
                             ("E_B", "udp:127.0.0.1:9", "udp:127.0.0.1:9", 10, 200.0)]
    db.write([], [("E_B", "udp:127.0.0.1:9")])
    assert [r.event for r in db.load()] == ["E_A"]
    db.close()


def test_database_purges_rows_past_their_deadline(tmp_path):
    db = SubscriptionDatabase(tmp_path / "s.sqlite")
    db.write([("E_A", "udp:127.0.0.1:1", "udp:127.0.0.1:1", 10, 100.0),
              ("E_A", "udp:127.0.0.1:2", "udp:127.0.0.1:2", 50, 100.0)], [])
    db.write([], [], expired_before=120.0)
    assert [r.destination for r in db.load()] == ["udp:127.0.0.1:2"]
    db.close()


def test_database_file_is_private(tmp_path):
    # a socket may carry a broker password
    db = SubscriptionDatabase(tmp_path / "state" / "s.sqlite")
    db.close()
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "s.sqlite").st_mode) == 0o600


@pytest.mark.parametrize("content, reason", [
    (b"this is not a database, just some text" * 100, "file is not a database"),
    (None, "not an evsrv subscription store"),
])
def test_database_refuses_a_file_it_cannot_trust(tmp_path, content, reason):
    path = tmp_path / "s.sqlite"
    if content is None:
        with sqlite3.connect(str(path)) as other:
            other.execute("CREATE TABLE something_else (x)")
    else:
        path.write_bytes(content)
    with pytest.raises(StoreError) as e:
        SubscriptionDatabase(path)
    assert str(path) in str(e.value) and reason in str(e.value)


# -- the journal -------------------------------------------------------------------


def make_journal(tmp_path, run=sync_runner, batch_delay=0.01):
    clock = Clock()
    clock.advance(1000)
    db = SubscriptionDatabase(tmp_path / "s.sqlite")
    statistics = Statistics()
    return SubscriptionJournal(db, clock, statistics, batch_delay, run=run), clock, statistics


def test_changes_within_the_batch_delay_share_one_write(tmp_path):
    journal, clock, statistics = make_journal(tmp_path)
    acks = []
    for n in range(100):
        journal.put("E_A", f"udp:127.0.0.1:{n}", f"udp:127.0.0.1:{n}", 10, 1000.0) \
            .addCallback(acks.append)
    assert acks == []  # not durable yet: not answered
    clock.advance(0.01)
    assert len(acks) == 100
    assert journal.writes.value == 1 and journal.rows_written.value == 100
    assert len(rows(tmp_path / "s.sqlite")) == 100
    result_of(journal.close())


def test_changes_during_a_write_wait_for_the_next_one(tmp_path):
    runner = ManualRunner()
    journal, clock, _ = make_journal(tmp_path, runner)
    first = journal.put("E_A", "udp:127.0.0.1:1", "udp:127.0.0.1:1", 10, 1000.0)
    clock.advance(0.01)
    assert len(runner.calls) == 1
    second = journal.put("E_A", "udp:127.0.0.1:2", "udp:127.0.0.1:2", 10, 1000.0)
    # the same subscription changed twice: only the last change is written
    third = journal.delete("E_A", "udp:127.0.0.1:2")
    clock.advance(1)
    assert len(runner.calls) == 1  # one transaction at a time
    runner.run_next()
    assert result_of(first) is None
    assert not second.called
    assert len(runner.calls) == 1  # the next batch started at once
    _, (puts, deletes, _), _ = runner.calls[0]
    assert puts == [] and deletes == [("E_A", "udp:127.0.0.1:2")]
    runner.run_next()
    assert second.called and third.called
    closed = journal.close()
    runner.run_next()
    result_of(closed)


class FailingDatabase(SubscriptionDatabase):
    failing = True

    def write(self, *args):
        if self.failing:
            raise sqlite3.OperationalError("disk I/O error")
        return super().write(*args)


def test_a_failed_write_fails_its_requests_and_the_next_batch_tries_again(
        tmp_path, logged_errors):
    clock = Clock()
    db = FailingDatabase(tmp_path / "s.sqlite")
    journal = SubscriptionJournal(db, clock, Statistics(), 0.01, run=sync_runner)
    lost = journal.put("E_A", "udp:127.0.0.1:1", "udp:127.0.0.1:1", 10, 0.0)
    clock.advance(0.01)
    failure = result_of(lost)
    assert failure.check(StoreWriteError) and "disk I/O error" in str(failure.value)
    assert journal.write_failures.value == 1
    db.failing = False
    kept = journal.put("E_A", "udp:127.0.0.1:2", "udp:127.0.0.1:2", 10, 0.0)
    clock.advance(0.01)
    assert result_of(kept) is None
    result_of(journal.close())


def test_close_writes_what_is_pending_and_refuses_later_changes(tmp_path):
    journal, clock, _ = make_journal(tmp_path, batch_delay=0.5)
    pending = journal.put("E_A", "udp:127.0.0.1:1", "udp:127.0.0.1:1", 10, 1000.0)
    result_of(journal.close())
    assert pending.called and len(rows(tmp_path / "s.sqlite")) == 1
    assert result_of(journal.put("E_A", "x", "x", 1, 0.0)).check(StoreWriteError)
    assert clock.getDelayedCalls() == []


# -- the event interface ----------------------------------------------------------


def test_a_new_subscription_that_was_not_stored_is_taken_back(tmp_path, logged_errors):
    clock = Clock()
    db = FailingDatabase(tmp_path / "s.sqlite")
    journal = SubscriptionJournal(db, clock, Statistics(), 0.01, run=sync_runner)
    evi, clock, _ = memory_evi("E_TEST", clock=clock, journal=journal)
    d = evi.subscribe("E_TEST", "test:a", 60, origin="mi")
    clock.advance(0.01)
    assert result_of(d).check(StoreWriteError)
    assert evi.store.size == 0
    result_of(evi.journal.close())


def test_mi_subscriptions_and_their_removal_are_stored_unless_told_not_to(tmp_path):
    journal, clock, _ = make_journal(tmp_path)
    evi, clock, _ = memory_evi("E_TEST", clock=clock, journal=journal)
    answered = []
    evi.subscribe("E_TEST", "test:a", 60, origin="mi").addBoth(answered.append)
    assert answered == []  # answered once stored
    clock.advance(0.01)
    assert answered[0].socket == "test:a"
    assert rows(tmp_path / "s.sqlite") == [("E_TEST", "test:a", "test:a", 60, 1000.0)]
    # restoring at start-up: not written again
    assert result_of(evi.subscribe("E_TEST", "test:b", 60, origin="mi", record=False))
    gone = evi.subscribe("E_TEST", "test:a", 0, origin="mi")
    clock.advance(0.01)
    assert result_of(gone) is None
    assert rows(tmp_path / "s.sqlite") == [] and evi.store.size == 1
    result_of(evi.journal.close())


def test_a_refresh_that_was_not_stored_keeps_the_subscription(tmp_path, logged_errors):
    clock = Clock()
    db = FailingDatabase(tmp_path / "s.sqlite")
    db.failing = False
    journal = SubscriptionJournal(db, clock, Statistics(), 0.01, run=sync_runner)
    evi, clock, _ = memory_evi("E_TEST", clock=clock, journal=journal)
    first = evi.subscribe("E_TEST", "test:a", 60, origin="mi")
    clock.advance(0.01)
    sub = result_of(first)
    db.failing = True
    refresh = evi.subscribe("E_TEST", "test:a", 120, origin="mi")
    clock.advance(0.01)
    assert result_of(refresh).check(StoreWriteError)
    assert evi.store.find(evi.event("E_TEST"), "test:a") is sub
    logged_errors.flush()
    db.failing = False
    result_of(evi.journal.close())


def test_script_subscriptions_are_not_stored(tmp_path):
    journal, clock, _ = make_journal(tmp_path)
    evi, clock, _ = memory_evi("E_TEST", clock=clock, journal=journal)
    sub = result_of(evi.subscribe("E_TEST", "test:a", 60, origin="script"))
    assert sub is not None and evi.journal._changes == {}
    result_of(evi.journal.close())


# -- limits ---------------------------------------------------------------------------


def test_limits_refuse_new_subscriptions_but_not_refreshes_or_removals():
    from evsrv.interfaces import LimitExceeded
    evi, clock, _ = memory_evi("E_TEST", "E_OTHER", limits=Limits(
        max_subscriptions=3, max_subscriptions_per_event=2))
    result_of(evi.subscribe("E_TEST", "test:a", 60, origin="mi"))
    result_of(evi.subscribe("E_TEST", "test:b", 5, origin="mi"))
    failure = result_of(evi.subscribe("E_TEST", "test:c", 60, origin="mi"))
    assert failure.check(LimitExceeded)
    assert "max_subscriptions_per_event" in str(failure.value)
    assert result_of(evi.subscribe("E_TEST", "test:a", 60, origin="mi")).socket == "test:a"
    result_of(evi.subscribe("E_OTHER", "test:a", 60, origin="mi"))
    failure = result_of(evi.subscribe("E_OTHER", "test:b", 60, origin="mi"))
    assert failure.check(LimitExceeded) and "[limits] max_subscriptions " in str(failure.value)
    clock.advance(6)  # mem:b of E_TEST expired: room again
    assert result_of(evi.subscribe("E_TEST", "test:c", 60, origin="mi")).socket == "test:c"
    assert result_of(evi.subscribe("E_TEST", "test:c", 0, origin="mi")) is None


def test_params_over_the_limit_are_refused():
    from evsrv.interfaces import LimitExceeded
    evi, clock, transport = memory_evi("E_TEST", limits=Limits(max_params_bytes=100))
    result_of(evi.subscribe("E_TEST", "test:a"))
    assert result_of(evi.raise_event("E_TEST", {"x": "a" * 90})).subscribers == 1
    failure = result_of(evi.raise_event("E_TEST", {"x": "é" * 50}))  # 101 bytes
    assert failure.check(LimitExceeded) and "max_params_bytes (100)" in str(failure.value)
    assert len(transport.delivered) == 1


def mi(port, method, params, timeout=5.0):
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                "params": params}).encode(), ("127.0.0.1", port))
        return json.loads(sock.recv(65535))


def test_limit_errors_over_the_mi(server_process):
    proc = server_process("""\
[mi]
udp = 127.0.0.1:0
[events]
publish = E_TEST, E_OTHER, E_THIRD
[limits]
max_subscriptions = 2
max_subscriptions_per_event = 1
max_params_bytes = 64
""")
    port = proc.udp[1]
    assert mi(port, "event_subscribe", ["E_TEST", "udp:127.0.0.1:9", 60])["result"] == "OK"
    error = mi(port, "event_subscribe", ["E_TEST", "udp:127.0.0.1:10", 60])["error"]
    assert error == {"code": 503, "message": "Subscription limit reached",
                     "data": "E_TEST has 1 subscribers, the most [limits] "
                             "max_subscriptions_per_event allows"}
    error = mi(port, "raise_event", ["E_TEST", ["x" * 65]])["error"]
    assert error["code"] == 413 and error["message"] == "Params too large"
    assert "max_params_bytes (64)" in error["data"]
    assert mi(port, "raise_event", ["E_TEST", ["x" * 64]])["result"] == "OK"
    assert mi(port, "event_subscribe", ["E_OTHER", "udp:127.0.0.1:9", 60])["result"] == "OK"
    error = mi(port, "event_subscribe", ["E_THIRD", "udp:127.0.0.1:9", 60])["error"]
    assert error["code"] == 503 and "[limits] max_subscriptions allows" in error["data"]
    # a refresh and an unsubscribe are never refused
    assert mi(port, "event_subscribe", ["E_TEST", "udp:127.0.0.1:9", 60])["result"] == "OK"
    assert mi(port, "event_subscribe", ["E_TEST", "udp:127.0.0.1:9", 0])["result"] == "OK"
    assert mi(port, "event_subscribe", ["E_THIRD", "udp:127.0.0.1:9", 60])["result"] == "OK"
    assert "event_subscribe E_THIRD udp:127.0.0.1:9 refused" in proc.log()


# -- in-process server ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_subscribe_is_answered_only_once_stored(server_factory, tmpdir_short):
    server = server_factory(STORE_INI)
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "event_subscribe",
                          "params": ["E_TEST", "udp:127.0.0.1:9", 60]}).encode()
    replies = []
    answered = server.dispatcher.handle(request).addCallback(replies.append)
    assert replies == []  # not on disk yet
    yield answered
    (reply,) = replies
    assert json.loads(reply)["result"] == "OK"
    # another connection sees it: it is in the file, not in a buffer
    assert [r[:4] for r in rows(tmpdir_short / "state" / "subscriptions.sqlite")] == [
        ("E_TEST", "udp:127.0.0.1:9", "udp:127.0.0.1:9", 60)]
    reply = yield server.dispatcher.handle(json.dumps(
        {"jsonrpc": "2.0", "id": 2, "method": "event_subscribe",
         "params": ["E_TEST", "udp:127.0.0.1:9", 0]}).encode())
    assert json.loads(reply)["result"] == "OK"
    assert rows(tmpdir_short / "state" / "subscriptions.sqlite") == []


@pytest_twisted.inlineCallbacks
def test_restore_keeps_times_drops_expired_and_skips_what_no_longer_fits(
        server_factory, tmpdir_short):
    db = SubscriptionDatabase(tmpdir_short / "state" / "subscriptions.sqlite")
    now = time.time()
    db.write([("E_TEST", "udp:127.0.0.1:9", "udp:127.0.0.1:9", 100, now - 40),
              ("E_TEST", "udp:127.0.0.1:10", "udp:localhost:10", 100, now - 10),
              ("E_OTHER", "udp:127.0.0.1:11", "udp:127.0.0.1:11", 10, now - 20),
              ("E_GONE", "udp:127.0.0.1:12", "udp:127.0.0.1:12", 100, now)], [])
    db.close()
    server = server_factory(STORE_INI)
    # udp:localhost needs name resolution: the MI waits for the restore
    assert not server.restored.called
    assert not set(server.mi_ports) & set(reactor.getReaders())
    result = yield server.restored
    assert set(server.mi_ports) <= set(reactor.getReaders())
    assert result == (2, 1, 1)  # restored, expired while down, skipped
    subs = {s.socket: s for s in server.evi.subscribers(server.evi.event("E_TEST"))}
    assert set(subs) == {"udp:127.0.0.1:9", "udp:localhost:10"}
    assert 55 <= subs["udp:127.0.0.1:9"].ttl(server.reactor.seconds()) <= 60
    assert subs["udp:127.0.0.1:9"].expire == 100
    # the skipped one stays in the file until it expires; the next write
    # purges the expired one
    yield server.journal.put("E_TEST", "x", "x", 1, time.time())
    assert {r[0] for r in rows(tmpdir_short / "state" / "subscriptions.sqlite")} == {
        "E_TEST", "E_GONE"}


@pytest_twisted.inlineCallbacks
def test_a_store_of_none_writes_nothing(server_factory, tmpdir_short):
    server = server_factory(BASE_INI + "[store]\nbackend = none\n")
    assert server.journal is None
    yield server.evi.subscribe("E_TEST", "udp:127.0.0.1:9", 60, origin="mi")
    assert not (tmpdir_short / "var").exists()


# -- a real process -------------------------------------------------------------------


def test_subscriptions_survive_sigkill(server_process, tmpdir_short, udp_receiver_socket):
    proc = server_process(STORE_INI)
    receiver_port = udp_receiver_socket.getsockname()[1]
    from opensips.mi import OpenSIPSMI
    client = OpenSIPSMI("datagram", datagram_ip="127.0.0.1", datagram_port=proc.udp[1])
    assert client.execute("event_subscribe",
                          ["E_TEST", f"udp:127.0.0.1:{receiver_port}", "30"]) == "OK"
    assert client.execute("event_subscribe", ["E_OTHER", "udp:127.0.0.1:9", "1"]) == "OK"
    subscribed = time.time()
    proc.process.send_signal(signal.SIGKILL)
    proc.process.wait()
    time.sleep(max(0.0, subscribed + 2.1 - time.time()))  # E_OTHER's second runs out

    again = server_process(STORE_INI)
    client = OpenSIPSMI("datagram", datagram_ip="127.0.0.1", datagram_port=again.udp[1])
    listed = client.execute("subscribers_list", {})
    events = {e["name"]: e["Subscribers"] for e in listed["Events"]}
    assert set(events) == {"E_TEST"}
    (sub,) = events["E_TEST"]
    assert sub["socket"] == f"udp:127.0.0.1:{receiver_port}" and sub["expire"] == 30
    assert sub["ttl"] <= 30 - int(time.time() - subscribed) + 1  # it kept counting
    assert "restored 1 stored subscription(s); 1 expired while evsrv was down" in again.log()
    assert client.execute("raise_event", {"event": "E_TEST", "params": ["after", "restart"]}) \
        == "OK"
    data = udp_receiver_socket.recv(65535)
    assert json.loads(data) == {"jsonrpc": "2.0", "method": "E_TEST",
                                "params": ["after", "restart"]}


@pytest.fixture
def udp_receiver_socket():
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def run_evsrv(ini, *extra, timeout=20):
    """
    Start evsrv on C{ini}; stop it with SIGTERM once it has started (or
    let it fail). @return: (exit status, output).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "twisted", "--log-format=text", "evsrv", "-c", str(ini), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(ini.parent),
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    output = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline and proc.poll() is None:
        chunk = proc.stdout.read() or b""
        output += chunk
        if b"started:" in output:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    proc.wait(timeout)
    os.set_blocking(proc.stdout.fileno(), True)
    output += proc.stdout.read()
    proc.stdout.close()
    return proc.returncode, output.decode(errors="replace")


def test_a_corrupt_store_stops_start_up_unless_told_to_ignore_it(tmpdir_short):
    ini = tmpdir_short / "evsrv.ini"
    ini.write_text(STORE_INI)
    (tmpdir_short / "state").mkdir()
    store = tmpdir_short / "state" / "subscriptions.sqlite"
    store.write_bytes(b"\x00garbage" * 1000)
    status, output = run_evsrv(ini)
    assert status == 1
    assert f"evsrv: {ini}: [store]: {store}: unreadable subscription store: file is not " \
           "a database; move it away, or start with --ignore-store" in output
    assert store.read_bytes() == b"\x00garbage" * 1000  # untouched

    status, output = run_evsrv(ini, "--ignore-store")
    assert "--ignore-store: set aside as" in output and "started:" in output
    aside = [p for p in (tmpdir_short / "state").iterdir() if ".unusable-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == b"\x00garbage" * 1000
    assert rows(store) == []


def test_under_steady_load_a_change_waits_its_batch_delay_not_more(tmp_path):
    runner = ManualRunner()
    journal, clock, _ = make_journal(tmp_path, runner)
    journal.put("E_A", "a", "a", 10, 0.0)
    clock.advance(0.01)
    assert len(runner.calls) == 1
    clock.advance(0.002)
    journal.put("E_A", "b", "b", 10, 0.0)  # arrives while the first write runs
    clock.advance(0.001)
    runner.run_next()
    assert runner.calls == []  # the write is done, but "b" has waited 1 ms only
    clock.advance(0.0089)
    assert runner.calls == []
    clock.advance(0.0002)
    assert len(runner.calls) == 1  # 10 ms after "b" arrived: at most 100 syncs/s
    runner.run_next()
    closed = journal.close()
    runner.run_next()
    result_of(closed)



def test_a_change_that_cannot_be_written_fails_alone(tmp_path, logged_errors):
    # A socket text SQLite cannot hold (a lone surrogate: a byte that was not
    # UTF-8) used to fail its whole batch: every other client's subscribe or
    # refresh was then answered 500 and taken back.
    journal, clock, statistics = make_journal(tmp_path)
    good = [journal.put("E_A", f"udp:127.0.0.1:{n}", f"udp:127.0.0.1:{n}", 10, 1000.0)
            for n in range(3)]
    bad = journal.put("E_A", "unix:/tmp/x\udcff", "unix:/tmp/x\udcff", 10, 1000.0)
    gone = journal.delete("E_B", "udp:127.0.0.1:9")
    clock.advance(0.01)
    assert [result_of(d) for d in good] == [None, None, None]
    assert result_of(gone) is None
    failure = result_of(bad)
    assert failure.check(StoreWriteError) and "cannot be stored" in str(failure.value)
    assert journal.writes.value == 1 and journal.rows_written.value == 4
    assert journal.changes_rejected.value == 1
    assert [r[1] for r in rows(tmp_path / "s.sqlite")] == [
        "udp:127.0.0.1:0", "udp:127.0.0.1:1", "udp:127.0.0.1:2"]
    # the next batch is not affected
    later = journal.put("E_A", "udp:127.0.0.1:7", "udp:127.0.0.1:7", 10, 1000.0)
    clock.advance(0.01)
    assert result_of(later) is None
    result_of(journal.close())


def test_a_flush_waits_for_a_batch_with_a_rejected_change(tmp_path, logged_errors):
    journal, clock, _ = make_journal(tmp_path, batch_delay=5)
    bad = journal.put("E_A", "x\udc80", "x\udc80", 10, 1000.0)
    bad.addErrback(lambda f: f.trap(StoreWriteError))
    assert result_of(journal.flush()) is None
    assert bad.called
    result_of(journal.close())


def _runs(prefix) -> bool:
    try:
        return subprocess.run([*prefix, sys.executable, "-c", ""], capture_output=True,
                              timeout=30).returncode == 0
    except OSError:
        return False


# the tests run as root, whom no permission refuses: the server runs without
# the capabilities that let root pass permission checks (the directory then
# belongs to nobody), or the directory is mounted read-only in a mount
# namespace of the test's own
WITHOUT_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               "--inh-caps=-dac_override,-dac_read_search"]


def _read_only(directory):
    return ["unshare", "--mount", "sh", "-c",
            f"mount --bind {directory} {directory} && "
            f"mount -o remount,bind,ro {directory} && exec \"$@\"", "sh"]


@pytest.mark.parametrize("how", ["no permission", "read-only"])
def test_a_store_directory_that_is_not_writable_says_so(tmpdir_short, how):
    # Not an "unreadable store" that --ignore-store would set aside: the
    # directory cannot be written, and the message says what helps.
    state = tmpdir_short / "state"
    state.mkdir(mode=0o755)
    ini = tmpdir_short / "evsrv.ini"
    ini.write_text("[mi]\nudp = 127.0.0.1:0\n[store]\ndirectory = state\n")
    os.chmod(tmpdir_short, 0o755)
    if how == "no permission":
        os.chown(state, 65534, 65534)
        prefix, reason = WITHOUT_DAC, "permission denied) by this user (uid 0)"
    else:
        prefix, reason = _read_only(state), "read-only file system) by this user (uid 0)"
    if os.geteuid() != 0:
        pytest.skip("needs root, to take permissions away from itself (CI runs as root)")
    assert _runs(prefix), f"{prefix[0]} cannot run this Python here"
    for extra in ((), ("--ignore-store",)):
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "twisted", "--log-format=text", "evsrv",
             "-c", str(ini), *extra], capture_output=True, text=True, timeout=30, cwd="/",
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"[store]: {state}: not writable ({reason}; the subscription store " \
               f"is written there" in proc.stderr, proc.stderr
        assert "set [store] backend = none" in proc.stderr
        assert "--ignore-store" not in proc.stderr and "unreadable" not in proc.stderr
    assert list(state.iterdir()) == []
