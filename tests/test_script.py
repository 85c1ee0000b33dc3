"""
The routing script: route kinds on a task.Clock, the raise_event
attrs/values semantics, errors, nesting, reload, and the shipped examples.
"""

import json
import textwrap
from pathlib import Path

import pytest
import pytest_twisted

from evsrv.evi import Param
from evsrv.script import EventContext, ScriptError, ScriptLoadError, ScriptRunner, event_params
from evsrv.script.transport import RouteTransport
from evsrv.testing import memory_evi
from evsrv.transports import LateBinding
from tests.test_evi import result_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def scripted(tmp_path):
    """
    Make a ScriptRunner on a Clock from script text; stopped at teardown.
    """
    runners = []

    def make(text, start=True):
        evi, clock, recorder = memory_evi()
        script = LateBinding("the routing script")
        route = RouteTransport("route", evi.statistics, script)
        evi.transports["route"] = route
        path = tmp_path / "routes.py"
        path.write_text(textwrap.dedent(text))
        runner = ScriptRunner(path, evi, clock, evi.statistics)
        runner.prepare()
        script.bind(runner)
        if start:
            runner.startService()
        runners.append(runner)
        return runner, evi, clock, recorder
    yield make
    for runner in runners:
        runner.stopService()


def subscribers(evi, name):
    return {s.socket: s.expire for s in evi.subscribers(evi.event(name))}


def test_startup_route_runs_once_and_its_subscription_never_expires(scripted):
    runner, evi, clock, recorder = scripted("""
        calls = []
        @startup_route
        def start():
            calls.append(1)
            subscribe_event("E_A", "test:monitor")
    """)
    assert evi.event("E_A") is not None  # published when the script loaded
    assert subscribers(evi, "E_A") == {"test:monitor": None}
    clock.advance(10 ** 7)
    evi.sweep()
    assert subscribers(evi, "E_A") == {"test:monitor": None}


def test_timer_route_refreshes_an_expiring_subscription(scripted):
    runner, evi, clock, recorder = scripted("""
        @timer_route("refresh", 3600)
        def refresh():
            subscribe_event("E_A", "test:refreshed", 1200)
    """)
    assert subscribers(evi, "E_A") == {}  # first run one interval after start
    clock.advance(3600)
    assert subscribers(evi, "E_A") == {"test:refreshed": 1200}
    clock.advance(1201)
    evi.sweep()
    assert subscribers(evi, "E_A") == {}  # down until the next refresh
    clock.advance(3600 - 1201)
    assert subscribers(evi, "E_A") == {"test:refreshed": 1200}


def test_event_route_receives_params_by_name_and_position(scripted):
    runner, evi, clock, recorder = scripted("""
        seen = []
        @event_route("E_X")
        def handle(event):
            seen.append((event.name, event["ip"], event[2], event.get("nope"),
                         event.fetch("ip", None), event.as_dict()))
    """)
    assert subscribers(evi, "E_X") == {"route:E_X": None}
    result_of(evi.raise_event("E_X", [("ip", "1.2.3.4"), ("n", 5)]))
    seen = runner.routes.events["E_X"].__globals__["seen"]
    assert seen == [("E_X", "1.2.3.4", 5, None, ["1.2.3.4", None], {"ip": "1.2.3.4", "n": 5})]


def test_mi_subscribe_of_a_route_makes_it_expire(scripted):
    runner, evi, clock, recorder = scripted("""
        @event_route("E_X")
        def handle(event):
            pass
    """)
    result_of(evi.subscribe("E_X", "route:E_X", 30, origin="mi"))
    assert subscribers(evi, "E_X") == {"route:E_X": 30}
    clock.advance(31)
    evi.sweep()
    assert subscribers(evi, "E_X") == {}


def test_route_socket_must_name_an_event_route(scripted):
    runner, evi, clock, recorder = scripted("x = 1\n")
    from evsrv.interfaces import BadSocket
    evi.publish("E_X")
    assert result_of(evi.subscribe("E_X", "route:E_NOPE", 30, origin="mi")).check(BadSocket)


def test_raise_event_forms(scripted):
    runner, evi, clock, recorder = scripted("""
        @startup_route
        def start():
            subscribe_event("E_R", "test:r")

        @route("fire")
        def fire():
            raise_event("E_R")
            raise_event("E_R", ["a", 7])
            raise_event("E_R", {"k": "v"})
            raise_event("E_R", ["from", "to"], ["alice", "bob"])
    """)
    runner.call_route("fire")
    assert [params for _, params, _ in recorder.delivered] == [
        (),
        (Param(None, "a"), Param(None, 7)),
        (Param("k", "v"),),
        (Param("from", "alice"), Param("to", "bob")),
    ]


