"""
Notifications per second through the xmlrpc: and tcp: transports to a local
receiver.

In process: an L{EventInterface} with the real transport (built by its
plugin factory from default ini settings) on the real reactor; the receiver
runs in a separate process so that it does not share the CPU budget of the
sender's reactor:

 - XML-RPC: Python's C{xmlrpc.server.SimpleXMLRPCServer} (threading mix-in,
   so that several calls are served at once); one subscriber; raises are
   paced so that at most C{max_in_flight} + C{queue_size} wait (nothing is
   dropped); a notification counts when its delivery Deferred fires with
   C{delivered}.
 - TCP (non-reliable): a plain socket reader that counts bytes; throughput
   is counted when every byte has reached the receiver.
 - TCP (reliable): a reader that parses the stream and answers every id;
   a notification counts when its reply has come back.

Run: C{.venv/bin/python bench/rpc_load.py [--seconds 3]}.
"""

import argparse
import json
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import default_signals, interrupt_on_sigterm  # noqa: E402


def _xmlrpc_receiver(ready):
    default_signals()
    from socketserver import ThreadingMixIn
    from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

    class Server(ThreadingMixIn, SimpleXMLRPCServer):
        daemon_threads = True
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), requestHandler=SimpleXMLRPCRequestHandler,
                    logRequests=False)
    server.register_function(lambda *args: True, "event")
    ready.send(server.server_address[1])
    server.serve_forever()


def _tcp_receiver(ready, reliable):
    default_signals()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    ready.send(listener.getsockname()[1])
    decoder = json.JSONDecoder()
    while True:
        conn, _ = listener.accept()
        buffer = ""
        while True:
            try:
                data = conn.recv(1 << 20)
            except ConnectionResetError:  # the sender aborts at the end
                break
            if not data:
                break
            if not reliable:
                continue
            buffer += data.decode()
            replies = []
            pos = 0
            while True:
                try:
                    obj, end = decoder.raw_decode(buffer, pos)
                except ValueError:
                    break
                replies.append(b'{"jsonrpc":"2.0","result":"OK","id":%d}' % obj["id"])
                pos = end
            buffer = buffer[pos:]
            if replies:
                conn.sendall(b"".join(replies))
        conn.close()


def _start(target, *args):
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=target, args=(child,) + args, daemon=True)
    proc.start()
    if not parent.poll(10):
        proc.terminate()
        raise RuntimeError("receiver did not start")
    return proc, parent.recv()


def _defaults(factory, **overrides):
    values = {k: coerce(default) for k, (default, coerce, _) in factory.options.items()}
    values.update(overrides)
    return values


def run_case(name, seconds):
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater

    from evsrv.evi import EventInterface
    from evsrv.util.statistics import Statistics
    from evsrv.transports import TransportContext

    statistics = Statistics()
    context = TransportContext(reactor, statistics)
    if name == "xmlrpc":
        from evsrv.transports.xmlrpc import xmlrpcTransport as factory
        proc, port = _start(_xmlrpc_receiver)
        settings = _defaults(factory)
        socket_text = f"xmlrpc:127.0.0.1:{port}:event"
        window = settings["max_in_flight"] + 50
    else:
        from evsrv.transports.stream import tcpTransport as factory
        reliable = name == "tcp-reliable"
        proc, port = _start(_tcp_receiver, reliable)
        settings = _defaults(factory, reliable=reliable, queue_size=10000)
        socket_text = f"tcp:127.0.0.1:{port}"
        window = 1000
    transport = factory.build(settings, context)
    evi = EventInterface(reactor, {transport.schemes[0]: transport}, statistics)
    evi.publish("E_BENCH")
    result = {}

    async def main():
        await evi.subscribe("E_BENCH", socket_text)
        state = {"open": 0, "done": 0, "failed": 0, "dropped": 0, "seq": 0}
        wake = [None]

        def settled(report):
            state["open"] -= 1
            state["done"] += report.delivered
            state["failed"] += report.failed
            state["dropped"] += report.dropped
            if wake[0] is not None and state["open"] < window // 2:
                d, wake[0] = wake[0], None
                d.callback(None)

        def raise_one():
            state["seq"] += 1
            state["open"] += 1
            d = evi.raise_event("E_BENCH", {"seq": state["seq"], "ip": "10.0.0.1",
                                            "user": "alice@example.com"})
            d.addCallback(settled)

        started = time.perf_counter()
        cpu0 = time.process_time()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            while state["open"] < window:
                raise_one()
                if state["seq"] % 200 == 0:
                    break
            if state["open"] >= window:
                wake[0] = Deferred()
                await wake[0]
            else:
                await deferLater(reactor, 0, lambda: None)
        while state["open"]:
            await deferLater(reactor, 0.001, lambda: None)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        if name == "tcp":
            # written is not received: wait until the receiver's socket has
            # drained every byte (the connection's send queue is empty)
            peer, = transport._peers.values()
            while peer.protocol.transport.dataBuffer or peer.protocol.transport._tempDataBuffer:
                await deferLater(reactor, 0.001, lambda: None)
            elapsed = time.perf_counter() - started
        result.update(case=name, notifications=state["done"], failed=state["failed"],
                      dropped=state["dropped"], seconds=round(elapsed, 2),
                      per_second=round(state["done"] / elapsed),
                      sender_cpu=round(100 * cpu / elapsed))

    from twisted.internet.defer import ensureDeferred
    d = ensureDeferred(main())
    d.addErrback(lambda f: result.update(error=f.getTraceback()))
    d.addBoth(lambda _: transport.stopService())
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    proc.terminate()
    proc.join(5)
    return result


def _child(name, seconds, out):
    out.send(run_case(name, seconds))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cases", default="xmlrpc,tcp,tcp-reliable")
    args = parser.parse_args(argv)
    interrupt_on_sigterm()
    rows = []
    for name in args.cases.split(","):
        # one process per case: a reactor cannot be restarted
        parent, child = multiprocessing.Pipe()
        proc = multiprocessing.Process(target=_child, args=(name, args.seconds, child))
        proc.start()
        try:
            rows.append(parent.recv())
        finally:
            proc.join(30)
    print(f"\nrpc_load: {os.cpu_count()} CPUs, {args.seconds} s per case, in process "
          "(EventInterface + transport), receiver in its own process\n")
    print("| case | notifications/s | delivered | failed | dropped | seconds | sender CPU % |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r.get('case')} | error | | | | | |\n{r['error']}")
            continue
        print(f"| {r['case']} | {r['per_second']:,} | {r['notifications']:,} | {r['failed']} | "
              f"{r['dropped']} | {r['seconds']} | {r['sender_cpu']} |")


if __name__ == "__main__":
    main()
