# -*- test-case-name: tests.test_mi_commands -*-
"""
The MI commands: the EVI ones (spec §2.1, §2.3, §9 D3, D4, D16) and the core
ones (which, help, version, uptime, ps, statistics).
"""

import os
import platform
import time

from twisted.logger import Logger

from evsrv import __version__
from evsrv.evi import UnknownEvent
from evsrv.evi.params import INT64_MAX, INT64_MIN, Param
from evsrv.interfaces import BadSocket, DestinationRefused, LimitExceeded, StoreWriteError
from evsrv.mi import jsonrpc
from evsrv.mi.controller import Command, MIError, Named, clamp, invalid_params

_log = Logger(namespace="evsrv.mi.commands")

DEFAULT_EXPIRE = 3600


def _bad_socket(failure, socket, event):
    failure.trap(BadSocket)
    reason = failure.getErrorMessage()
    if failure.check(DestinationRefused):
        # the client's answer, not a server error: info, counted by the policy
        # (policy:destinations_refused)
        _log.info("event_subscribe {event} {socket} refused: {reason}", event=event,
                  socket=socket, reason=reason)
        raise MIError(403, "Destination not allowed", reason, legacy=(403, "Forbidden"))
    _log.info("event_subscribe {event} {socket}: {reason}", event=event, socket=socket,
              reason=reason)
    raise MIError(400, "Bad parameter value", reason, legacy=(400, "Bad parameter"))


def _raise_failed(failure, name):
    _log.failure("raise_event {event} failed", failure, event=name)


def _subscriber_json(sub, now):
    if sub.expire is None:
        return {"socket": sub.socket, "expire": "never"}
    ttl = sub.ttl(now)
    return {"socket": sub.socket, "expire": sub.expire, "ttl": ttl if ttl > 0 else "expired"}


def _event_json(event, subs, now):
    return {"name": event.name, "id": event.id,
            "Subscribers": [_subscriber_json(s, now) for s in subs]}


