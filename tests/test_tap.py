"""
Launching: the twistd plugin, Options, and start-up errors (one line, exit 1).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from twisted.logger import globalLogPublisher
from twisted.plugin import IPlugin, getPlugins

from evsrv import __version__
from evsrv.tap import Options, production_config
from tests.conftest import BASE_INI, ROOT, make_config


def run_server(args, cwd, timeout=20):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "twisted", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def mi_call(address, method, params=None, family=socket.AF_INET, bind=None):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if bind:
            s.bind(bind)
        s.settimeout(5)
        request = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            request["params"] = params
        s.sendto(json.dumps(request).encode(), address)
        return json.loads(s.recv(65536))
    finally:
        s.close()


def test_plugin_is_listed():
    from twisted import plugins
    names = [p.tapname for p in getPlugins(IPlugin, plugins) if hasattr(p, "tapname")]
    assert "evsrv" in names


def test_options():
    options = Options()
    options.parseOptions(["-c", "x.ini"])
    assert options["config"] == "x.ini"
    options = Options()
    options.parseOptions([])
    assert options["config"] is None


@pytest.mark.parametrize("runner", ["twist", "twistd"])
def test_real_launch_serves_mi(server_process, runner):
    proc = server_process(BASE_INI, runner=runner)
    reply = mi_call(proc.udp, "events_list")
    assert {"name": "E_TEST", "id": 6} in reply["result"]["Events"]
    unix_path = str(proc.ini.parent / "mi.sock")
    client = str(proc.ini.parent / "client.sock")
    reply = mi_call(unix_path, "version", family=socket.AF_UNIX, bind=client)
    assert reply["result"]["Server"].startswith("evsrv ")
    # a clean stop: status 0 for both runners (evsrv.exitstatus)
    assert proc.stop() == 0
    assert not os.path.exists(unix_path)  # removed on shutdown


def test_bad_ini_is_one_line_and_exit_1(tmpdir_short):
    ini = tmpdir_short / "bad.ini"
    ini.write_text("[mi]\nudp = 127.0.0.1:8080\nmystery = 1\n")
    for args in (["evsrv", "-c", str(ini)], ["--log-format=text", "evsrv", "-c", str(ini)]):
        result = run_server(args, tmpdir_short)
        assert result.returncode == 1
        assert result.stderr == f"evsrv: {ini}: [mi] mystery: unknown key\n"


def test_unreadable_ini(tmpdir_short):
    result = run_server(["evsrv", "-c", "missing.ini"], tmpdir_short)
    assert (result.returncode, result.stderr) == (
        1, "evsrv: missing.ini: cannot read: No such file or directory\n")


def test_port_in_use_is_one_line_and_exit_1(tmpdir_short):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        ini = tmpdir_short / "busy.ini"
        ini.write_text(f"[mi]\nudp = 127.0.0.1:{port}\n")
        result = run_server(["evsrv", "-c", str(ini)], tmpdir_short)
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"evsrv: {ini}: [mi] udp: cannot listen on udp:127.0.0.1:{port}: ")
        assert "Address already in use" in result.stderr and result.stderr.count("\n") == 1
    finally:
        taken.close()


def test_unix_socket_served_by_another_process_is_refused(tmpdir_short):
    path = str(tmpdir_short / "mi.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(path)
    try:
        ini = tmpdir_short / "u.ini"
        ini.write_text("[mi]\nudp =\nunix = mi.sock\n")
        result = run_server(["evsrv", "-c", str(ini)], tmpdir_short)
        assert result.returncode == 1
        assert result.stderr == (f"evsrv: {ini}: [mi] unix: cannot listen on {path}: "
                                 "another process is serving it\n")
    finally:
        live.close()


def test_stale_unix_socket_is_replaced(server_process):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first = server_process()
    path = first.ini.parent / "mi.sock"
    first.stop()
    stale.bind(str(path))
    stale.close()  # leaves a dead socket file behind, as a crash would
    second = server_process()
    reply = mi_call(second.udp, "which")
    assert "event_subscribe" in reply["result"]


def test_version_names_evsrv_then_twisted(capsys):
    import twisted
    with pytest.raises(SystemExit) as stop:
        Options().parseOptions(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"evsrv {__version__}", f"Twisted {twisted.__version__}, Python {sys.version.split()[0]}"]


def test_print_config_prints_the_production_ini(capsys):
    with pytest.raises(SystemExit) as stop:
        Options().parseOptions(["--print-config"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == production_config()
    assert "--print-config" in str(Options())


def test_production_ini_is_valid(tmpdir_short):
    # its directories exist only under systemd (RuntimeDirectory,
    # StateDirectory): moved under a scratch directory, it must load as is
    text = production_config()
    for path in ("/run/evsrv", "/var/lib/evsrv"):
        assert path in text
        (tmpdir_short / path.strip("/")).mkdir(parents=True)
        text = text.replace(path, str(tmpdir_short / path.strip("/")))
    config = make_config(text, tmpdir_short)
    assert config.mi.unix == [tmpdir_short / "run" / "evsrv" / "mi.sock"]
    assert config.store.directory == tmpdir_short / "var" / "lib" / "evsrv"
    assert config.script is None
    assert config.http.listen == ("127.0.0.1", 8888)


def _listener_lines(server_factory, text):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        server_factory(text)
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if "listening on" in e.get("log_format", "")]


HTTP_INI = BASE_INI + "[http]\nlisten = 127.0.0.1:0\n"


def test_start_up_names_every_listener(server_factory, tmpdir_short):
    from twisted.logger import formatEvent
    lines = [formatEvent(e) for e in _listener_lines(server_factory, HTTP_INI)]
    base = re.match(r"HTTP listening on (http://127\.0\.0\.1:\d+)/", lines[2]).group(1)
    assert re.fullmatch(r"MI listening on udp:127\.0\.0\.1:\d+", lines[0])
    assert lines[1:] == [f"MI listening on unix:{tmpdir_short / 'mi.sock'}",
                         f"HTTP listening on {base}/mi (MI)",
                         f"HTTP listening on {base}/metrics (metrics)",
                         f"HTTP listening on {base}/status (status page)"]


@pytest.mark.parametrize("paths, served", [
    ("mi_path =\nstatus_path =\n", "/metrics (metrics)"),
    ("mi_path =\nstatus_path =\nmetrics_path =\n",
     "/ (nothing: mi_path, metrics_path and status_path are off)"),
])
def test_start_up_lists_only_what_the_site_serves(server_factory, paths, served):
    from twisted.logger import formatEvent
    lines = [formatEvent(e) for e in _listener_lines(server_factory, HTTP_INI + paths)
             if e["log_format"].startswith("HTTP")]
    assert len(lines) == 1 and lines[0].endswith(served), lines


LOG_LEVEL_INI = BASE_INI + "[http]\nlisten = 127.0.0.1:0\n[store]\nbackend = none\n"


def _start(argv, log_path, cwd, deadline=20.0):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with open(cwd / "stdout.log", "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=str(cwd))
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if "started:" in text:
            return process, text
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError("evsrv did not start:\n" + (cwd / "stdout.log").read_text())


# Under each runner, a failed unix send and an HTTP request, both logged at
# debug: shown only when asked for (twist --log-level=debug), never by
# default, twistd included (which has no --log-level).
RUNNERS = {
    "twistd": (["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="],
               "stdout.log", False),
    "twistd --logfile": (["-c", "from twisted.scripts.twistd import run; run()", "-n",
                          "--pidfile=", "--logfile=evsrv.log"], "evsrv.log", False),
    "twist": (["-m", "twisted", "--log-format=text"], "stdout.log", False),
    "twist --log-level=debug": (["-m", "twisted", "--log-format=text", "--log-level=debug"],
                                "stdout.log", True),
}


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_debug_lines_only_when_asked_for(tmpdir_short, runner):
    args, log_name, debug = RUNNERS[runner]
    ini = tmpdir_short / "evsrv.ini"
    ini.write_text(LOG_LEVEL_INI)
    log_path = tmpdir_short / log_name
    process, text = _start([sys.executable, *args, "evsrv", "-c", str(ini)], log_path,
                           tmpdir_short)
    try:
        udp = re.search(r"MI listening on udp:([0-9.]+):(\d+)", text)
        udp = (udp.group(1), int(udp.group(2)))
        status = re.search(r"HTTP listening on (\S+/status) ", text).group(1)
        dead = f"unix:{tmpdir_short / 'nobody.sock'}"
        assert mi_call(udp, "event_subscribe", ["E_TEST", dead, 60])["result"] == "OK"
        assert mi_call(udp, "raise_event", ["E_TEST", {"n": 1}])["result"] == "OK"
        with urllib.request.urlopen(status, timeout=5) as response:
            assert response.status == 200
        # the send did fail (so that its debug line was emitted)
        reply = mi_call(udp, "subscribers_stats")
        assert '"failed": 1' in json.dumps(reply["result"]), reply
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    text = log_path.read_text()
    assert "subscribed to E_TEST" in text  # info is there
    debug_lines = [line for line in text.splitlines() if "#debug]" in line]
    if debug:
        assert any("send to " + dead + " failed" in line for line in debug_lines), text
        assert any("HTTP GET /status 200" in line for line in debug_lines), text
    else:
        assert not debug_lines, text
    if log_name != "stdout.log":  # --logfile still honoured: nothing on stdout
        assert "started:" not in (tmpdir_short / "stdout.log").read_text()


def test_the_evsrv_command_leaves_the_reactor_to_twist():
    # `evsrv --reactor=NAME` works only if nothing installed the default
    # reactor before twist parses its options
    check = subprocess.run(
        [sys.executable, "-c", "import sys, evsrv.run, evsrv.__main__; "
                               "sys.exit('twisted.internet.reactor' in sys.modules)"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
