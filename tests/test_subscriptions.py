"""
Subscription identity, refresh and expiry (with task.Clock).
"""

from evsrv.evi.expiry import ExpiryService
from evsrv.evi.interface import SWEEP_LIMIT
from evsrv.testing import memory_evi
from tests.test_evi import result_of


def subscribe(evi, socket, expire=None, origin="mi", event="E_X"):
    return result_of(evi.subscribe(event, socket, expire, origin=origin))


def sockets(evi, event="E_X"):
    return [s.socket for s in evi.subscribers(evi.event(event))]


def test_resubscribe_refreshes_in_place():
    evi, clock, _ = memory_evi("E_X")
    first = subscribe(evi, "test:a", 10)
    subscribe(evi, "test:b", 10)
    clock.advance(8)
    again = subscribe(evi, "test:a", 30)
    assert again is first
    assert evi.store.size == 2
    assert sockets(evi) == ["test:b", "test:a"]  # position kept (newest first)
    assert (again.expire, again.ttl(clock.seconds())) == (30, 30)


def test_expire_zero_from_mi_removes_at_once():
    evi, clock, transport = memory_evi("E_X")
    subscribe(evi, "test:a", 60)
    assert subscribe(evi, "test:a", 0) is None
    assert sockets(evi) == []
    result_of(evi.raise_event("E_X"))
    assert transport.delivered == []
    assert subscribe(evi, "test:never-there", 0) is None


def test_internal_subscription_without_expire_never_expires():
    evi, clock, _ = memory_evi("E_X")
    for expire in (None, 0):
        sub = subscribe(evi, f"test:{expire}", expire, origin="script")
        assert sub.expire is None and sub.ttl(0) is None
    clock.advance(10 ** 9)
    evi.sweep()
    assert len(sockets(evi)) == 2


def test_script_refresh_without_expire_keeps_the_mi_expire():
    evi, clock, _ = memory_evi("E_X")
    subscribe(evi, "test:a", 20)
    clock.advance(15)
    sub = subscribe(evi, "test:a", None, origin="script")
    assert (sub.expire, sub.ttl(clock.seconds())) == (20, 20)


def test_mi_resubscribe_makes_a_permanent_subscription_expire():
    evi, clock, _ = memory_evi("E_X")
    subscribe(evi, "test:a", None, origin="script")
    subscribe(evi, "test:a", 5)
    clock.advance(6)
    evi.sweep()
    assert sockets(evi) == []


def test_ttl_counts_down_and_sweep_removes_at_deadline():
    evi, clock, _ = memory_evi("E_X")
    sub = subscribe(evi, "test:a", 60)
    clock.advance(0.5)
    assert sub.ttl(clock.seconds()) == 60
    clock.advance(59)
    assert sub.ttl(clock.seconds()) == 1
    assert evi.sweep() == 0
    clock.advance(0.5)
    assert evi.sweep() == 1
    assert sockets(evi) == [] and evi.store.size == 0
    assert evi.statistics.value("evi:subscriptions_expired") == 1


def test_an_expired_subscriber_never_receives_even_before_the_sweep():
    evi, clock, transport = memory_evi("E_X")
    subscribe(evi, "test:old", 5)
    subscribe(evi, "test:new", 50)
    clock.advance(5)
    result_of(evi.raise_event("E_X"))
    assert [s for _, _, s in transport.delivered] == ["test:new"]
    assert evi.store.size == 1  # purged by the raise


def test_expiry_service_runs_on_the_injected_clock():
    evi, clock, _ = memory_evi("E_X")
    service = ExpiryService(evi, 1.0, clock=clock)
    service.startService()
    try:
        subscribe(evi, "test:a", 3)
        clock.pump([1.0] * 2)
        # (store.size, not sockets(): listing would purge it without the timer)
        assert evi.store.size == 1
        clock.pump([1.0])
        assert evi.store.size == 0  # removed by the tick at its deadline
        assert evi.statistics.value("evi:subscriptions_expired") == 1
        # the first tick at start, then one per second
        assert evi.statistics.value("evi:expiry_sweeps") == 4
    finally:
        service.stopService()


def test_the_expiry_timer_ticks_every_second_by_default():
    evi, clock, _ = memory_evi("E_X")
    service = ExpiryService(evi, clock=clock)
    service.startService()
    try:
        subscribe(evi, "test:a", 1)
        clock.advance(1)
        assert evi.store.size == 0
        assert evi.statistics.value("evi:expiry_sweeps") == 2
    finally:
        service.stopService()


