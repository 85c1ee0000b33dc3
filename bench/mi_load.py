"""
MI load generator: raise_event over UDP against a real evsrv process.

The script starts its own server (``python -m twisted --log-format=text evsrv
-c INI`` with MI on udp:127.0.0.1:0 and the event E_BENCH), subscribes K UDP
sockets to E_BENCH through the MI and then, for K = 1, 10, 100, sends
``raise_event`` requests

 - serially (one request in flight), and
 - pipelined (a sliding window of 64 requests in flight, keyed by request id),

for a fixed duration each. The K subscriber sockets live in a separate
receiver process (multiprocessing, one epoll loop draining every ready socket)
so that the sender and the receivers do not compete inside one interpreter.

Each raise carries ``params = [TAG, "b"]`` where TAG is ``RRRTTTT...SEQ``: a
3-digit run number, the sender's ``time.time_ns()`` at send (19 digits) and the
request's sequence number. The receiver computes raise->notify latency as its
own ``time.time_ns()`` at receive minus that stamp (both processes on one
machine, so one clock). MI round-trip times use ``time.perf_counter_ns()``
inside the sender process only.

Run: ``.venv/bin/python bench/mi_load.py [--duration S] [--ks 1,10,100]``.
"""

import argparse
import array
import ctypes
import json
import math
import multiprocessing
import os
import select
import shutil
import signal
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
WINDOW = 64
RCVBUF = 4 * 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

INI = f"""\
[mi]
udp = 127.0.0.1:0
unix =
[events]
publish = {EVENT}
"""

# What every notification of this benchmark starts with; the tag follows.
PREFIX = b'{"jsonrpc":"2.0","method":"%s","params":["' % EVENT.encode()

# Targets: (label, row key, column, target, higher_is_better)
TARGETS = [
    ("K=1, 64 in flight: raises/s", ("pipelined", 1), "raises_s", 20_000, True),
    ("K=100: notifications/s", ("pipelined", 100), "notifs_s", 150_000, True),
    ("K=10, 64 in flight: raise->notify p99 (ms)", ("pipelined", 10), "lat_p99", 20.0, False),
]


def percentile(sorted_values, q):
    """
    Nearest-rank percentile of an already sorted sequence (None if empty).
    """
    if not sorted_values:
        return None
    index = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def cpu_seconds(pid):
    """
    utime + stime of a process (all its threads), from /proc.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_cpu_ticks():
    """
    (busy, total) jiffies of the whole host, from /proc/stat.
    """
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def udp_rcvbuf_errors():
    """
    The kernel's UDP RcvbufErrors counter (all sockets of the host): datagrams
    dropped because a receive buffer was full.
    """
    try:
        with open("/proc/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return 0


# -- the receiver process ------------------------------------------------------


def receiver_main(conn, count):
    """
    Owns ``count`` UDP sockets on 127.0.0.1; obeys commands from ``conn``:
    ("run", N) starts counting notifications tagged with run N, ("stop",)
    drains until the sockets are quiet and answers with the run's figures,
    ("quit",) ends.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            socks.append(s)
        conn.send([s.getsockname()[1] for s in socks])
        _receive_loop(conn, socks)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        for s in socks:
            s.close()
        conn.close()


def _receive_loop(conn, socks):
    ep = select.epoll()
    recv_of = {s.fileno(): s.recv for s in socks}
    for fd in recv_of:
        ep.register(fd, select.EPOLLIN)
    ctl = conn.fileno()
    ep.register(ctl, select.EPOLLIN)
    time_ns = time.time_ns
    plen = len(PREFIX)
    tag_end = plen + 3 + 19
    run_tag = b"---"
    latencies = array.array("q")
    other = foreign = 0
    stopping = False
    quiet_since = stop_at = 0.0
    last_recv = first_recv = 0
    cpu0 = 0.0
    try:
        while True:
            events = ep.poll(0.05 if stopping else 1.0)
            got = 0
            for fd, _ in events:
                if fd != ctl:
                    continue
                # Commands first, so a run's first notifications are not
                # mistaken for stragglers of the previous one.
                while conn.poll():
                    msg = conn.recv()
                    if msg[0] == "run":
                        run_tag = b"%03d" % msg[1]
                        latencies = array.array("q")
                        other = foreign = 0
                        first_recv = last_recv = 0
                        cpu0 = time.process_time()
                    elif msg[0] == "stop":
                        stopping = True
                        stop_at = quiet_since = time.monotonic()
                    elif msg[0] == "quit":
                        return
            for fd, _ in events:
                if fd == ctl:
                    continue
                recv = recv_of[fd]
                while True:
                    try:
                        data = recv(4096)
                    except BlockingIOError:
                        break
                    now = time_ns()
                    got += 1
                    if data[plen:plen + 3] == run_tag and data[:plen] == PREFIX:
                        latencies.append(now - int(data[plen + 3:tag_end]))
                        if not first_recv:
                            first_recv = now
                        last_recv = now
                    elif data.startswith(PREFIX):
                        other += 1
                    else:
                        foreign += 1
            if stopping:
                mono = time.monotonic()
                if got:
                    quiet_since = mono
                elif mono - quiet_since > 0.3 or mono - stop_at > 10:
                    lat = sorted(latencies)
                    conn.send({
                        "received": len(lat), "other": other, "foreign": foreign,
                        "lat_p50_ns": percentile(lat, 0.50), "lat_p99_ns": percentile(lat, 0.99),
                        "lat_max_ns": lat[-1] if lat else None,
                        "first_recv_ns": first_recv, "last_recv_ns": last_recv,
                        "cpu_s": time.process_time() - cpu0,
                    })
                    stopping = False
                    run_tag = b"---"
    finally:
        ep.close()


