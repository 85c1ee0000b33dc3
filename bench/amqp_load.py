"""
The rabbitmq: transport under load, against the real broker at
127.0.0.1:5672 (guest/guest), in one process with the real reactor:

1. notifications/s published with publisher confirms through one
   connection (raise -> publish -> broker ack -> DeliveryReport), for a few
   confirm windows;
2. what one AMQP subscriber adds to the raise path: the synchronous cost of
   ``EventInterface.raise_event`` with one UDP subscriber, against one UDP
   plus one AMQP subscriber (broker up), and plus one AMQP subscriber
   whose broker is down (the publish only queues).

Run: ``.venv/bin/python bench/amqp_load.py [--count N]``. About 15 s.
Exits 0 with a note when no broker is reachable.
"""

import argparse
import socket
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor, task  # noqa: E402

from evsrv.evi import EventInterface  # noqa: E402
from evsrv.util.statistics import Statistics  # noqa: E402
from evsrv.transports.datagram import UDPTransport  # noqa: E402
from evsrv.transports.rabbitmq import RabbitMQTransport  # noqa: E402

BROKER = ("127.0.0.1", 5672)
CHUNK = 500  # raises per reactor turn


def broker_up():
    try:
        socket.create_connection(BROKER, timeout=1).close()
        return True
    except OSError:
        return False


def pika_channel():
    import pika
    connection = pika.BlockingConnection(pika.ConnectionParameters(*BROKER))
    return connection, connection.channel()


def make_evi(window=1000, queue_size=100000, stop_timeout=5):
    statistics = Statistics()
    amqp = RabbitMQTransport("rabbitmq", reactor, statistics, window=window,
                             queue_size=queue_size, max_age=0, heartbeat=30,
                             stop_timeout=stop_timeout)
    udp = UDPTransport("udp", "json", statistics, reactor)
    evi = EventInterface(reactor, {"rabbitmq": amqp, "udp": udp}, statistics)
    evi.publish("E_BENCH")
    return evi, amqp, udp


@defer.inlineCallbacks
def warm_up(evi):
    # first publish opens the connection; wait for its confirm
    yield evi.raise_event("E_BENCH", {"warm": 1})


@defer.inlineCallbacks
def throughput(queue, window, count):
    evi, amqp, udp = make_evi(window=window)
    try:
        yield evi.subscribe("E_BENCH", f"rabbitmq:127.0.0.1/{queue}")
        yield warm_up(evi)
        params = {"ip": "10.0.0.1", "port": 5060, "callid": "bench"}
        reports = []
        started = time.perf_counter()
        for start in range(0, count, CHUNK):
            for _ in range(min(CHUNK, count - start)):
                reports.append(evi.raise_event("E_BENCH", params))
            yield task.deferLater(reactor, 0, lambda: None)
        results = yield defer.gatherResults(reports)
        elapsed = time.perf_counter() - started
        delivered = sum(r.delivered for r in results)
        return delivered, elapsed
    finally:
        yield amqp.stopService()
        udp.stopService()


@defer.inlineCallbacks
def raise_cost(queue, count, amqp_socket):
    """
    Mean synchronous microseconds per raise_event.
    """
    up = bool(amqp_socket) and "127.0.0.1/" in amqp_socket
    # a down broker's queue is dropped at once when the measurement ends
    evi, amqp, udp = make_evi(queue_size=count + 10, stop_timeout=5 if up else 0)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        yield evi.subscribe("E_BENCH", "udp:127.0.0.1:%d" % sink.getsockname()[1])
        if amqp_socket:
            yield evi.subscribe("E_BENCH", amqp_socket)
            if up:
                yield warm_up(evi)
        params = {"ip": "10.0.0.1", "port": 5060, "callid": "bench"}
        spent = 0.0
        reports = []
        for start in range(0, count, CHUNK):
            t0 = time.perf_counter()
            for _ in range(min(CHUNK, count - start)):
                reports.append(evi.raise_event("E_BENCH", params))
            spent += time.perf_counter() - t0
            # let acks in (and the UDP sink's buffer be drained) between chunks
            while True:
                try:
                    sink.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
            yield task.deferLater(reactor, 0, lambda: None)
        if up:
            yield defer.gatherResults(reports)
        return spent / count * 1e6
    finally:
        yield amqp.stopService()
        udp.stopService()
        sink.close()
        for d in reports:
            d.addErrback(lambda f: None)


@defer.inlineCallbacks
def run(count):
    connection, channel = pika_channel()
    queue = f"evsrv-bench-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue)
    rows = []
    try:
        for window in (100, 1000, 5000):
            delivered, elapsed = yield throughput(queue, window, count)
            channel.queue_purge(queue)
            rows.append((window, delivered, elapsed))
        costs = {}
        for label, sock in (("udp only", None),
                            ("udp + amqp (broker up)", f"rabbitmq:127.0.0.1/{queue}"),
                            ("udp + amqp (broker down)", "rabbitmq:127.0.0.1:1/q")):
            best = None
            for _ in range(3):
                value = yield raise_cost(queue, count // 2, sock)
                best = value if best is None else min(best, value)
            costs[label] = best
            channel.queue_purge(queue)
    finally:
        channel.queue_delete(queue)
        connection.close()
    return rows, costs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000, help="raises per measurement")
    args = parser.parse_args(argv)
    if not broker_up():
        print("amqp_load: no broker on 127.0.0.1:5672 (tools/ensure-rabbitmq); skipped")
        return 0
    from twisted.logger import globalLogBeginner
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    out = {}

    def done(result):
        out["result"] = result
        reactor.stop()

    def failed(failure):
        out["error"] = failure
        reactor.stop()
    reactor.callWhenRunning(lambda: run(args.count).addCallbacks(done, failed))
    reactor.run()
    if "error" in out:
        out["error"].printTraceback()
        return 1
    rows, costs = out["result"]
    print(f"1. publish with confirms, one connection, {args.count} raises, one AMQP subscriber")
    print("| confirm window | confirmed | seconds | notifications/s |")
    print("|---|---|---|---|")
    for window, delivered, elapsed in rows:
        print(f"| {window} | {delivered} | {elapsed:.2f} | {delivered / elapsed:,.0f} |")
    print()
    base = costs["udp only"]
    print(f"2. synchronous cost of raise_event ({args.count // 2} raises, best of 3)")
    print("| subscribers | µs per raise | added by AMQP (µs) | ratio to udp only |")
    print("|---|---|---|---|")
    for label, value in costs.items():
        print(f"| {label} | {value:.1f} | {value - base:+.1f} | {value / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
