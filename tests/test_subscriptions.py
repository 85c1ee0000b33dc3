"""
Subscription identity, refresh and expiry (with task.Clock).
"""

from evsrv.evi.expiry import ExpiryService
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
        clock.pump([1.0] * 3)
        assert sockets(evi) == [] or evi.store.size == 0
        assert evi.statistics.value("evi:expiry_sweeps") >= 3
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
