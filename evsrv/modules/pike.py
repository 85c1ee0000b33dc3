# -*- test-case-name: tests.test_modules -*-
"""
The C{pike} module: flood detection on the MI listeners (UDP and HTTP; UNIX
clients are local and not counted). A source address sending more than
C{limit} requests within C{window} seconds is refused (nothing run) for
C{block_time} seconds, and C{E_PIKE_BLOCKED} is raised once, with its C{ip},
each time a source becomes blocked.

A refused request is answered with a C{429 Too many requests} error (JSON-RPC
C{code} 429 with the request's C{id} and a C{data} saying why and for how
long; 1.x text C{429 Too many requests}; HTTP status 429), at most once per
second per source on the datagram MI (the rest: C{pike:requests_ignored}).

Memory is bounded: at most C{max_sources} addresses are tracked (a flood of
spoofed sources beyond that is let through and counted in
C{pike:untracked}), and idle entries are forgotten every window.
"""

import math

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from evsrv.command import Command, MIError
from evsrv.mi.dispatch import Refusal
from evsrv.util.coercers import positive
from evsrv.modules import ModuleFactory

EVENT = "E_PIKE_BLOCKED"
ERROR_INTERVAL = 1.0  # seconds between two error replies to one blocked source


class Pike(Service):
    _log = Logger()

    def __init__(self, context, window, limit, block_time, max_sources):
        self.clock = context.reactor
        self.evi = context.evi
        self.window = window
        self.limit = limit
        self.block_time = block_time
        self.max_sources = max_sources
        self._sources = {}  # ip -> [window start, hits in window, blocked until]
        statistics = context.statistics
        self._blocks = statistics.counter("pike", "blocks")
        self._refused = statistics.counter("pike", "requests_refused")  # answered 429
        self._ignored = statistics.counter("pike", "requests_ignored")  # over the reply cap
        self._untracked = statistics.counter("pike", "untracked")
        statistics.gauge("pike", "blocked_sources", lambda: len(self.blocked()))
        self.evi.publish(EVENT)
        context.mi_filters.append(self.allow)
        context.controller.register(Command(
            "pike_list", [[]], self.pike_list, help="Lists the blocked source addresses."))
        context.controller.register(Command(
            "pike_rm", [["ip"]], self.pike_rm, help="Unblocks a source address."))
        self._cleaner = LoopingCall(self._forget_idle)
        self._cleaner.clock = self.clock

    def allow(self, address):
        """
        MI request gate: count the request of C{address} (C{(host, port)} of
        a UDP or HTTP client; anything else is a local UNIX client).

        @return: C{True}, or a L{Refusal} carrying the 429 error for a
            blocked source.
        """
        if not isinstance(address, tuple):
            return True  # UNIX socket clients are local processes
        ip = address[0]
        now = self.clock.seconds()
        entry = self._sources.get(ip)
        if entry is None:
            if len(self._sources) >= self.max_sources:
                self._untracked.value += 1
                return True
            # window start, hits in window, blocked until, last error reply
            # (time, Refusal)
            entry = self._sources[ip] = [now, 0, 0.0, None, None]
        if entry[2]:
            if entry[2] > now:
                return self._refuse(ip, entry, now)
            # Block over: a fresh window, so "blocked for N seconds" holds
            # (the old window's count would block it again at once).
            entry[0], entry[1], entry[2] = now, 0, 0.0
        elif now - entry[0] >= self.window:
            entry[0], entry[1] = now, 0
        entry[1] += 1
        if entry[1] <= self.limit:
            return True
        entry[2] = now + self.block_time
        self._blocks.value += 1
        self._log.warn("pike: {ip} sent more than {limit} MI requests in {window} s; "
                       "refused for {block} s", ip=ip, limit=self.limit, window=self.window,
                       block=self.block_time)
        self.evi.raise_event(EVENT, {"ip": ip}).addErrback(
            lambda f: self._log.failure("raising {event} failed", f, event=EVENT))
        return self._refuse(ip, entry, now)

    def _refuse(self, ip, entry, now):
        """
        The refusal of a request from a blocked source: an error reply at
        most once per L{ERROR_INTERVAL} per source, the rest rate-capped.

        A datagram's source can be spoofed: answering every request of a
        flood would send our replies at whoever the flooder names, so the
        datagram MI answers the first and ignores the rest of each second
        (counted in C{pike:requests_ignored}); the error it got says for how
        long it is blocked. (The HTTP MI answers every one: a TCP peer
        cannot be spoofed.)
        """
        if entry[3] is not None and now - entry[3] < ERROR_INTERVAL:
            self._ignored.value += 1
            return entry[4]  # rate-capped, built with the last answer
        seconds = max(1, math.ceil(entry[2] - now))
        error = MIError(429, "Too many requests",
                        f"{ip} sent more than {self.limit} MI requests in {self.window:g} s; "
                        f"blocked for {seconds} more second{'s' if seconds != 1 else ''}")
        entry[3], entry[4] = now, Refusal(error, rate_capped=True)
        self._refused.value += 1
        return Refusal(error)

    def blocked(self):
        now = self.clock.seconds()
        return {ip: e for ip, e in self._sources.items() if e[2] > now}

    def pike_list(self, call):
        now = self.clock.seconds()
        return {"Blocked": [{"ip": ip, "hits": e[1], "expires": int(e[2] - now + 0.999)}
                            for ip, e in sorted(self.blocked().items())]}

    def pike_rm(self, call):
        ip = call.string("ip")
        entry = self.blocked().get(ip)
        if entry is None:
            raise MIError(404, "IP not blocked")
        del self._sources[ip]
        self._log.info("pike: {ip} unblocked through the MI", ip=ip)
        return "OK"

    def _forget_idle(self):
        now = self.clock.seconds()
        idle = [ip for ip, e in self._sources.items()
                if e[2] <= now and now - e[0] >= self.window]
        for ip in idle:
            del self._sources[ip]

    def startService(self):
        super().startService()
        self._cleaner.start(self.window, now=False)

    def stopService(self):
        if self._cleaner.running:
            self._cleaner.stop()
        return super().stopService()


pikeModule = ModuleFactory(
    "pike",
    {"window": ("2", positive(float), "seconds over which MI requests are counted"),
     "limit": ("100", positive(int), "MI requests per source per window before blocking"),
     "block_time": ("60", positive(float), "seconds a flooding source is refused"),
     "max_sources": ("100000", positive(int), "source addresses tracked at most")},
    lambda s, context: Pike(context, s["window"], s["limit"], s["block_time"],
                            s["max_sources"]),
    "MI flood detection; raises E_PIKE_BLOCKED")
