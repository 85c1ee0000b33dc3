"""
The core MI commands and the evsrv-only subscribers_stats, through the dispatcher.
"""

import json
import os


from tests.test_evi import result_of


def call(server, method, params=None):
    request = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        request["params"] = params
    reply = json.loads(result_of(server.dispatcher.handle(json.dumps(request).encode())))
    return reply.get("result", reply.get("error"))


def text(server, data: bytes) -> bytes:
    return result_of(server.dispatcher.handle(data))


def test_which_lists_commands_and_aliases(server):
    names = call(server, "which")
    for name in ("event_subscribe", "events_list", "subscribers_list", "raise_event",
                 "which", "help", "version", "uptime", "ps", "get_statistics",
                 "list_statistics", "reset_statistics", "subscribers_stats",
                 "evi:subscribe", "evi:list", "evi:subscribers", "evi:raise"):
        assert name in names
    assert text(server, b":which:\n").startswith(b"200 OK\n:: event_subscribe\n")


def test_aliases_run_the_same_commands(server):
    assert call(server, "evi:list") == call(server, "events_list")
    assert call(server, "evi:subscribe", ["E_TEST", "udp:127.0.0.1:9", 5]) == "OK"
    assert call(server, "evi:subscribers", ["E_TEST"])["Event"]["Subscribers"][0]["expire"] == 5


def test_help(server):
    assert "help" in call(server, "help")
    result = call(server, "help", ["event_subscribe"])
    assert result["Exported by"] == "core" and "expire" in result["Help"]
    assert call(server, "help", ["nope"]) == {"code": 404, "message": "MI command not found"}


def test_version_uptime_ps(server):
    assert call(server, "version")["Server"].startswith("evsrv 0.1.0")
    uptime = call(server, "uptime")
    assert set(uptime) == {"Now", "Up since", "Up time"} and uptime["Up time"].endswith("[sec]")
    assert call(server, "ps")["Processes"][0]["PID"] == os.getpid()


def test_statistics_get_list_reset(server):
    call(server, "event_subscribe", ["E_TEST", "udp:127.0.0.1:9", 60])
    call(server, "raise_event", ["E_TEST"])
    stats = call(server, "get_statistics", {"statistics": ["evi:", "evi_udp:", "mi:requests"]})
    assert stats["evi:events_raised"] == 1
    assert stats["evi:subscriptions"] == 1
    assert stats["evi_udp:notifications_sent"] == 1
    assert stats["mi:requests"] >= 3
    assert "evi_unix:notifications_dropped" in call(server, "get_statistics",
                                                   {"statistics": ["all"]})
    assert call(server, "get_statistics", [["no:such"]]) == {}
    kinds = call(server, "list_statistics")
    assert kinds["evi:events_raised"] == "incremental"
    assert kinds["evi:subscriptions"] == "non-incremental"
    assert call(server, "reset_statistics", {"statistics": ["evi:events_raised"]}) == "OK"
    assert call(server, "get_statistics", {"statistics": ["evi:events_raised", "evi:subscriptions"]}) == {
        "evi:events_raised": 0, "evi:subscriptions": 1}
    assert text(server, b":get_statistics:\nevi:events_raised\n") == (
        b"200 OK\nevi:events_raised:: 0\n")


def test_mi_errors_are_counted(server):
    before = call(server, "get_statistics", [["mi:errors"]])["mi:errors"]
    call(server, "raise_event", ["E_NOPE"])
    assert call(server, "get_statistics", [["mi:errors"]])["mi:errors"] == before + 1


def test_subscribers_stats(server):
    call(server, "event_subscribe", ["E_TEST", "unix:/nonexistent/x.sock", 60])
    call(server, "raise_event", ["E_TEST", ["a"]])
    rows = call(server, "subscribers_stats", ["E_TEST"])["Subscribers"]
    assert rows == [{"event": "E_TEST", "socket": "unix:/nonexistent/x.sock", "sent": 0,
                     "failed": 1, "dropped": 0, "last_error": "No such file or directory"}]
    assert call(server, "subscribers_stats")["Subscribers"] == rows
    assert call(server, "subscribers_stats", ["E_NOPE"]) == {
        "code": 404, "message": "Event not published"}


