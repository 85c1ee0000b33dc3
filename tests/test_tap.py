"""
Launching: the twistd plugin, Options, and start-up errors (one line, exit 1).
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from twisted.plugin import IPlugin, getPlugins

from evsrv.tap import Options
from tests.conftest import BASE_INI, ROOT


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
