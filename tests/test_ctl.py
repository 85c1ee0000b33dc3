"""
evsrv-ctl against a real evsrv process (the C{server_process} fixture), with
plain blocking sockets; a few cases that a real server cannot produce (stray
datagrams, plain-text replies, the re-subscribe) against a scripted fake MI
in a thread.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, udp_receiver
from evsrv import ctl

NOTIFICATION = b'{"jsonrpc":"2.0","method":"E_TEST","params":{"ip":"1.2.3.4"}}'


# -- helpers -------------------------------------------------------------------------


def mi(address, method, params=None):
    """
    One JSON-RPC request to a UDP MI with a plain socket: the decoded reply.
    """
    request = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        request["params"] = params
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(json.dumps(request).encode(), address)
        return json.loads(sock.recv(65536))


def subscribers(address, event="E_TEST"):
    """
    The sockets subscribed to C{event}.
    """
    result = mi(address, "subscribers_list", [event])["result"]["Event"]
    return [s["socket"] for s in result.get("Subscribers", [])]


def wait_until(predicate, what, timeout=10.0, process=None):
    """
    Poll C{predicate} until it returns something true; fail after C{timeout}
    seconds, or as soon as C{process} has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"process exited ({process.returncode}) while waiting for {what}:"
                        f"\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def addr_text(address):
    return "%s:%d" % address