def test_default_expire_is_3600(server):
    call(server, "event_subscribe", ["E_TEST", "udp:127.0.0.1:9"])
    sub = call(server, "subscribers_list", ["E_TEST", "udp:127.0.0.1:9"])["Event"]["Subscriber"]
    assert sub == {"socket": "udp:127.0.0.1:9", "expire": 3600, "ttl": 3600}


# -- what each command answers, exactly ------------------------------------------------


def test_every_command_has_its_own_help(server):
    from evsrv.mi.controller import Command
    helps = {}
    for name in server.dispatcher.controller.names:
        helps[name] = call(server, "help", [name])["Help"]
    assert "No help available" not in helps.values()
    assert len(set(helps.values())) == len(helps)  # each says something of its own
    server.dispatcher.controller.register(Command("undocumented", [[]], lambda c: "OK"))
    assert call(server, "help", ["undocumented"]) == {
        "Help": "No help available", "Exported by": "core"}


def test_ps_and_uptime_exactly(server):
    assert call(server, "ps") == {"Processes": [
        {"ID": 0, "PID": os.getpid(), "Type": "evsrv (MI, event interface, transports)"}]}
    seconds = int(call(server, "uptime")["Up time"].split()[0])
    assert 0 <= seconds < 60
    assert 0 <= call(server, "get_statistics", [["core:uptime"]])["core:uptime"] < 60


def test_list_statistics_of_one_group(server):
    kinds = call(server, "list_statistics", {"statistics": ["policy:"]})
    assert kinds == {"policy:destinations_refused": "incremental"}
    assert len(call(server, "list_statistics")) > len(kinds)


def test_a_subscriber_with_one_second_left_is_listed_with_its_ttl(server):
    assert call(server, "event_subscribe", ["E_TEST", "udp:127.0.0.1:9", 1]) == "OK"
    listed = call(server, "subscribers_list", ["E_TEST", "udp:127.0.0.1:9"])
    assert listed["Event"]["Subscriber"] == {"socket": "udp:127.0.0.1:9", "expire": 1, "ttl": 1}


def test_mi_params_numbers_in_an_array():
    from evsrv.evi import Param
    from evsrv.mi.commands import mi_params
    assert mi_params([1.5, 2.0, -3, 1e400]) == (
        Param(None, "1.5"), Param(None, "2"), Param(None, "-3"), Param(None, "inf"))


def test_a_refused_destination_is_403_and_logged(server_factory):
    from twisted.logger import formatEvent, globalLogPublisher
    from tests.conftest import BASE_INI
    server = server_factory(BASE_INI + "[policy]\ndeny_destinations = 127.0.0.0/8\n")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        refused = call(server, "event_subscribe", ["E_TEST", "udp:127.0.0.1:9"])
        bad = call(server, "event_subscribe", ["E_TEST", "nope:x"])
        text_reply = text(server, b":event_subscribe:\nE_TEST\nudp:127.0.0.1:9\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    reason = ("udp:127.0.0.1:9: destination 127.0.0.1 is refused by [policy] "
              "deny_destinations (127.0.0.0/8)")
    assert refused == {"code": 403, "message": "Destination not allowed", "data": reason}
    assert text_reply == b"403 Forbidden\n"
    assert bad["code"] == 400 and bad["message"] == "Bad parameter value"
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "evsrv.mi.commands"]
    assert lines[:2] == [f"event_subscribe E_TEST udp:127.0.0.1:9 refused: {reason}",
                         f"event_subscribe E_TEST nope:x: {bad['data']}"]