class EVICommands:
    """
    The EVI commands over one L{EventInterface}.
    """

    def __init__(self, evi):
        self.evi = evi

    def commands(self):
        return [
            Command("event_subscribe", [["event", "socket"], ["event", "socket", "expire"]],
                    self.event_subscribe, aliases=("evi:subscribe",), text_extra_args=True,
                    help="Subscribes a socket to an event: event, socket[, expire "
                         "(seconds, default 3600, 0 unsubscribes)]."),
            Command("events_list", [[]], self.events_list, aliases=("evi:list",),
                    text_lines=self._events_lines, text_no_input=True,
                    help="Lists every published event with its id."),
            Command("subscribers_list", [[], ["event"], ["event", "socket"]],
                    self.subscribers_list, aliases=("evi:subscribers",),
                    text_lines=self._subscribers_lines,
                    help="Lists subscribers: all, of one event, or one socket of one event."),
            Command("raise_event", [["event"], ["event", "params"]], self.raise_event,
                    aliases=("evi:raise",),
                    help="Raises an event: event[, params (array, object, or a JSON "
                         "string holding an object)]."),
            Command("subscribers_stats", [[], ["event"]], self.subscribers_stats,
                    aliases=("evi:subscribers_stats",),
                    help="evsrv only: per-subscriber delivery counters (sent, failed, "
                         "dropped, last error)."),
        ]

    # -- event_subscribe ---------------------------------------------------

    def event_subscribe(self, call):
        event = call.string("event")
        socket = call.string("socket")
        expire = DEFAULT_EXPIRE
        if call.has("expire"):
            expire = call.int("expire")
            if expire < 0:
                raise invalid_params("Negative expire value", (400, "Bad parameter"))
        d = self.evi.subscribe(event, socket, expire, origin="mi")
        d.addErrback(self._unknown_event_on_subscribe)
        d.addErrback(_bad_socket, socket, event)
        d.addErrback(self._not_subscribed, socket, event)
        d.addCallback(lambda _: "OK")
        return d

    @staticmethod
    def _not_subscribed(failure, socket, event):
        failure.trap(LimitExceeded, StoreWriteError)
        reason = failure.getErrorMessage()
        if failure.check(LimitExceeded):
            _log.warn("event_subscribe {event} {socket} refused: {reason}", event=event,
                      socket=socket, reason=reason)
            raise MIError(503, "Subscription limit reached", reason)
        # the journal has logged the disk error
        raise MIError(500, "Subscription not stored", reason)

    @staticmethod
    def _unknown_event_on_subscribe(failure):
        failure.trap(UnknownEvent)
        raise MIError(400, "Bad parameter value", legacy=(400, "Bad parameter"))

    # -- events_list ---------------------------------------------------------

    def events_list(self, call):
        return {"Events": [{"name": e.name, "id": e.id} for e in self.evi.events]}

    @staticmethod
    def _events_lines(result):
        return [f"Event:: {e['name']} id={e['id']}" for e in result["Events"]]

    # -- subscribers_list ------------------------------------------------------

    def subscribers_list(self, call):
        evi = self.evi
        if not call.has("event"):
            now = evi.clock.seconds()
            listed = []
            for event in evi.events:
                subs = evi.subscribers(event)
                if subs:
                    listed.append(_event_json(event, subs, now))
            return {"Events": listed}
        name = call.string("event", nonempty=False)
        event = evi.event(name)
        if event is None:
            raise MIError(404, "Event not published")
        if not call.has("socket"):
            subs = evi.subscribers(event)
            return {"Event": _event_json(event, subs, evi.clock.seconds()) if subs else {}}
        d = evi.find_subscriber(name, call.string("socket", nonempty=False))

        def found(sub):
            if sub is None:
                raise MIError(404, "Subscriber does not exist")
            return {"Event": {"name": event.name, "id": event.id,
                              "Subscriber": _subscriber_json(sub, evi.clock.seconds())}}

        def not_parsed(failure):
            failure.trap(BadSocket)
            raise MIError(404, "Subscriber does not exist")
        return d.addCallbacks(found, not_parsed)

    @staticmethod
    def _subscribers_lines(result):
        if "Events" in result:
            events = result["Events"]
        else:
            events = [result["Event"]] if result["Event"] else []
        lines = []
        for event in events:
            lines.append(f"Event:: {event['name']} id={event['id']}")
            subs = event["Subscribers"] if "Subscribers" in event else [event["Subscriber"]]
            for sub in subs:
                lines.append(f"\tSubscriber::  socket={sub['socket']} expire={sub['expire']}")
        return lines

    # -- raise_event -------------------------------------------------------------

    def raise_event(self, call):
        name = call.string("event")
        if self.evi.event(name) is None:
            raise MIError(404, "Event not registered")
        if not self.evi.has_subscribers(name):
            raise MIError(480, "Temporarily Unavailable")
        params = mi_params(call.raw("params")) if call.has("params") else ()
        d = self.evi.raise_event(name, params)
        # The MI answers at once, as OpenSIPS does; the delivery report is
        # for statistics and the log only. Parameters over the limit are
        # refused before anything is sent, so that failure is already here.
        too_large = []
        d.addErrback(lambda f: too_large.append(f) if f.check(LimitExceeded)
                     else _raise_failed(f, name))
        if too_large:
            raise MIError(413, "Params too large", too_large[0].getErrorMessage())
        return "OK"

    # -- subscribers_stats ---------------------------------------------------------

    def subscribers_stats(self, call):
        if call.has("event"):
            event = self.evi.event(call.string("event"))
            if event is None:
                raise MIError(404, "Event not published")
            events = [event]
        else:
            events = list(self.evi.events)
        rows = []
        for event in events:
            for sub in self.evi.subscribers(event):
                rows.append({"event": event.name, "socket": sub.socket, "sent": sub.sent,
                             "failed": sub.failed, "dropped": sub.dropped,
                             "last_error": sub.last_error})
        return {"Subscribers": rows}


def _number_text(value) -> str:
    if isinstance(value, float) and not value.is_integer():
        return repr(value)  # also 'inf' for 1e400
    return str(int(value))


