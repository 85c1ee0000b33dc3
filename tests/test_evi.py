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


# -- the event interface's edges -------------------------------------------------------


def info_lines(run):
    """
    What C{run()} logs at info level, formatted.
    """
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    lines = []

    def observe(event):
        if event.get("log_level") == LogLevel.info:
            lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    try:
        run()
    finally:
        globalLogPublisher.removeObserver(observe)
    return lines


def test_has_subscribers_is_about_live_ones():
    evi, clock, transport = memory_evi("E_X", "E_Y")
    assert not evi.has_subscribers("E_NOPE")
    assert not evi.has_subscribers("E_X")
    result_of(evi.subscribe("E_X", "test:a", 5))
    result_of(evi.subscribe("E_Y", "test:b"))  # never expires
    assert evi.has_subscribers("E_X") and evi.has_subscribers("E_Y")
    clock.advance(10 ** 6)
    assert not evi.has_subscribers("E_X") and evi.has_subscribers("E_Y")


def test_a_socket_that_is_not_utf8_is_refused_for_every_transport():
    evi, clock, transport = memory_evi("E_X")
    failure = result_of(evi.subscribe("E_X", "test:ab\udc80c"))
    assert failure.check(BadSocket)
    assert str(failure.value) == ("socket 'test:ab\\udc80c' is not valid UTF-8 (byte or "
                                  "escape at position 7)")
    assert result_of(evi.subscribe("E_X", "test:\u00e9t\u00e9")).socket == "test:\u00e9t\u00e9"


def test_a_transport_admits_only_what_the_policy_passed():
    from twisted.internet.task import Clock
    from zope.interface import implementer
    from evsrv.evi import EventInterface
    from evsrv.interfaces import DestinationRefused, IAdmission
    from evsrv.testing import RecordingTransport
    from evsrv.util.statistics import Statistics
    admitted = []

    class Admitting(RecordingTransport):
        def admit(self, destination):
            if destination.key == "test:full":
                raise BadSocket("no room for test:full")
            admitted.append(destination.key)
            return destination

    class RefuseB:
        def check(self, destination, transport):
            if destination.key == "test:b":
                raise DestinationRefused("not b")
            return destination
    declared = implementer(IAdmission)(type("Declared", (Admitting,), {}))
    for transport in (Admitting("test"), declared("test")):  # declared or not (older plugins)
        admitted.clear()
        evi = EventInterface(Clock(), {"test": transport}, Statistics(), policy=RefuseB())
        evi.publish("E_X")
        assert result_of(evi.subscribe("E_X", "test:a")).socket == "test:a"
        assert result_of(evi.subscribe("E_X", "test:b")).check(DestinationRefused)
        assert str(result_of(evi.subscribe("E_X", "test:full")).value) == "no room for test:full"
        assert admitted == ["test:a"]


def test_subscriptions_are_internal_unless_told_and_keep_a_restored_time():
    evi, clock, transport = memory_evi("E_X")
    clock.advance(100)
    sub = result_of(evi.subscribe("E_X", "test:a", 60))
    assert sub.origin == "internal"
    restored = result_of(evi.subscribe("E_X", "test:b", 60, subscribed_at=50.0))
    assert restored.ttl(clock.seconds()) == 10
    failure = result_of(evi.subscribe("E_X", "test:c", -1))
    assert failure.check(ValueError) and str(failure.value) == "negative expire"


def test_subscribe_unsubscribe_and_expiry_are_logged_at_info():
    evi, clock, transport = memory_evi("E_X")
    lines = info_lines(lambda: (result_of(evi.subscribe("E_X", "test:a", 60, origin="mi")),
                                result_of(evi.subscribe("E_X", "test:a", 30, origin="mi")),
                                result_of(evi.subscribe("E_X", "test:b")),
                                result_of(evi.subscribe("E_X", "test:a", 0, origin="mi"))))
    assert lines == ["test:a subscribed to E_X (expire 60)",  # a refresh says nothing
                     "test:b subscribed to E_X (expire never)",
                     "test:a unsubscribed from E_X"]
    for i in range(2):
        result_of(evi.subscribe("E_X", f"test:x{i}", 5))
    clock.advance(5)
    assert info_lines(evi.sweep) == ["2 subscription(s) expired"]
    assert info_lines(evi.sweep) == []


