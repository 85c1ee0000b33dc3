"""
The official OpenSIPS clients (PyPI C{opensips} package: C{opensips-mi} and
C{opensips-event}) run as real subprocesses against a real evsrv process; they
must not be able to tell it from OpenSIPS (notes: users-and-clients.md §3).

These tests block: plain synchronous functions over the C{server_process}
fixture, every wait bounded by a deadline, every client process killed in a
C{finally} block.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import udp_receiver

# real processes (an installed wheel, evsrv servers, the official clients)
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
OPENSIPS_MI = BIN / "opensips-mi"
OPENSIPS_EVENT = BIN / "opensips-event"



@pytest.fixture(autouse=True)
def clients_installed():
    # installed by the [test] extra: missing means a broken environment, a
    # failure rather than a quiet skip
    for tool in (OPENSIPS_MI, OPENSIPS_EVENT):
        assert tool.exists(), f"{tool} is missing: `make test` installs the opensips package"

#: How long one client command may take in all (python start-up included);
#: the client itself waits only 0.1 s for the MI reply.
CLIENT_TIMEOUT = 20
#: Deadline of every poll.
DEADLINE = 10


def client_env():
    """
    The environment of the clients: no C{OPENSIPS_MI_*} from ours, and an
    unbuffered stdout (opensips-event prints to a pipe or a file).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSIPS_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mi_target(proc, via):
    """
    The opensips-mi flags that reach C{proc}'s MI over C{via} ("udp": its UDP
    MI; "unix": its UNIX datagram MI C{mi.sock}).
    """
    if via == "udp":
        host, port = proc.udp
        return ["-t", "datagram", "-i", host, "-p", str(port)]
    return ["-t", "datagram", "-ds", str(proc.ini.parent / "mi.sock")]


def run_mi(proc, *args, via="udp"):
    """
    Run C{opensips-mi} against C{proc}; the finished process (stdout and
    stderr as text).
    """
    argv = [str(OPENSIPS_MI), *mi_target(proc, via), *args]
    # cwd: the client reads ".env" from its working directory
    return subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                          env=client_env(), cwd=str(proc.ini.parent))


def describe(result, proc):
    return (f"argv: {result.args}\nrc: {result.returncode}\nstdout:\n{result.stdout}"
            f"\nstderr:\n{result.stderr}\nserver log:\n{proc.log()}")


def mi_ok(proc, *args, via="udp"):
    """
    Run C{opensips-mi}, which must succeed; its printed result, parsed.
    """
    result = run_mi(proc, *args, via=via)
    assert result.returncode == 0, describe(result, proc)
    assert result.stderr == "", describe(result, proc)
    return json.loads(result.stdout)


def mi_error(proc, *args, via="udp"):
    """
    Run C{opensips-mi}, which must fail with an MI error; its error line.
    """
    result = run_mi(proc, *args, via=via)
    assert result.returncode == 1, describe(result, proc)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, describe(result, proc)
    return lines[0]


def poll(check, what, deadline=DEADLINE):
    """
    Call C{check} until it returns a true value (returned), for at most
    C{deadline} seconds.
    """
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def socket_name(sock):
    host, port = sock.getsockname()
    return f"udp:{host}:{port}"


def without_ttl(subscriber):
    """
    A C{subscribers_list} entry without its C{ttl}, after checking the keys.
    """
    assert list(subscriber) == ["socket", "expire", "ttl"]
    return {k: v for k, v in subscriber.items() if k != "ttl"}


def json_objects(text):
    """
    The complete JSON objects in C{text} (pretty-printed, one after the
    other), and whether text is left over after them.
    """
    decoder = json.JSONDecoder()
    objects = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index == len(text):
            return objects, False
        try:
            obj, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return objects, True
        objects.append(obj)


def stop_process(process):
    if process.poll() is None:
        process.kill()
        process.wait(10)


@pytest.fixture
def srv(server_process):
    return server_process()


VIAS = ["udp", "unix"]


