"""
The routing script: route kinds on a task.Clock, the raise_event
attrs/values semantics, errors, nesting, reload, and the shipped examples.
"""

import json
import textwrap
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.python.failure import Failure

from evsrv.evi import Param
from evsrv.script import (EventContext, EventTimeout, ScriptError, ScriptLoadError, ScriptRunner,
                          TooManyWaiters, event_params)
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

    def make(text, start=True, **options):
        evi, clock, recorder = memory_evi()
        script = LateBinding("the routing script")
        route = RouteTransport("route", evi.statistics, script)
        evi.transports["route"] = route
        path = tmp_path / "routes.py"
        path.write_text(textwrap.dedent(text))
        runner = ScriptRunner(path, evi, clock, evi.statistics, **options)
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


# -- event-based routing: notify_on_event, wait_for_event ---------------------------------


WAITING = """
    seen = []
    @route("got")
    def got(event):
        seen.append((event.name, event.as_dict(), [p.value for p in event]))
"""


def script_globals(runner):
    """
    The running script's namespace (its API, its module-level names).
    """
    return runner.routes.named["got"].__globals__


def fired(d):
    """
    What a Deferred fired with so far (C{[]} if it has not); its result
    goes on down the chain, a failure is taken here.
    """
    out = []

    def keep(result):
        out.append(result)
        return None if isinstance(result, Failure) else result
    d.addBoth(keep)
    return out


@pytest.mark.parametrize("filters", [
    {"ip": "10.0.*", "port": "5060"},
    {"ip": "10.0.*", "port": 5060},                  # an int glob is its text
    ["ip=10.0.*", "port=5060"],
    ["ip=10.0.[0-9].*", "port=50?0"],
])
def test_notify_on_event_runs_the_route_when_every_filter_matches(scripted, filters):
    runner, evi, clock, recorder = scripted(WAITING)
    g = script_globals(runner)
    g["notify_on_event"]("E_X", filters, "got", 30)
    for params in ({"ip": "10.1.0.1", "port": 5060},      # ip differs
                   {"ip": "10.0.0.1", "port": 5061},      # port differs
                   {"ip": "10.0.0.1"},                    # port missing
                   {"port": 5060, "other": "10.0.0.1"}):  # ip missing
        result_of(evi.raise_event("E_X", params))
    assert g["seen"] == []
    result_of(evi.raise_event("E_X", {"ip": "10.0.0.1", "port": 5060, "extra": "x"}))
    assert g["seen"] == [("E_X", {"ip": "10.0.0.1", "port": 5060, "extra": "x"},
                          ["10.0.0.1", 5060, "x"])]


def test_a_waiter_fires_once_then_is_gone_and_raises_cost_nothing_again(scripted):
    runner, evi, clock, recorder = scripted(WAITING)
    g = script_globals(runner)
    g["notify_on_event"]("E_X", None, "got", 30)
    assert evi.has_subscribers("E_X") and evi.probe("E_X") == 1  # MI raise_event not refused
    result_of(evi.raise_event("E_X", ["one"]))
    result_of(evi.raise_event("E_X", ["two"]))
    assert [values for _, _, values in g["seen"]] == [["one"]]
    assert len(runner.waiters) == 0 and evi.statistics.value("script:waiters") == 0
    assert evi._watchers == {}  # unwatched: the raise path is back to one dict test
    assert not evi.has_subscribers("E_X") and clock.getDelayedCalls() == []


def test_notify_on_event_times_out_without_running_the_route(scripted):
    runner, evi, clock, recorder = scripted(WAITING)
    g = script_globals(runner)
    g["notify_on_event"]("E_X", {"ip": "10.*"}, "got", 5)
    clock.advance(4.9)
    assert len(runner.waiters) == 1
    clock.advance(0.1)
    assert len(runner.waiters) == 0 and clock.getDelayedCalls() == []
    result_of(evi.publish("E_X") and evi.raise_event("E_X", {"ip": "10.0.0.1"}))
    assert g["seen"] == []  # not told of the timeout, and too late for the raise
    assert evi.statistics.value("script:waiters_timed_out") == 1


