"""
Runs every evsrv benchmark and prints their tables: the MI load generator
against a real server process (bench/mi_load.py), the in-process
subscription store benchmark (bench/subscriptions.py), then the transport
benchmarks (bench/rpc_load.py, bench/amqp_load.py).

Run: ``make bench``, or ``.venv/bin/python bench/run_all.py [--duration S]
[--passes N] [--json FILE]``. Takes about 75 s.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import mi_load  # noqa: E402
from common import interrupt_on_sigterm  # noqa: E402
import subscriptions  # noqa: E402


def describe_host():
    commit = "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(HERE.parent), "describe", "--always",
                                 "--dirty"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or commit
    except (OSError, subprocess.SubprocessError):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"evsrv {commit}; Python {platform.python_version()}; {os.cpu_count()} x {cpu}; "
            f"{platform.system()} {platform.release()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run every evsrv benchmark.")
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds per MI load run (3)")
    parser.add_argument("--passes", type=int, default=3,
                        help="timing passes of the subscription benchmark (3)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS",
                        help="also run the soak benchmark (bench/soak.py) for SECONDS "
                        "(default 0: not run; it is long)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    interrupt_on_sigterm()
    try:
        print("== MI load (bench/mi_load.py) ==", file=sys.stderr, flush=True)
        rows = mi_load.run_benchmark(duration=args.duration)
        print("== subscriptions (bench/subscriptions.py) ==", file=sys.stderr, flush=True)
        subs = subscriptions.run_benchmark(passes=args.passes, breakdown=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print()
    print(describe_host())
    print()
    print(f"MI load: a real evsrv process; server, MI sender and receiver process share the "
          f"{os.cpu_count()} CPUs; {args.duration:g} s per run; pipelined = "
          f"{mi_load.WINDOW} requests in flight")
    print(mi_load.format_table(rows))
    print()
    print(mi_load.format_targets(rows))
    print()
    print("Subscriptions: in process (EvsrvService on a task.Clock, real udp transport, "
          "no sockets)")
    print(subscriptions.format_table(subs))
    print()
    print(subscriptions.format_targets(subs))
    print()
    # The per-transport benchmarks print their own tables.
    for script in ("rpc_load.py", "amqp_load.py"):
        if (HERE / script).exists():
            print(f"== bench/{script} ==", flush=True)
            if subprocess.run([sys.executable, str(HERE / script)]).returncode:
                print(f"bench/{script} failed", file=sys.stderr)
            print()
    if args.soak > 0:
        print("== bench/soak.py ==", flush=True)
        if subprocess.run([sys.executable, str(HERE / "soak.py"), "--duration",
                           format(args.soak, "g")]).returncode:
            print("bench/soak.py failed", file=sys.stderr)
        print()
    print(f"(total {time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"mi_load": rows, "subscriptions": subs},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
