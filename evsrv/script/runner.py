# -*- test-case-name: tests.test_script -*-
"""
The routing script: a Python file whose top level declares routes with the
functions evsrv puts in its namespace (see L{ScriptRunner.namespace}).

A route that raises is logged with the script's file and line and changes
nothing else; the server and the other routes go on. The script is trusted
code (it runs in the server's process), like an OpenSIPS script.
"""

import ast
import traceback
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from evsrv.script.api import (EventContext, EventTimeout, ScriptError, TooManyWaiters,
                              event_params)
from evsrv.script.waiters import (MAX_WAITERS, Waiters, check_timeout, parse_filters,
                                  waited_params)

_SCRIPT_CALLS = {"raise_event", "subscribe_event", "notify_on_event", "wait_for_event"}


class ScriptLoadError(Exception):
    """
    The script cannot be loaded; the message says where and why.
    """


class Routes:
    """
    The routes one load of the script declared.
    """

    def __init__(self):
        self.startup = []
        self.timers = {}      # name -> (interval, function)
        self.events = {}      # event name -> function
        self.named = {}       # name -> function
        self.events_used = []  # names to publish, in order of appearance


def _events_named_in(tree) -> list:
    """
    Event names given as literal first arguments of raise_event(),
    subscribe_event(), notify_on_event(), wait_for_event() and
    event_route(): published when the script loads (spec §1.6), so MI
    clients can subscribe before the first raise.
    """
    names = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _SCRIPT_CALLS | {"event_route"} and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str) and node.args[0].value not in names):
            names.append(node.args[0].value)
    return names