def test_wait_for_event_fires_with_named_params_as_a_dict(scripted):
    runner, evi, clock, recorder = scripted(WAITING)
    d = script_globals(runner)["wait_for_event"]("E_X", ["callid=c1"], 5)
    result_of(evi.raise_event("E_X", {"callid": "c2", "status": 200}))
    assert fired(d) == []
    result_of(evi.raise_event("E_X", {"callid": "c1", "status": 200}))
    assert fired(d) == [{"callid": "c1", "status": 200}]
    assert clock.getDelayedCalls() == []


def test_wait_for_event_with_unnamed_params_gives_a_list_and_filters_by_position(scripted):
    runner, evi, clock, recorder = scripted(WAITING)
    g = script_globals(runner)
    by_text = g["wait_for_event"]("E_U", ["2=50*"], 5)
    by_int = g["wait_for_event"]("E_U", {1: "sip:*", "2": "5060"}, 5)
    result_of(evi.raise_event("E_U", ["sip:a@x", 6060]))
    assert (fired(by_text), fired(by_int)) == ([], [])
    result_of(evi.raise_event("E_U", ["sip:a@x", 5060]))
    assert fired(by_text) == [["sip:a@x", 5060]] and fired(by_int) == [["sip:a@x", 5060]]
    nothing = g["wait_for_event"]("E_U", None, 5)
    result_of(evi.raise_event("E_U"))
    assert fired(nothing) == [{}]


def test_wait_for_event_times_out_with_a_timeout_error_the_script_can_catch(scripted):
    runner, evi, clock, recorder = scripted(WAITING + """
    outcomes = []
    @route("wait")
    def wait():
        d = wait_for_event("E_X", {"ip": "10.*"}, 2.5)
        d.addCallbacks(outcomes.append, lambda f: outcomes.append(f.trap(EventTimeout)))
    """)
    runner.call_route("wait")
    d = script_globals(runner)["wait_for_event"]("E_X", None, 2.5)
    clock.advance(2.5)
    failure = fired(d)[0]
    assert failure.check(EventTimeout) and issubclass(EventTimeout, TimeoutError)
    assert failure.getErrorMessage() == ("route script: wait_for_event 'E_X': no matching "
                                         "event within 2.5 s")
    assert script_globals(runner)["outcomes"] == [EventTimeout]
    assert len(runner.waiters) == 0 and clock.getDelayedCalls() == []


def test_cancelling_a_wait_drops_its_waiter(scripted):
    runner, evi, clock, recorder = scripted(WAITING)
    d = script_globals(runner)["wait_for_event"]("E_X", None, 5)
    d.cancel()
    assert fired(d)[0].check(defer.CancelledError)
    assert len(runner.waiters) == 0 and clock.getDelayedCalls() == [] and evi._watchers == {}
    result_of(evi.raise_event("E_X"))  # nothing left to fire


def test_one_raise_fires_the_waiters_it_matched_in_order_and_not_those_made_meanwhile(scripted):
    runner, evi, clock, recorder = scripted("""
        order = []
        @route("got")
        def got(event):
            order.append(("route", event["n"]))
            notify_on_event("E_X", None, "got", 5)  # waits for the next raise
        @route("start")
        def start():
            notify_on_event("E_X", None, "got", 5)
            wait_for_event("E_X", None, 5).addCallback(lambda p: order.append(("wait", p["n"])))
    """)
    runner.call_route("start")
    result_of(evi.raise_event("E_X", {"n": 1}))
    assert script_globals(runner)["order"] == [("route", 1), ("wait", 1)]
    result_of(evi.raise_event("E_X", {"n": 2}))
    assert script_globals(runner)["order"][2:] == [("route", 2)]
    assert len(runner.waiters) == 1