# -- opensips-mi -------------------------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
def test_which_and_events_list(srv, via):
    """
    C{which} lists the EVI commands; C{events_list} lists the published
    events with their ids.
    """
    names = mi_ok(srv, "which", via=via)
    assert isinstance(names, list)
    for name in ["event_subscribe", "events_list", "subscribers_list", "raise_event",
                 "which", "get_statistics"]:
        assert name in names

    events = mi_ok(srv, "events_list", via=via)
    assert list(events) == ["Events"]
    by_name = {e["name"]: e for e in events["Events"]}
    assert "E_TEST" in by_name and "E_OTHER" in by_name
    for event in events["Events"]:
        assert list(event) == ["name", "id"]
        assert isinstance(event["id"], int)
    ids = [e["id"] for e in events["Events"]]
    assert len(set(ids)) == len(ids)


def test_bash_completion_calls_which(srv):
    """
    C{opensips-mi -bc} completes command names from C{which} (on failure it
    would print its own options instead).
    """
    result = run_mi(srv, "-bc")
    assert result.returncode == 0, describe(result, srv)
    words = result.stdout.split()
    assert "raise_event" in words and "event_subscribe" in words
    assert "-bc" not in words


@pytest.mark.parametrize("via", VIAS)
def test_subscribe_and_list(srv, via):
    """
    Positional C{event_subscribe} (all strings: the expire "30" is taken as
    an int) and named C{-j} one; C{subscribers_list} with no, one and two
    params.
    """
    first, second = udp_receiver(), udp_receiver()
    try:
        s1, s2 = socket_name(first), socket_name(second)
        assert mi_ok(srv, "event_subscribe", "E_TEST", s1, "30", via=via) == "OK"
        named = json.dumps({"event": "E_TEST", "socket": s2, "expire": 60})
        assert mi_ok(srv, "-j", named, "event_subscribe", via=via) == "OK"

        everything = mi_ok(srv, "subscribers_list", via=via)
        assert list(everything) == ["Events"]
        assert [e["name"] for e in everything["Events"]] == ["E_TEST"]
        listed = everything["Events"][0]
        assert isinstance(listed["id"], int)
        subs = {s["socket"]: s for s in listed["Subscribers"]}
        assert set(subs) == {s1, s2}
        assert subs[s1]["expire"] == 30
        assert subs[s2]["expire"] == 60
        assert 0 < subs[s1]["ttl"] <= 30
        assert 0 < subs[s2]["ttl"] <= 60

        # (the ttl counts down between two requests: compared apart)
        one_event = mi_ok(srv, "subscribers_list", "E_TEST", via=via)
        assert list(one_event) == ["Event"]
        assert list(one_event["Event"]) == ["name", "id", "Subscribers"]
        assert one_event["Event"]["name"] == "E_TEST"
        assert one_event["Event"]["id"] == listed["id"]
        assert [without_ttl(s) for s in one_event["Event"]["Subscribers"]] == \
            [without_ttl(s) for s in listed["Subscribers"]]

        one_socket = mi_ok(srv, "subscribers_list", "E_TEST", s1, via=via)
        assert list(one_socket) == ["Event"]
        assert list(one_socket["Event"]) == ["name", "id", "Subscriber"]
        assert one_socket["Event"]["name"] == "E_TEST"
        assert one_socket["Event"]["id"] == listed["id"]
        assert without_ttl(one_socket["Event"]["Subscriber"]) == {"socket": s1, "expire": 30}
        assert 0 < one_socket["Event"]["Subscriber"]["ttl"] <= 30

        # refreshing the same (event, socket) replaces its expire
        assert mi_ok(srv, "event_subscribe", "E_TEST", s1, "90", via=via) == "OK"
        refreshed = mi_ok(srv, "subscribers_list", "E_TEST", s1, via=via)
        assert refreshed["Event"]["Subscriber"]["expire"] == 90
        assert len(mi_ok(srv, "subscribers_list", "E_TEST")["Event"]["Subscribers"]) == 2

        # an event nobody subscribed to
        assert mi_ok(srv, "subscribers_list", "E_OTHER", via=via) == {"Event": {}}
    finally:
        first.close()
        second.close()


