"""
The event interface: publishing, parameters, raising and delivery reports.
"""

import pytest

from evsrv.evi import NestingError, Param, UnknownEvent, UnknownTransport, make_params
from evsrv.evi.events import EventTable
from evsrv.interfaces import BadSocket
from evsrv.testing import memory_evi


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire synchronously"
    return out[0]


def test_publish_assigns_dense_ids_and_is_idempotent():
    table = EventTable()
    a = table.publish("E_A")
    b = table.publish("E_B")
    assert (a.id, b.id) == (0, 1)
    assert table.publish("E_A") is a
    assert [e.name for e in table] == ["E_A", "E_B"]


@pytest.mark.parametrize("name", ["", "E_" + "X" * 63])
def test_publish_refuses_empty_or_long_names(name):
    with pytest.raises(ValueError):
        EventTable().publish(name)


def test_make_params_forms():
    assert make_params(None) == ()
    assert make_params({"ip": "1.2.3.4", "n": 5}) == (Param("ip", "1.2.3.4"), Param("n", 5))
    assert make_params(["a", 7]) == (Param(None, "a"), Param(None, 7))
    assert make_params([("x", 1), Param(None, "y")]) == (Param("x", 1), Param(None, "y"))


@pytest.mark.parametrize("bad", [[1.5], [True], {"a": None}, "text", [2 ** 70]])
def test_make_params_refuses_other_types(bad):
    with pytest.raises((TypeError, ValueError)):
        make_params(bad)


def test_raise_reaches_subscribers_newest_first():
    evi, clock, transport = memory_evi("E_X")
    for name in ("a", "b", "c"):
        result_of(evi.subscribe("E_X", f"test:{name}"))
    report = result_of(evi.raise_event("E_X", {"k": "v"}))
    assert [s for _, _, s in transport.delivered] == ["test:c", "test:b", "test:a"]
    assert (report.subscribers, report.delivered, report.failed) == (3, 3, 0)
    assert transport.delivered[0][1] == (Param("k", "v"),)


def test_raise_report_counts_failures_with_reasons():
    evi, clock, transport = memory_evi("E_X")
    result_of(evi.subscribe("E_X", "test:ok"))
    result_of(evi.subscribe("E_X", "test:bad"))
    transport.fail.add("test:bad")
    report = result_of(evi.raise_event("E_X"))
    assert (report.delivered, report.failed, report.ok) == (1, 1, False)
    assert report.errors == [("test:bad", "refused by test")]
    sub = evi.event("E_X").subscriptions["test:bad"]
    assert (sub.failed, sub.last_error) == (1, "refused by test")


def test_raise_waits_for_asynchronous_transports():
    evi, clock, transport = memory_evi("E_X")
    transport.asynchronous = True
    result_of(evi.subscribe("E_X", "test:a"))
    d = evi.raise_event("E_X")
    fired = []
    d.addCallback(fired.append)
    assert not fired
    transport.settle()
    assert fired[0].delivered == 1


def test_raise_without_subscribers_is_an_empty_report():
    evi, clock, transport = memory_evi("E_X")
    report = result_of(evi.raise_event("E_X", ["a"]))
    assert (report.subscribers, report.delivered) == (0, 0)
    assert evi.statistics.get(["evi:events_without_subscribers"]) == {
        "evi:events_without_subscribers": 1}


def test_raise_unknown_event_or_bad_params_fails():
    evi, clock, transport = memory_evi("E_X")
    assert result_of(evi.raise_event("E_NOPE")).check(UnknownEvent)
    assert result_of(evi.raise_event("E_X", [object()])).check(TypeError)


def test_transport_exception_counts_as_failure_and_spares_other_transports(logged_errors):
    evi, clock, transport = memory_evi("E_X")
    from evsrv.testing import RecordingTransport
    other = RecordingTransport("other")
    evi.transports["other"] = other
    result_of(evi.subscribe("E_X", "test:a"))
    result_of(evi.subscribe("E_X", "other:b"))

    def broken(notification, subscriptions):
        raise RuntimeError("bug")
    transport.deliver = broken
    report = result_of(evi.raise_event("E_X"))
    assert (report.delivered, report.failed) == (1, 1)
    assert other.delivered[0][2] == "other:b"
    assert len(logged_errors.flush(RuntimeError)) == 1


def test_nested_raises_are_bounded(logged_errors):
    evi, clock, transport = memory_evi("E_X")
    result_of(evi.subscribe("E_X", "test:a"))
    depth = []
    original = transport.deliver

    def recursive(notification, subscriptions):
        depth.append(1)
        result = evi.raise_event("E_X")
        result.addErrback(lambda f: depth.append(f.check(NestingError)))
        return original(notification, subscriptions)
    transport.deliver = recursive
    result_of(evi.raise_event("E_X"))
    assert depth.count(1) == 100
    assert NestingError in depth
    assert logged_errors.flush()


def test_probe_counts_live_subscribers_only():
    evi, clock, transport = memory_evi("E_X")
    assert evi.probe("E_X") == 0
    assert evi.probe("E_NOPE") == 0
    result_of(evi.subscribe("E_X", "test:a", 10))
    result_of(evi.subscribe("E_X", "test:b"))
    assert evi.probe("E_X") == 2
    clock.advance(11)
    assert evi.probe("E_X") == 1


def test_subscribe_errors():
    evi, clock, transport = memory_evi("E_X")
    assert result_of(evi.subscribe("E_NOPE", "test:a")).check(UnknownEvent)
    assert result_of(evi.subscribe("E_X", "nope:a")).check(UnknownTransport)
    assert result_of(evi.subscribe("E_X", "no-prefix")).check(UnknownTransport)
    assert result_of(evi.subscribe("E_X", "test:")).check(BadSocket)
    assert result_of(evi.subscribe("E_X", "test:a", -1)).check(ValueError)


def test_bare_absolute_path_means_unix():
    evi, clock, transport = memory_evi("E_X", scheme="unix")
    sub = result_of(evi.subscribe("E_X", "/tmp/x.sock"))
    assert sub.socket == "unix:/tmp/x.sock"