def test_subscriptions_purged_by_a_raise_are_counted_as_expired():
    evi, clock, transport = memory_evi("E_X")
    result_of(evi.subscribe("E_X", "test:a", 5))
    result_of(evi.subscribe("E_X", "test:b", 50))
    clock.advance(5)
    report = result_of(evi.raise_event("E_X"))
    assert report.subscribers == 1
    assert evi.statistics.value("evi:subscriptions_expired") == 1
    assert evi.sweep() == 0  # nothing left to expire


def test_a_transport_exception_marks_each_of_its_subscribers(logged_errors):
    evi, clock, transport = memory_evi("E_X")
    subs = [result_of(evi.subscribe("E_X", f"test:{n}")) for n in "ab"]

    def broken(notification, subscriptions):
        raise RuntimeError("bug")
    transport.deliver = broken
    report = result_of(evi.raise_event("E_X"))
    assert (report.delivered, report.failed) == (0, 2)
    assert [(s.failed, s.last_error) for s in subs] == [(1, "internal error: bug")] * 2
    assert len(logged_errors.flush(RuntimeError)) == 1


def test_many_raises_one_after_the_other_are_not_nested():
    evi, clock, transport = memory_evi("E_X")
    result_of(evi.subscribe("E_X", "test:a"))
    for _ in range(150):
        assert result_of(evi.raise_event("E_X")).delivered == 1
    assert len(transport.delivered) == 150


def test_a_failing_delivery_deferred_leaves_no_unhandled_error():
    import gc
    from twisted.internet.defer import fail
    from twisted.python.failure import Failure
    evi, clock, transport = memory_evi("E_X")
    result_of(evi.subscribe("E_X", "test:a"))
    transport.deliver = lambda notification, subscriptions: fail(RuntimeError("lost"))
    assert isinstance(result_of(evi.raise_event("E_X")), Failure)
    gc.collect()  # an unhandled failure would be logged now, failing the test


def test_report_observers_are_told_the_delivery_time_synchronous_or_not():
    evi, clock, transport = memory_evi("E_X")
    seen = []
    evi.observe_reports(lambda report, seconds: seen.append((report.delivered, seconds)))
    result_of(evi.subscribe("E_X", "test:a"))
    clock.advance(1000)
    result_of(evi.raise_event("E_X"))
    transport.asynchronous = True
    evi.raise_event("E_X")
    clock.advance(0.5)
    transport.settle()
    assert seen == [(1, 0.0), (1, 0.5)]


def test_the_parts_given_at_construction_are_kept_and_limits_are_frozen():
    import dataclasses
    from evsrv.evi import Limits
    policy, journal = object(), object()
    evi, clock, transport = memory_evi("E_X", policy=policy, journal=journal,
                                       limits=Limits(max_subscriptions=5))
    assert (evi.destination_policy, evi.journal) == (policy, journal)
    with pytest.raises(dataclasses.FrozenInstanceError):
        evi.limits.max_subscriptions = 6


@pytest.mark.parametrize("params, size", [
    ({"x": "a" * 9}, 10),
    (["abcdefghij"], 10),                       # no name: nothing counted for it
    ({"n" * 8: "vv"}, 10),                      # names count
    ({"n": -(2 ** 63)}, 21),                    # an int as its decimal digits
    ({"e": "\u00e9" * 4, "f": "x"}, 11),       # UTF-8 bytes, not characters
    ({"s": "ab\udc80"}, 6),                     # a raw byte (lone surrogate): 3 bytes
    ({"n\udc80": "v"}, 5),                      # in a name too
    ([12, "abcd"], 6),
])
def test_params_may_take_max_params_bytes_and_not_one_more(params, size):
    from evsrv.evi import Limits
    from evsrv.interfaces import LimitExceeded
    evi, clock, transport = memory_evi("E_X", limits=Limits(max_params_bytes=size))
    result_of(evi.subscribe("E_X", "test:a"))
    assert result_of(evi.raise_event("E_X", params)).delivered == 1
    tight, _, _ = memory_evi("E_X", limits=Limits(max_params_bytes=size - 1))
    failure = result_of(tight.raise_event("E_X", params))
    assert failure.check(LimitExceeded)
    assert str(failure.value) == (f"the parameters take {size} bytes, more than "
                                  f"[limits] max_params_bytes ({size - 1})")

