"""
Subscription store benchmark, in process (no sockets are opened).

Builds the real server object, ``EvsrvService(parse_config(...), clock)``, with
the real ``udp`` transport and a ``twisted.internet.task.Clock`` as its
reactor, and drives ``EventInterface.subscribe`` (origin "mi", expire 3600, as
the MI ``event_subscribe`` does) with unique sockets ``udp:10.X.Y.Z:PORT``
(IP literals: parsing is synchronous, no DNS). Log events go through a text
log observer writing to /dev/null, as the server's own logging would.

Measures:

 - subscribe rate: calls per second of the last 1,000 subscribes when the
   store grows to 1k, 10k and 100k subscribers (median of 3 passes), so a
   rate that falls with size shows;
 - refresh rate: re-subscribing all 100k (the clock moved 10 s on);
 - expiry sweep: one ``EventInterface.sweep()`` expiring all 100k after the
   clock passed their deadline (this runs in one reactor tick in the server);
 - memory per subscription at 10k and 100k: traced Python allocations
   (tracemalloc) and the resident set size growth (/proc/self/statm), each in
   a fresh child process, divided by the number of subscriptions.

Run: ``.venv/bin/python bench/subscriptions.py [--passes N] [--breakdown]``.
"""

import argparse
import gc
import linecache
import multiprocessing
import os
import statistics
import sys
import time
import tracemalloc
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "bench")) if p not in sys.path]

from common import interrupt_on_sigterm  # noqa: E402

EVENT = "E_BENCH"
SIZES = (1_000, 10_000, 100_000)
WINDOW = 1_000     # the subscribes timed at each size
EXPIRE = 3600      # the MI default
INI = f"""\
[mi]
udp =
unix =
[events]
publish = {EVENT}
[transports]
enabled = udp
"""
TARGET_FLAT = 0.8
TARGET_BYTES = 400

_logging_started = False


def start_logging(format_text=True):
    """
    Send twisted.logger events to a text observer on /dev/null (formatting
    included, as in the server), or nowhere (C{format_text=False}: for the
    memory children, where only what stays allocated matters), so that
    nothing is buffered in memory.
    """
    global _logging_started
    if _logging_started:
        return
    from twisted.logger import globalLogBeginner, textFileLogObserver
    if format_text:
        observer = textFileLogObserver(open(os.devnull, "w"))
    else:
        def observer(event):
            pass
    globalLogBeginner.beginLoggingTo([observer], discardBuffer=True, redirectStandardIO=False)
    _logging_started = True


def build():
    """
    @return: (service, clock): a whole evsrv on a fake clock, not listening.
    """
    from twisted.internet.task import Clock

    from evsrv.config import parse_config
    from evsrv.server import EvsrvService, transport_factories
    clock = Clock()
    clock.advance(1_000_000)
    config = parse_config(INI, "<bench>", ROOT, transport_factories())
    return EvsrvService(config, clock), clock


def socket_text(i: int) -> str:
    return f"udp:10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:{1024 + i % 60000}"


class Failed:
    """
    Counts subscribe calls that failed (there should be none).
    """

    def __init__(self):
        self.count = 0
        self.last = None

    def __call__(self, failure):
        self.count += 1
        self.last = failure.getErrorMessage()


def subscribe_range(evi, start, stop, failed):
    subscribe = evi.subscribe
    for i in range(start, stop):
        subscribe(EVENT, socket_text(i), EXPIRE, origin="mi").addErrback(failed)


