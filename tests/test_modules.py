"""
Module plugins: pike (MI flood detection) and core (threshold events).
"""

import json

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from evsrv.config import ConfigError
from evsrv.mi.controller import Command, MIController
from evsrv.modules import ModuleContext
from evsrv.modules.core import CoreThresholds
from evsrv.testing import memory_evi
from tests.conftest import BASE_INI, make_config, until
from tests.test_evi import result_of


def mi_request(method, params=None, request_id=1):
    request = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        request["params"] = params
    return json.dumps(request).encode()


PIKE_INI = """\
[mi]
udp = 127.0.0.1:0
unix = mi.sock
[modules]
load = pike
[module:pike]
window = 60
limit = 5
block_time = 30
"""


def pike_on_clock(server):
    """
    Put the running server's pike on a Clock (its idle-entry cleaner stays on
    the reactor), so the one-error-per-second cap is exact in a socket test.
    """
    clock = Clock()
    server.modules["pike"].clock = clock
    return clock


@pytest_twisted.inlineCallbacks
def test_pike_blocks_a_flooding_source_and_raises_once(server_factory, udp_collector):
    server = server_factory(PIKE_INI)
    clock = pike_on_clock(server)
    addr = server.mi_udp_address()
    sink = udp_collector()
    flood = udp_collector()
    # The subscriber subscribes through the dispatcher (not counted by pike).
    reply = yield server.dispatcher.handle(
        mi_request("event_subscribe", ["E_PIKE_BLOCKED", "udp:%s:%d" % sink.address, 60]))
    assert json.loads(reply)["result"] == "OK"
    for i in range(5):
        reply, _ = yield flood.request(mi_request("which", request_id=i), addr)
        assert json.loads(reply)["id"] == i
    for i in range(5, 10):
        flood.transport.write(mi_request("which", request_id=i), addr)
    # the request that crossed the limit gets the error; the four others of
    # the same second get nothing (a spoofed flood must not be reflected)
    reply, _ = yield flood.next()
    assert json.loads(reply) == {"jsonrpc": "2.0", "id": 5, "error": {
        "code": 429, "message": "Too many requests",
        "data": "127.0.0.1 sent more than 5 MI requests in 60 s; "
                "blocked for 30 more seconds"}}
    data, _ = yield sink.next()
    assert data == b'{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"127.0.0.1"}}'
    yield until(lambda: server.statistics.value("pike:requests_ignored") == 4)
    assert server.statistics.value("pike:requests_refused") == 1
    assert server.statistics.value("mi:requests_filtered") == 5
    listed = json.loads((yield server.dispatcher.handle(mi_request("pike_list"))))["result"]
    assert [b["ip"] for b in listed["Blocked"]] == ["127.0.0.1"]
    assert listed["Blocked"][0]["expires"] == 30
    assert server.statistics.value("pike:blocks") == 1
    # a second later, the next request is answered again, with the time left
    clock.advance(1)
    reply, _ = yield flood.request(mi_request("which", request_id=10), addr)
    assert json.loads(reply)["error"]["data"].endswith("blocked for 29 more seconds")
    assert json.loads(reply)["id"] == 10
    # unblocked through the MI: answered again, and the next datagram the
    # flooder gets is that answer (none of the ignored requests was answered)
    reply = yield server.dispatcher.handle(mi_request("pike_rm", ["127.0.0.1"]))
    assert json.loads(reply)["result"] == "OK"
    reply, _ = yield flood.request(mi_request("which", request_id=99), addr)
    assert json.loads(reply)["id"] == 99
    assert "result" in json.loads(reply)
    reply = yield server.dispatcher.handle(mi_request("pike_rm", ["10.9.9.9"]))
    assert json.loads(reply)["error"] == {"code": 404, "message": "IP not blocked"}
    assert len(sink.received) == 0  # raised once per block


