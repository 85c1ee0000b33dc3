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


# -- the parts it is given at construction ---------------------------------------------


def test_recent_raises_and_report_observers_are_given_at_construction():
    evi, clock, transport = memory_evi("E_X", recent=2)
    seen = []
    evi.observe_reports(lambda report, seconds: seen.append((report.event, seconds)))
    result_of(evi.subscribe("E_X", "test:a"))
    transport.asynchronous = True
    for n in range(3):
        evi.raise_event("E_X", [n])
    clock.advance(0.25)
    transport.settle()
    assert [params[0].value for _, _, params, _ in evi.recent_raises] == [1, 2]
    assert seen == [("E_X", 0.25)] * 3
    # nothing kept, nothing measured, by default
    plain, _, _ = memory_evi("E_X")
    result_of(plain.raise_event("E_X"))
    assert plain.recent_raises.maxlen == 0 and len(plain.recent_raises) == 0


def test_policy_journal_and_limits_cannot_be_filled_in_afterwards():
    from evsrv.evi import Limits
    evi, _, _ = memory_evi("E_X")
    assert (evi.destination_policy, evi.journal, evi.limits) == (None, None, Limits())
    for name in ("destination_policy", "journal", "limits"):
        with pytest.raises(AttributeError):
            setattr(evi, name, object())


def test_a_policy_given_at_construction_checks_every_socket():
    from evsrv.interfaces import DestinationRefused

    class RefuseB:
        def check(self, destination, transport):
            if destination.key == "test:b":
                raise DestinationRefused("not b")
            return destination
    evi, _, _ = memory_evi("E_X", policy=RefuseB())
    assert result_of(evi.subscribe("E_X", "test:a")).socket == "test:a"
    assert result_of(evi.subscribe("E_X", "test:b")).check(DestinationRefused)


def test_the_transports_late_binding_of_the_event_interface():
    from twisted.internet.task import Clock
    from evsrv.transports import LateBinding, TransportContext
    context = TransportContext(Clock())
    assert context.evi is None and context.event_interface.get() is None
    evi, _, _ = memory_evi()
    context.event_interface.bind(evi)
    context.event_interface.bind(evi)  # the same one again: no harm
    assert context.evi is evi
    with pytest.raises(RuntimeError, match="the event interface is already bound"):
        context.event_interface.bind(object())
    assert LateBinding("the script").get() is None


# -- events, parameters, payloads and counts, exactly ---------------------------------


def test_an_event_name_may_take_64_bytes_not_65():
    table = EventTable()
    assert table.publish("E_" + "X" * 62).id == 0
    assert table.publish("E_" + "é" * 31).id == 1  # 64 bytes in UTF-8
    with pytest.raises(ValueError, match="longer than 64 bytes"):
        table.publish("E_" + "é" * 31 + "X")
    with pytest.raises(ValueError, match="non-empty string"):
        table.publish("")
    assert len(table) == 2


def test_every_raise_is_counted_per_event_and_in_all():
    evi, clock, transport = memory_evi("E_X", "E_Y")
    result_of(evi.subscribe("E_X", "test:a"))
    assert evi.event("E_X").raised == 0
    for _ in range(3):
        result_of(evi.raise_event("E_X"))
    result_of(evi.raise_event("E_Y"))  # no subscriber: raised all the same
    assert (evi.event("E_X").raised, evi.event("E_Y").raised) == (3, 1)
    assert evi.statistics.get(["evi:"]) == {
        "evi:events_raised": 4, "evi:events_without_subscribers": 1,
        "evi:subscriptions_expired": 0, "evi:events": 2, "evi:subscriptions": 1}


@pytest.mark.parametrize("value", [2 ** 63 - 1, -(2 ** 63)])
def test_make_params_takes_the_whole_int64_range(value):
    assert make_params([value]) == (Param(None, value),)


@pytest.mark.parametrize("value", [2 ** 63, -(2 ** 63) - 1])
def test_make_params_refuses_ints_past_int64(value):
    with pytest.raises(ValueError, match="outside the 64-bit integer range"):
        make_params({"n": value})


def test_make_params_says_why_a_string_is_not_params():
    with pytest.raises(TypeError, match="not a single string"):
        make_params(b"text")


def test_a_notification_encodes_each_format_once():
    from evsrv.evi import Notification
    n = Notification("E_X", make_params({"a": "1", "n": 2}), 5.0)
    expected = {
        "json": b'{"jsonrpc":"2.0","method":"E_X","params":{"a":"1","n":2}}',
        "text": b"E_X\na::1\nn::2\n\n",
        "text-bare": b"E_X\na::1\nn::2",
        "jsonrpc24": b'{"id":null,"jsonrpc":"2.0","method":"E_X","params":{"a":"1","n":2}}',
    }
    for fmt, data in expected.items():
        assert n.payload(fmt) == data
        assert n.payload(fmt) is n.payload(fmt)  # kept: encoded once per raise
    assert n.payload() is n.payload("json")
    assert (n.event, n.raised_at) == ("E_X", 5.0)


def test_a_subscription_keeps_what_it_was_given_and_counts_its_notifications():
    evi, clock, transport = memory_evi("E_X")
    sub = result_of(evi.subscribe("E_X", "test:a", origin="mi"))
    assert (sub.key, sub.address, sub.origin, sub.transport) == ("test:a", "a", "mi", transport)
    assert (sub.sent, sub.failed, sub.dropped, sub.last_error) == (0, 0, 0, None)
    result_of(evi.raise_event("E_X"))
    result_of(evi.raise_event("E_X"))
    assert (sub.sent, sub.failed, sub.dropped) == (2, 0, 0)
    transport.fail.add("test:a")
    result_of(evi.raise_event("E_X"))
    assert (sub.sent, sub.failed, sub.dropped, sub.last_error) == (2, 1, 0, "refused by test")


def test_drops_are_counted_apart_from_failures():
    from evsrv.evi import DeliveryReport, Outcome
    evi, clock, transport = memory_evi("E_X")
    sub = result_of(evi.subscribe("E_X", "test:a"))
    outcome = Outcome()
    outcome.dropped_for(sub, "queue full")
    assert (sub.sent, sub.failed, sub.dropped, sub.last_error) == (0, 0, 1, "queue full")
    outcome.failed_for(sub, "refused")
    outcome.dropped_for(sub, "queue full again")
    assert (sub.failed, sub.dropped, sub.last_error) == (1, 2, "queue full again")
    assert (outcome.delivered, outcome.failed, outcome.dropped) == (0, 1, 2)
    report = DeliveryReport("E_X", 3)
    assert report.ok and (report.event, report.subscribers) == ("E_X", 3)
    report.add(Outcome(delivered=2))
    assert report.ok and report.delivered == 2
    report.add(outcome)
    assert (report.delivered, report.failed, report.dropped, report.ok) == (2, 1, 2, False)
    assert report.errors == [("test:a", "queue full"), ("test:a", "refused"),
                             ("test:a", "queue full again")]
    only_dropped = DeliveryReport("E_X", 1)
    only_dropped.add(Outcome(dropped=1))
    assert (only_dropped.failed, only_dropped.dropped, only_dropped.ok) == (0, 1, False)