def test_raise_event_length_mismatch_names_the_route_and_sends_nothing(scripted):
    runner, evi, clock, recorder = scripted("""
        @startup_route
        def start():
            subscribe_event("E_R", "test:r")

        @route("bad")
        def bad():
            raise_event("E_R", ["from", "to"], ["alice"])
    """)
    warnings = []
    from twisted.logger import globalLogPublisher
    globalLogPublisher.addObserver(warnings.append)
    try:
        assert runner.call_route("bad") is not None  # failed, logged, not raised
    finally:
        globalLogPublisher.removeObserver(warnings.append)
    assert recorder.delivered == []
    errors = [e["error"] for e in warnings if e.get("label") == "route[bad]"]
    assert errors == ["ScriptError: route route[bad]: raise_event E_R: 2 attribute name(s) "
                      "for 1 value(s); nothing was raised"]


def test_raise_event_returns_the_delivery_report(scripted):
    runner, evi, clock, recorder = scripted("""
        @startup_route
        def start():
            subscribe_event("E_R", "test:r")
    """)
    report = result_of(runner.raise_event("E_R", ["x"]))
    assert (report.subscribers, report.delivered) == (1, 1)


def test_a_failing_route_is_logged_with_file_and_line_and_others_go_on(scripted, logged_errors):
    from twisted.logger import globalLogPublisher
    warnings = []
    globalLogPublisher.addObserver(warnings.append)
    try:
        runner, evi, clock, recorder = scripted("""
            ok = []
            @event_route("E_X")
            def broken(event):
                return 1 / 0

            @timer_route("tick", 1)
            def tick():
                ok.append(1)
        """)
        report = result_of(evi.raise_event("E_X"))
        clock.advance(1)
    finally:
        globalLogPublisher.removeObserver(warnings.append)
    assert (report.failed, report.errors[0][1]) == (1, "the event route raised an error")
    assert runner.routes.timers["tick"][1].__globals__["ok"] == [1]
    texts = [e.get("where") for e in warnings if e.get("label") == "event_route[E_X]"]
    assert texts == [f"{runner.path}:5"]
    assert evi.statistics.value("script:route_errors") == 1


def test_nested_raises_are_bounded(scripted, logged_errors):
    runner, evi, clock, recorder = scripted("""
        depth = []
        @event_route("E_LOOP")
        def again(event):
            depth.append(1)
            raise_event("E_LOOP")
    """)
    result_of(evi.raise_event("E_LOOP"))
    assert len(runner.routes.events["E_LOOP"].__globals__["depth"]) == 100
    assert evi.statistics.value("script:route_errors") == 1  # the 101st raise, logged
    assert "too many nested raises" in logged_errors.flush()[0]["log_format"]


def test_events_named_in_the_script_are_published_at_load(scripted):
    runner, evi, clock, recorder = scripted("""
        def later():
            raise_event("E_LATER_A")
            subscribe_event("E_LATER_B", "test:x")
        publish_event("E_COMPUTED_" + "NAME")
    """, start=False)
    for name in ("E_LATER_A", "E_LATER_B", "E_COMPUTED_NAME"):
        assert evi.event(name) is not None


@pytest.mark.parametrize("text, message", [
    ("def broken(:\n", "routes.py:1: invalid syntax"),
    ("x = 1\nundefined_name\n", "routes.py:2: NameError"),
])
def test_a_script_that_fails_to_load_says_where(tmp_path, text, message):
    evi, clock, recorder = memory_evi()
    path = tmp_path / "routes.py"
    path.write_text(text)
    with pytest.raises(ScriptLoadError, match=message):
        ScriptRunner(path, evi, clock, evi.statistics).prepare()


def test_reload_swaps_routes_keeps_mi_subscriptions_and_survives_a_bad_script(scripted):
    runner, evi, clock, recorder = scripted("""
        @event_route("E_OLD")
        def old(event):
            pass
        @timer_route("t", 5)
        def t():
            subscribe_event("E_T", "test:old-timer", 100)
    """)
    result_of(evi.subscribe("E_OLD", "test:mi-client", 600, origin="mi"))
    runner.path.write_text(textwrap.dedent("""
        @event_route("E_NEW")
        def new(event):
            pass
    """))
    runner.reload()
    assert subscribers(evi, "E_OLD") == {"test:mi-client": 600}  # script's route:E_OLD gone
    assert subscribers(evi, "E_NEW") == {"route:E_NEW": None}
    clock.advance(10)
    assert subscribers(evi, "E_T") == {}  # the old timer stopped
    runner.path.write_text("def broken(:\n")
    with pytest.raises(ScriptLoadError):
        runner.reload()
    assert runner.has_event_route("E_NEW")  # the running script stays


