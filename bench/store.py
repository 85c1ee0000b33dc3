"""
The cost of durable subscriptions: MI subscribers refreshing through a real
evsrv process, with the subscription store off, and on with several
settings.

Two loads per setting:

 - refresh: N subscriptions each refreshed every 5 s (expire 10, as
   opensips-cli's ``diagnose`` does), spread evenly, so N/5 requests per
   second; reports the answer latency and how many disk transactions
   (``store:writes``, one sync each with ``sync = full``) that took;
 - burst: new subscriptions with 64 requests in flight, for the most
   subscribes per second.

An answer means the change is on disk (with the store on). Run:
``.venv/bin/python bench/store.py [--duration S] [--subscribers 1000,10000]``.
"""

import argparse
import json
import os
import select
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "bench")) if p not in sys.path]

from common import interrupt_on_sigterm  # noqa: E402

from evsrv.testing import ServerProcess  # noqa: E402

EVENT = "E_BENCH"
PERIOD = 5.0
WINDOW = 64

SETTINGS = [
    ("off", "backend = none"),
    ("full, batch 0", "sync = full\nbatch_delay = 0"),
    ("full, batch 10 ms (default)", "sync = full\nbatch_delay = 0.01"),
    ("normal, batch 10 ms", "sync = normal\nbatch_delay = 0.01"),
]


def ini(store_lines):
    return f"""\
[mi]
udp = 127.0.0.1:0
unix =
[events]
publish = {EVENT}
[limits]
max_subscriptions = 0
max_subscriptions_per_event = 0
[store]
directory = state
{store_lines}
"""


class Client:
    """
    One UDP socket sending MI requests and matching answers by id.
    """

    def __init__(self, address):
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.connect(address)
        self.sock.setblocking(False)
        self.next_id = 0
        self.sent = {}      # id -> perf_counter at send
        self.latencies = []
        self.errors = 0

    def send(self, method, params):
        self.next_id += 1
        self.sent[self.next_id] = time.perf_counter()
        self.sock.send(json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                                   "params": params}).encode())

    def receive(self, timeout):
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not ready:
            return
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            now = time.perf_counter()
            reply = json.loads(data)
            started = self.sent.pop(reply["id"], None)
            if started is not None:
                self.latencies.append(now - started)
            if "error" in reply:
                self.errors += 1

    def call(self, method, params):
        self.send(method, params)
        deadline = time.monotonic() + 5
        self.sock.setblocking(True)
        self.sock.settimeout(5)
        try:
            while time.monotonic() < deadline:
                reply = json.loads(self.sock.recv(65535))
                if reply["id"] == self.next_id:
                    self.sent.pop(self.next_id, None)
                    return reply["result"]
        finally:
            self.sock.setblocking(False)
        raise TimeoutError(method)

    def close(self):
        self.sock.close()


def store_statistics(client):
    stats = client.call("get_statistics", {"statistics": ["store:"]})
    return stats.get("store:writes", 0), stats.get("store:changes_written", 0)


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def refresh_load(client, subscribers, duration):
    """
    Every subscriber refreshes every PERIOD seconds, evenly spread.
    """
    interval = PERIOD / subscribers
    start = time.perf_counter()
    sent = 0
    end = start + duration
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = int((now - start) / interval) + 1
        while sent < due:
            client.send("event_subscribe",
                        [EVENT, f"udp:127.0.0.1:{10000 + sent % subscribers}", 10])
            sent += 1
        client.receive(min(interval, end - now))
    drain = time.perf_counter() + 2
    while client.sent and time.perf_counter() < drain:
        client.receive(0.05)
    return sent, time.perf_counter() - start


def burst_load(client, duration, base):
    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < duration:
        while len(client.sent) < WINDOW:
            client.send("event_subscribe",
                        [EVENT, f"udp:127.0.0.{1 + (base + sent) // 60000}:"
                                f"{1024 + (base + sent) % 60000}", 60])
            sent += 1
        client.receive(0.05)
    drain = time.perf_counter() + 2
    while client.sent and time.perf_counter() < drain:
        client.receive(0.05)
    return sent, time.perf_counter() - start


def run(duration, subscriber_counts):
    rows = []
    for label, lines in SETTINGS:
        for count in subscriber_counts:
            directory = Path(tempfile.mkdtemp(prefix="evsrv-bench-store-"))
            path = directory / "evsrv.ini"
            path.write_text(ini(lines))
            server = ServerProcess(path)
            client = Client(server.udp)
            try:
                # every subscription exists first: the load is refreshes
                for n in range(count):
                    client.send("event_subscribe", [EVENT, f"udp:127.0.0.1:{10000 + n}", 10])
                    if n % WINDOW == WINDOW - 1:
                        while len(client.sent) > WINDOW // 2:
                            client.receive(1)
                while client.sent:
                    client.receive(1)
                client.latencies = []
                writes0, changes0 = store_statistics(client)
                sent, elapsed = refresh_load(client, count, duration)
                writes1, changes1 = store_statistics(client)
                latencies = client.latencies
                lost = len(client.sent)
                client.sent.clear()
                client.latencies = []
                burst_sent, burst_elapsed = burst_load(client, min(duration, 5), count)
                rows.append({
                    "setting": label, "subscribers": count, "rate": sent / elapsed,
                    "writes": (writes1 - writes0) / elapsed,
                    "per_write": (changes1 - changes0) / max(1, writes1 - writes0),
                    "p50": percentile(latencies, 50) * 1e3,
                    "p99": percentile(latencies, 99) * 1e3,
                    "max": max(latencies, default=float("nan")) * 1e3,
                    "lost": lost, "errors": client.errors,
                    "burst": len(client.latencies) / burst_elapsed,
                })
            finally:
                client.close()
                server.stop()
                shutil.rmtree(directory, ignore_errors=True)
    return rows


def main():
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0,
                        help="seconds of refresh load per setting (default 15)")
    parser.add_argument("--subscribers", default="1000,10000",
                        help="subscriber counts, comma-separated (default 1000,10000)")
    args = parser.parse_args()
    counts = [int(n) for n in args.subscribers.split(",")]
    rows = run(args.duration, counts)
    off = {r["subscribers"]: r for r in rows if r["setting"] == "off"}
    print(f"\nrefresh every {PERIOD:g} s, expire 10; answers count only once stored\n")
    print("| store | subscribers | refreshes/s | disk writes/s | changes per write | "
          "answer p50 ms | p99 ms | max ms | lost | errors | burst subscribes/s | "
          "burst vs off |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = off.get(r["subscribers"])
        ratio = r["burst"] / base["burst"] if base and base["burst"] else float("nan")
        print(f"| {r['setting']} | {r['subscribers']} | {r['rate']:.0f} | {r['writes']:.1f} | "
              f"{r['per_write']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | "
              f"{r['lost']} | {r['errors']} | {r['burst']:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