# -- the server process ------------------------------------------------------------


def _die_with_parent():
    # Linux: SIGTERM the server if the benchmark dies without cleaning up.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Server(ServerProcess):
    """
    A real evsrv process on a temporary ini, optionally pinned to one CPU.
    """

    def __init__(self, workdir: Path, cpu=None):
        ini = workdir / "bench.ini"
        ini.write_text(INI)
        super().__init__(ini, pythonpath=ROOT, preexec_fn=_die_with_parent, timeout=30)
        if cpu is not None:
            os.sched_setaffinity(self.pid, {cpu})
        self.mi = self.udp

    def cpu_seconds(self):
        return cpu_seconds(self.pid)


# -- the MI client -----------------------------------------------------------------------


class MIClient:
    def __init__(self, address):
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(address)
        self.sock.settimeout(2.0)
        self.next_id = 1

    def close(self):
        self.sock.close()

    def call(self, method, params):
        """
        One request, waiting for its reply (stray replies of earlier
        pipelined requests are skipped).
        """
        rid = self.next_id
        self.next_id += 1
        self.sock.send(json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                                   "id": rid}).encode())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                reply = json.loads(self.sock.recv(65536))
            except socket.timeout:
                continue
            if reply.get("id") == rid:
                if "error" in reply:
                    raise RuntimeError(f"MI {method} {params}: {reply['error']}")
                return reply["result"]
        raise RuntimeError(f"MI {method}: no reply")

    def raise_load(self, run, window, duration):
        """
        Send raise_event requests with at most ``window`` in flight for
        ``duration`` seconds, then wait for the outstanding replies (1 s at
        most). @return: a dict of figures.
        """
        sock = self.sock
        send, recv = sock.send, sock.recv
        perf, time_ns = time.perf_counter_ns, time.time_ns
        template = (b'{"jsonrpc":"2.0","method":"raise_event","params":["' + EVENT.encode()
                    + b'",["%03d%019d%d","b"]],"id":%d}')
        inflight = {}
        rtts = array.array("q")
        ok = errors = strays = lost = 0
        rid = self.next_id
        seq = 0
        sock.settimeout(0.25)
        start = perf()
        deadline = start + int(duration * 1e9)
        last_reply = start
        now = start
        while True:
            if now < deadline:
                while len(inflight) < window:
                    seq += 1
                    rid += 1
                    t = perf()
                    send(template % (run, time_ns(), seq, rid))
                    inflight[rid] = t
            elif not inflight or now - last_reply > 1_000_000_000:
                break
            try:
                data = recv(65536)
            except socket.timeout:
                now = perf()
                # A request or its reply was lost: free its slot.
                for k in [k for k, t0 in inflight.items() if now - t0 > 1_000_000_000]:
                    del inflight[k]
                    lost += 1
                continue
            now = perf()
            try:
                key = int(data[data.rindex(b":") + 1:-1])
            except ValueError:
                strays += 1
                continue
            t0 = inflight.pop(key, None)
            if t0 is None:
                strays += 1
                continue
            last_reply = now
            rtts.append(now - t0)
            if b'"result":"OK"' in data:
                ok += 1
            else:
                errors += 1
        end = last_reply
        lost += len(inflight)
        self.next_id = rid + 1
        sock.settimeout(2.0)
        rtts = sorted(rtts)
        return {"ok": ok, "errors": errors, "lost": lost, "strays": strays, "sent": seq,
                "elapsed_s": (end - start) / 1e9,
                "rtt_p50_ns": percentile(rtts, 0.50), "rtt_p99_ns": percentile(rtts, 0.99)}