def closed_udp_port():
    """
    A loopback UDP port nobody listens on (it was free a moment ago).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def evsrv(server_process):
    return server_process()


@pytest.fixture
def run(capsys):
    """
    C{run(*argv)}: evsrv-ctl in-process; C{(exit status, stdout, stderr)}.
    """
    def run(*argv):
        status = ctl.main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err
    return run


@pytest.fixture
def spawn():
    """
    C{spawn(*args)}: C{python -m evsrv.ctl ARGS} with text pipes; killed at
    teardown if still running.
    """
    started = []

    def spawn(*args, executable=None):
        argv = [executable] if executable else [sys.executable, "-m", "evsrv.ctl"]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        env.pop(ctl.ENV_ADDRESS, None)
        process = subprocess.Popen(argv + list(args), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        started.append(process)
        return process
    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


class FakeMI:
    """
    A scripted UDP MI in a thread: C{respond(request, source, sock)} answers
    each decoded request (sending whatever it likes); requests are recorded
    in C{requests} (decoded) and C{datagrams} (as received).
    """

    def __init__(self, respond):
        self.respond = respond
        self.requests = []
        self.datagrams = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()
        self._stopping = threading.Event()
        self.errors = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stopping.is_set():
            try:
                data, source = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            self.datagrams.append(data)
            request = json.loads(data)
            self.requests.append(request)
            try:
                self.respond(request, source, self.sock)
            except Exception as e:  # reported by the fixture
                self.errors.append(e)

    def close(self):
        self._stopping.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def fake_mi():
    made = []

    def make(respond):
        server = FakeMI(respond)
        made.append(server)
        return server
    yield make
    for server in made:
        server.close()
    assert not [e for s in made for e in s.errors]


def result_reply(request, result):
    return json.dumps({"jsonrpc": "2.0", "result": result, "id": request["id"]}).encode()


# -- MI commands against a real server -------------------------------------------------


def test_positional_arguments(evsrv, run):
    """
    Positional ARGs go as JSON strings (the expire "1200" included); a
    string result is printed as is, an object one as indented JSON.
    """
    mi_address = addr_text(evsrv.udp)
    status, out, err = run("-a", mi_address, "event_subscribe", "E_TEST",
                           "udp:127.0.0.1:8888", "1200")
    assert (status, out, err) == (0, "OK\n", "")

    status, out, err = run("-a", mi_address, "subscribers_list", "E_TEST")
    assert (status, err) == (0, "")
    assert json.loads(out) == {"Event": {"name": "E_TEST", "id": 6, "Subscribers": [
        {"socket": "udp:127.0.0.1:8888", "expire": 1200, "ttl": 1200}]}}
    assert out.startswith('{\n  "Event": {\n    "name": "E_TEST",\n')

    status, out, _ = run("-a", mi_address, "events_list")
    assert status == 0
    assert {"name": "E_TEST", "id": 6} in json.loads(out)["Events"]

    status, out, _ = run("-a", mi_address, "which")
    assert status == 0
    assert "raise_event" in json.loads(out)


def test_raise_event_with_object_string(evsrv, run):
    sink = udp_receiver()
    try:
        mi(evsrv.udp, "event_subscribe", ["E_TEST", "udp:%s:%d" % sink.getsockname()])
        status, out, err = run("-a", addr_text(evsrv.udp), "raise_event", "E_TEST",
                               '{"ip":"1.2.3.4"}')
        assert (status, out, err) == (0, "OK\n", "")
        assert sink.recv(65536) == NOTIFICATION
    finally:
        sink.close()


def test_an_array_as_params_arg_says_to_use_j(evsrv, run):
    sink = udp_receiver()
    try:
        mi(evsrv.udp, "event_subscribe", ["E_TEST", "udp:%s:%d" % sink.getsockname()])
        status, out, err = run("-a", addr_text(evsrv.udp), "raise_event", "E_TEST",
                               '["a","b"]')
        assert status == 1 and out == ""
        # the server's answer stays OpenSIPS' bytes; the advice is evsrv-ctl's
        assert err.startswith("error 400: Bad Params\n"), err
        hint = ("evsrv-ctl: a params ARG is sent as a string, which must hold a JSON object; "
                "for an array of values use -j: evsrv-ctl raise_event -j "
                "'{\"event\":\"E_TEST\",\"params\":[\"a\",\"b\"]}'\n")
        assert err.endswith(hint), err
        # and the advice works
        command = hint.split("use -j: evsrv-ctl ")[1].strip()
        status, out, err = run("-a", addr_text(evsrv.udp), "raise_event", "-j",
                               command.split(" -j ")[1].strip("'"))
        assert (status, out, err) == (0, "OK\n", "")
        assert sink.recv(65536) == b'{"jsonrpc":"2.0","method":"E_TEST","params":["a","b"]}'
    finally:
        sink.close()


def test_json_params(evsrv, run):
    """
    -j gives the params as a JSON array or object; options may follow COMMAND.
    """
    sink = udp_receiver()
    try:
        mi(evsrv.udp, "event_subscribe", ["E_TEST", "udp:%s:%d" % sink.getsockname()])
        status, out, _ = run("raise_event", "-j", '["E_TEST", ["a", 7]]',
                             "-a", addr_text(evsrv.udp))
        assert (status, out) == (0, "OK\n")
        assert sink.recv(65536) == b'{"jsonrpc":"2.0","method":"E_TEST","params":["a","7"]}'
    finally:
        sink.close()
    status, out, _ = run("-a", addr_text(evsrv.udp), "-j", '{"event": "E_OTHER"}',
                         "subscribers_list")
    assert (status, json.loads(out)) == (0, {"Event": {}})


def test_statistics_commands(evsrv, run):
    """
    get/list/reset_statistics send their ARGs as {"statistics": [...]}.
    """
    mi_address = addr_text(evsrv.udp)
    status, out, _ = run("-a", mi_address, "get_statistics", "evi:", "mi:")
    assert status == 0
    values = json.loads(out)
    assert values["evi:events"] == 9
    assert {name.split(":")[0] for name in values} == {"evi", "mi"}

    status, out, _ = run("-a", mi_address, "list_statistics")
    assert status == 0
    assert json.loads(out)["mi:requests"] == "incremental"

    status, out, _ = run("-a", mi_address, "reset_statistics", "mi:requests")
    assert (status, out) == (0, "OK\n")
    status, out, _ = run("-a", mi_address, "get_statistics", "mi:requests")
    assert (status, json.loads(out)) == (0, {"mi:requests": 1})  # this request


def test_unix_socket(evsrv, run, monkeypatch):
    """
    -s talks to the UNIX MI from a socket file of its own, removed afterwards.
    """
    reply_dir = Path(tempfile.mkdtemp(prefix="evsrv-c-"))
    monkeypatch.setattr(tempfile, "tempdir", str(reply_dir))
    try:
        status, out, err = run("-s", str(evsrv.ini.parent / "mi.sock"), "events_list")
        assert (status, err) == (0, "")
        assert {"name": "E_OTHER", "id": 7} in json.loads(out)["Events"]
        status, out, err = run("-s", str(evsrv.ini.parent / "mi.sock"), "subscribers_list",
                               "E_NOPE")
        assert (status, err) == (1, "error 404: Event not published\n")
        assert list(reply_dir.iterdir()) == []
    finally:
        for child in reply_dir.iterdir():
            child.unlink()
        reply_dir.rmdir()


def test_unix_socket_missing(tmpdir_short, run):
    status, out, err = run("-s", str(tmpdir_short / "none.sock"), "ps")
    assert (status, out) == (2, "")
    assert err == (f"evsrv-ctl: cannot send to unix:{tmpdir_short}/none.sock: "
                   f"No such file or directory: is evsrv running?\n")


def test_environment_address(evsrv, run, monkeypatch):
    monkeypatch.setenv("EVSRV_MI", "localhost:%d" % evsrv.udp[1])
    status, out, _ = run("version")
    assert status == 0
    assert json.loads(out)["Server"].startswith("evsrv ")


# -- errors, raw, timeout ---------------------------------------------------------------------


def test_error_replies(evsrv, run):
    mi_address = addr_text(evsrv.udp)
    assert run("-a", mi_address, "subscribers_list", "E_NOPE") == (
        1, "", "error 404: Event not published\n")
    assert run("-a", mi_address, "no_such_command") == (
        1, "", "error -32601: Method not found\n")
    assert run("-a", mi_address, "event_subscribe", "E_TEST", "udp:bad") == (
        1, "", "error 400: Bad parameter value (expected udp:HOST:PORT, got 'udp:bad')\n")
    assert run("-a", mi_address, "events_list", "extra") == (
        1, "", "error -32602: Invalid params (Too few or too many parameters)\n")


def test_raw(evsrv, run):
    status, out, _ = run("-a", addr_text(evsrv.udp), "--raw", "version")
    assert status == 0
    assert out.startswith('{"jsonrpc":"2.0","result":{"Server":"evsrv ')
    assert out.endswith("}\n") and out.count("\n") == 1
    status, out, err = run("-a", addr_text(evsrv.udp), "--raw", "subscribers_list", "E_NOPE")
    assert (status, err) == (1, "")
    assert out.startswith('{"jsonrpc":"2.0","error":{"code":404,"message":"Event not published"}')


def test_timeout(run):
    port = closed_udp_port()
    started = time.monotonic()
    status, out, err = run("-a", f"127.0.0.1:{port}", "-t", "0.3", "events_list")
    elapsed = time.monotonic() - started
    assert (status, out) == (2, "")
    assert err == (f"evsrv-ctl: no reply from udp:127.0.0.1:{port} within 0.3s: "
                   f"is evsrv running?\n")
    assert 0.3 <= elapsed < 5


def test_plain_text_reply(fake_mi, run):
    """
    A reply that is not JSON-RPC (OpenSIPS' "400 Parse_error") is printed as is.
    """
    server = fake_mi(lambda request, source, sock: sock.sendto(b"400 Parse_error", source))
    assert run("-a", addr_text(server.address), "ps") == (1, "400 Parse_error\n", "")


def test_request_form_and_stray_datagrams(fake_mi, run):
    """
    The request is one compact JSON-RPC object with a random id; datagrams
    with another id, notifications, and text from another port are skipped.
    """
    def respond(request, source, sock):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.sendto(b"not from the MI port", source)
        sock.sendto(json.dumps({"jsonrpc": "2.0", "method": "E_X"}).encode(), source)
        sock.sendto(json.dumps({"jsonrpc": "2.0", "result": "stale",
                                "id": request["id"] + 1}).encode(), source)
        sock.sendto(result_reply(request, {"evi:events": 9}), source)
    server = fake_mi(respond)
    status, out, err = run("-a", addr_text(server.address), "get_statistics", "evi:events")
    assert (status, out, err) == (0, '{\n  "evi:events": 9\n}\n', "")
    [datagram] = server.datagrams
    [request] = server.requests
    assert isinstance(request["id"], int) and 0 < request["id"] < 2 ** 31
    assert datagram == (b'{"jsonrpc":"2.0","method":"get_statistics","params":'
                        b'{"statistics":["evi:events"]},"id":%d}' % request["id"])


def test_no_params_and_null_id_error(fake_mi, run):
    """
    A command without ARGs sends no params member; an error with a null id
    (the server could not read ours) is still the answer.
    """
    def respond(request, source, sock):
        sock.sendto(b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},'
                    b'"id":null}', source)
    server = fake_mi(respond)
    assert run("-a", addr_text(server.address), "events_list") == (
        1, "", "error -32600: Invalid Request\n")
    assert set(server.requests[0]) == {"jsonrpc", "method", "id"}


def test_result_formats():
    assert ctl.format_result("OK") == "OK"
    assert ctl.format_result(["a", 1]) == '[\n  "a",\n  1\n]'
    assert ctl.format_result({"é": None}) == '{\n  "é": null\n}'
    assert ctl.format_result(3) == "3"
    assert ctl.format_result(None) == "null"
    assert ctl.format_error({"code": 500, "message": "Internal error"}) == (
        "error 500: Internal error")
    assert ctl.format_error({"code": 500, "message": "M", "data": {"x": 1}}) == (
        'error 500: M ({"x": 1})')


def test_addresses():
    assert ctl.split_host_port("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert ctl.split_host_port("[::1]:0") == ("::1", 0)
    assert ctl.udp_socket_text("::1", 9) == "udp:[::1]:9"
    for bad in ("127.0.0.1", ":80", "h:", "h:x", "h:65536"):
        with pytest.raises(ValueError):
            ctl.split_host_port(bad)


def test_usage(run):
    status, out, _ = run("--help")
    assert status == 0 and out.startswith("usage: evsrv-ctl ")
    status, out, _ = run("listen", "--help")
    assert status == 0 and out.startswith("usage: evsrv-ctl listen ")
    status, _, err = run("-a", "127.0.0.1:1", "-s", "/x", "ps")
    assert status == 2 and "exclusive" in err
    status, _, err = run("-j", "[]", "raise_event", "E_TEST")
    assert status == 2 and "not both" in err
    status, _, err = run("-j", "7", "raise_event")
    assert status == 2 and "JSON object or array" in err
    status, _, err = run("-a", "nowhere", "ps")
    assert status == 2 and "HOST:PORT" in err
    status, _, err = run("listen", "E_TEST", "--expire", "0")
    assert status == 2 and "at least 1" in err


def test_double_dash_ends_options(fake_mi, run):
    server = fake_mi(lambda request, source, sock: sock.sendto(result_reply(request, "OK"),
                                                               source))
    assert run("raise_event", "-a", addr_text(server.address), "--", "E_X", "-x") == (
        0, "OK\n", "")
    assert server.requests[0]["params"] == ["E_X", "-x"]


def test_console_script(evsrv, spawn):
    script = Path(sys.executable).parent / "evsrv-ctl"
    assert script.exists(), f"{script} is missing: `make test` installs evsrv and its commands"
    process = spawn("-a", addr_text(evsrv.udp), "subscribers_list", "E_NOPE",
                    executable=str(script))
    out, err = process.communicate(timeout=10)
    assert (process.returncode, out, err) == (1, "", "error 404: Event not published\n")
    process = spawn("-a", addr_text(evsrv.udp), "events_list", executable=str(script))
    out, err = process.communicate(timeout=10)
    assert (process.returncode, err) == (0, "")
    assert {"name": "E_TEST", "id": 6} in json.loads(out)["Events"]


# -- listen ---------------------------------------------------------------------------


def test_listen_count(evsrv, spawn):
    process = spawn("listen", "E_TEST", "--count", "1", "-a", addr_text(evsrv.udp))
    [socket_text] = wait_until(lambda: subscribers(evsrv.udp), "the subscription",
                               process=process)
    assert mi(evsrv.udp, "subscribers_list", ["E_TEST", socket_text])["result"]["Event"][
        "Subscriber"]["expire"] == 3600
    assert mi(evsrv.udp, "raise_event", ["E_TEST", {"ip": "1.2.3.4"}])["result"] == "OK"
    out, err = process.communicate(timeout=10)
    assert (process.returncode, out) == (0, NOTIFICATION.decode() + "\n")
    assert err == (f"evsrv-ctl: listening for E_TEST on {socket_text} (expire 3600s); "
                   f"Ctrl-C to stop\n")
    assert subscribers(evsrv.udp) == []  # unsubscribed on the way out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_listen_stops_on_signal(evsrv, spawn, signum):
    process = spawn("-a", addr_text(evsrv.udp), "listen", "E_TEST", "--expire", "600")
    wait_until(lambda: subscribers(evsrv.udp), "the subscription", process=process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=10)
    assert (process.returncode, out) == (0, "")
    assert "Traceback" not in err
    assert subscribers(evsrv.udp) == []


def test_listen_pretty_over_unix_mi(evsrv, spawn):
    process = spawn("listen", "E_TEST", "--count", "2", "--pretty",
                    "-s", str(evsrv.ini.parent / "mi.sock"))
    wait_until(lambda: subscribers(evsrv.udp), "the subscription", process=process)
    mi(evsrv.udp, "raise_event", ["E_TEST", ["a"]])
    mi(evsrv.udp, "raise_event", ["E_TEST"])
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert out == ('{\n  "jsonrpc": "2.0",\n  "method": "E_TEST",\n  "params": [\n    "a"\n  ]\n}\n'
                   '{\n  "jsonrpc": "2.0",\n  "method": "E_TEST"\n}\n')
    assert subscribers(evsrv.udp) == []


def test_listen_subscribe_refused(evsrv, run):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert run("-a", addr_text(evsrv.udp), "listen", "E_NOPE") == (
        1, "", "error 400: Bad parameter value\n")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_listen_no_server(run):
    port = closed_udp_port()
    status, out, err = run("-a", f"127.0.0.1:{port}", "-t", "0.3", "listen", "E_TEST")
    assert (status, out) == (2, "")
    assert "no reply from" in err


def test_listen_resubscribes_before_expiry(fake_mi, spawn):
    """
    With expire 1 the subscription is refreshed after 0.5 s; the fake MI only
    sends the notification once it has seen the refresh, so the run ends
    (here, not by the timeout) only if the refresh came.
    """
    def respond(request, source, sock):
        sock.sendto(result_reply(request, "OK"), source)
        event, socket_text, expire = request["params"]
        subscribes = [r for r in server.requests if r["params"][2] == "1"]
        if expire == "1" and len(subscribes) == 2:
            _, host, port = socket_text.split(":")
            sock.sendto(b'{"jsonrpc":"2.0","method":"E_X"}', (host, int(port)))
    server = fake_mi(respond)
    started = time.monotonic()
    process = spawn("-a", addr_text(server.address), "listen", "E_X", "--expire", "1",
                    "--count", "1")
    out, err = process.communicate(timeout=10)
    assert (process.returncode, out) == (0, '{"jsonrpc":"2.0","method":"E_X"}\n'), err
    assert time.monotonic() - started >= 0.5
    assert [(r["method"], r["params"][0], r["params"][2]) for r in server.requests] == [
        ("event_subscribe", "E_X", "1"), ("event_subscribe", "E_X", "1"),
        ("event_subscribe", "E_X", "0")]
    assert len({r["params"][1] for r in server.requests}) == 1


@pytest.mark.parametrize("expire, refresh", [(3600, 3540), (100, 50), (90, 45), (3, 1.5)])
def test_refresh_interval(expire, refresh):
    options = ctl.parse_arguments(["listen", "E_X", "--expire", str(expire)])
    assert ctl.Listener(options).refresh_every == refresh