def timing_pass(sizes=SIZES, window=WINDOW):
    """
    One pass on a fresh server. @return: dict of figures.
    """
    service, clock = build()
    evi = service.evi
    failed = Failed()
    perf = time.perf_counter_ns
    rates = {}
    full_gcs = {}
    done = 0
    for size in sizes:
        subscribe_range(evi, done, size - window, failed)
        gen2 = gc.get_stats()[2]["collections"]
        t0 = perf()
        subscribe_range(evi, size - window, size, failed)
        elapsed = perf() - t0
        rates[size] = window / (elapsed / 1e9)
        full_gcs[size] = gc.get_stats()[2]["collections"] - gen2
        done = size
    top = sizes[-1]
    assert evi.store.size == top, (evi.store.size, failed.last)

    clock.advance(10)
    t0 = perf()
    subscribe_range(evi, 0, top, failed)
    refresh_s = (perf() - t0) / 1e9
    assert evi.store.size == top

    clock.advance(EXPIRE + 11)
    # The sweep removes at most SWEEP_LIMIT per tick: time every tick needed.
    expired = 0
    sweep_s = tick_max_s = 0.0
    while True:
        t0 = perf()
        count = evi.sweep()
        tick_s = (perf() - t0) / 1e9
        if not count:
            break
        expired += count
        sweep_s += tick_s
        tick_max_s = max(tick_max_s, tick_s)
    assert expired == top and evi.store.size == 0, (expired, evi.store.size)
    if failed.count:
        raise RuntimeError(f"{failed.count} subscribe calls failed: {failed.last}")
    return {"rates": rates, "full_gcs": full_gcs, "refresh_rate": top / refresh_s,
            "sweep_s": sweep_s, "sweep_tick_max_s": tick_max_s,
            "sweep_us_per_sub": sweep_s / top * 1e6}


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def subscribe_range_mi(service, start, stop, failed):
    """
    The same subscribes as MI JSON-RPC requests through the server's
    dispatcher (expire decoded from JSON, as over the wire).
    """
    handle = service.dispatcher.handle
    template = ('{"jsonrpc":"2.0","method":"event_subscribe","params":["%s","%%s",%d],'
                '"id":%%d}' % (EVENT, EXPIRE))
    ok = b'"result":"OK"'

    def check(reply):
        if ok not in reply:
            failed.count += 1
            failed.last = reply.decode()
    for i in range(start, stop):
        handle((template % (socket_text(i), i)).encode()).addCallback(check)


def _code_objects(module):
    seen = set()
    todo = [v for v in vars(module).values()]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, type) and obj.__module__ == module.__name__:
            todo.extend(vars(obj).values())
        elif isinstance(obj, (staticmethod, classmethod)):
            todo.append(obj.__func__)
        elif isinstance(obj, property):
            todo.extend(f for f in (obj.fget, obj.fset) if f is not None)
        elif hasattr(obj, "__code__") and getattr(obj, "__module__", None) == module.__name__:
            todo.append(obj.__code__)
        elif isinstance(obj, types.CodeType):
            yield obj
            todo.extend(c for c in obj.co_consts if isinstance(c, types.CodeType))


def where(filename, lineno):
    """
    "file:line function: source" for an allocation site, from the code
    objects as loaded (the file on disk may have been edited since).
    """
    best = None
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) != filename:
            continue
        for code in _code_objects(module):
            lines = [line for _, _, line in code.co_lines() if line is not None]
            if lines and min(lines) <= lineno <= max(lines):
                if best is None or max(lines) - min(lines) < best[0]:
                    best = (max(lines) - min(lines), code.co_qualname)
    source = linecache.getline(filename, lineno).strip()
    return (f"{Path(filename).name}:{lineno}", best[1] if best else "?", source)


