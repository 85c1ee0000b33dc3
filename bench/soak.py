"""
Soak benchmark: a real evsrv process under a steady load for a bounded time,
watched for growth in resident memory and open file descriptors.

The script starts its own server (``python -m twisted --log-format=text evsrv
-c INI``: MI on udp:127.0.0.1:0, the event E_TEST, ``[store] backend =
sqlite`` in the temporary directory, HTTP off, no modules) and two load
processes:

 - the **subscribers** process owns S UDP sockets and T TCP listeners. Like
   opensips-cli's ``diagnose``, every subscriber renews its subscription
   through the MI every 5 s with expire 10; the renewals are spread evenly
   over the 5 s. Churn: a fraction of the UDP subscribers per minute (10% by
   default) unsubscribe (expire 0) and are replaced by new sockets on new
   ports, and one TCP subscriber per minute is replaced the same way. It
   counts every notification and checks each subscriber's sequence numbers
   for gaps;
 - the **main** process sends ``raise_event`` requests for E_TEST at a steady
   rate of R per second (paced, not in bursts) through the MI over UDP, and
   every 10 s samples the server: VmRSS, open file descriptors, CPU time,
   ``get_statistics``, the size of the store directory and of the log.

Each raise carries ``{"seq": N, "caller": ..., "callee": ..., "callid": ...,
"code": 200}``; N counts the raises sent, from 1, so a subscriber that
misses one sees a gap. How "missed" is counted:

 - between two notifications of one subscriber: every skipped N;
 - at the end of a subscriber (unsubscribed, or the end of the run): every
   N up to the highest N any subscriber had received when its unsubscribe
   was sent (the server had finished fanning that raise out, and this
   subscriber was still subscribed), or up to the last N of the run;
 - at the start of a subscriber: every N sent after its subscribe was
   acknowledged (the main process publishes the N it is about to send in
   shared memory before sending it). A subscriber that got nothing although
   such raises followed is counted as silent.

A raise whose MI request got no reply may never have reached the server;
notifications missed for such raises are shown apart.

Run: ``.venv/bin/python bench/soak.py [--duration 600] [--subscribers 200]
[--rate 500]``. Only the harness failing (the server or a load process dying,
a missing start-up) gives a non-zero exit status; the figures are reported,
not asserted.
"""

import argparse
import array
import bisect
import json
import multiprocessing
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "bench")) if p not in sys.path]

from common import interrupt_on_sigterm  # noqa: E402
from mi_load import (_die_with_parent, cpu_seconds, host_cpu_ticks, percentile,  # noqa: E402
                     udp_rcvbuf_errors)

from evsrv.testing import ServerProcess  # noqa: E402

EVENT = "E_TEST"
EXPIRE = 10          # seconds, as opensips-cli diagnose
REFRESH = 5.0        # seconds between two renewals of one subscription
SAMPLE_EVERY = 10.0  # seconds between two samples of the server
MI_TIMEOUT = 2.0     # an MI request without a reply after this long counts as lost
RETIRE_DRAIN = 1.0   # seconds an unsubscribed socket is still read after the server's OK
MAX_LAG = 0.1        # seconds the raise schedule may fall behind before raises are skipped
RCVBUF = 1 << 20
MAX_RANGES = 100_000  # missed ranges kept for the report (the count is always exact)

# What every notification of this benchmark starts with; the sequence number follows.
PREFIX = b'{"jsonrpc":"2.0","method":"%s","params":{"seq":' % EVENT.encode()

RAISE = (b'{"jsonrpc":"2.0","method":"raise_event","params":["' + EVENT.encode()
         + b'",{"seq":%d,"caller":"sip:alice@example.com","callee":"sip:bob@example.org",'
         b'"callid":"soak-%d@127.0.0.1","code":200}],"id":%d}')
# ids of get_statistics requests start here, raises use their seq (the MI
# echoes ids as 32-bit ints, as OpenSIPS does)
STATS_ID = 2_000_000_000
STATISTICS = ["evi:", "evi_udp:", "evi_tcp:", "mi:"]

# Counters the subscribers process writes and the main process reads (a
# shared array of 64-bit ints: one writer, aligned words, no lock needed).
(C_UDP, C_TCP, C_MISSED, C_SUBSCRIBES, C_UNSUBSCRIBES, C_REFRESHES, C_MI_ERRORS, C_MI_LOST,
 C_LIVE, C_REORDERED, C_FOREIGN, C_TCP_ACCEPTED, C_LATE, C_SILENT, C_MI_LATE, C_REPLIES,
 C_REPLY_US, C_SENT) = range(18)
N_COUNTERS = 18
# C_SENT is the one counter the main process writes: the raises sent so far.


class HarnessError(Exception):
    """
    The benchmark itself could not run (not a finding about the server).
    """


# -- the subscribers process -------------------------------------------------------


class _Sub:
    """
    One subscriber: a UDP socket, or a TCP listener and the connections
    evsrv opened to it.
    """
    __slots__ = ("kind", "sock", "socket_text", "conns", "first", "last", "received",
                 "ack_sent", "unsub_max", "retire_at", "retired")

    def __init__(self, kind, sock):
        self.kind = kind
        self.sock = sock
        port = sock.getsockname()[1]
        self.socket_text = f"{kind}:127.0.0.1:{port}"
        self.conns = {}          # fd -> [socket, unparsed bytes]
        self.first = self.last = None
        self.received = 0
        self.ack_sent = None     # raises sent when its first subscribe was acknowledged
        self.unsub_max = None    # highest seq seen by anyone when the unsubscribe was sent
        self.retire_at = None
        self.retired = False


