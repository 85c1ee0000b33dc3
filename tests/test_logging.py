"""
Logs: twisted.logger events with structured fields named the same
everywhere (C{event}, C{socket}, C{transport}), JSON lines under
C{twist --log-format=json}, and nothing logged at info level per
notification.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest_twisted
from twisted.logger import LogLevel, globalLogPublisher

ROOT = Path(__file__).resolve().parent.parent

JSON_INI = """\
[mi]
udp = 127.0.0.1:0
[events]
publish = E_TEST
"""


def _json_events(path: Path):
    """
    Every line of twist's JSON log (each record starts with the RS character
    0x1e, as RFC 7464 JSON text sequences), parsed; a line that is not JSON fails.
    """
    events = []
    for line in path.read_text().splitlines():
        line = line.lstrip("\x1e").strip()
        if line:
            events.append(json.loads(line))
    return events


def _wait_for(path, predicate, what, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = [e for e in _json_events(path) if predicate(e)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {what} in the log:\n{path.read_text()}")


def test_json_lines_with_structured_fields(tmpdir_short):
    ini = tmpdir_short / "evsrv.ini"
    ini.write_text(JSON_INI)
    log_path = tmpdir_short / "evsrv.jsonlog"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "twisted", "--log-format=json",
                                 "evsrv", "-c", str(ini)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=str(tmpdir_short))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    try:
        listening = _wait_for(log_path, lambda e: str(e.get("where", "")).startswith("udp:"),
                              "'MI listening' line")
        assert listening["log_format"].startswith("MI listening on")
        host, port = listening["where"][4:].rsplit(":", 1)
        target = "udp:127.0.0.1:%d" % peer.getsockname()[1]
        request = {"jsonrpc": "2.0", "method": "event_subscribe", "id": 1,
                   "params": ["E_TEST", target, 60]}
        peer.sendto(json.dumps(request).encode(), (host, int(port)))
        reply = json.loads(peer.recv(65536))
        assert reply["result"] == "OK", reply
        line = _wait_for(log_path, lambda e: e.get("socket") == target,
                         "subscription line")
        assert line["event"] == "E_TEST"
        assert line["transport"] == "udp"
        assert line["expire"] == 60
        assert line["log_level"]["name"] == "info"
        assert line["log_namespace"].startswith("evsrv.")
        assert "subscribed to {event}" in line["log_format"]
    finally:
        peer.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # twist ends by the signal that stopped it, once shut down cleanly
    assert proc.returncode in (0, -signal.SIGTERM), proc.returncode
    # every line of the whole run, shutdown included, was JSON
    assert len(_json_events(log_path)) > 3


@pytest_twisted.inlineCallbacks
def test_no_info_line_per_notification(server_factory, udp_collector):
    server = server_factory()
    peer = udp_collector()
    yield server.evi.subscribe("E_TEST", "udp:%s:%d" % peer.address, 3600)
    # a destination that fails every time must not log per notification either
    yield server.evi.subscribe("E_TEST", "unix:/nonexistent/evsrv-test.sock", 3600)
    seen = []

    def observe(event):
        if event.get("log_level", LogLevel.info) >= LogLevel.info:
            seen.append(event)
    globalLogPublisher.addObserver(observe)
    try:
        for n in range(100):
            report = yield server.evi.raise_event("E_TEST", {"n": n})
            assert report.delivered == 1 and report.failed + report.dropped == 1
    finally:
        globalLogPublisher.removeObserver(observe)
    for n in range(100):
        yield peer.next()
    # one line when a destination starts failing is fine, one per raise is not
    assert len(seen) <= 2, [e.get("log_format") for e in seen]