class ScriptRunner(Service):
    """
    Loads the script, runs its startup and timer routes, and calls its
    event routes for the C{route:} transport.

    @param max_waiters: the bound on the waiters of C{notify_on_event} and
        C{wait_for_event}, all events together.
    """
    _log = Logger(namespace="evsrv.script")

    def __init__(self, path: Path, evi, clock, statistics, max_waiters=MAX_WAITERS):
        self.path = Path(path)
        self.evi = evi
        self.clock = clock
        self.statistics = statistics
        self.routes = Routes()
        self._timers = []
        self._stack = []  # names of the routes running, innermost last
        self._loading = False
        self._errors = statistics.counter("script", "route_errors")
        self._reloads = statistics.counter("script", "reloads")
        self.waiters = Waiters(evi, clock, statistics, max_waiters)

    # -- loading ------------------------------------------------------------

    def load(self) -> Routes:
        """
        Compile and run the script's top level into a fresh L{Routes}.

        @raise ScriptLoadError: unreadable, syntax error, or its top level raised.
        """
        try:
            source = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ScriptLoadError(f"{self.path}: cannot read: {e}") from None
        try:
            tree = ast.parse(source, str(self.path))
            code = compile(tree, str(self.path), "exec")
        except SyntaxError as e:
            raise ScriptLoadError(f"{self.path}:{e.lineno}: {e.msg}") from None
        routes = Routes()
        routes.events_used = _events_named_in(tree)
        namespace = self.namespace(routes)
        self._loading = True
        try:
            exec(code, namespace)
        except Exception as e:
            raise ScriptLoadError(f"{self._where(e)}: {type(e).__name__}: {e}") from None
        finally:
            self._loading = False
        return routes

    def _where(self, error) -> str:
        """
        C{file:line} of the innermost frame of the script in C{error}'s traceback.
        """
        where = str(self.path)
        for frame in traceback.extract_tb(error.__traceback__):
            if Path(frame.filename) == self.path:
                where = f"{self.path}:{frame.lineno}"
        return where

    def namespace(self, routes: Routes) -> dict:
        """
        The globals of the script: route declarations and the script API.
        """
        def startup_route(function):
            routes.startup.append(function)
            return function

        def timer_route(name, interval):
            if not interval or interval <= 0:
                raise ScriptError(f"timer_route {name!r}: the interval must be positive")

            def declare(function):
                routes.timers[name] = (float(interval), function)
                return function
            return declare

        def event_route(event_name):
            def declare(function):
                routes.events[event_name] = function
                return function
            return declare

        def route(name=None):
            def declare(function):
                routes.named[name or function.__name__] = function
                return function
            return declare

        # bound to this load's routes, so an old script's leftovers (a late
        # callback after a reload) cannot make waiters for a script that is gone
        def notify_on_event(event, filter, route, timeout):
            return self.notify_on_event(routes, event, filter, route, timeout)

        def wait_for_event(event, filter, timeout):
            return self.wait_for_event(routes, event, filter, timeout)

        return {
            "__name__": "evsrv_script", "__file__": str(self.path),
            "startup_route": startup_route, "timer_route": timer_route,
            "event_route": event_route, "route": route, "call_route": self.call_route,
            "raise_event": self.raise_event, "subscribe_event": self.subscribe_event,
            "notify_on_event": notify_on_event, "wait_for_event": wait_for_event,
            "EventTimeout": EventTimeout, "TooManyWaiters": TooManyWaiters,
            "publish_event": self.evi.publish, "probe_event": self.evi.probe,
            "get_statistic": self.get_statistic,
            "get_statistics": self.statistics.get, "log": self._log,
        }

    # -- the script API ------------------------------------------------------------

    def _route_name(self) -> str:
        return self._stack[-1] if self._stack else "script"

    def raise_event(self, name, attrs=None, values=None) -> Deferred:
        """
        Raise an event (see L{event_params}); publishes it if needed.

        @return: the Deferred delivery report (C{None} after a logged failure).
        @raise ScriptError: attrs and values of different lengths.
        """
        params = event_params(attrs, values, f"route {self._route_name()}: raise_event {name}")
        self.evi.publish(name)
        d = self.evi.raise_event(name, params)
        # A failure (too many nested raises) is logged here, where the route
        # is known; the Deferred then fires with None.
        return d.addErrback(self._api_failed, f"raise_event({name!r})")

    def subscribe_event(self, name, socket, expire=None) -> Deferred:
        """
        Subscribe C{socket} to C{name}; without an expire it never expires.
        """
        self.evi.publish(name)
        d = self.evi.subscribe(name, socket, expire, origin="script")
        d.addErrback(self._api_failed, f"subscribe_event({name!r}, {socket!r})")
        return d

    def _api_failed(self, failure, what):
        self._errors.value += 1
        self._log.warn("route {route}: {what} failed: {error}", route=self._route_name(),
                       what=what, error=failure.getErrorMessage())
        return None

    def get_statistic(self, name: str):
        return self.statistics.value(name)

    # -- event-based routing ----------------------------------------------------------

    def _waiter_event(self, routes, call, event, filter, timeout):
        """
        Check a C{notify_on_event} / C{wait_for_event} call.

        @return: C{(where, filters, timeout)}.
        @raise ScriptError: misuse, or not from a route of the running script.
        """
        where = f"route {self._route_name()}: {call} {event!r}"
        if self._loading:
            raise ScriptError(f"{where}: not at the script's top level; call it from a route")
        if routes is not self.routes:
            raise ScriptError(f"{where}: the script that called it was reloaded")
        if not self.running:
            raise ScriptError(f"{where}: the server is not running")
        filters = parse_filters(filter, where)
        timeout = check_timeout(timeout, where)
        try:
            self.evi.publish(event)
        except ValueError as e:
            raise ScriptError(f"{where}: {e}") from None
        return where, filters, timeout

    def notify_on_event(self, routes, event, filter, route, timeout) -> None:
        """
        Run the named route C{route} once, with the L{EventContext}, at the
        first raise of C{event} whose parameters match C{filter}; or never,
        if C{timeout} seconds pass first (counted in
        C{script:waiters_timed_out}).

        @raise ScriptError: bad arguments, an unknown route, or
            L{TooManyWaiters}.
        """
        where, filters, timeout = self._waiter_event(routes, "notify_on_event", event,
                                                     filter, timeout)
        function = routes.named.get(route)
        if function is None:
            raise ScriptError(f"{where}: no route named {route!r}")
        label = f"route[{route}]"

        def matched(name, params):
            self._run(label, function, EventContext(name, params))
        self.waiters.add(event, filters, timeout, matched, None,
                         f"notify_on_event({event!r}, route {route!r})")

    def wait_for_event(self, routes, event, filter, timeout) -> Deferred:
        """
        @return: a Deferred firing with the parameters (L{waited_params}) of
            the first raise of C{event} whose parameters match C{filter}, or
            failing with L{EventTimeout} after C{timeout} seconds.
            Cancelling it drops the waiter. A waiter dropped by a reload or
            a stop never fires: the script that made it is gone.
        @raise ScriptError: bad arguments, or L{TooManyWaiters}.
        """
        where, filters, timeout = self._waiter_event(routes, "wait_for_event", event,
                                                     filter, timeout)
        waiter = None
        d = Deferred(lambda _: self.waiters.cancel(waiter))
        label = f"wait_for_event[{event}]"

        def matched(name, params):
            self._stack.append(label)  # so the callbacks' API errors name it
            try:
                d.callback(waited_params(params))
            finally:
                self._stack.pop()

        def timed_out():
            self._stack.append(label)
            try:
                d.errback(EventTimeout(f"{where}: no matching event within {timeout:g} s"))
            finally:
                self._stack.pop()
        waiter = self.waiters.add(event, filters, timeout, matched, timed_out,
                                  f"wait_for_event({event!r})")
        return d

    def call_route(self, name, *args):
        """
        Call a named route; its errors are logged and C{None} returned.
        """
        function = self.routes.named.get(name)
        if function is None:
            raise ScriptError(f"route {self._route_name()}: no route named {name!r}")
        return self._run(f"route[{name}]", function, *args)

    # -- running routes -------------------------------------------------------------

    def _run(self, label, function, *args):
        self._stack.append(label)
        try:
            result = function(*args)
        except Exception as e:
            self._errors.value += 1
            self._log.warn("{label} failed at {where}: {error}", label=label,
                           where=self._where(e), error=f"{type(e).__name__}: {e}")
            return _FAILED
        finally:
            self._stack.pop()
        if isinstance(result, Deferred):
            result.addErrback(self._late_failure, label)
        return result

    def _late_failure(self, failure, label):
        self._errors.value += 1
        self._log.warn("{label} failed: {error}", label=label, error=failure.getErrorMessage())

    def run_event_route(self, route_name, notification) -> bool:
        """
        Run C{event_route[route_name]} with the event of C{notification}
        (usually the same name; a C{route:X} subscriber of another event
        runs route X with that event, as in OpenSIPS).

        @return: whether it ran without raising (for the transport's counters).
        """
        function = self.routes.events.get(route_name)
        if function is None:
            return False
        context = EventContext(notification.event, notification.params)
        return self._run(f"event_route[{route_name}]", function, context) is not _FAILED

    def has_event_route(self, name: str) -> bool:
        return name in self.routes.events

    # -- life cycle -------------------------------------------------------------------

    def prepare(self):
        """
        First load, before the server starts.

        @raise ScriptLoadError: the script cannot be loaded.
        """
        self._install(self.load(), previous=None)

    def _install(self, routes, previous):
        for name in routes.events_used:
            self.evi.publish(name)
        for name in routes.events:
            self.evi.publish(name)
        self.routes = routes
        if previous is not None:
            self._stop_timers()
            self._drop_waiters("the script was reloaded")
            for name in set(previous.events) - set(routes.events):
                self._drop_route_subscription(name)
        if self.running:
            self._activate()

    def _drop_route_subscription(self, name):
        # Only the script's own route:NAME subscription goes; one made
        # through the MI stays (and fails to deliver, counted) until it expires.
        event = self.evi.event(name)
        sub = event and event.subscriptions.get(f"route:{name}")
        if sub is not None and sub.origin == "script":
            self.evi.unsubscribe(sub)

    def _activate(self):
        for name in self.routes.events:
            d = self.evi.subscribe(name, f"route:{name}", None, origin="script")
            d.addErrback(self._api_failed, f"event_route[{name}] subscription")
        for name, (interval, function) in self.routes.timers.items():
            loop = LoopingCall(self._run, f"timer_route[{name}]", function)
            loop.clock = self.clock
            # now=False: a timer route first runs one interval after start
            loop.start(interval, now=False).addErrback(self._late_failure, name)
            self._timers.append(loop)

    def _stop_timers(self):
        for loop in self._timers:
            if loop.running:
                loop.stop()
        self._timers = []

    def startService(self):
        super().startService()
        self._activate()
        for function in self.routes.startup:
            self._run("startup_route", function)

    def _drop_waiters(self, why):
        dropped = self.waiters.cancel_all()
        if dropped:
            self._log.info("{count} event waiter(s) dropped unfired: {why}", count=dropped,
                           why=why)

    def stopService(self):
        self._stop_timers()
        self._drop_waiters("the server stops")
        return super().stopService()

    def reload(self) -> None:
        """
        Load the script again; on failure the running routes stay.
        MI subscriptions are untouched; the startup route does not run again.

        @raise ScriptLoadError: the new script cannot be loaded.
        """
        routes = self.load()
        self._install(routes, previous=self.routes)
        self._reloads.value += 1
        self._log.info("routing script {path} reloaded", path=str(self.path))


_FAILED = object()