def test_pike_counts_per_window_and_forgets(tmpdir_short):
    from evsrv.modules.pike import Pike
    evi, clock, recorder = memory_evi()
    context = ModuleContext(clock, evi.statistics, evi, MIController(evi.statistics))
    pike = Pike(context, window=2, limit=3, block_time=10, max_sources=2)
    pike.startService()
    try:
        result_of(evi.subscribe("E_PIKE_BLOCKED", "test:watch"))
        source = ("10.0.0.1", 5000)
        assert all(pike.allow(source) is True for _ in range(3))
        clock.advance(2)  # a new window
        assert all(pike.allow(source) is True for _ in range(3))
        assert not pike.allow(source)
        assert not pike.allow(source)
        assert len(recorder.delivered) == 1  # raised once per block
        clock.advance(10)
        assert pike.allow(source) is True
        assert pike.allow("/unix/client.sock") is True  # local UNIX clients are not counted
        pike.allow(("10.0.0.2", 1))
        assert pike.allow(("10.0.0.3", 1)) is True  # over max_sources: let through, counted
        assert evi.statistics.value("pike:untracked") == 1
        clock.advance(4)
        assert pike._sources == {}  # idle entries forgotten
    finally:
        pike.stopService()


def test_pike_answers_a_blocked_source_at_most_once_a_second():
    """
    The 429 refusal carries an error to answer once per second per source;
    in between, the refusal is rate-capped (the datagram MI sends nothing)
    and counted as ignored. Sources are capped independently.
    """
    from evsrv.mi.dispatch import Refusal
    from evsrv.modules.pike import Pike
    evi, clock, _ = memory_evi()
    context = ModuleContext(clock, evi.statistics, evi, MIController(evi.statistics))
    pike = Pike(context, window=4, limit=2, block_time=5, max_sources=10)
    a, b = ("10.0.0.1", 1), ("2001:db8::1", 2, 0, 0)
    assert pike.allow(a) is True and pike.allow(a) is True
    first = pike.allow(a)
    assert isinstance(first, Refusal) and not first.rate_capped
    assert (first.error.code, first.error.message) == (429, "Too many requests")
    assert first.error.data == ("10.0.0.1 sent more than 2 MI requests in 4 s; "
                                "blocked for 5 more seconds")
    clock.advance(0.5)
    capped = [pike.allow(a) for _ in range(50)]
    assert all(r.rate_capped and r.error is first.error for r in capped)
    # another source is answered on its own schedule
    assert pike.allow(b) is True and pike.allow(b) is True
    assert not pike.allow(b).rate_capped
    clock.advance(0.5)  # one second after the first error
    again = pike.allow(a)
    assert not again.rate_capped
    assert again.error.data.endswith("blocked for 4 more seconds")
    clock.advance(3.5)
    last = pike.allow(a)
    assert last.error.data.endswith("blocked for 1 more second")
    clock.advance(0.5)  # block (and window) over
    assert pike.allow(a) is True
    stats = evi.statistics
    assert stats.value("pike:requests_refused") == 4
    assert stats.value("pike:requests_ignored") == 50
    assert stats.value("pike:blocks") == 2  # a and b


def test_unknown_module_or_key_is_a_startup_error(tmpdir_short):
    with pytest.raises(ConfigError, match=r"\[modules\] load: unknown module 'nope' "
                                          r"\(known: .*core.*pike"):
        make_config("[modules]\nload = nope\n", tmpdir_short)
    with pytest.raises(ConfigError, match=r"\[module:pike\] colour: unknown key"):
        make_config("[modules]\nload = pike\n[module:pike]\ncolour = red\n", tmpdir_short)
    with pytest.raises(ConfigError, match=r"\[module:pike\] limit: bad value '0': must be"):
        make_config("[modules]\nload = pike\n[module:pike]\nlimit = 0\n", tmpdir_short)