def test_a_failing_sweep_is_logged_and_the_timer_keeps_running(logged_errors):
    evi, clock, _ = memory_evi("E_X")
    service = ExpiryService(evi, 1.0, clock=clock)
    calls = []
    real_sweep = evi.sweep

    def flaky():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real_sweep()
    evi.sweep = flaky
    service.startService()
    try:
        subscribe(evi, "test:a", 3)
        clock.pump([1.0] * 5)
        assert len(calls) == 6  # first tick at start, then one per second
        assert evi.store.size == 0
        assert evi.statistics.value("evi:expiry_errors") == 1
        assert len(logged_errors.flush(RuntimeError)) == 1
    finally:
        service.stopService()


def test_refresh_storm_keeps_one_heap_entry_per_subscription():
    evi, clock, _ = memory_evi("E_X")
    for i in range(1000):
        clock.advance(0.01)
        subscribe(evi, "test:a", 3600)
    assert evi.store.queue_size() == 1


def test_refresh_with_shorter_expire_is_honoured():
    evi, clock, _ = memory_evi("E_X")
    subscribe(evi, "test:a", 3600)
    subscribe(evi, "test:a", 5)
    clock.advance(5)
    assert evi.sweep() == 1


def test_refreshed_entry_is_requeued_not_expired():
    evi, clock, _ = memory_evi("E_X")
    subscribe(evi, "test:a", 10)
    clock.advance(9)
    subscribe(evi, "test:a", 10)
    clock.advance(2)
    assert evi.sweep() == 0 and evi.store.queue_size() == 1
    clock.advance(8)
    assert evi.sweep() == 1


def test_subscribe_unsubscribe_churn_does_not_grow_the_heap():
    evi, clock, _ = memory_evi("E_X")
    subscribe(evi, "test:keep", 3600)
    for i in range(10000):
        subscribe(evi, f"test:{i}", 3600)
        subscribe(evi, f"test:{i}", 0)
    assert evi.store.size == 1
    assert evi.store.queue_size() <= 2 * 1 + 1024 + 1


def test_sweep_cost_is_proportional_to_expired_entries():
    evi, clock, _ = memory_evi("E_X")
    for i in range(2000):
        subscribe(evi, f"test:{i}", 100 + i)
    clock.advance(100 + 9)  # ten of them are due
    assert evi.sweep() == 10
    assert evi.store.size == 1990


def keys(evi, event="E_X"):
    """
    The stored subscriptions' sockets, oldest first, without purging the
    expired ones (as listing does).
    """
    return list(evi.event(event).subscriptions)


def churn(evi, count, expire=3600):
    for i in range(count):
        subscribe(evi, f"test:churn{i}", expire)
        subscribe(evi, f"test:churn{i}", 0)


def test_live_subscriptions_are_still_swept_after_a_compaction():
    evi, clock, _ = memory_evi("E_X")
    subscribe(evi, "test:soon", 10)
    subscribe(evi, "test:later", 20)
    # Each churned subscription leaves a stale entry; the wheel is compacted
    # once they outnumber the two live ones by more than 1024.
    churn(evi, 1026)
    assert evi.store.queue_size() == 2 + 1026
    churn(evi, 1)
    assert evi.store.queue_size() == 2  # compacted: only the live entries are left
    # counted afresh from there: the next compaction comes after as many
    churn(evi, 1026)
    assert evi.store.queue_size() == 2 + 1026
    churn(evi, 1)
    assert evi.store.queue_size() == 2
    clock.advance(10)
    assert evi.sweep() == 1
    assert keys(evi) == ["test:later"]
    clock.advance(10)
    assert evi.sweep() == 1
    assert evi.store.size == 0 and evi.store.queue_size() == 0


def test_stale_entries_of_every_kind_count_towards_the_compaction():
    evi, clock, _ = memory_evi("E_X")
    # 1000 refreshes, each one second earlier, leave 1000 stale entries
    for expire in range(2000, 999, -1):
        subscribe(evi, "test:a", expire)
    subscribe(evi, "test:b", 5)
    subscribe(evi, "test:c", 5)
    subscribe(evi, "test:c", 10)  # later: its entry stays, re-queued when due
    subscribe(evi, "test:d", 6)
    subscribe(evi, "test:d", 5)  # earlier: queued again, one more stale entry
    assert evi.store.queue_size() == 1001 + 1 + 1 + 2
    clock.advance(6)
    assert evi.sweep() == 2  # b and d; c moves on; d's stale entry goes
    assert keys(evi) == ["test:a", "test:c"]
    assert evi.store.queue_size() == 1000 + 2
    # live: a and c, so the wheel is compacted once there are 1027 stale entries
    churn(evi, 26)
    assert evi.store.queue_size() == 1002 + 26
    churn(evi, 1)
    assert evi.store.queue_size() == 2
    clock.advance(4)
    assert evi.sweep() == 1 and keys(evi) == ["test:a"]
    clock.advance(990)
    assert evi.sweep() == 1 and evi.store.queue_size() == 0


