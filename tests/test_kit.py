"""
The delivery kit (evsrv/transports/kit.py): settling, the per-destination
queue, the byte budget, the failing-spell log, on a Clock; then the byte
budget across real transports: TCP peers that accept and never read, an
XML-RPC receiver that never reads and a broker that is not there, with
near-1-MiB params, memory measured with tracemalloc.
"""

import socket
import tracemalloc

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, formatEvent

from evsrv.config import LimitsConfig
from evsrv.evi import EventInterface
from evsrv.evi.events import Event
from evsrv.evi.subscriptions import Destination, Subscription
from evsrv.transports import TransportContext, TransportCounters
from evsrv.transports.kit import (DEFAULT_MAX_QUEUED_BYTES, DELIVERED, DROPPED, FAILED,
                                  ByteBudget, Entry, FailingSpell, PendingQueue, QueueRules,
                                  Settlement)
from evsrv.transports.rabbitmq import rabbitmqTransport
from evsrv.transports.stream import tcpTransport
from evsrv.transports.xmlrpc import xmlrpcTransport
from evsrv.util.statistics import Statistics
from tests.conftest import BASE_INI, make_config
from tests.test_evi import result_of


def Sub(socket="x:1"):
    """
    A subscriber, what an Outcome counts on.
    """
    return Subscription(Event("E_TEST", 1), None, Destination(socket, None), "test")


def counters():
    statistics = Statistics()
    return TransportCounters(statistics, "t"), statistics


def totals(statistics):
    return tuple(statistics.value(f"evi_t:notifications_{k}")
                 for k in ("sent", "failed", "dropped"))


# -- Settlement ------------------------------------------------------------------------------

def test_settlement_counts_once_each_and_fires_when_the_last_settles():
    transport_counters, statistics = counters()
    a, b, c = Sub("a"), Sub("b"), Sub("c")
    settlement = Settlement(transport_counters, 3)
    settlement.delivered(a)
    d = settlement.result()
    assert d is settlement.result()  # one Deferred however often asked
    fired = []
    d.addCallback(fired.append)
    settlement.failed(b, "refused")
    assert not fired
    settlement.settle(c, DROPPED, "queue full")
    outcome, = fired
    assert (outcome.delivered, outcome.failed, outcome.dropped) == (1, 1, 1)
    assert outcome.errors == [("b", "refused"), ("c", "queue full")]
    assert (a.sent, b.failed, c.dropped, c.last_error) == (1, 1, 1, "queue full")
    assert totals(statistics) == (1, 1, 1)


def test_settlement_settled_at_once_is_the_outcome_itself():
    transport_counters, statistics = counters()
    settlement = Settlement(transport_counters, 2)
    settlement.settle(Sub(), DELIVERED)
    settlement.settle(Sub(), FAILED, "no")
    outcome = settlement.result()
    assert (outcome.delivered, outcome.failed) == (1, 1) and totals(statistics) == (1, 1, 0)


def test_an_entry_settles_once_and_gives_its_bytes_back():
    transport_counters, statistics = counters()
    budget = ByteBudget(100, statistics)
    rules = QueueRules(10, budget.share(statistics, "t"), Clock(), lambda owner: "full")
    queue = PendingQueue(rules, None)
    sub = Sub()
    settlement = Settlement(transport_counters, 1)
    entry = Entry(sub, settlement, 0.0)
    assert queue.admit(entry, 60)
    assert (statistics.value("evi:queued_bytes"), statistics.value("evi_t:queued_bytes")) == \
        (60, 60)
    entry.failed("first")
    entry.delivered()
    entry.dropped("third")
    assert (sub.sent, sub.failed, sub.dropped) == (0, 1, 0)
    assert totals(statistics) == (0, 1, 0) and budget.held == 0


# -- the byte budget -----------------------------------------------------------------------------

def test_byte_budget_refuses_what_does_not_fit_across_transports():
    statistics = Statistics()
    budget = ByteBudget(100, statistics)
    tcp, amqp = budget.share(statistics, "tcp"), budget.share(statistics, "rabbitmq")
    assert tcp.take(60) and not amqp.take(41) and amqp.take(40) and not tcp.take(1)
    assert statistics.get(["evi:queued_bytes", "evi_tcp:queued_bytes",
                           "evi_rabbitmq:queued_bytes"]) == {
        "evi:queued_bytes": 100, "evi_tcp:queued_bytes": 60, "evi_rabbitmq:queued_bytes": 40}
    tcp.give(60)
    assert amqp.take(60) and budget.held == 100
    assert budget.reason == "byte budget of 100 bytes full ([limits] max_queued_bytes)"


def test_byte_budget_zero_is_no_limit_and_negative_is_refused():
    share = ByteBudget(0).share()
    assert share.take(10 ** 12) and share.budget.held == 10 ** 12
    with pytest.raises(ValueError):
        ByteBudget(-1)