def test_a_module_that_refuses_its_settings_names_the_file_section_and_key(tmpdir_short):
    from evsrv.config import parse_config
    from evsrv.interfaces import PluginConfigError
    from evsrv.modules import ModuleFactory
    from evsrv.server import create_server_from_config, module_factories, transport_factories

    def picky(settings, context):
        raise PluginConfigError("certificate", f"no such file: {settings['certificate']}")

    def whole(settings, context):
        raise PluginConfigError(None, "needs a [module:core] too")
    modules = dict(module_factories(),
                   picky=ModuleFactory("picky", {"certificate": ("x.pem", str, "a file")}, picky),
                   whole=ModuleFactory("whole", {}, whole))
    source = "/etc/evsrv/evsrv.ini"
    for name, expected in (("picky", f"{source}: [module:picky] certificate: no such file: x.pem"),
                           ("whole", f"{source}: [module:whole]: needs a [module:core] too")):
        # with a store: it is opened before the modules are built, and closed again
        text = BASE_INI + f"[modules]\nload = {name}\n[store]\ndirectory = state\n"
        config = parse_config(text, source, tmpdir_short, transport_factories(), modules)
        with pytest.raises(ConfigError) as raised:
            create_server_from_config(config, Clock(), modules=modules)
        assert str(raised.value) == expected


@pytest.fixture
def core():
    evi, clock, recorder = memory_evi("E_CORE_THRESHOLD", "E_CORE_PKG_THRESHOLD", "E_SLOW")
    controller = MIController(evi.statistics, clock=clock)
    context = ModuleContext(clock, evi.statistics, evi, controller)
    memory = [100]
    module = CoreThresholds(context, exec_threshold_ms=500, memory_threshold=80,
                            memory_size=1000, check_interval=5, memory=lambda: memory[0],
                            cpu=lambda: clock.seconds() * 0.25)
    result_of(evi.subscribe("E_CORE_THRESHOLD", "test:t"))
    result_of(evi.subscribe("E_CORE_PKG_THRESHOLD", "test:m"))
    module.startService()
    yield module, evi, clock, recorder, controller, memory
    module.stopService()


def raised(recorder, name):
    return [dict(p for p in params) for event, params, _ in recorder.delivered if event == name]


def test_core_threshold_for_slow_mi_commands_once_per_crossing(core):
    module, evi, clock, recorder, controller, memory = core
    pending = []

    def slow(call):
        d = Deferred()
        pending.append(d)
        return d
    controller.register(Command("slow", [[]], slow))
    controller.register(Command("fast", [[]], lambda call: "OK"))

    def run_slow():
        d = controller.execute("slow", None)
        clock.advance(0.6)
        pending.pop().callback("OK")
        return result_of(d)
    run_slow()
    run_slow()  # still above: not raised again
    assert raised(recorder, "E_CORE_THRESHOLD") == [
        {"source": "mi", "time": 600000, "extra": "slow"}]
    result_of(controller.execute("fast", None))  # back under
    run_slow()
    assert len(raised(recorder, "E_CORE_THRESHOLD")) == 2


def test_core_threshold_for_slow_deliveries(core):
    module, evi, clock, recorder, controller, memory = core
    recorder.asynchronous = True
    result_of(evi.subscribe("E_SLOW", "test:slow"))
    d = evi.raise_event("E_SLOW")
    clock.advance(2)
    recorder.asynchronous = False
    pending, recorder.pending = recorder.pending, []
    for deferred, outcome in pending:
        deferred.callback(outcome)
    assert result_of(d).delivered == 1
    assert raised(recorder, "E_CORE_THRESHOLD") == [
        {"source": "evi", "time": 2000000, "extra": "E_SLOW to 1 subscriber(s)"}]


def test_core_memory_threshold_once_per_crossing_and_load(core):
    module, evi, clock, recorder, controller, memory = core
    memory[0] = 850
    clock.advance(5)
    clock.advance(5)  # still above
    memory[0] = 100
    clock.advance(5)
    memory[0] = 900
    clock.advance(5)
    events = raised(recorder, "E_CORE_PKG_THRESHOLD")
    assert [(e["usage"], e["threshold"], e["used"], e["size"]) for e in events] == [
        (85, 80, 850, 1000), (90, 80, 900, 1000)]
    assert evi.statistics.value("load:cpu") == 25