def memory_child(method, sizes, conn, breakdown):
    """
    In a fresh child process: bytes per subscription at each size, by
    ``method``: "tracemalloc", "rss", or "mi" (tracemalloc, subscribing
    through the MI dispatcher).
    """
    try:
        start_logging(format_text=False)
        traced = method in ("tracemalloc", "mi")
        if traced:
            tracemalloc.start(1)
        service, clock = build()
        for module in list(sys.modules.values()):
            # Cache the sources now: the breakdown quotes lines as loaded.
            if "evsrv" in (getattr(module, "__file__", None) or ""):
                linecache.getlines(module.__file__)
        evi = service.evi
        failed = Failed()
        # One subscribe first, so one-time costs (the transport, the first
        # dict and heap) are not charged to the measured ones.
        evi.subscribe(EVENT, "udp:127.0.0.1:9", EXPIRE, origin="mi")
        gc.collect()
        base = tracemalloc.get_traced_memory()[0] if traced else _rss_bytes()
        snap0 = tracemalloc.take_snapshot() if breakdown and method == "tracemalloc" else None
        out = {}
        done = 0
        for size in sizes:
            if method == "mi":
                subscribe_range_mi(service, done, size, failed)
            else:
                subscribe_range(evi, done, size, failed)
            done = size
            gc.collect()
            now = tracemalloc.get_traced_memory()[0] if traced else _rss_bytes()
            out[size] = (now - base) / size
        if snap0 is not None:
            top = tracemalloc.take_snapshot().compare_to(snap0, "lineno")[:8]
            out["breakdown"] = [
                (*where(s.traceback[0].filename, s.traceback[0].lineno), s.size_diff / sizes[-1])
                for s in top]
        if failed.count:
            raise RuntimeError(f"{failed.count} subscribe calls failed: {failed.last}")
        conn.send(out)
    except BaseException as e:  # report, don't hang the parent
        conn.send({"error": repr(e)})
    finally:
        conn.close()


class MemoryChild:
    """
    A memory measurement running in a fresh forked process.
    """

    def __init__(self, method, sizes, breakdown=False):
        self.method = method
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=memory_child, args=(method, sizes, child, breakdown),
                                daemon=True)
        self.proc.start()
        child.close()

    def result(self, timeout=180):
        try:
            if not self.conn.poll(timeout):
                raise RuntimeError(f"memory child ({self.method}) did not answer")
            out = self.conn.recv()
        finally:
            self.close()
        if "error" in out:
            raise RuntimeError(f"memory child ({self.method}): {out['error']}")
        return out

    def close(self):
        self.conn.close()
        self.proc.join(0.5)
        if self.proc.is_alive():  # interrupted, or stuck: no need to wait
            self.proc.kill()
            self.proc.join()


def run_benchmark(passes=3, breakdown=False, verbose=True):
    def say(*args):
        if verbose:
            print(*args, file=sys.stderr, flush=True)

    start_logging()
    mem_sizes = (10_000, 100_000)
    # Memory first, in children forked while this process is still small;
    # the two slow tracemalloc ones side by side (timing does not matter
    # there), the RSS one alone.
    children = []
    try:
        children = [MemoryChild("tracemalloc", mem_sizes, breakdown),
                    MemoryChild("mi", mem_sizes)]
        traced, via_mi = (c.result() for c in children)
        say(f"  tracemalloc: {traced[10_000]:.0f} B/sub @10k, {traced[100_000]:.0f} B/sub @100k")
        say(f"  tracemalloc via MI: {via_mi[10_000]:.0f} B/sub @10k, "
            f"{via_mi[100_000]:.0f} B/sub @100k")
        children = [MemoryChild("rss", mem_sizes)]
        rss = children[0].result()
        say(f"  RSS: {rss[10_000]:.0f} B/sub @10k, {rss[100_000]:.0f} B/sub @100k")
    finally:
        for child in children:
            child.close()
    results = []
    for n in range(passes):
        gc.collect()
        result = timing_pass()
        say(f"  pass {n + 1}: subscribe/s " + ", ".join(
            f"@{size // 1000}k {rate:,.0f}"
            + (f" ({result['full_gcs'][size]} full GC)" if result["full_gcs"][size] else "")
            for size, rate in result["rates"].items())
            + f"; refresh/s {result['refresh_rate']:,.0f}; sweep {result['sweep_s'] * 1e3:.0f} ms")
        results.append(result)
    median = statistics.median
    return {
        "rates": {size: median(r["rates"][size] for r in results) for size in SIZES},
        "rates_all": {size: [r["rates"][size] for r in results] for size in SIZES},
        "refresh_rate": median(r["refresh_rate"] for r in results),
        "sweep_s": median(r["sweep_s"] for r in results),
        "sweep_us_per_sub": median(r["sweep_us_per_sub"] for r in results),
        "sweep_tick_max_s": median(r["sweep_tick_max_s"] for r in results),
        "bytes_traced": {s: traced[s] for s in mem_sizes},
        "bytes_rss": {s: rss[s] for s in mem_sizes},
        "bytes_mi": {s: via_mi[s] for s in mem_sizes},
        "breakdown": traced.get("breakdown"),
        "passes": passes,
    }


