# -*- test-case-name: tests.test_upstream -*-
"""
evsrv as an EVI subscriber of OpenSIPS proxies: one L{Upstream} per
C{[upstream:NAME]} section keeps evsrv's ingest address subscribed to the
proxy's events through the proxy's MI (spec §2.1: C{event_subscribe},
C{subscribers_list}, C{uptime}).

The life of one upstream:

 - at start: C{uptime} (what "started" means for this proxy), then
   C{event_subscribe EVENT SOCKET EXPIRE} for each event: C{subscribed};
 - every C{check_interval} seconds: C{uptime} again, and
   C{subscribers_list EVENT SOCKET} for each event. A proxy restart (the
   "Up since" text changed, or the start time worked out from "Up time"
   moved later) or a subscription that vanished (404 "Subscriber does not
   exist": the proxy restarted between two checks, or someone unsubscribed
   us) makes it subscribe again at once, counted in C{restarts};
 - at two thirds of C{expire} since the last subscribe: subscribe again
   (the refresh), so a lost refresh or two still leaves time before the
   proxy drops the subscription;
 - a call that fails (no answer within C{timeout}, refused, an error
   reply): C{retrying}, and the whole subscribe again after a backoff that
   doubles from C{retry_min} to C{retry_max} seconds, so a proxy that is
   down costs a datagram now and then, never a flood; one warning when it
   starts failing, one line when it is back;
 - at a clean stop: C{event_subscribe EVENT SOCKET 0} for each event (the
   OpenSIPS unsubscribe), each call bounded by C{timeout}: a proxy that
   does not answer keeps the subscription until it expires, and the stop
   does not wait longer for it.

One call at a time per upstream (a slow proxy gets no second request before
the first is answered or timed out), except at stop, when the unsubscribes
go out side by side so that the stop waits one C{timeout} at most. State per upstream in the statistics:
C{upstream:NAME:state} (L{STATES}), C{:subscribes}, C{:errors},
C{:restarts}; the last error in the MI C{upstreams} command.
"""

import re

from twisted.application.service import Service
from twisted.internet.defer import DeferredList, inlineCallbacks, succeed
from twisted.logger import Logger

from evsrv.command import Command
from evsrv.ingest.miclient import MIErrorReply, MIUnavailable

STOPPED, SUBSCRIBING, SUBSCRIBED, RETRYING = 0, 1, 2, 3
STATES = {STOPPED: "stopped", SUBSCRIBING: "subscribing", SUBSCRIBED: "subscribed",
          RETRYING: "retrying"}
REFRESH_AT = 2 / 3  # of expire, after a subscribe
_UP_TIME = re.compile(r"\s*(\d+)")


