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