# -- the benchmark -----------------------------------------------------------------------------


def run_benchmark(ks=(1, 10, 100), duration=3.0, window=WINDOW, pin=False, verbose=True):
    """
    @return: list of row dicts, one per (mode, K).
    """
    def say(*args):
        if verbose:
            print(*args, file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="evsrv-bench-"))
    server = receiver = client = conn = None
    rows = []
    ctx = multiprocessing.get_context("fork")
    try:
        server = Server(workdir, cpu=0 if pin else None)
        say(f"evsrv pid {server.pid}, MI on udp:{server.mi[0]}:{server.mi[1]}")
        conn, child_conn = ctx.Pipe()
        receiver = ctx.Process(target=receiver_main, args=(child_conn, max(ks)), daemon=True)
        receiver.start()
        child_conn.close()
        if pin:
            os.sched_setaffinity(0, {1})
            os.sched_setaffinity(receiver.pid, {1})
        if not conn.poll(10):
            raise RuntimeError("receiver process did not start")
        ports = conn.recv()
        client = MIClient(server.mi)
        subscribed = 0
        run = 0
        for k in sorted(ks):
            while subscribed < k:
                client.call("event_subscribe",
                            [EVENT, f"udp:127.0.0.1:{ports[subscribed]}", 3600])
                subscribed += 1
            for mode, win in (("serial", 1), ("pipelined", window)):
                # Warm-up (its notifications carry a run number nobody counts).
                client.raise_load(999, win, 0.2)
                run += 1
                conn.send(("run", run))
                stats0 = client.call("get_statistics", [["evi_udp:", "mi:"]])
                drops0 = udp_rcvbuf_errors()
                srv0 = server.cpu_seconds()
                host0 = host_cpu_ticks()
                gen0 = time.process_time()
                sent = client.raise_load(run, win, duration)
                srv_cpu = server.cpu_seconds() - srv0
                gen_cpu = time.process_time() - gen0
                host1 = host_cpu_ticks()
                host_busy = ((host1[0] - host0[0]) / (host1[1] - host0[1])
                             if host1[1] > host0[1] else 0.0)
                conn.send(("stop",))
                if not conn.poll(20):
                    raise RuntimeError("receiver did not report")
                got = conn.recv()
                drops = udp_rcvbuf_errors() - drops0
                stats1 = client.call("get_statistics", [["evi_udp:", "mi:"]])
                elapsed = sent["elapsed_s"]
                expected = k * sent["ok"]
                row = {
                    "mode": mode, "k": k, "window": win, "raises": sent["ok"],
                    "raises_s": sent["ok"] / elapsed,
                    "notifs_s": got["received"] / elapsed,
                    "expected": expected, "received": got["received"],
                    "loss_pct": (100.0 * (expected - got["received"]) / expected
                                 if expected else 0.0),
                    "rtt_p50": _ms(sent["rtt_p50_ns"]), "rtt_p99": _ms(sent["rtt_p99_ns"]),
                    "lat_p50": _ms(got["lat_p50_ns"]), "lat_p99": _ms(got["lat_p99_ns"]),
                    "lat_max": _ms(got["lat_max_ns"]),
                    "mi_errors": sent["errors"], "mi_lost": sent["lost"],
                    "srv_cpu_pct": 100.0 * srv_cpu / elapsed,
                    "gen_cpu_pct": 100.0 * gen_cpu / elapsed,
                    "rcv_cpu_pct": 100.0 * got["cpu_s"] / elapsed,
                    "host_busy_pct": 100.0 * host_busy,
                    # Everything else, in % of one core: the kernel's softirq
                    # work and any other process on the machine.
                    "other_cpu_pct": max(0.0, 100.0 * host_busy * (os.cpu_count() or 1)
                                         - 100.0 * (srv_cpu + gen_cpu + got["cpu_s"]) / elapsed),
                    "rcvbuf_drops": drops,
                    "srv_dropped": stats1.get("evi_udp:notifications_dropped", 0)
                    - stats0.get("evi_udp:notifications_dropped", 0),
                    "srv_failed": stats1.get("evi_udp:notifications_failed", 0)
                    - stats0.get("evi_udp:notifications_failed", 0),
                    "elapsed_s": elapsed,
                }
                rows.append(row)
                say(f"  {mode:9s} K={k:<3d} {row['raises_s']:9.0f} raises/s "
                    f"{row['notifs_s']:9.0f} notif/s loss {row['loss_pct']:.2f}% "
                    f"srv CPU {row['srv_cpu_pct']:.0f}%")
    finally:
        if client is not None:
            client.close()
        if receiver is not None:
            try:
                conn.send(("quit",))
            except (OSError, ValueError):
                pass
            receiver.join(2)
            if receiver.is_alive():
                receiver.terminate()
                receiver.join(2)
            if receiver.is_alive():
                receiver.kill()
                receiver.join()
        if conn is not None:
            conn.close()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if pin:
            try:
                os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
            except OSError:
                pass
    return rows