def test_a_notification_over_the_budget_is_dropped_with_the_reason():
    transport_counters, statistics = counters()
    budget = ByteBudget(10)
    dropped = statistics.counter("evi_t", "x:dropped")
    queue = PendingQueue(QueueRules(5, budget.share(), Clock(), lambda owner: "full"), None,
                         dropped)
    sub = Sub()
    settlement = Settlement(transport_counters, 1)
    assert not queue.admit(Entry(sub, settlement, 0.0), 11)
    assert not queue and budget.held == 0 and dropped.value == 1
    assert sub.last_error == "byte budget of 10 bytes full ([limits] max_queued_bytes)"
    assert settlement.result().dropped == 1


# -- the queue ----------------------------------------------------------------------------------

class Peer:
    label = "dest:1"
    state = "down"


def make_queue(size=3, max_age=10.0, expired=DROPPED, limit=0):
    clock = Clock()
    transport_counters, statistics = counters()
    rules = QueueRules(size, ByteBudget(limit).share(), clock,
                       lambda d: f"queue full ({size} waiting for {d.label})", max_age=max_age,
                       expired=expired, expired_reason=lambda d: f"too old ({d.state})")
    dropped = statistics.counter("evi_t", "dest:dropped")
    queue = PendingQueue(rules, Peer(), dropped)
    return queue, clock, transport_counters, statistics, dropped


def queued(queue, clock, transport_counters, n, size=1):
    entries = []
    for _ in range(n):
        entry = Entry(Sub(), Settlement(transport_counters, 1), clock.seconds())
        queue.add(entry, size)
        entries.append(entry)
    return entries


def test_add_is_admit_then_push():
    queue, clock, transport_counters, statistics, dropped = make_queue(size=5, limit=3)
    fits, over = queued(queue, clock, transport_counters, 2, size=2)
    assert list(queue) == [fits] and queue.rules.share.held == 2
    assert over.sub.last_error == "byte budget of 3 bytes full ([limits] max_queued_bytes)"
    assert dropped.value == 1 and totals(statistics) == (0, 0, 1)
    queue.pop().delivered()
    assert queue.rules.share.held == 0 and clock.getDelayedCalls() == []


def test_full_queue_drops_the_oldest_with_the_transports_reason():
    queue, clock, transport_counters, statistics, dropped = make_queue(size=2, max_age=0)
    first, second, third = queued(queue, clock, transport_counters, 3)
    assert list(queue) == [second, third]
    assert first.sub.last_error == "queue full (2 waiting for dest:1)"
    assert dropped.value == 1 and totals(statistics) == (0, 0, 1)
    assert queue.rules.share.held == 2  # the dropped one gave its byte back
    assert queue.pop() is second and queue.pop() is third and queue.pop() is None


@pytest.mark.parametrize("expired, counted", [(FAILED, (0, 2, 0)), (DROPPED, (0, 0, 2))])
def test_too_old_is_failed_or_dropped_as_the_transport_says(expired, counted):
    queue, clock, transport_counters, statistics, dropped = make_queue(expired=expired)
    old = queued(queue, clock, transport_counters, 2)
    clock.advance(5)
    young, = queued(queue, clock, transport_counters, 1)
    clock.advance(5)
    assert list(queue) == [young]
    assert [e.sub.last_error for e in old] == ["too old (down)"] * 2
    assert totals(statistics) == counted
    assert dropped.value == (2 if expired == DROPPED else 0)
    clock.advance(5)
    assert not queue and clock.getDelayedCalls() == []


def test_no_age_limit_arms_no_timer():
    queue, clock, transport_counters, _, _ = make_queue(max_age=0)
    queued(queue, clock, transport_counters, 2)
    assert clock.getDelayedCalls() == []
    clock.advance(10 ** 6)
    assert len(queue) == 2


def test_emptied_queue_leaves_no_timer():
    queue, clock, transport_counters, _, _ = make_queue()
    queued(queue, clock, transport_counters, 2)
    assert len(clock.getDelayedCalls()) == 1
    queue.pop()
    queue.pop()
    assert clock.getDelayedCalls() == []
    queued(queue, clock, transport_counters, 1)
    assert queue.clear() and clock.getDelayedCalls() == []


def test_pop_settles_what_is_too_old_on_the_way():
    queue, clock, transport_counters, statistics, _ = make_queue()
    old, = queued(queue, clock, transport_counters, 1)
    clock.advance(5)
    young, = queued(queue, clock, transport_counters, 1)
    clock.rightNow += 5  # time passed without the timer running yet
    assert queue.pop() is young and old.sub.dropped == 1