class Subscribers:
    """
    The subscribers' side: sockets, renewals, churn and gap accounting, in
    one epoll loop.
    """

    def __init__(self, mi_address, counters, udp, tcp, churn, tcp_churn_every, tcp_keep_open):
        self.counters = counters
        self.ep = select.epoll()
        self.handlers = {}  # fd -> callable()
        self.mi = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.mi.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.mi.bind(("127.0.0.1", 0))
        self.mi.connect(mi_address)
        self.mi.setblocking(False)
        self._register(self.mi, self._on_mi)
        self.pending = {}   # request id -> (what, sub, sent at)
        self.overdue = {}   # request id -> sent at, for requests counted lost
        self.reply_ms = array.array("d")  # reply times of the subscribe requests
        self.next_id = 1
        self.seen_max = 0   # highest seq any subscriber received
        self.ranges = []    # missed (first, last) seq ranges
        self.errors = []    # the first MI error replies, verbatim
        self.retiring = []
        self.lingering = []  # unsubscribed TCP subscribers kept open (--tcp-keep-open)
        self.tcp_keep_open = tcp_keep_open
        self.slots = [self._new_sub("udp") for _ in range(udp)]
        self.slots += [self._new_sub("tcp") for _ in range(tcp)]
        self.udp_churn_every = 60.0 / (churn * udp) if churn > 0 and udp else None
        self.tcp_churn_every = tcp_churn_every if tcp_churn_every > 0 and tcp else None

    # sockets

    def _register(self, sock, handler):
        self.handlers[sock.fileno()] = handler
        self.ep.register(sock.fileno(), select.EPOLLIN)

    def _unregister(self, sock):
        fd = sock.fileno()
        if fd >= 0 and self.handlers.pop(fd, None) is not None:
            self.ep.unregister(fd)
        sock.close()

    def _new_sub(self, kind):
        if kind == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            sub = _Sub(kind, sock)
            self._register(sock, lambda: self._on_udp(sub))
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)
            sock.setblocking(False)
            sub = _Sub(kind, sock)
            self._register(sock, lambda: self._on_accept(sub))
        return sub

    def _close_sub(self, sub):
        for conn, _ in list(sub.conns.values()):
            self._unregister(conn)
        sub.conns.clear()
        self._unregister(sub.sock)

    # notifications

    def _on_udp(self, sub):
        recv = sub.sock.recv
        plen = len(PREFIX)
        last = sub.last
        got = 0
        c = self.counters
        while True:
            try:
                data = recv(4096)
            except BlockingIOError:
                break
            except OSError:
                continue  # an ICMP error queued on the socket: read on
            if data[:plen] != PREFIX:
                c[C_FOREIGN] += 1
                continue
            seq = int(data[plen:data.index(b",", plen)])
            got += 1
            if last is None:
                sub.first = seq
                if sub.ack_sent is not None and seq > sub.ack_sent + 1:
                    self._missed(sub.ack_sent + 1, seq - 1)
            elif seq != last + 1:
                if seq <= last:
                    c[C_REORDERED] += 1
                    continue
                self._missed(last + 1, seq - 1)
            last = seq
        if got:
            sub.last = last
            sub.received += got
            c[C_UDP] += got
            if sub.retired:
                c[C_LATE] += got
            if last is not None and last > self.seen_max:
                self.seen_max = last

    def _on_accept(self, sub):
        while True:
            try:
                conn, _ = sub.sock.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            fd = conn.fileno()
            sub.conns[fd] = [conn, b""]
            self.counters[C_TCP_ACCEPTED] += 1
            self._register(conn, lambda: self._on_stream(sub, fd))

    def _on_stream(self, sub, fd):
        entry = sub.conns[fd]
        conn = entry[0]
        plen = len(PREFIX)
        chunks = []
        closed = False
        while True:
            try:
                data = conn.recv(262144)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                closed = True
                break
            chunks.append(data)
        buf = entry[1] + b"".join(chunks)
        # Bodies come back to back; each starts with PREFIX, the seq ends at ",".
        pos = 0
        keep = b""
        last = sub.last
        got = 0
        while True:
            i = buf.find(PREFIX, pos)
            if i < 0:
                keep = buf[max(pos, len(buf) - plen + 1):]  # maybe a partial prefix
                break
            j = buf.find(b",", i + plen)
            if j < 0:
                keep = buf[i:]
                break
            seq = int(buf[i + plen:j])
            pos = j
            got += 1
            if last is None:
                sub.first = seq
                if sub.ack_sent is not None and seq > sub.ack_sent + 1:
                    self._missed(sub.ack_sent + 1, seq - 1)
            elif seq != last + 1:
                if seq <= last:
                    self.counters[C_REORDERED] += 1
                    continue
                self._missed(last + 1, seq - 1)
            last = seq
        entry[1] = keep
        if got:
            sub.last = last
            sub.received += got
            self.counters[C_TCP] += got
            if sub.retired:
                self.counters[C_LATE] += got
            if last > self.seen_max:
                self.seen_max = last
        if closed:
            del sub.conns[fd]
            self._unregister(conn)

    def _missed(self, first, last):
        self.counters[C_MISSED] += last - first + 1
        if len(self.ranges) < MAX_RANGES:
            self.ranges.append((first, last))

    def _tail(self, sub, upto):
        """
        The end of a subscriber: everything up to C{upto} should have come.
        """
        if sub.last is None:
            if sub.ack_sent is not None and upto > sub.ack_sent:
                self.counters[C_SILENT] += 1
                self._missed(sub.ack_sent + 1, upto)
        elif upto > sub.last:
            self._missed(sub.last + 1, upto)

    # the MI

    def _request(self, method, params, what, sub):
        rid = self.next_id
        self.next_id += 1
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": rid})
        try:
            self.mi.send(body.encode())
        except OSError as e:
            # A full send buffer or an ICMP error from an earlier datagram:
            # the request counts as lost, the next renewal tries again.
            self.counters[C_MI_LOST] += 1
            self._error(f"send {method}: {e}")
            return
        self.pending[rid] = (what, sub, time.monotonic())

    def _error(self, text):
        self.counters[C_MI_ERRORS] += 1
        if len(self.errors) < 10:
            self.errors.append(text[:300])

    def _on_mi(self):
        while True:
            try:
                data = self.mi.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                self._error(f"recv: {e}")
                continue
            now = time.monotonic()
            try:
                reply = json.loads(data)
                rid = reply["id"]
            except (ValueError, KeyError, TypeError):
                continue
            entry = self.pending.pop(rid, None)
            if entry is None:
                entry = self.overdue.pop(rid, None)
                if entry is None:
                    continue
                # counted lost already; its time still tells how late it was
                self.counters[C_MI_LATE] += 1
            else:
                self.counters[C_REPLIES] += 1
                self.counters[C_REPLY_US] += int(1e6 * (now - entry[2]))
            self.reply_ms.append(1000 * (now - entry[2]))
            what, sub = entry[0], entry[1]
            if reply.get("result") != "OK":
                self._error(f"{what} {sub.socket_text}: {data.decode(errors='replace')}")
            elif what == "unsubscribe":
                # Done on the server: what it sent before is in the socket
                # buffer (udp) or about to be written (tcp).
                sub.retire_at = min(sub.retire_at, now + RETIRE_DRAIN)
            elif what == "subscribe" and sub.ack_sent is None and sub.first is None:
                # Every raise sent from now on reaches the server after this
                # subscribe: the subscriber must get all of them.
                sub.ack_sent = self.counters[C_SENT]

    def _expire_requests(self, now):
        for rid in [r for r, (_, _, t) in self.pending.items() if now - t > MI_TIMEOUT]:
            self.overdue[rid] = self.pending.pop(rid)
            self.counters[C_MI_LOST] += 1
        if len(self.overdue) > 10000:
            self.overdue.clear()  # a server that never answers: bounded memory here

    def _subscribe(self, sub, what):
        self._request("event_subscribe", [EVENT, sub.socket_text, EXPIRE], what, sub)

    # renewals and churn

    def _replace(self, index, now):
        old = self.slots[index]
        # The server has fanned out every raise up to seen_max, and the old
        # subscriber is still subscribed: it must get all of them.
        old.unsub_max = self.seen_max
        old.retire_at = now + MI_TIMEOUT + RETIRE_DRAIN  # sooner once the reply comes
        self._request("event_subscribe", [EVENT, old.socket_text, 0], "unsubscribe", old)
        self.counters[C_UNSUBSCRIBES] += 1
        self.retiring.append(old)
        new = self.slots[index] = self._new_sub(old.kind)
        self._subscribe(new, "subscribe")
        self.counters[C_SUBSCRIBES] += 1

    def _retire(self, now):
        keep = []
        for sub in self.retiring:
            if sub.retire_at > now:
                keep.append(sub)
                continue
            self._tail(sub, sub.unsub_max)
            sub.retired = True
            if sub.kind == "tcp" and self.tcp_keep_open:
                self.lingering.append(sub)
            else:
                self._close_sub(sub)
        self.retiring = keep

    def start(self, timeout=10.0):
        """
        Subscribe every slot and wait for the replies.
        """
        for sub in self.slots:
            self._subscribe(sub, "subscribe")
            self.counters[C_SUBSCRIBES] += 1
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            for fd, _ in self.ep.poll(0.1):
                self.handlers[fd]()
        if self.pending or self.counters[C_MI_ERRORS]:
            raise HarnessError(f"initial subscriptions failed: {len(self.pending)} without "
                               f"reply, errors {self.errors}")
        self.counters[C_LIVE] = len(self.slots)

    def run(self, ctl):
        """
        Until the main process says "stop": renew one slot every REFRESH /
        len(slots) seconds, replacing it instead when churn is due.
        """
        ctl_fd = ctl.fileno()
        self.ep.register(ctl_fd, select.EPOLLIN)
        period = REFRESH / len(self.slots)
        start = time.monotonic()
        next_slot = start + period
        index = 0
        next_udp_churn = start + self.udp_churn_every if self.udp_churn_every else None
        next_tcp_churn = start + self.tcp_churn_every if self.tcp_churn_every else None
        next_check = start + 0.5
        while True:
            now = time.monotonic()
            timeout = max(0.0, min(next_slot, next_check) - now)
            for fd, _ in self.ep.poll(timeout):
                if fd == ctl_fd:
                    self.ep.unregister(ctl_fd)
                    return ctl.recv()  # "stop", or "quit" if the main process gave up
                else:
                    self.handlers[fd]()
            now = time.monotonic()
            while now >= next_slot:
                sub = self.slots[index]
                if sub.kind == "udp" and next_udp_churn is not None and now >= next_udp_churn:
                    self._replace(index, now)
                    next_udp_churn += self.udp_churn_every
                elif sub.kind == "tcp" and next_tcp_churn is not None and now >= next_tcp_churn:
                    self._replace(index, now)
                    next_tcp_churn += self.tcp_churn_every
                else:
                    self._subscribe(sub, "refresh")
                    self.counters[C_REFRESHES] += 1
                index = (index + 1) % len(self.slots)
                next_slot += period
            if now >= next_check:
                next_check = now + 0.5
                self._expire_requests(now)
                self._retire(now)

    def finish(self, quiet=0.5, limit=10.0):
        """
        After the last raise: read until every socket has been quiet for
        C{quiet} seconds, check the tails, and report.
        """
        start = last_data = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_data >= quiet or now - start >= limit:
                break
            events = self.ep.poll(0.05)
            for fd, _ in events:
                self.handlers[fd]()
            if events:
                last_data = time.monotonic()
        now = time.monotonic()
        self._expire_requests(now + MI_TIMEOUT)
        for sub in self.retiring:
            sub.retire_at = now
        self._retire(now)
        for sub in self.slots:
            self._tail(sub, self.seen_max)
        c = self.counters
        times = sorted(self.reply_ms)
        return {
            "counters": list(c), "ranges": self.ranges, "errors": self.errors,
            "reply_ms": {"p50": percentile(times, 0.5), "p99": percentile(times, 0.99),
                         "max": times[-1] if times else None},
            "seen_max": self.seen_max,
            "tcp_connections_open": sum(len(s.conns) for s in self.slots + self.lingering),
            "lingering": len(self.lingering),
        }

    def close(self):
        for sub in self.slots + self.retiring + self.lingering:
            self._close_sub(sub)
        self._unregister(self.mi)
        self.ep.close()