def test_subscribe_default_expire(srv):
    """
    Two positional params: the default expire, 3600.
    """
    sink = udp_receiver()
    try:
        name = socket_name(sink)
        assert mi_ok(srv, "event_subscribe", "E_TEST", name) == "OK"
        listed = mi_ok(srv, "subscribers_list", "E_TEST", name)
        assert listed["Event"]["Subscriber"]["expire"] == 3600
    finally:
        sink.close()


@pytest.mark.parametrize("via", VIAS)
def test_raise_event_forms(srv, via):
    """
    Every form of C{raise_event} params the client can send reaches a
    subscriber as one compact JSON-RPC notification, nothing more.
    """
    sink = udp_receiver()
    try:
        assert mi_ok(srv, "event_subscribe", "E_TEST", socket_name(sink), "30",
                     via=via) == "OK"
        cases = [
            # positional: params as a JSON *string* holding an object
            (["raise_event", "E_TEST", '{"ip":"10.0.0.1","port":5060}'],
             b'{"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"10.0.0.1","port":5060}}'),
            # named, params an array
            (["-j", '{"event":"E_TEST","params":["a","b"]}', "raise_event"],
             b'{"jsonrpc":"2.0","method":"E_TEST","params":["a","b"]}'),
            # named, params an inline object (evsrv accepts it; OpenSIPS would not)
            (["-j", '{"event":"E_TEST","params":{"a":1}}', "raise_event"],
             b'{"jsonrpc":"2.0","method":"E_TEST","params":{"a":1}}'),
            # no params
            (["raise_event", "E_TEST"],
             b'{"jsonrpc":"2.0","method":"E_TEST"}'),
            # named, no params
            (["-j", '{"event":"E_TEST"}', "raise_event"],
             b'{"jsonrpc":"2.0","method":"E_TEST"}'),
        ]
        for args, expected in cases:
            assert mi_ok(srv, *args, via=via) == "OK"
            data, addr = sink.recvfrom(65535)
            assert data == expected, args
    finally:
        sink.close()


@pytest.mark.parametrize("via", VIAS)
def test_errors(srv, via):
    """
    MI errors: printed by the client as C{ERROR:  Error executing command:
    CODE: MESSAGE[ (DATA)]}, exit code 1.
    """
    assert mi_error(srv, "raise_event", "E_NOPE", via=via) == \
        "ERROR:  Error executing command: 404: Event not registered"
    assert mi_error(srv, "raise_event", "E_NOPE", '{"a":1}', via=via) == \
        "ERROR:  Error executing command: 404: Event not registered"

    bad_transport = mi_error(srv, "event_subscribe", "E_TEST", "bogus:x", "30", via=via)
    assert bad_transport.startswith("ERROR:  Error executing command: 400: Bad parameter value")
    bad_named = mi_error(srv, "-j", '{"event":"E_TEST","socket":"bogus:x","expire":60}',
                         "event_subscribe", via=via)
    assert bad_named.startswith("ERROR:  Error executing command: 400: Bad parameter value")

    assert mi_error(srv, "event_subscribe", "E_NOPE", "udp:127.0.0.1:9", "30", via=via) \
        .startswith("ERROR:  Error executing command: 400: ")
    assert mi_error(srv, "event_subscribe", "E_TEST", "udp:127.0.0.1:9", "abc", via=via) \
        .startswith("ERROR:  Error executing command: -32602: Invalid params")
    assert mi_error(srv, "no_such_command", via=via) == \
        "ERROR:  Error executing command: -32601: Method not found"

    # nothing was subscribed by the failures
    assert mi_ok(srv, "subscribers_list", via=via) == {"Events": []}