def test_event_params_helper():
    assert event_params() == ()
    assert event_params(["a"]) == (Param(None, "a"),)
    assert event_params(["n"], [1]) == (Param("n", 1),)
    with pytest.raises(ScriptError):
        event_params(["a", "b"], [1])
    context = EventContext("E", (Param(None, "u1"), Param("k", 2), Param(None, "u2")))
    assert context.fetch(None, "k", None, None) == ["u1", 2, "u2", None]
    assert (context[1], context[3], context[4], len(context)) == ("u1", "u2", None, 3)


# -- through a server ---------------------------------------------------------------------


SCRIPT_INI = """\
[mi]
udp = 127.0.0.1:0
unix =
[script]
path = {path}
"""


def mi(server, method, params=None):
    request = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        request["params"] = params
    return json.loads(result_of(server.dispatcher.handle(json.dumps(request).encode())))


def test_reload_routes_over_mi(server_factory, tmpdir_short):
    script = tmpdir_short / "r.py"
    script.write_text('@event_route("E_A")\ndef a(event):\n    pass\n')
    server = server_factory(SCRIPT_INI.format(path=script))
    assert mi(server, "event_subscribe", ["E_A", "udp:127.0.0.1:9", 60])["result"] == "OK"
    script.write_text("def broken(:\n")
    reply = mi(server, "reload_routes")
    assert reply["error"]["code"] == 500 and "r.py:1" in reply["error"]["data"]
    script.write_text('@event_route("E_B")\ndef b(event):\n    pass\n')
    assert mi(server, "reload_routes")["result"] == "OK"
    listed = {e["name"]: [s["socket"] for s in e["Subscribers"]]
              for e in mi(server, "subscribers_list")["result"]["Events"]}
    assert listed == {"E_A": ["udp:127.0.0.1:9"], "E_B": ["route:E_B"]}


@pytest_twisted.inlineCallbacks
def test_shipped_examples_produce_the_documented_notifications(server_factory, udp_collector,
                                                               tmpdir_short):
    """
    etc/routes.py: the SIP-message bridge raises the accounting trio, and the
    load check raises E_SCRIPT_TCP_LOAD, to a real UDP subscriber.
    """
    server = server_factory(SCRIPT_INI.format(path=ROOT / "etc" / "routes.py")
                            + "[modules]\nload = core\n")
    sink = udp_collector()
    for name in ("E_SCRIPT_CALL_START", "E_SCRIPT_CALL_ESTABLISHED", "E_SCRIPT_CALL_STOP",
                 "E_SCRIPT_TCP_LOAD"):
        assert mi(server, "event_subscribe", [name, "udp:%s:%d" % sink.address, 60])[
            "result"] == "OK"
    call = {"from": "sip:alice@x", "to": "sip:bob@x", "callid": "c1"}
    for method, status in (("INVITE", 0), ("INVITE", 200), ("BYE", 0)):
        params = json.dumps(dict(call, method=method, status=status))
        assert mi(server, "raise_event", ["E_SIP_MESSAGE", params])["result"] == "OK"
    for stage in ("START", "ESTABLISHED", "STOP"):
        data, _ = yield sink.next()
        assert json.loads(data) == {"jsonrpc": "2.0", "method": f"E_SCRIPT_CALL_{stage}",
                                    "params": call}
    # The load check, with the load statistic forced over the limit.
    core = server.modules["core"]
    core._load = 95.0
    runner = server.script
    runner._run("timer_route[check_load]", runner.routes.timers["check_load"][1])
    data, _ = yield sink.next()
    assert json.loads(data) == {"jsonrpc": "2.0", "method": "E_SCRIPT_TCP_LOAD",
                                "params": {"limit": 80, "load": 95}}
    # The permanent startup subscription, and the timer-refreshed one.
    runner._run("timer_route[refresh_subscription]",
                runner.routes.timers["refresh_subscription"][1])
    assert runner.routes.timers["refresh_subscription"][0] == 3600
    listed = mi(server, "subscribers_list", ["E_PIKE_BLOCKED"])["result"]["Event"]["Subscribers"]
    assert {"socket": "udp:127.0.0.1:8888", "expire": "never"} in listed
    assert {"socket": "udp:127.0.0.1:8889", "expire": 1200, "ttl": 1200} in listed
    assert {"socket": "route:E_PIKE_BLOCKED", "expire": "never"} in listed
