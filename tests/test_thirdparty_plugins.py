"""
A third-party package (tests/thirdparty: a transport and a module in an
evsrv/plugins/ directory without __init__.py) found through
pluginPackagePaths, enabled from the ini, and used end to end by a real
server process.
"""

import json
import os
import socket

from evsrv.testing import ServerProcess
from tests.conftest import ROOT, udp_receiver

THIRDPARTY = ROOT / "tests" / "thirdparty"


def mi_call(address, method, params):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(5)
        s.sendto(json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                             "id": 1}).encode(), address)
        return json.loads(s.recv(65536))
    finally:
        s.close()


def test_thirdparty_transport_and_module_end_to_end(tmpdir_short):
    receiver = udp_receiver()
    ini = tmpdir_short / "acme.ini"
    ini.write_text(f"""\
[mi]
udp = 127.0.0.1:0
unix =
[events]
publish = E_TEST
[transports]
enabled = udp, acme
[transport:acme]
directory = {tmpdir_short}
[modules]
load = acme
[module:acme]
greeting = hi from acme
[script]
path = startup.py
""")
    # the module's startup raise needs a subscriber that exists at start-up
    (tmpdir_short / "startup.py").write_text(
        "@startup_route\ndef s():\n    subscribe_event('E_ACME_HELLO', "
        f"'udp:127.0.0.1:{receiver.getsockname()[1]}')\n")
    proc = ServerProcess(ini, pythonpath=os.pathsep.join([str(ROOT), str(THIRDPARTY)]))
    try:
        assert mi_call(proc.udp, "event_subscribe", ["E_TEST", "acme:audit", 60])["result"] == "OK"
        assert mi_call(proc.udp, "raise_event", ["E_TEST", ["x"]])["result"] == "OK"
        bad = mi_call(proc.udp, "event_subscribe", ["E_TEST", "acme:not a name", 60])
        assert bad["error"]["code"] == 400 and "not a plain name" in bad["error"]["data"]
        events = [e["name"] for e in mi_call(proc.udp, "events_list", [])["result"]["Events"]]
        assert "E_ACME_HELLO" in events
        # module: E_ACME_HELLO raised at start, after the script subscribed
        receiver.settimeout(10)
        assert json.loads(receiver.recv(1000)) == {
            "jsonrpc": "2.0", "method": "E_ACME_HELLO", "params": {"greeting": "hi from acme"}}
    finally:
        proc.stop()
        receiver.close()
    assert (tmpdir_short / "audit.log").read_bytes() == (
        b'{"jsonrpc":"2.0","method":"E_TEST","params":["x"]}\n')