def test_the_number_of_waiters_is_bounded(scripted):
    runner, evi, clock, recorder = scripted(WAITING, max_waiters=2)
    g = script_globals(runner)
    g["notify_on_event"]("E_A", None, "got", 5)
    g["wait_for_event"]("E_B", None, 5)
    with pytest.raises(TooManyWaiters, match="2 waiters are waiting already"):
        g["wait_for_event"]("E_C", None, 5)
    assert g["TooManyWaiters"] is TooManyWaiters and issubclass(TooManyWaiters, ScriptError)
    result_of(evi.raise_event("E_A"))  # one fires: room again
    g["wait_for_event"]("E_C", None, 5)
    assert len(runner.waiters) == 2


def test_a_waiter_route_that_waits_again_and_raises_is_bounded_by_nesting(scripted,
                                                                         logged_errors):
    runner, evi, clock, recorder = scripted("""
        depth = []
        @route("got")
        def got(event):
            depth.append(1)
            notify_on_event("E_LOOP", None, "got", 5)
            raise_event("E_LOOP")
    """)
    script_globals(runner)["notify_on_event"]("E_LOOP", None, "got", 5)
    result_of(evi.raise_event("E_LOOP"))
    assert len(script_globals(runner)["depth"]) == 100
    assert "too many nested raises" in logged_errors.flush()[0]["log_format"]
    assert len(runner.waiters) == 1  # the last one made, for the next raise


@pytest.mark.parametrize("args, message", [
    (("E_X", "ip", "got", 5), "filter 'ip' is not a \"key=glob\" string"),
    (("E_X", ["=x"], "got", 5), "filter key '' is neither"),
    (("E_X", {0: "x"}, "got", 5), "filter key 0 is neither"),
    (("E_X", {"ip": None}, "got", 5), "the glob of filter 'ip' must be a str"),
    (("E_X", 7, "got", 5), "the filter must be a dict"),
    (("E_X", ["a=%d" % i for i in range(33)], "got", 5), "33 filters, more than 32"),
    (("E_X", None, "got", 0), "the timeout must be a number of seconds above 0"),
    (("E_X", None, "got", float("inf")), "the timeout must be"),
    (("E_X", None, "got", 86401), "at most 86400"),
    (("E_X", None, "nope", 5), "no route named 'nope'"),
    (("", None, "got", 5), "an event name must be a non-empty string"),
])
def test_notify_on_event_refuses_bad_arguments_clearly(scripted, args, message):
    runner, evi, clock, recorder = scripted(WAITING)
    with pytest.raises(ScriptError, match=message):
        script_globals(runner)["notify_on_event"](*args)
    assert len(runner.waiters) == 0 and clock.getDelayedCalls() == []


def test_waiting_at_the_top_level_of_the_script_is_refused(tmp_path):
    evi, clock, recorder = memory_evi()
    path = tmp_path / "routes.py"
    path.write_text('wait_for_event("E_X", None, 5)\n')
    with pytest.raises(ScriptLoadError, match="routes.py:1: ScriptError: .*not at the script's "
                                              "top level; call it from a route"):
        ScriptRunner(path, evi, clock, evi.statistics).prepare()


def test_events_named_by_waiters_are_published_at_load(scripted):
    runner, evi, clock, recorder = scripted("""
        def later():
            notify_on_event("E_W_A", None, "x", 1)
            wait_for_event("E_W_B", None, 1)
    """, start=False)
    assert evi.event("E_W_A") is not None and evi.event("E_W_B") is not None