def test_limits_over_the_mi(server_factory):
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    from tests.conftest import BASE_INI
    server = server_factory(BASE_INI + "[limits]\nmax_subscriptions = 1\nmax_params_bytes = 8\n")
    assert call(server, "event_subscribe", ["E_TEST", "udp:127.0.0.1:9"]) == "OK"
    warnings = []

    def observe(event):
        if event.get("log_level") == LogLevel.warn:
            warnings.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    try:
        full = call(server, "event_subscribe", ["E_TEST", "udp:127.0.0.1:10"])
    finally:
        globalLogPublisher.removeObserver(observe)
    reason = "1 subscriptions in all, the most [limits] max_subscriptions allows"
    assert full == {"code": 503, "message": "Subscription limit reached", "data": reason}
    assert warnings == [f"event_subscribe E_TEST udp:127.0.0.1:10 refused: {reason}"]
    assert call(server, "raise_event", ["E_TEST", ["1234"]]) == "OK"
    assert call(server, "raise_event", ["E_TEST", ["123456789"]]) == {
        "code": 413, "message": "Params too large",
        "data": "the parameters take 9 bytes, more than [limits] max_params_bytes (8)"}


def test_which_with_a_command_gives_its_parameter_recipes(server):
    assert call(server, "which", ["event_subscribe"]) == [["event", "socket"],
                                                          ["event", "socket", "expire"]]
    assert call(server, "which", {"command": "events_list"}) == [[]]
    assert call(server, "which", ["nope"]) == {"code": 404, "message": "unknown MI command"}
    # the 1.x which takes no input: its lines are ignored
    assert text(server, b":which:\nevent_subscribe\n") == text(server, b":which:\n")



def evi_dispatcher(*events, **parts):
    """
    The EVI commands over a L{memory_evi}, behind a dispatcher:
    C{(dispatcher, evi, clock, transport)}.
    """
    from evsrv.mi.commands import EVICommands
    from evsrv.mi.controller import MIController
    from evsrv.mi.dispatch import MIDispatcher
    from evsrv.testing import memory_evi
    from evsrv.util.statistics import Statistics
    evi, clock, transport = memory_evi(*events, **parts)
    controller = MIController(Statistics())
    for command in EVICommands(evi).commands():
        controller.register(command)
    return MIDispatcher(controller), evi, clock, transport


def request(method, params):
    return json.dumps({"jsonrpc": "2.0", "method": method, "id": 1,
                       "params": params}).encode()


def test_a_subscription_the_store_could_not_write_is_a_500(tmp_path, logged_errors):
    from twisted.internet.task import Clock
    from evsrv.persistence import SubscriptionJournal
    from evsrv.util.statistics import Statistics
    from tests.test_persistence import FailingDatabase, sync_runner
    clock = Clock()
    db = FailingDatabase(tmp_path / "s.sqlite")
    journal = SubscriptionJournal(db, clock, Statistics(), 0.01, run=sync_runner)
    dispatcher, evi, clock, _ = evi_dispatcher("E_X", clock=clock, journal=journal)
    answers = []
    dispatcher.handle(request("event_subscribe", ["E_X", "test:a", 60])).addBoth(answers.append)
    assert answers == []  # answered once the write is done
    clock.advance(0.01)
    error = json.loads(answers[0])["error"]
    assert (error["code"], error["message"]) == (500, "Subscription not stored")
    assert "disk I/O error" in error["data"]
    assert evi.store.size == 0
    logged_errors.flush()  # the journal logs the disk error
    db.failing = False
    result_of(journal.close())


def test_a_raise_whose_delivery_fails_later_is_answered_and_logged(logged_errors):
    from twisted.internet.defer import fail
    dispatcher, evi, clock, transport = evi_dispatcher("E_X")
    result_of(evi.subscribe("E_X", "test:a"))
    transport.deliver = lambda notification, subscriptions: fail(RuntimeError("lost"))
    reply = json.loads(result_of(dispatcher.handle(request("raise_event", ["E_X"]))))
    assert reply["result"] == "OK"  # the MI answers at once, as OpenSIPS
    from twisted.logger import formatEvent
    assert [formatEvent(e) for e in logged_errors.flush()] == ["raise_event E_X failed"]