@pytest.mark.parametrize("via", VIAS)
def test_statistics(srv, via):
    """
    C{opensips-mi -s evi: mi:} (C{get_statistics}) shows the counters, which
    follow what was done.
    """
    sink = udp_receiver()
    try:
        before = mi_ok(srv, "-s", "evi:", "mi:", via=via)
        for name in ["evi:events", "evi:subscriptions", "evi:events_raised", "mi:requests"]:
            assert isinstance(before[name], int), name
        assert all(key.startswith(("evi:", "mi:")) for key in before)
        assert before["evi:subscriptions"] == 0
        assert before["evi:events"] == len(mi_ok(srv, "events_list")["Events"])

        assert mi_ok(srv, "event_subscribe", "E_TEST", socket_name(sink), "30") == "OK"
        assert mi_ok(srv, "raise_event", "E_TEST", '{"n":1}') == "OK"
        sink.recvfrom(65535)

        after = mi_ok(srv, "-s", "evi:subscriptions", "evi:events_raised", "mi:requests",
                      via=via)
        assert after["evi:subscriptions"] == 1
        assert after["evi:events_raised"] == before["evi:events_raised"] + 1
        # the events_list, event_subscribe, raise_event and this request at least
        assert after["mi:requests"] >= before["mi:requests"] + 4
    finally:
        sink.close()


@pytest.mark.parametrize("via", VIAS)
def test_unsubscribe_expire_zero(srv, via):
    """
    Expire 0 (positional "0" or named 0) removes the subscription at once.
    """
    first, second = udp_receiver(), udp_receiver()
    try:
        s1, s2 = socket_name(first), socket_name(second)
        assert mi_ok(srv, "event_subscribe", "E_TEST", s1, "30", via=via) == "OK"
        assert mi_ok(srv, "event_subscribe", "E_TEST", s2, "30", via=via) == "OK"
        assert len(mi_ok(srv, "subscribers_list", "E_TEST")["Event"]["Subscribers"]) == 2

        assert mi_ok(srv, "event_subscribe", "E_TEST", s1, "0", via=via) == "OK"
        remaining = mi_ok(srv, "subscribers_list", "E_TEST", via=via)
        assert [s["socket"] for s in remaining["Event"]["Subscribers"]] == [s2]
        assert mi_error(srv, "subscribers_list", "E_TEST", s1, via=via) == \
            "ERROR:  Error executing command: 404: Subscriber does not exist"

        named = json.dumps({"event": "E_TEST", "socket": s2, "expire": 0})
        assert mi_ok(srv, "-j", named, "event_subscribe", via=via) == "OK"
        assert mi_ok(srv, "subscribers_list", "E_TEST", via=via) == {"Event": {}}
        assert mi_ok(srv, "subscribers_list", via=via) == {"Events": []}

        # with no subscriber left, raise_event says so (as OpenSIPS does)
        assert mi_error(srv, "raise_event", "E_TEST", via=via) == \
            "ERROR:  Error executing command: 480: Temporarily Unavailable"
    finally:
        first.close()
        second.close()


# -- opensips-event --------------------------------------------------------------------


def start_event_client(proc, out_dir, *extra):
    """
    Start C{opensips-event} on C{proc}'s UDP MI, listening on an ephemeral
    loopback port; its stdout and stderr go to files in C{out_dir}.
    """
    host, port = proc.udp
    argv = [str(OPENSIPS_EVENT), "-t", "datagram", "-i", host, "-p", str(port),
            "-li", "127.0.0.1", "-lp", "0", *extra]
    stdout = open(out_dir / "event.out", "wb")
    stderr = open(out_dir / "event.err", "wb")
    try:
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=client_env(),
                                   cwd=str(out_dir))
    finally:
        stdout.close()
        stderr.close()
    process.out_path = out_dir / "event.out"
    process.err_path = out_dir / "event.err"
    return process


def event_client_output(process):
    return (f"stdout:\n{process.out_path.read_text(errors='replace')}\n"
            f"stderr:\n{process.err_path.read_text(errors='replace')}")


def wait_for_subscription(proc, process):
    """
    Poll C{subscribers_list E_TEST} until the client's subscription shows;
    the subscriber entry.
    """
    def check():
        if process.poll() is not None:
            pytest.fail(f"opensips-event exited ({process.returncode}):\n"
                        + event_client_output(process))
        listed = mi_ok(proc, "subscribers_list", "E_TEST")
        subs = listed["Event"].get("Subscribers", []) if listed["Event"] else []
        return subs[0] if len(subs) == 1 else None
    return poll(check, "the subscription of opensips-event")