def subscribers_main(ctl, mi_address, counters, settings):
    """
    The subscribers process: ("ready", {}) once subscribed, then on "stop"
    ("report", dict); ("error", text) if anything fails.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    subs = None
    try:
        subs = Subscribers(mi_address, counters, **settings)
        subs.start()
        ctl.send(("ready", {}))
        if subs.run(ctl) != "stop":
            return
        cpu0 = time.process_time()
        report = subs.finish()
        report["cpu_s"] = time.process_time() - cpu0
        ctl.send(("report", report))
        ctl.recv()  # "quit"
    except (EOFError, BrokenPipeError):
        pass
    except Exception:
        try:
            ctl.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if subs is not None:
            subs.close()
        ctl.close()


# -- the server -----------------------------------------------------------------


def server_ini(workdir: Path, store: str) -> str:
    return f"""\
[mi]
udp = 127.0.0.1:0
unix =
[events]
publish = {EVENT}
[store]
backend = {store}
directory = {workdir / "state"}
"""


def read_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise HarnessError(f"no VmRSS for pid {pid}")


def count_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def tree_size(path: Path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed meanwhile (an SQLite journal)
    return total


# -- the raises and the samples (main process) -----------------------------------


class Raiser:
    """
    Paced raise_event requests over UDP, and the get_statistics requests of
    the samples on the same socket.
    """

    def __init__(self, address, rate, counters):
        self.rate = rate
        self.counters = counters
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(address)
        self.sock.setblocking(False)
        self.ep = select.epoll()
        self.ep.register(self.sock.fileno(), select.EPOLLIN)
        self.seq = 0          # raises sent
        self.scheduled = 0    # raises due so far by the schedule
        self.skipped = 0      # due raises never sent (the loop fell behind)
        self.send_errors = 0
        self.ok = 0
        self.errors = 0
        self.error_texts = []
        self.lost = []        # seqs of raises without a reply
        self.inflight = {}    # seq -> monotonic send time
        self.rtts = array.array("d")  # raise round trips (s) since the last sample
        self.stats = {}       # request id -> sample dict waiting for its statistics
        self.next_stats = STATS_ID

    def close(self):
        self.ep.close()
        self.sock.close()

    def send_due(self, start, now):
        due = int((now - start) * self.rate) + 1
        if due - self.scheduled > self.rate * MAX_LAG:
            # A stall (the machine was busy): skip rather than burst.
            skip = due - self.scheduled - 1
            self.skipped += skip
            self.scheduled += skip
        send = self.sock.send
        while self.scheduled < due:
            self.scheduled += 1
            seq = self.seq + 1
            # Published before the send: a subscriber that reads C_SENT knows
            # that every higher seq is sent after it read it.
            self.counters[C_SENT] = seq
            try:
                send(RAISE % (seq, seq, seq))
            except OSError:
                # Full send buffer or a queued ICMP error: not sent, so no
                # seq is used up (subscribers would count it as missed).
                self.send_errors += 1
                continue
            self.seq = seq
            self.inflight[seq] = now
        return start + due / self.rate  # when the next raise is due

    def ask_statistics(self, sample):
        rid = self.next_stats
        self.next_stats += 1
        self.stats[rid] = sample
        try:
            self.sock.send(json.dumps({"jsonrpc": "2.0", "method": "get_statistics",
                                       "params": [STATISTICS], "id": rid}).encode())
        except OSError:
            pass  # the sample shows no statistics

    def receive(self, timeout):
        if not self.ep.poll(timeout):
            return
        recv = self.sock.recv
        inflight = self.inflight
        now = time.monotonic()
        while True:
            try:
                data = recv(65536)
            except BlockingIOError:
                return
            except OSError:
                continue
            try:
                rid = int(data[data.rindex(b":") + 1:-1])
            except ValueError:
                continue
            if rid >= STATS_ID:
                sample = self.stats.pop(rid, None)
                if sample is not None:
                    try:
                        sample["stats"] = json.loads(data)["result"]
                    except (ValueError, KeyError):
                        pass
                continue
            sent = inflight.pop(rid, None)
            if sent is None:
                continue
            self.rtts.append(now - sent)
            if b'"result":"OK"' in data:
                self.ok += 1
            else:
                self.errors += 1
                if len(self.error_texts) < 10:
                    self.error_texts.append(data.decode(errors="replace")[:300])

    def expire(self, now):
        for seq in [s for s, t in self.inflight.items() if now - t > MI_TIMEOUT]:
            del self.inflight[seq]
            self.lost.append(seq)


class SoakServer(ServerProcess):
    def __init__(self, workdir: Path, store: str):
        ini = workdir / "soak.ini"
        ini.write_text(server_ini(workdir, store))
        super().__init__(ini, pythonpath=ROOT, preexec_fn=_die_with_parent, timeout=30)
        self.mi = self.udp
        self.workdir = workdir

    def check(self):
        if self.process.poll() is not None:
            raise HarnessError(f"evsrv exited with status {self.process.returncode}; log "
                               f"tail:\n" + "\n".join(self.log().splitlines()[-20:]))


def run_soak(duration=600.0, subscribers=200, tcp=4, rate=500.0, churn=0.10,
             tcp_churn_every=60.0, tcp_keep_open=False, store="sqlite", keep=False,
             verbose=True):
    """
    @return: a dict with "samples" (one per SAMPLE_EVERY seconds, the last at
        the end of the run), "report" (the subscribers' totals) and the
        raiser's totals.
    """
    def say(*args):
        if verbose:
            print(*args, file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="evsrv-soak-"))
    server = proc = ctl = raiser = None
    ctx = multiprocessing.get_context("fork")
    samples = []
    try:
        server = SoakServer(workdir, store)
        say(f"evsrv pid {server.pid}, MI on udp:{server.mi[0]}:{server.mi[1]}, "
            f"work directory {workdir}")
        counters = ctx.RawArray("q", N_COUNTERS)
        ctl, child = ctx.Pipe()
        settings = {"udp": subscribers, "tcp": tcp, "churn": churn,
                    "tcp_churn_every": tcp_churn_every, "tcp_keep_open": tcp_keep_open}
        proc = ctx.Process(target=subscribers_main, args=(child, server.mi, counters, settings),
                           daemon=True)
        proc.start()
        child.close()
        if not ctl.poll(30):
            raise HarnessError("the subscribers process did not start")
        kind, payload = ctl.recv()
        if kind != "ready":
            raise HarnessError(f"subscribers process: {payload}")
        say(f"{subscribers} udp + {tcp} tcp subscribers, {rate:g} raises/s for {duration:g} s")

        raiser = Raiser(server.mi, rate, counters)
        pid = server.pid
        rcv0 = cpu_seconds(proc.pid)
        gen0 = time.process_time()
        rcvbuf0 = udp_rcvbuf_errors()

        def sample(t):
            rtts = sorted(raiser.rtts)
            raiser.rtts = array.array("d")
            s = {"t": round(t, 1), "rss_kb": read_rss_kb(pid), "fds": count_fds(pid),
                 "srv_cpu_s": cpu_seconds(pid), "gen_cpu_s": time.process_time() - gen0,
                 "rcv_cpu_s": cpu_seconds(proc.pid) - rcv0, "raises_sent": raiser.seq,
                 "raises_ok": raiser.ok, "raise_errors": raiser.errors,
                 "mi_lost": len(raiser.lost), "skipped": raiser.skipped,
                 "counters": list(counters), "store_bytes": tree_size(workdir / "state"),
                 "log_bytes": server.log_path.stat().st_size,
                 "rcvbuf_drops": udp_rcvbuf_errors() - rcvbuf0, "host_ticks": host_cpu_ticks(),
                 "rtt_p50": percentile(rtts, 0.5), "rtt_p99": percentile(rtts, 0.99),
                 "stats": None}
            raiser.ask_statistics(s)
            samples.append(s)
            return s

        start = time.monotonic()
        end = start + duration
        next_sample = start
        next_expire = start + 1.0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_sample:
                server.check()
                if not proc.is_alive():
                    raise HarnessError("the subscribers process died")
                s = sample(now - start)
                say(progress_line(s, samples))
                next_sample += SAMPLE_EVERY
            if now >= next_expire:
                raiser.expire(now)
                next_expire = now + 1.0
            next_raise = raiser.send_due(start, now)
            raiser.receive(max(0.0, min(next_raise, next_sample, end) - time.monotonic()))

        # The end: sample first (the load is still on), then collect the
        # outstanding replies and the last statistics.
        server.check()
        last = sample(time.monotonic() - start)
        deadline = time.monotonic() + MI_TIMEOUT + 0.5
        while (raiser.inflight or raiser.stats) and time.monotonic() < deadline:
            raiser.receive(0.05)
            raiser.expire(time.monotonic())
        raiser.expire(float("inf"))
        say(progress_line(last, samples))
        ctl.send("stop")
        if not ctl.poll(30):
            raise HarnessError("the subscribers process did not report")
        kind, report = ctl.recv()
        if kind != "report":
            raise HarnessError(f"subscribers process: {report}")
        ctl.send("quit")
        server.check()
        log = server.log()
        return {"samples": samples, "report": report, "raises_sent": raiser.seq,
                "raises_ok": raiser.ok, "raise_errors": raiser.errors,
                "raise_error_texts": raiser.error_texts, "lost_seqs": sorted(raiser.lost),
                "skipped": raiser.skipped, "send_errors": raiser.send_errors,
                "duration": duration, "rate": rate, "subscribers": subscribers, "tcp": tcp,
                "churn": churn, "tcp_churn_every": tcp_churn_every,
                "tcp_keep_open": tcp_keep_open, "store": store,
                "log_problems": [line for line in log.splitlines()
                                 if "#error]" in line or "#critical]" in line
                                 or "#warn]" in line or "Traceback" in line]}
    finally:
        if raiser is not None:
            raiser.close()
        if proc is not None:
            try:
                ctl.send("quit")
            except (OSError, ValueError):
                pass
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if ctl is not None:
            ctl.close()
        if server is not None:
            server.stop()
        if keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# -- the report ----------------------------------------------------------------------


def _stat(s, name):
    return (s.get("stats") or {}).get(name)


def progress_line(s, samples):
    prev = samples[-2] if len(samples) > 1 else None
    c = s["counters"]
    rate = notif = ""
    if prev is not None and s["t"] > prev["t"]:
        dt = s["t"] - prev["t"]
        pc = prev["counters"]
        rate = f" {(s['raises_sent'] - prev['raises_sent']) / dt:6.0f} raises/s"
        notif = f" {(c[C_UDP] + c[C_TCP] - pc[C_UDP] - pc[C_TCP]) / dt:7.0f} notif/s"
    return (f"  t={s['t']:6.0f}s RSS {s['rss_kb'] / 1024:6.1f} MB fds {s['fds']:4d} "
            f"subs {c[C_LIVE] if c[C_LIVE] else '-'}{rate}{notif} missed {c[C_MISSED]} "
            f"MI lost {s['mi_lost'] + c[C_MI_LOST]}")


def _minutes(t):
    return f"{int(t // 60)}:{int(round(t % 60)):02d}"


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


def _slope_per_min(points):
    """
    Least-squares slope of (seconds, value) points, per minute.
    """
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    if not var:
        return None
    return 60.0 * sum((p[0] - mx) * (p[1] - my) for p in points) / var


def table_rows(samples, every):
    """
    The samples shown in the table: one per C{every} seconds and the last.
    """
    rows = [s for s in samples if abs(s["t"] / every - round(s["t"] / every)) < 0.05]
    if samples and (not rows or rows[-1] is not samples[-1]):
        rows.append(samples[-1])
    return rows


def format_table(result, every):
    samples = result["samples"]
    ncpu = os.cpu_count() or 1
    head = (f"{'time':>5} {'RSS MB':>6} {'fds':>4} {'subs':>4} {'tcp':>3} {'store KB':>8} "
            f"{'log KB':>6} {'raises/s':>8} {'notif/s':>7} {'missed':>6} {'MI lost':>7} "
            f"{'RTT p99':>7} {'sub ms':>6} {'srv CPU':>7} {'load':>5} {'other':>5}")
    lines = [head, "-" * len(head)]
    prev = None
    for s in table_rows(samples, every):
        c = s["counters"]
        subs = _stat(s, "evi:subscriptions")
        conns = _stat(s, "evi_tcp:connections")
        if prev is None or s["t"] <= prev["t"]:
            rates = " ".join(f"{'-':>{w}}" for w in (8, 7, 6, 7, 7, 6, 7, 5, 5))
        else:
            dt = s["t"] - prev["t"]
            pc = prev["counters"]
            # the worst 10-s window since the previous row
            p99s = [x["rtt_p99"] for x in samples if prev["t"] < x["t"] <= s["t"]
                    and x["rtt_p99"] is not None]
            replies = c[C_REPLIES] - pc[C_REPLIES]
            sub_ms = (c[C_REPLY_US] - pc[C_REPLY_US]) / replies / 1000 if replies else None
            srv = (s["srv_cpu_s"] - prev["srv_cpu_s"]) / dt
            load = (s["gen_cpu_s"] - prev["gen_cpu_s"] + s["rcv_cpu_s"] - prev["rcv_cpu_s"]) / dt
            busy, total = (a - b for a, b in zip(s["host_ticks"], prev["host_ticks"]))
            other = max(0.0, busy / total * ncpu - srv - load) if total > 0 else 0.0
            rates = (f"{(s['raises_ok'] - prev['raises_ok']) / dt:>8.0f} "
                     f"{(c[C_UDP] + c[C_TCP] - pc[C_UDP] - pc[C_TCP]) / dt:>7.0f} "
                     f"{c[C_MISSED] - pc[C_MISSED]:>6} "
                     f"{s['mi_lost'] + c[C_MI_LOST] - prev['mi_lost'] - pc[C_MI_LOST]:>7} "
                     f"{_fmt_ms(max(p99s) if p99s else None, 7)} {_fmt_ms(sub_ms, 6, 1)} "
                     f"{100 * srv:>6.0f}% {100 * load:>4.0f}% {100 * other:>4.0f}%")
        lines.append(
            f"{_minutes(s['t']):>5} {s['rss_kb'] / 1024:>6.1f} {s['fds']:>4} "
            f"{'-' if subs is None else subs:>4} {'-' if conns is None else conns:>3} "
            f"{s['store_bytes'] / 1024:>8.0f} {s['log_bytes'] / 1024:>6.0f} {rates}")
        prev = s
    lines.append("(at each row: server RSS, open fds, evi:subscriptions, evi_tcp:connections, "
                 "size of the store directory and of the server log. Since the previous row: "
                 "raises answered OK and notifications received per second, notifications "
                 "missed, MI requests without a reply in 2 s, raise round trip p99 in ms (worst "
                 "10-s window), mean event_subscribe reply time in ms, CPU in % of one core of "
                 "the server, of the load generators (raise sender + subscribers process) and "
                 "of everything else on the host)")
    return "\n".join(lines)


def _fmt_ms(seconds_or_ms, width, scale=1000):
    if seconds_or_ms is None:
        return f"{'-':>{width}}"
    return f"{seconds_or_ms * scale:>{width}.1f}"


def summarize(result, warmup):
    """
    The figures of the summary, as a dict.
    """
    samples = result["samples"]
    report = result["report"]
    c = report["counters"]
    end = samples[-1]
    post = [s for s in samples if s["t"] >= warmup - 0.05]
    warm = post[0] if post else samples[0]
    # The medians of three samples each side keep a TCP connection that
    # happens to be changing hands at one sample from counting as growth.
    warm_window = post[:3] or [warm]
    end_window = post[-3:] or [end]
    lost = result["lost_seqs"]
    missed_unanswered = 0
    for first, last in report["ranges"]:
        missed_unanswered += (bisect.bisect_right(lost, last) - bisect.bisect_left(lost, first))
    received = c[C_UDP] + c[C_TCP]
    missed = c[C_MISSED]
    expected = received + missed
    target_raises = result["rate"] * result["duration"]
    subs_counts = [v for v in (_stat(s, "evi:subscriptions") for s in post) if v is not None]
    first_stats, last_stats = samples[0].get("stats") or {}, end.get("stats") or {}

    def delta(name):
        a, b = first_stats.get(name), last_stats.get(name)
        return None if a is None or b is None else b - a
    return {
        "warmup_s": warm["t"], "end_s": end["t"],
        "rss_warm_kb": warm["rss_kb"], "rss_end_kb": end["rss_kb"],
        "rss_max_kb": max(s["rss_kb"] for s in post) if post else end["rss_kb"],
        "rss_ratio": end["rss_kb"] / warm["rss_kb"],
        "rss_slope_kb_min": _slope_per_min([(s["t"], s["rss_kb"]) for s in post]),
        "fds_warm": warm["fds"], "fds_end": end["fds"],
        "fds_max": max(s["fds"] for s in post) if post else end["fds"],
        "fds_min": min(s["fds"] for s in post) if post else end["fds"],
        "fds_growth_median3": (_median([s["fds"] for s in end_window])
                               - _median([s["fds"] for s in warm_window])),
        "store_warm_bytes": warm["store_bytes"], "store_end_bytes": end["store_bytes"],
        "log_bytes": end["log_bytes"],
        "subs_min": min(subs_counts) if subs_counts else None,
        "subs_max": max(subs_counts) if subs_counts else None,
        "received": received, "received_udp": c[C_UDP], "received_tcp": c[C_TCP],
        "expected": expected, "missed": missed - missed_unanswered,
        "missed_unanswered": missed_unanswered, "reordered": c[C_REORDERED],
        "foreign": c[C_FOREIGN], "late": c[C_LATE], "silent": c[C_SILENT],
        "loss_pct": 100.0 * missed / expected if expected else 0.0,
        "raises_ok": result["raises_ok"], "raises_sent": result["raises_sent"],
        "raises_target": target_raises, "raises_ratio": result["raises_ok"] / target_raises,
        "raise_errors": result["raise_errors"], "raise_lost": len(lost),
        "skipped": result["skipped"], "send_errors": result["send_errors"],
        "subscribes": c[C_SUBSCRIBES], "unsubscribes": c[C_UNSUBSCRIBES],
        "refreshes": c[C_REFRESHES], "sub_mi_errors": c[C_MI_ERRORS],
        "sub_mi_lost": c[C_MI_LOST], "sub_mi_late": c[C_MI_LATE],
        "sub_reply_ms": report["reply_ms"], "tcp_accepted": c[C_TCP_ACCEPTED],
        "tcp_open_at_end": report["tcp_connections_open"], "lingering": report["lingering"],
        "rcvbuf_drops": end["rcvbuf_drops"],
        "srv_sent": delta("evi_udp:notifications_sent"),
        "srv_udp_dropped": delta("evi_udp:notifications_dropped"),
        "srv_udp_failed": delta("evi_udp:notifications_failed"),
        "srv_tcp_sent": delta("evi_tcp:notifications_sent"),
        "srv_tcp_dropped": delta("evi_tcp:notifications_dropped"),
        "srv_tcp_failed": delta("evi_tcp:notifications_failed"),
        "srv_expired": delta("evi:subscriptions_expired"),
        **_cpu(samples[0], end),
    }


def _cpu(first, last):
    """
    CPU between two samples, in % of one core: the server, the load
    generators, and everything else on the host.
    """
    dt = last["t"] - first["t"]
    if dt <= 0:
        return {"srv_cpu_pct": 0.0, "load_cpu_pct": 0.0, "other_cpu_pct": 0.0}
    srv = (last["srv_cpu_s"] - first["srv_cpu_s"]) / dt
    load = (last["gen_cpu_s"] - first["gen_cpu_s"] + last["rcv_cpu_s"] - first["rcv_cpu_s"]) / dt
    busy, total = (a - b for a, b in zip(last["host_ticks"], first["host_ticks"]))
    other = max(0.0, busy / total * (os.cpu_count() or 1) - srv - load) if total > 0 else 0.0
    return {"srv_cpu_pct": 100 * srv, "load_cpu_pct": 100 * load, "other_cpu_pct": 100 * other}


def format_summary(result, summary):
    s = summary
    warm, endt = _minutes(s["warmup_s"]), _minutes(s["end_s"])
    head = f"{'measure':<52} {'value':>16}"
    lines = [head, "-" * len(head)]

    def row(label, value):
        lines.append(f"{label:<52} {value:>16}")
    row(f"RSS at {warm} / at end {endt} / max after {warm} (MB)",
        f"{s['rss_warm_kb'] / 1024:.1f} / {s['rss_end_kb'] / 1024:.1f} / "
        f"{s['rss_max_kb'] / 1024:.1f}")
    slope = s["rss_slope_kb_min"]
    row(f"RSS trend after {warm} (least squares)",
        "-" if slope is None else f"{slope:+.1f} KB/min")
    row(f"open fds at {warm} / at end / min-max after {warm}",
        f"{s['fds_warm']} / {s['fds_end']} / {s['fds_min']}-{s['fds_max']}")
    row(f"store directory at {warm} / at end (KB)",
        f"{s['store_warm_bytes'] / 1024:.0f} / {s['store_end_bytes'] / 1024:.0f}")
    row("server log at end (KB)", f"{s['log_bytes'] / 1024:.0f}")
    row(f"evi:subscriptions after {warm}, min-max",
        "-" if s["subs_min"] is None else f"{s['subs_min']}-{s['subs_max']}")
    row("subscribes / unsubscribes / renewals sent",
        f"{s['subscribes']} / {s['unsubscribes']} / {s['refreshes']}")
    row(f"subscriber MI: errors / no reply in {MI_TIMEOUT:g} s / of those late",
        f"{s['sub_mi_errors']} / {s['sub_mi_lost']} / {s['sub_mi_late']}")
    times = s["sub_reply_ms"]
    row("event_subscribe reply time p50 / p99 / max (ms)",
        " / ".join("-" if times[k] is None else f"{times[k]:.1f}" for k in ("p50", "p99", "max")))
    row("raises OK / target", f"{s['raises_ok']:,} / {s['raises_target']:,.0f}")
    row("raises: errors / without reply / skipped (behind)",
        f"{s['raise_errors']} / {s['raise_lost']} / {s['skipped']}")
    row("notifications received (udp + tcp)",
        f"{s['received']:,} ({s['received_udp']:,} + {s['received_tcp']:,})")
    row("notifications expected (received + missed)", f"{s['expected']:,}")
    row("notifications missed / of raises without reply",
        f"{s['missed']} / {s['missed_unanswered']}")
    row("silent subscribers / after unsubscribe / reordered",
        f"{s['silent']} / {s['late']} / {s['reordered']}")
    row("server: udp sent / dropped / failed",
        f"{_fmt(s['srv_sent'])} / {_fmt(s['srv_udp_dropped'])} / "
        f"{_fmt(s['srv_udp_failed'])}")
    row("server: tcp sent / dropped / failed",
        f"{_fmt(s['srv_tcp_sent'])} / {_fmt(s['srv_tcp_dropped'])} / "
        f"{_fmt(s['srv_tcp_failed'])}")
    row("server: subscriptions expired (should be 0)", _fmt(s["srv_expired"]))
    row("tcp connections accepted / open at end", f"{s['tcp_accepted']} / "
        f"{s['tcp_open_at_end']}" + (f" ({s['lingering']} unsubscribed, kept open)"
                                     if s["lingering"] else ""))
    row("kernel UDP receive-buffer drops (whole host)", f"{s['rcvbuf_drops']}")
    row("CPU, whole run: server / load / other (% of a core)",
        f"{s['srv_cpu_pct']:.0f}% / {s['load_cpu_pct']:.0f}% / {s['other_cpu_pct']:.0f}%")
    if s["other_cpu_pct"] > 25:
        lines.append("  note: other processes were busy on the host; the server may have "
                     "fallen behind because of them. Run again on a quiet machine.")
    report = result["report"]
    for text in report["errors"][:5] + result["raise_error_texts"][:5]:
        lines.append(f"  MI error: {text}")
    for line in result["log_problems"][:10]:
        lines.append(f"  server log: {line[:200]}")
    if len(result["log_problems"]) > 10:
        lines.append(f"  server log: ... {len(result['log_problems']) - 10} more")
    return "\n".join(lines)


def _fmt(value):
    return "-" if value is None else f"{value:,}"


def format_targets(summary):
    s = summary
    warm = _minutes(s["warmup_s"])
    head = f"{'target':<46} {'goal':>8} {'measured':>9} {'ratio':>6}  verdict"
    lines = [head, "-" * len(head)]

    def upper(label, goal, value, fmt):
        ratio = goal / value if value else float("inf")
        lines.append(f"{label:<46} {'<=' + format(goal, fmt):>8} {value:>9{fmt}} "
                     f"{ratio:>6.2f}  {'meets' if ratio >= 1 else 'MISSES'}")

    def lower(label, goal, value, fmt):
        ratio = value / goal
        lines.append(f"{label:<46} {'>=' + format(goal, fmt):>8} {value:>9{fmt}} "
                     f"{ratio:>6.2f}  {'meets' if ratio >= 1 else 'MISSES'}")

    def zero(label, value):
        lines.append(f"{label:<46} {'0':>8} {value:>9} {'-':>6}  "
                     f"{'meets' if value <= 0 else 'MISSES'}")
    upper(f"RSS flat: end / at {warm}", 1.05, s["rss_ratio"], ".3f")
    zero(f"open fds: growth from {warm} to end (median of 3)", s["fds_growth_median3"])
    zero("notifications missed (raise answered)", s["missed"])
    lower("raises achieved / target", 0.99, s["raises_ratio"], ".3f")
    lines.append("(ratio > 1 means the target is met: goal/measured for upper bounds, "
                 "measured/goal for lower bounds)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (600)")
    parser.add_argument("--subscribers", type=int, default=200, help="UDP subscribers (200)")
    parser.add_argument("--tcp", type=int, default=4, help="tcp: subscribers (4)")
    parser.add_argument("--rate", type=float, default=500.0, help="raises per second (500)")
    parser.add_argument("--churn", type=float, default=0.10,
                        help="fraction of the UDP subscribers replaced per minute (0.10)")
    parser.add_argument("--tcp-churn-every", type=float, default=60.0,
                        help="seconds between two replacements of a tcp subscriber (60; 0: "
                        "none)")
    parser.add_argument("--tcp-keep-open", action="store_true",
                        help="replaced tcp subscribers keep their connection open after "
                        "unsubscribing (a client that unsubscribes but stays up)")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds left out of the flatness comparison (60; at most half "
                        "the duration)")
    parser.add_argument("--store", choices=("sqlite", "none"), default="sqlite",
                        help="[store] backend of the server (sqlite)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (ini, server log, store)")
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = parser.parse_args(argv)
    if args.duration < 2 * SAMPLE_EVERY:
        parser.error(f"--duration must be at least {2 * SAMPLE_EVERY:g} s")
    if args.subscribers < 1 or args.tcp < 0 or args.rate <= 0 or not 0 <= args.churn <= 1:
        parser.error("need --subscribers >= 1, --tcp >= 0, --rate > 0, 0 <= --churn <= 1")
    # warm-up on a sample boundary, leaving at least half the run to compare
    warmup = min(args.warmup, args.duration / 2)
    warmup = max(SAMPLE_EVERY, SAMPLE_EVERY * round(warmup / SAMPLE_EVERY))
    every = 60.0 if args.duration >= 300 else SAMPLE_EVERY
    interrupt_on_sigterm()
    try:
        result = run_soak(args.duration, args.subscribers, args.tcp, args.rate, args.churn,
                          args.tcp_churn_every, args.tcp_keep_open, args.store, args.keep)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except HarnessError as e:
        print(f"soak: harness failed: {e}", file=sys.stderr)
        return 1
    summary = summarize(result, warmup)
    print(f"Soak: evsrv subprocess ([store] backend = {args.store}), {os.cpu_count()} CPUs "
          f"shared with the load; {args.duration:g} s at {args.rate:g} raises/s of {EVENT}; "
          f"{args.subscribers} udp + {args.tcp} tcp subscribers renewing every {REFRESH:g} s "
          f"(expire {EXPIRE}); churn {100 * args.churn:g}% of udp per minute, one tcp every "
          f"{args.tcp_churn_every:g} s{' (kept open)' if args.tcp_keep_open else ''}; "
          f"warm-up {warmup:g} s")
    print(format_table(result, every))
    print()
    print(format_summary(result, summary))
    print()
    print(format_targets(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, **result}, indent=1,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