def test_sent_again_with_a_new_wait_expires_each_in_its_turn():
    """
    Entries put back at the head with a new time (stream: unanswered, sent
    again after a reconnect) are younger than those behind them: the older
    ones behind still expire on time.
    """
    queue, clock, transport_counters, statistics, _ = make_queue(size=10)
    waiting = queued(queue, clock, transport_counters, 2)  # t=0
    sent = [Entry(Sub(), Settlement(transport_counters, 1), 0.0) for _ in range(2)]
    clock.advance(8)
    queue.push_front(sent, clock.seconds())  # t=8: their wait starts over
    assert list(queue) == sent + waiting
    clock.advance(2)  # t=10: the two behind are too old
    assert list(queue) == sent and [e.sub.dropped for e in waiting] == [1, 1]
    clock.advance(7.9)
    assert list(queue) == sent
    clock.advance(0.1)  # t=18
    assert not queue and clock.getDelayedCalls() == []


def test_put_back_keeping_their_time():
    queue, clock, transport_counters, statistics, _ = make_queue(size=2)
    in_flight = [Entry(Sub(), Settlement(transport_counters, 1), 0.0)]
    clock.advance(1)
    waiting = queued(queue, clock, transport_counters, 2)
    queue.push_front(in_flight)
    assert list(queue) == in_flight + waiting  # nothing dropped by push_front
    queue.trim()
    assert list(queue) == waiting and in_flight[0].sub.dropped == 1
    clock.advance(9.9)
    assert len(queue) == 2
    clock.advance(0.1)  # queued at t=1: too old at t=11
    assert len(queue) == 0


def test_remove_takes_out_without_settling():
    queue, clock, transport_counters, statistics, _ = make_queue(size=5)
    entries = queued(queue, clock, transport_counters, 4)
    taken = queue.remove(lambda e: entries.index(e) % 2 == 0)
    assert taken == entries[0::2] and list(queue) == entries[1::2]
    assert totals(statistics) == (0, 0, 0)
    assert queue.remove(lambda e: True) == entries[1::2] and clock.getDelayedCalls() == []


def test_queue_rules_refuse_an_unknown_expired_meaning():
    with pytest.raises(ValueError):
        QueueRules(1, ByteBudget().share(), Clock(), str, expired="lost")


# -- FailingSpell ----------------------------------------------------------------------------------

def test_failing_spell_logs_the_start_a_change_and_the_recovery_once_each():
    events = []
    spell = FailingSpell(Logger(observer=events.append), "tcp:127.0.0.1:9", transport="tcp")
    assert not spell.failing and not spell.success()
    assert spell.failure("connect", "cannot connect: refused")
    for _ in range(5):
        assert not spell.failure("connect", "cannot connect: refused")
    assert spell.failure("lost", "connection lost") and spell.kind == "lost"
    assert spell.success() and not spell.failing and not spell.success()
    assert [formatEvent(e) for e in events] == [
        "tcp:127.0.0.1:9: cannot connect: refused (logged once until it changes or recovers)",
        "tcp:127.0.0.1:9: connection lost (logged once until it changes or recovers)",
        "tcp:127.0.0.1:9: works again after 7 failure(s)"]
    assert all(e["socket"] == "tcp:127.0.0.1:9" and e["transport"] == "tcp" for e in events)


def test_failing_spell_with_its_own_texts_and_field():
    events = []
    spell = FailingSpell(Logger(observer=events.append), "/var/x.log", key="path",
                         failing="cannot write {path}: {reason}", recovered="{path} again")
    spell.failure("write", "disk full")
    spell.failure("other", "gone", "{path}: {reason} ({extra})", extra=1)
    spell.success()
    assert [formatEvent(e) for e in events] == [
        "cannot write /var/x.log: disk full", "/var/x.log: gone (1)", "/var/x.log again"]


# -- configuration and assembly --------------------------------------------------------------------

def test_max_queued_bytes_setting(tmp_path):
    assert LimitsConfig().max_queued_bytes == DEFAULT_MAX_QUEUED_BYTES == 64 * 1024 * 1024
    config = make_config(BASE_INI + "[limits]\nmax_queued_bytes = 0\n", tmp_path)
    assert config.limits.max_queued_bytes == 0
    assert make_config(BASE_INI, tmp_path).limits.max_queued_bytes == DEFAULT_MAX_QUEUED_BYTES


def defaults(factory, **overrides):
    values = {k: coerce(default) for k, (default, coerce, _) in factory.options.items()}
    values.update(overrides)
    return values


def test_the_context_budget_is_shared_by_every_transport():
    statistics = Statistics()
    context = TransportContext(Clock(), statistics, max_queued_bytes=1000)
    assert context.budget.limit == 1000
    built = {factory.name: factory.build(defaults(factory), context)
             for factory in (tcpTransport, xmlrpcTransport, rabbitmqTransport)}
    assert {t._rules.share.budget for t in built.values()} == {context.budget}
    assert {"evi:queued_bytes", "evi_tcp:queued_bytes", "evi_xmlrpc:queued_bytes",
            "evi_rabbitmq:queued_bytes"} <= set(statistics.get())
    assert built["xmlrpc"].stopService() is None