def test_event_client_receives_and_unsubscribes(srv, tmp_path):
    """
    opensips-event subscribes (default expire 3600), prints every
    notification, and unsubscribes (expire 0) on SIGINT.
    """
    process = start_event_client(srv, tmp_path, "E_TEST")
    try:
        sub = wait_for_subscription(srv, process)
        assert sub["socket"].startswith("udp:127.0.0.1:")
        assert sub["expire"] == 3600

        raises = [
            (["raise_event", "E_TEST", '{"ip":"10.0.0.1","port":5060}'],
             {"jsonrpc": "2.0", "method": "E_TEST",
              "params": {"ip": "10.0.0.1", "port": 5060}}),
            (["-j", '{"event":"E_TEST","params":["a","b"]}', "raise_event"],
             {"jsonrpc": "2.0", "method": "E_TEST", "params": ["a", "b"]}),
            (["raise_event", "E_TEST"],
             {"jsonrpc": "2.0", "method": "E_TEST"}),
            (["-j", '{"event":"E_TEST","params":{"a":1}}', "raise_event"],
             {"jsonrpc": "2.0", "method": "E_TEST", "params": {"a": 1}}),
        ]
        for args, _ in raises:
            assert mi_ok(srv, *args) == "OK"
        # an event it did not subscribe to is not sent to it
        mi_error(srv, "raise_event", "E_OTHER")

        def printed():
            objects, _ = json_objects(process.out_path.read_text(errors="replace"))
            return objects if len(objects) >= len(raises) else None
        objects = poll(printed, "opensips-event to print every notification")
        assert objects == [expected for _, expected in raises], event_client_output(process)
        # key order as sent (the client keeps it)
        for obj, (_, expected) in zip(objects, raises):
            assert list(obj) == list(expected)
        # printed with indent 4, as json.dumps does
        text = process.out_path.read_text()
        assert text == "".join(json.dumps(o, indent=4) + "\n" for _, o in raises)

        process.send_signal(signal.SIGINT)
        assert process.wait(CLIENT_TIMEOUT) == 0, event_client_output(process)
        assert mi_ok(srv, "subscribers_list", "E_TEST") == {"Event": {}}
        assert mi_ok(srv, "subscribers_list") == {"Events": []}
        assert f"{sub['socket']} unsubscribed from E_TEST" in srv.log()
    finally:
        stop_process(process)


def test_event_client_sigterm(srv, tmp_path):
    """
    SIGTERM: the same unsubscription as SIGINT.
    """
    process = start_event_client(srv, tmp_path, "E_OTHER")
    try:
        def check():
            if process.poll() is not None:
                pytest.fail("opensips-event exited:\n" + event_client_output(process))
            return mi_ok(srv, "subscribers_list", "E_OTHER")["Event"]
        poll(check, "the subscription of opensips-event")
        process.send_signal(signal.SIGTERM)
        assert process.wait(CLIENT_TIMEOUT) == 0, event_client_output(process)
        assert mi_ok(srv, "subscribers_list") == {"Events": []}
    finally:
        stop_process(process)


def test_event_client_expire(srv, tmp_path):
    """
    opensips-event -e 2: subscribed with expire 2; after 2 s the client
    unsubscribes and exits 0 by itself.
    """
    started = time.monotonic()
    process = start_event_client(srv, tmp_path, "-e", "2", "E_TEST")
    try:
        sub = wait_for_subscription(srv, process)
        assert sub["expire"] == 2
        assert process.wait(CLIENT_TIMEOUT) == 0, event_client_output(process)
        assert time.monotonic() - started >= 2
        assert mi_ok(srv, "subscribers_list") == {"Events": []}
    finally:
        stop_process(process)


def test_event_client_bash_completion(srv, tmp_path):
    """
    opensips-event -bc prints the event names from C{events_list} (on
    failure it would print its own options instead).
    """
    host, port = srv.udp
    result = subprocess.run([str(OPENSIPS_EVENT), "-t", "datagram", "-i", host, "-p", str(port),
                             "-bc"], capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                            env=client_env(), cwd=str(tmp_path))
    assert result.returncode == 0, describe(result, srv)
    names = result.stdout.split()
    expected = [e["name"] for e in mi_ok(srv, "events_list")["Events"]]
    assert names == expected
    assert "E_TEST" in names and "E_OTHER" in names