def mi_params(value) -> tuple:
    """
    The C{params} of MI C{raise_event} as event parameters (spec §2.1, §9 D4,
    D18): an array gives unnamed string parameters; an object, inline or as a
    JSON string, gives named ones (numbers as ints, strings as strings, other
    values as their compact JSON text).

    @raise MIError: 400 "Bad Params" / "No Params".
    """
    if isinstance(value, Named):
        return _named(value.pairs)
    if isinstance(value, jsonrpc.JSONObject):
        return _named(value)
    if isinstance(value, list):
        params = []
        for item in value:
            if isinstance(item, str):
                params.append(Param(None, item))
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                params.append(Param(None, _number_text(item)))
            else:
                raise MIError(400, "Bad Params")
        return tuple(params)
    if isinstance(value, str):
        try:
            parsed = jsonrpc.loads(value)
        except jsonrpc.ParseError:
            raise MIError(400, "Bad Params") from None
        if not isinstance(parsed, jsonrpc.JSONObject):
            raise MIError(400, "Bad Params")
        return _named(parsed)
    raise MIError(400, "No Params")


def _named(pairs) -> tuple:
    params = []
    for key, value in pairs:
        if isinstance(value, str):
            params.append(Param(key, value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            params.append(Param(key, clamp(value, INT64_MIN, INT64_MAX)))
        else:
            params.append(Param(key, jsonrpc.compact(value)))
    return tuple(params)


class CoreCommands:
    """
    which, help, version, uptime, ps and the statistics commands.
    """

    def __init__(self, controller, statistics, clock):
        self.controller = controller
        self.statistics = statistics
        self.clock = clock
        self.started = clock.seconds()
        self.started_wall = time.time()
        statistics.gauge("core", "uptime", lambda: int(clock.seconds() - self.started))

    def commands(self):
        return [
            # 1.x `which` takes no input (MI_NO_INPUT): text arguments are ignored
            Command("which", [[], ["command"]], self.which, text_no_input=True,
                    help="Lists the MI commands; with command: the parameter recipes "
                         "(lists of parameter names) that command accepts."),
            Command("help", [[], ["mi_cmd"]], self.help, help="Describes an MI command."),
            Command("version", [[]], self.version, help="Server name and version."),
            Command("uptime", [[]], self.uptime, help="Start time and running time."),
            Command("ps", [[]], self.ps, help="The processes of the server."),
            Command("get_statistics", [["statistics"]], self.get_statistics,
                    help="Values of statistics: names, 'group:' or 'all'."),
            Command("list_statistics", [[], ["statistics"]], self.list_statistics,
                    help="Statistics names and whether they are incremental."),
            Command("reset_statistics", [["statistics"]], self.reset_statistics,
                    help="Resets incremental statistics to 0."),
        ]

    def which(self, call):
        if call.has("command"):
            # OpenSIPS 3.x mi_which_cmd: one array of names per recipe (an
            # empty one for "no parameters"); opensips-cli's tab completion
            # reads it
            command = self.controller.lookup(call.string("command"))
            if command is None:
                raise MIError(404, "unknown MI command")
            return [list(recipe) for recipe in command.recipes]
        names = list(self.controller.names)
        for name in self.controller.names:
            names.extend(self.controller.commands[name].aliases)
        return names

    def help(self, call):
        if not call.has("mi_cmd"):
            return "Usage: help mi_cmd - returns information about 'mi_cmd'"
        command = self.controller.lookup(call.string("mi_cmd"))
        if command is None:
            raise MIError(404, "MI command not found")
        return {"Help": command.help or "No help available", "Exported by": "core"}

    def version(self, call):
        return {"Server": f"evsrv {__version__} (OpenSIPS EVI compatible; "
                          f"Python {platform.python_version()}/{platform.system().lower()})"}

    def uptime(self, call):
        now = time.time()
        up = int(self.clock.seconds() - self.started)
        return {"Now": time.ctime(now), "Up since": time.ctime(self.started_wall),
                "Up time": f"{up} [sec]"}

    def ps(self, call):
        return {"Processes": [{"ID": 0, "PID": os.getpid(),
                               "Type": "evsrv (MI, event interface, transports)"}]}

    def get_statistics(self, call):
        return self.statistics.get(call.strings("statistics"))

    def list_statistics(self, call):
        return self.statistics.kinds(call.strings("statistics") if call.has("statistics") else None)

    def reset_statistics(self, call):
        self.statistics.reset(call.strings("statistics"))
        return "OK"