def test_the_server_hands_limits_max_queued_bytes_to_the_transports(tmp_path):
    from evsrv.server import EvsrvService  # (the server is above the transports)
    config = make_config(BASE_INI + "[limits]\nmax_queued_bytes = 12345\n", tmp_path)
    server = EvsrvService(config, Clock())
    assert server.transports["tcp"]._rules.share.budget.limit == 12345
    assert server.statistics.value("evi:queued_bytes") == 0


# -- the budget with real slow destinations ----------------------------------------------------------

PARAM = 1000 * 1000  # characters of the one parameter: near [limits] max_params_bytes
BUDGET = 16 * 1024 * 1024
# What the process may hold beyond the budget, whatever the number of raises:
# per connection what Twisted writes at once (the peer stopped reading: at
# most one payload past its 64 KiB buffer), one raise's encodings in the
# making, and the raises still in progress (their parameters).
OVERHEAD = 24 * 1024 * 1024


def never_reading_peer():
    """
    A TCP port that accepts connections (the kernel does) and never reads.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def closed_port():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there: connects are refused
    return port


@inlineCallbacks
def run_slow_destinations(limit, raises):
    """
    Three tcp: peers and one xmlrpc: receiver that never read, and one
    rabbitmq: broker that is not there, subscribed to one event; C{raises}
    raises with one near-1-MiB parameter.

    @return: C{(traced bytes held at the end beyond the start, peak beyond
        the start, highest evi:queued_bytes seen, the raises' reports,
        statistics)}
    """
    statistics = Statistics()
    context = TransportContext(reactor, statistics, max_queued_bytes=limit)
    transports = {
        "tcp": tcpTransport.build(defaults(tcpTransport), context),
        "xmlrpc": xmlrpcTransport.build(defaults(xmlrpcTransport), context),
        "rabbitmq": rabbitmqTransport.build(defaults(rabbitmqTransport, stop_timeout=0.0,
                                                     reconnect_min=5.0), context)}
    for transport in transports.values():
        transport.startService()
    evi = EventInterface(reactor, transports, statistics)
    evi.publish("E_BIG")
    peers = [never_reading_peer() for _ in range(4)]
    reports = []
    try:
        for peer in peers[:3]:
            yield evi.subscribe("E_BIG", f"tcp:127.0.0.1:{peer.getsockname()[1]}")
        yield evi.subscribe("E_BIG", f"xmlrpc:127.0.0.1:{peers[3].getsockname()[1]}:notify")
        yield evi.subscribe("E_BIG", f"rabbitmq:127.0.0.1:{closed_port()}/q")
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        highest = 0
        for n in range(raises):
            d = evi.raise_event("E_BIG", {"n": n, "blob": chr(ord("a") + n % 26) * PARAM})
            reports.append(d)
            highest = max(highest, statistics.value("evi:queued_bytes"))
            yield deferLater(reactor, 0.005, lambda: None)  # the sockets take what they take
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return current - start, peak - start, highest, reports, statistics
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        for transport in transports.values():
            yield transport.stopService()
        for peer in peers:
            peer.close()
        yield DeferredList(reports, consumeErrors=True)


@pytest_twisted.inlineCallbacks
def test_byte_budget_bounds_memory_with_slow_destinations_and_large_params():
    held, peak, highest, reports, statistics = yield run_slow_destinations(BUDGET, 40)
    assert 0 < highest <= BUDGET
    assert peak <= BUDGET + OVERHEAD, f"{peak / 2 ** 20:.1f} MiB"
    assert held <= BUDGET + OVERHEAD, f"{held / 2 ** 20:.1f} MiB"
    errors = [reason for d in reports for _, reason in result_of(d).errors]
    budget_full = f"byte budget of {BUDGET} bytes full ([limits] max_queued_bytes)"
    assert errors.count(budget_full) > 100  # of 40 raises x 5 subscribers
    for name in ("tcp", "xmlrpc", "rabbitmq"):
        assert statistics.value(f"evi_{name}:notifications_dropped") > 0, name
        assert statistics.value(f"evi_{name}:queued_bytes") == 0, name  # all given back
    assert statistics.value("evi:queued_bytes") == 0


@pytest_twisted.inlineCallbacks
def test_without_a_budget_the_same_load_grows_without_bound():
    # what the test above would see if the budget did nothing
    held, peak, highest, reports, _ = yield run_slow_destinations(0, 24)
    assert held > BUDGET + OVERHEAD, f"{held / 2 ** 20:.1f} MiB"
    assert highest > BUDGET
    assert not any("byte budget" in reason for d in reports for _, reason in result_of(d).errors)

