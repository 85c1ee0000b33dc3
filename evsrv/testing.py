# -*- test-case-name: tests.test_evi -*-
"""
Public test doubles for code built on evsrv (scripts, modules, plugins):
a transport that records what it is asked to deliver, and a ready-made
L{EventInterface} on a L{Clock}.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from evsrv.evi import EventInterface
from evsrv.evi.notification import Outcome
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import BadSocket, IEventTransport
from evsrv.util.statistics import Statistics


@implementer(IEventTransport)
class RecordingTransport:
    """
    Accepts C{SCHEME:anything} sockets and records every delivery as
    C{(event, params, socket)} in C{delivered}.

    @ivar fail: sockets whose deliveries fail (counted, not recorded).
    @ivar asynchronous: when true, C{deliver} returns a Deferred kept in
        C{pending}; fire it with L{settle}.
    """

    def __init__(self, scheme="test", name=None):
        self.name = name or scheme
        self.schemes = (scheme,)
        self.delivered = []
        self.fail = set()
        self.asynchronous = False
        self.pending = []

    def parse(self, scheme, rest):
        if not rest:
            raise BadSocket(f"{scheme}: empty destination")
        return Destination(f"{scheme}:{rest}", rest)

    def deliver(self, notification, subscriptions):
        outcome = Outcome()
        for sub in subscriptions:
            if sub.socket in self.fail:
                outcome.failed_for(sub, "refused by test")
            else:
                outcome.sent_to(sub)
                self.delivered.append((notification.event, notification.params, sub.socket))
        if not self.asynchronous:
            return outcome
        d = Deferred()
        self.pending.append((d, outcome))
        return d

    def settle(self):
        """
        Fire every pending asynchronous delivery.
        """
        pending, self.pending = self.pending, []
        for d, outcome in pending:
            d.callback(outcome)


def memory_evi(*events, scheme="test", clock=None, statistics=None, **parts):
    """
    An L{EventInterface} on a L{Clock} with one L{RecordingTransport},
    with C{events} published.

    @param clock: the clock (default: a new L{Clock}), for parts made
        beforehand on the same one (a journal).
    @param statistics: default: a new L{Statistics}.
    @param parts: the L{EventInterface}'s keyword arguments: C{policy},
        C{journal}, C{limits} (an L{evsrv.evi.Limits}), C{recent}.
    @return: C{(evi, clock, transport)}.
    """
    clock = Clock() if clock is None else clock
    transport = RecordingTransport(scheme)
    evi = EventInterface(clock, {scheme: transport},
                         Statistics() if statistics is None else statistics, **parts)
    for name in events:
        evi.publish(name)
    return evi, clock, transport


class ServerProcess:
    """
    A real evsrv process, started with C{twist} (or C{twistd -n}) on an ini
    file, its UDP MI address (C{udp}, first listener; give it port 0) read
    from its log line "MI listening on udp:HOST:PORT", and the URL of its
    HTTP MI (C{http}, C{None} when the ini has no C{[http] listen}) from
    "HTTP listening on URL". For blocking tests and benchmarks.
    """

    def __init__(self, ini: Path, runner="twist", pythonpath=None, preexec_fn=None,
                 timeout=20.0):
        self.ini = ini
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        if runner == "twist":
            argv = [sys.executable, "-m", "twisted", "--log-format=text", "evsrv", "-c", str(ini)]
        else:
            argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                    "-n", "--pidfile=", "evsrv", "-c", str(ini)]
        self.log_path = ini.with_suffix(".log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=str(ini.parent), preexec_fn=preexec_fn)
        self.pid = self.process.pid
        self.udp = None
        self.http = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            match = re.search(r"MI listening on udp:([0-9.]+):(\d+)", text)
            if match and "started:" in text:
                self.udp = (match.group(1), int(match.group(2)))
                http = re.search(r"HTTP listening on (http://\S+)", text)
                self.http = http.group(1) if http else None
                break
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        if self.udp is None:
            self.stop()
            raise RuntimeError("evsrv did not start:\n" + self.log_path.read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