def test_sweep_stops_at_its_limit_and_resumes_where_it_stopped():
    evi, clock, _ = memory_evi("E_X")
    first = [f"test:a{i}" for i in range(10)]
    second = [f"test:b{i}" for i in range(4)]
    for socket in first:
        subscribe(evi, socket, 5)
    for socket in second:
        subscribe(evi, socket, 6)
    subscribe(evi, "test:later", 60)
    clock.advance(6)
    assert evi.sweep(limit=4) == 4  # stopped inside the first bucket
    assert keys(evi) == first[4:] + second + ["test:later"]
    assert evi.store.queue_size() == 6 + 4 + 1  # the removed ones left the wheel
    assert evi.sweep(limit=6) == 6  # resumed there; stops at the end of the bucket
    assert keys(evi) == second + ["test:later"]
    assert evi.sweep(limit=100) == 4
    assert evi.sweep(limit=100) == 0
    assert keys(evi) == ["test:later"] and evi.store.queue_size() == 1
    assert evi.statistics.value("evi:subscriptions_expired") == 14


def test_a_sweep_skips_entries_removed_since_the_limit_stopped_it():
    evi, clock, _ = memory_evi("E_X")
    for i in range(6):
        subscribe(evi, f"test:{i}", 5)
    clock.advance(5)
    assert evi.sweep(limit=2) == 2
    subscribe(evi, "test:3", 0)  # unsubscribed while waiting in the partly swept bucket
    assert evi.sweep(limit=2) == 2
    assert keys(evi) == ["test:5"]
    assert evi.sweep() == 1
    assert evi.store.size == 0 and evi.store.queue_size() == 0


def test_without_a_limit_a_sweep_takes_everything_due():
    evi, clock, _ = memory_evi("E_X")
    for i in range(30):
        subscribe(evi, f"test:{i}", 1 + i % 3)
    subscribe(evi, "test:later", 10)
    clock.advance(3)
    assert evi.store.expire_due(clock.seconds()) == 30
    assert keys(evi) == ["test:later"]


def test_a_tick_expires_at_most_SWEEP_LIMIT_and_the_next_tick_the_rest():
    evi, clock, _ = memory_evi("E_X")
    for i in range(SWEEP_LIMIT + 5):
        subscribe(evi, f"test:{i}", 2)
    service = ExpiryService(evi, 1.0, clock=clock)
    service.startService()
    try:
        clock.pump([1.0, 1.0])
        assert evi.store.size == 5  # the tick at the deadline stopped at the limit
        assert keys(evi) == [f"test:{i}" for i in range(SWEEP_LIMIT, SWEEP_LIMIT + 5)]
        clock.pump([1.0])
        assert evi.store.size == 0
        assert evi.statistics.value("evi:subscriptions_expired") == SWEEP_LIMIT + 5
    finally:
        service.stopService()


def test_at_its_exact_deadline_a_subscription_is_expired_everywhere():
    evi, clock, transport = memory_evi("E_X", "E_Y")
    sub = subscribe(evi, "test:a", 5)
    subscribe(evi, "test:b", 5, event="E_Y")
    clock.advance(4.5)
    assert (evi.probe("E_X"), evi.has_subscribers("E_X"), sub.ttl(clock.seconds())) == (1, True, 1)
    assert result_of(evi.find_subscriber("E_X", "test:a")) is sub
    assert evi.sweep() == 0
    clock.advance(0.5)  # now == deadline
    assert (evi.probe("E_X"), evi.has_subscribers("E_X"), sub.ttl(clock.seconds())) == (0, False, 0)
    assert sub.is_expired(clock.seconds())
    assert result_of(evi.find_subscriber("E_X", "test:a")) is None
    report = result_of(evi.raise_event("E_Y"))
    assert (report.subscribers, transport.delivered) == (0, [])
    assert keys(evi, "E_Y") == []  # purged by the raise
    assert evi.sweep() == 1  # the bucket of second 5 is due at second 5
    assert keys(evi) == []


def test_refresh_to_an_earlier_second_is_requeued_there():
    evi, clock, _ = memory_evi("E_X")
    subscribe(evi, "test:a", 10)
    subscribe(evi, "test:a", 9.5)  # earlier, same one-second bucket: the entry is kept
    assert evi.store.queue_size() == 1
    subscribe(evi, "test:a", 9)  # exactly one bucket earlier: queued there
    assert evi.store.queue_size() == 2
    clock.advance(9)
    assert evi.sweep() == 1
    assert keys(evi) == []
    clock.advance(1)
    assert evi.sweep() == 0 and evi.store.queue_size() == 0  # the stale entry is dropped