class Upstream:
    """
    One proxy (see the module docstring).

    @param client: its MI client (L{evsrv.ingest.miclient}).
    @param socket: the ingest address as the proxy must see it
        (C{udp:HOST:PORT}, C{tcp:HOST:PORT}, C{unix:PATH}); a callable
        giving it, when it is known only once the ingest listens.
    @param clock: C{IReactorTime} for every timer.
    """
    _log = Logger()

    def __init__(self, name, client, events, socket, clock, statistics, *, expire=120,
                 check_interval=10.0, retry_min=1.0, retry_max=60.0):
        self.name = name
        self.client = client
        self.events = list(events)
        self._socket = socket
        self.clock = clock
        self.expire = expire
        self.check_interval = check_interval
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.state = STOPPED
        self.last_error = None
        self.subscribed_at = None  # clock time of the last complete subscribe
        self._baseline = None      # ("Up since" text, start time worked out) at subscribe
        self._timer = None
        self._delay = retry_min
        self._running = False
        self._ever_subscribed = False
        self._stopped = None
        group = "upstream"
        self.subscribes = statistics.counter(group, f"{name}:subscribes")
        self.errors = statistics.counter(group, f"{name}:errors")
        self.restarts = statistics.counter(group, f"{name}:restarts")
        statistics.gauge(group, f"{name}:state", lambda: self.state)

    @property
    def socket(self) -> str:
        return self._socket() if callable(self._socket) else self._socket

    def start(self):
        self._running = True
        self.state = SUBSCRIBING
        self._run(self._subscribe)

    # -- the flows (one at a time: each schedules the next when it is done) ---

    def _schedule(self, delay, flow):
        self._timer = self.clock.callLater(delay, self._fire, flow)

    def _fire(self, flow):
        self._timer = None
        self._run(flow)

    def _run(self, flow):
        # the flows handle the MI's failures themselves: what reaches this
        # errback is a bug, logged instead of lost with the Deferred
        flow().addErrback(lambda f: self._log.failure("upstream {name}: internal error", f,
                                                      name=self.name))

    @inlineCallbacks
    def _subscribe(self):
        socket = self.socket
        try:
            up = yield self._uptime()
            for event in self.events:
                yield self.client.call("event_subscribe", [event, socket, self.expire])
                if not self._running:
                    return
                self.subscribes.value += 1
                self._ever_subscribed = True
        except (MIErrorReply, MIUnavailable) as e:
            self._failed(e, "subscribe")
            return
        if not self._running:
            return
        restarted = self._restarted(up) if self.state == RETRYING else None
        if restarted is not None:
            self.restarts.value += 1  # noticed only now: it was down meanwhile
        if self.state == RETRYING:
            self._log.info("upstream {name}: {mi} answers again{why}; subscribed to {events}",
                           name=self.name, mi=self.client.label, events=", ".join(self.events),
                           why=f" ({restarted})" if restarted else "")
        elif self.subscribed_at is None:
            self._log.info("upstream {name}: subscribed {socket} to {events} at {mi} (expire "
                           "{expire} s)", name=self.name, socket=socket,
                           events=", ".join(self.events), mi=self.client.label,
                           expire=self.expire)
        self.state = SUBSCRIBED
        self._delay = self.retry_min
        self.subscribed_at = self.clock.seconds()
        self._baseline = up
        self._next()

    def _next(self):
        refresh_in = self.subscribed_at + self.expire * REFRESH_AT - self.clock.seconds()
        if refresh_in <= self.check_interval:
            self._schedule(max(0.0, refresh_in), self._subscribe)
        else:
            self._schedule(self.check_interval, self._check)

    @inlineCallbacks
    def _check(self):
        socket = self.socket
        try:
            up = yield self._uptime()
            if not self._running:
                return
            why = self._restarted(up)
            if why is None:
                for event in self.events:
                    try:
                        yield self.client.call("subscribers_list", [event, socket])
                    except MIErrorReply as e:
                        if e.code != 404:
                            raise
                        why = f"the subscription to {event} is gone ({e.message})"
                        break
                    if not self._running:
                        return
        except (MIErrorReply, MIUnavailable) as e:
            self._failed(e, "check")
            return
        if not self._running:
            return
        if why is not None:
            self.restarts.value += 1
            self._log.info("upstream {name}: {why}: subscribing again", name=self.name, why=why)
            self._run(self._subscribe)
            return
        self._next()

    @inlineCallbacks
    def _uptime(self):
        """
        @return: C{("Up since" text or None, start time worked out or None)}.
        """
        try:
            result = yield self.client.call("uptime")
        except MIErrorReply:
            return (None, None)  # an MI without uptime: the subscription checks remain
        now = self.clock.seconds()
        if not isinstance(result, dict):
            return (None, None)
        since = result.get("Up since")
        match = _UP_TIME.match(str(result.get("Up time", "")))
        started = now - int(match.group(1)) if match else None
        return (since if isinstance(since, str) else None, started)

    def _restarted(self, up):
        if self._baseline is None:
            return None
        since, started = up
        old_since, old_started = self._baseline
        if since is not None and old_since is not None and since != old_since:
            return f"the proxy restarted (up since {since}, was {old_since})"
        # one second of rounding each way, and the call's own time
        if (started is not None and old_started is not None
                and started > old_started + 2 + self.client.timeout):
            return "the proxy restarted (its uptime went back)"
        return None

    def _failed(self, error, during):
        if not self._running:
            return
        self.errors.value += 1
        self.last_error = f"{during}: {error}"
        if self.state != RETRYING:
            self._log.warn("upstream {name}: {during} at {mi} failed: {error}; retrying every "
                           "{low:g} to {high:g} s", name=self.name, mi=self.client.label,
                           during=during, error=str(error), low=self.retry_min,
                           high=self.retry_max)
        self.state = RETRYING
        delay = self._delay
        self._delay = min(self.retry_max, self._delay * 2)
        self._schedule(delay, self._subscribe)

    # -- stopping ----------------------------------------------------------

    def stop(self):
        """
        Unsubscribe (expire 0) if a subscribe ever went through, then close
        the client. @return: a Deferred that does not fail.
        """
        if self._stopped is not None:
            return self._stopped
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._ever_subscribed:
            socket = self.socket
            calls = [self.client.call("event_subscribe", [event, socket, 0])
                     for event in self.events]
            d = DeferredList(calls, consumeErrors=True).addCallback(self._unsubscribed)
        else:
            d = succeed(None)
        d.addCallback(lambda _: self.client.close())
        d.addErrback(lambda f: self._log.warn("upstream {name}: closing its MI client "
                                              "failed: {error}", name=self.name,
                                              error=f.getErrorMessage()))

        def stopped(_):
            self.state = STOPPED
        self._stopped = d.addCallback(stopped)
        return self._stopped

    def _unsubscribed(self, results):
        failed = [str(f.value) for ok, f in results if not ok]
        if failed:
            self._log.warn("upstream {name}: unsubscribing at {mi} failed ({error}); the "
                           "proxy drops the subscription when it expires", name=self.name,
                           mi=self.client.label, error=failed[0])
        else:
            self._log.info("upstream {name}: unsubscribed from {events}", name=self.name,
                           events=", ".join(self.events))

    def report(self, now) -> dict:
        return {"name": self.name, "mi": self.client.label, "socket": self.socket,
                "events": self.events, "state": STATES[self.state],
                "subscribes": self.subscribes.value, "errors": self.errors.value,
                "restarts": self.restarts.value, "last_error": self.last_error,
                "subscribed_for": (None if self.subscribed_at is None or self.state != SUBSCRIBED
                                   else int(now - self.subscribed_at))}


class UpstreamService(Service):
    """
    Every L{Upstream}: started with the server, stopped (unsubscribed) by
    L{unsubscribe} early in a graceful stop, or at the latest when the
    service stops.
    """

    def __init__(self, upstreams, clock):
        self.upstreams = list(upstreams)
        self.clock = clock
        self._stopping = None

    def startService(self):
        super().startService()
        for upstream in self.upstreams:
            upstream.start()

    def unsubscribe(self):
        """
        @return: a Deferred firing once every upstream is unsubscribed (or
            gave up); it does not fail.
        """
        if self._stopping is None:
            self._stopping = DeferredList([u.stop() for u in self.upstreams])
        return self._stopping

    def stopService(self):
        super().stopService()
        return self.unsubscribe()

    def mi_commands(self):
        return [Command("upstreams", [[]], self._list,
                        help="The [upstream] proxies evsrv is subscribed to: state, "
                             "counters, last error.")]

    def _list(self, call):
        now = self.clock.seconds()
        return {"Upstreams": [u.report(now) for u in self.upstreams]}