def test_the_total_limit_purges_expired_subscriptions_before_refusing():
    from evsrv.evi import Limits
    from evsrv.interfaces import LimitExceeded
    evi, clock, transport = memory_evi("E_X", "E_Y", limits=Limits(max_subscriptions=2))
    result_of(evi.subscribe("E_X", "test:a", 5))
    result_of(evi.subscribe("E_X", "test:b", 60))
    assert result_of(evi.subscribe("E_Y", "test:c", 60)).check(LimitExceeded)
    clock.advance(5)  # test:a expired, not swept yet
    assert result_of(evi.subscribe("E_Y", "test:c", 60)).socket == "test:c"
    assert evi.statistics.value("evi:subscriptions_expired") == 1


def test_unsubscribe_and_find_subscriber():
    evi, clock, transport = memory_evi("E_X")
    sub = result_of(evi.subscribe("E_X", "test:a", 5))
    assert result_of(evi.find_subscriber("E_X", "test:a")) is sub
    assert result_of(evi.find_subscriber("E_X", "test:b")) is None
    assert result_of(evi.find_subscriber("E_NOPE", "test:a")).check(UnknownEvent)
    assert result_of(evi.find_subscriber("E_X", "nope:a")).check(UnknownTransport)
    evi.unsubscribe(sub)
    assert result_of(evi.find_subscriber("E_X", "test:a")) is None
    assert evi.store.size == 0 and evi.subscribers(evi.event("E_X")) == []


def test_watchers_see_each_raise_before_the_subscribers_and_count_as_subscribed(
        logged_errors):
    evi, clock, transport = memory_evi("E_X", "E_Y")
    seen = []

    def watcher(name, params):
        seen.append((name, params, len(transport.delivered)))
    assert (evi.has_subscribers("E_X"), evi.probe("E_X")) == (False, 0)
    evi.watch("E_X", watcher)
    assert (evi.has_subscribers("E_X"), evi.probe("E_X")) == (True, 1)
    assert (evi.has_subscribers("E_Y"), evi.probe("E_Y")) == (False, 0)
    result_of(evi.subscribe("E_X", "test:a"))
    assert evi.probe("E_X") == 2
    report = result_of(evi.raise_event("E_X", {"k": "v"}))
    assert seen == [("E_X", make_params({"k": "v"}), 0)]  # before the delivery
    assert report.delivered == 1 and len(transport.delivered) == 1
    # a watcher that fails is logged; the others and the delivery go on
    evi.watch("E_X", lambda name, params: 1 / 0)
    evi.watch("E_X", watcher)
    assert result_of(evi.raise_event("E_X")).delivered == 1
    assert len(seen) == 3 and len(logged_errors.flush(ZeroDivisionError)) == 1
    result_of(evi.raise_event("E_Y"))
    assert len(seen) == 3
    evi.unwatch("E_X", watcher)
    evi.unwatch("E_X", watcher)
    evi.unwatch("E_X", print)  # never watched: no harm
    evi.unwatch("E_Y", watcher)
    assert evi.probe("E_X") == 2  # the failing one is still there
    result_of(evi.raise_event("E_X"))
    assert len(seen) == 3 and len(logged_errors.flush(ZeroDivisionError)) == 1


def test_without_subscribers_a_watched_event_still_counts_and_reaches_its_watcher():
    evi, clock, transport = memory_evi("E_X")
    seen = []

    def watcher(name, params):
        seen.append(name)
    evi.watch("E_X", watcher)
    report = result_of(evi.raise_event("E_X"))
    assert (report.subscribers, seen) == (0, ["E_X"])
    evi.unwatch("E_X", watcher)
    assert not evi.has_subscribers("E_X") and evi.probe("E_X") == 0
    result_of(evi.raise_event("E_X"))
    assert seen == ["E_X"]


def test_raises_from_a_watcher_are_nested_and_bounded(logged_errors):
    evi, clock, transport = memory_evi("E_X")
    depth = []

    def again(name, params):
        depth.append(1)
        evi.raise_event("E_X").addErrback(lambda f: depth.append(f.check(NestingError)))
    evi.watch("E_X", again)
    result_of(evi.raise_event("E_X"))
    assert depth.count(1) == 100 and NestingError in depth
    logged_errors.flush()
    # and the depth is back to 0 afterwards
    evi.unwatch("E_X", again)
    result_of(evi.subscribe("E_X", "test:a"))
    assert result_of(evi.raise_event("E_X")).delivered == 1