def _ms(ns):
    return None if ns is None else ns / 1e6


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(rows):
    head = (f"{'mode':<9} {'K':>3} {'raises/s':>9} {'notif/s':>9} {'loss %':>7} "
            f"{'RTT p50':>8} {'RTT p99':>8} {'r->n p50':>8} {'r->n p99':>8} "
            f"{'srv CPU':>7} {'gen CPU':>7} {'rcv CPU':>7} {'other':>6}")
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["mode"] != "serial", r["k"])):
        lines.append(
            f"{r['mode']:<9} {r['k']:>3} {r['raises_s']:>9.0f} {r['notifs_s']:>9.0f} "
            f"{r['loss_pct']:>7.2f} {_fmt(r['rtt_p50'], '8.3f')} {_fmt(r['rtt_p99'], '8.3f')} "
            f"{_fmt(r['lat_p50'], '8.3f')} {_fmt(r['lat_p99'], '8.3f')} "
            f"{r['srv_cpu_pct']:>6.0f}% {r['gen_cpu_pct']:>6.0f}% {r['rcv_cpu_pct']:>6.0f}% "
            f"{r['other_cpu_pct']:>5.0f}%")
    lines.append("(RTT = MI request->reply, r->n = raise->notify latency, both in ms; "
                  "CPU = % of one core used by the server, the MI sender, the receiver "
                  "process, and everything else: kernel softirq, other processes)")
    extra = [r for r in rows if r["mi_errors"] or r["mi_lost"] or r["srv_dropped"]
             or r["srv_failed"] or r["rcvbuf_drops"]]
    for r in extra:
        lines.append(f"  note {r['mode']} K={r['k']}: MI errors {r['mi_errors']}, MI requests "
                     f"without reply {r['mi_lost']}, server-side dropped {r['srv_dropped']} / "
                     f"failed {r['srv_failed']}, kernel UDP receive-buffer drops "
                     f"{r['rcvbuf_drops']}")
    return "\n".join(lines)


def format_targets(rows):
    by_key = {(r["mode"], r["k"]): r for r in rows}
    head = f"{'target':<44} {'goal':>10} {'measured':>10} {'ratio':>6}  verdict"
    lines = [head, "-" * len(head)]
    for label, key, column, goal, higher in TARGETS:
        row = by_key.get(key)
        value = None if row is None else row[column]
        if value is None:
            lines.append(f"{label:<44} {goal:>10} {'-':>10} {'-':>6}  not measured")
            continue
        ratio = value / goal if higher else (goal / value if value else float("inf"))
        sign = ">=" if higher else "<="
        lines.append(f"{label:<44} {sign + format(goal, ',.0f' if higher else 'g'):>10} "
                     f"{value:>10,.{0 if higher else 2}f} {ratio:>6.2f}  "
                     f"{'meets' if ratio >= 1 else 'MISSES'}")
    lines.append("(ratio > 1 means the target is met: measured/goal, or goal/measured "
                 "for latency)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run (3)")
    parser.add_argument("--ks", default="1,10,100", help="subscriber counts (1,10,100)")
    parser.add_argument("--window", type=int, default=WINDOW, help="requests in flight when "
                        "pipelined (64)")
    parser.add_argument("--pin", action="store_true", help="pin the server to CPU 0 and the "
                        "load generator to CPU 1")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    ks = tuple(int(k) for k in args.ks.split(","))
    interrupt_on_sigterm()
    try:
        rows = run_benchmark(ks, args.duration, args.window, args.pin)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"MI load: evsrv subprocess, {os.cpu_count()} CPUs shared by server and load "
          f"generator, {args.duration:g} s per run, pipelined = {args.window} in flight")
    print(format_table(rows))
    print()
    print(format_targets(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