def test_a_reload_drops_the_old_scripts_waiters_unfired(scripted):
    runner, evi, clock, recorder = scripted(WAITING)
    old = script_globals(runner)
    old["notify_on_event"]("E_X", None, "got", 30)
    d = old["wait_for_event"]("E_X", None, 30)
    runner.path.write_text(textwrap.dedent(WAITING))
    runner.reload()
    assert len(runner.waiters) == 0 and clock.getDelayedCalls() == [] and evi._watchers == {}
    result_of(evi.publish("E_X") and evi.raise_event("E_X"))
    clock.advance(60)
    assert old["seen"] == [] and fired(d) == []  # nothing called into the unloaded script
    with pytest.raises(ScriptError, match="the script that called it was reloaded"):
        old["wait_for_event"]("E_X", None, 5)  # an old script's leftover cannot wait again
    script_globals(runner)["wait_for_event"]("E_X", None, 5)  # the new one can


def test_stopping_drops_the_waiters_and_their_timers(scripted):
    runner, evi, clock, recorder = scripted(WAITING)
    g = script_globals(runner)
    g["notify_on_event"]("E_X", None, "got", 30)
    d = g["wait_for_event"]("E_Y", None, 30)
    runner.stopService()
    assert len(runner.waiters) == 0 and clock.getDelayedCalls() == [] and evi._watchers == {}
    assert fired(d) == []
    with pytest.raises(ScriptError, match="the server is not running"):
        g["wait_for_event"]("E_X", None, 5)


def test_the_documented_event_routing_example_works_as_written(scripted):
    from twisted.logger import formatEvent, globalLogPublisher
    text = (ROOT / "docs" / "scripting.md").read_text()
    section = text.split("### Event-based routing", 1)[1]
    runner, evi, clock, recorder = scripted(section.split("```python\n", 1)[1].split("```")[0])
    result_of(evi.subscribe("E_CALL_ANSWERED", "test:answers"))
    result_of(evi.raise_event("E_CALL_SETUP", {"callid": "c1"}))
    result_of(evi.raise_event("E_SIP_REPLY", {"callid": "c1", "status": 180}))
    result_of(evi.raise_event("E_SIP_REPLY", {"callid": "c1", "status": 200}))
    assert [params for _, params, _ in recorder.delivered] == [(Param("callid", "c1"),)]
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        runner.call_route("ask")
        result_of(evi.raise_event("E_PONG", {"node": "edge-1"}))
        runner.call_route("ask")
        clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [formatEvent(e) for e in logged if "pong" in formatEvent(e)] == [
        "pong from edge-1", "no pong within 5 s"]

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


WAITING_ROUTES = """\
@startup_route
def arm():
    notify_on_event("E_TRIGGER", {"ip": "10.0.*"}, "forward", 30)
    # never raised: left waiting, the server's stop must take its timer
    notify_on_event("E_TRIGGER", ["ip=192.0.2.*"], "forward", 30)

@route("forward")
def forward(event):
    raise_event("E_FORWARDED", {"ip": event["ip"], "via": "notify_on_event"})
"""


@pytest_twisted.inlineCallbacks
def test_an_mi_raise_runs_a_notify_on_event_route_whose_raise_reaches_a_udp_subscriber(
        server_factory, udp_collector, tmpdir_short):
    script = tmpdir_short / "waiting.py"
    script.write_text(WAITING_ROUTES)
    server = server_factory(SCRIPT_INI.format(path=script))
    sink = udp_collector()
    assert mi(server, "event_subscribe", ["E_FORWARDED", "udp:%s:%d" % sink.address, 60])[
        "result"] == "OK"
    # E_TRIGGER has no subscriber, only waiters: the MI raise is taken, not 480
    for ip in ("10.1.0.1", "10.0.0.7", "10.0.0.8"):
        params = json.dumps({"ip": ip})
        assert mi(server, "raise_event", ["E_TRIGGER", params])["result"] == "OK"
    data, _ = yield sink.next()
    assert json.loads(data) == {"jsonrpc": "2.0", "method": "E_FORWARDED",
                                "params": {"ip": "10.0.0.7", "via": "notify_on_event"}}
    stats = mi(server, "get_statistics", [["script:"]])["result"]
    assert (stats["script:waiters"], stats["script:route_errors"]) == (1, 0)  # once only
    assert sink.received == []


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