def format_table(res):
    r = res["rates"]
    lines = [f"{'measure':<62} {'value':>10}", "-" * 73]

    def row(label, value):
        lines.append(f"{label:<62} {value:>10}")
    for size in SIZES:
        spread = ", ".join(f"{v:,.0f}" for v in res["rates_all"][size])
        row(f"subscribe/s, last 1k of {size // 1000}k (passes: {spread})", f"{r[size]:,.0f}")
    row("refresh (re-subscribe)/s at 100k", f"{res['refresh_rate']:,.0f}")
    row("expiry sweep of 100k: total (10k per tick)", f"{res['sweep_s'] * 1e3:,.0f} ms")
    row("expiry sweep: longest tick", f"{res['sweep_tick_max_s'] * 1e3:,.0f} ms")
    row("expiry sweep: per subscription", f"{res['sweep_us_per_sub']:.2f} us")
    for size in (10_000, 100_000):
        row(f"bytes/subscription at {size // 1000}k, tracemalloc",
            f"{res['bytes_traced'][size]:,.0f}")
        row(f"bytes/subscription at {size // 1000}k, RSS growth",
            f"{res['bytes_rss'][size]:,.0f}")
        row(f"bytes/subscription at {size // 1000}k, tracemalloc, via MI JSON-RPC",
            f"{res['bytes_mi'][size]:,.0f}")
    lines.append(f"(median of {res['passes']} passes for rates and sweep; memory from one "
                 "fresh process per method)")
    return "\n".join(lines)


def format_targets(res):
    flat = res["rates"][100_000] / res["rates"][1_000]
    traced = res["bytes_traced"][100_000]
    rss = res["bytes_rss"][100_000]
    rows = [
        ("subscribe rate flat: rate@100k / rate@1k", f">={TARGET_FLAT}", f"{flat:.2f}",
         flat / TARGET_FLAT),
        ("bytes/subscription @100k (tracemalloc)", f"<={TARGET_BYTES}", f"{traced:,.0f}",
         TARGET_BYTES / traced),
        ("bytes/subscription @100k (RSS growth)", f"<={TARGET_BYTES}", f"{rss:,.0f}",
         TARGET_BYTES / rss if rss > 0 else float("inf")),
    ]
    head = f"{'target':<44} {'goal':>8} {'measured':>9} {'ratio':>6}  verdict"
    lines = [head, "-" * len(head)]
    for label, goal, measured, ratio in rows:
        lines.append(f"{label:<44} {goal:>8} {measured:>9} {ratio:>6.2f}  "
                     f"{'meets' if ratio >= 1 else 'MISSES'}")
    lines.append("(ratio > 1 means the target is met: measured/goal, or goal/measured for "
                 "bytes)")
    if res.get("breakdown"):
        lines.append("")
        lines.append("where the bytes of one subscription go (tracemalloc, @100k, top sites):")
        for site, function, code, size in res["breakdown"]:
            lines.append(f"  {size:6.1f} B  {site:<20} {function:<28} {code[:60]}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=3, help="timing passes (3)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also show the top allocation sites per subscription")
    args = parser.parse_args(argv)
    interrupt_on_sigterm()
    try:
        res = run_benchmark(args.passes, args.breakdown)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print("Subscriptions: in process (EvsrvService on a task.Clock, real udp transport, "
          "no sockets)")
    print(format_table(res))
    print()
    print(format_targets(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
