# evsrv routing script: the OpenSIPS event-interface examples, in Python.
#
# Loaded by etc/evsrv.ini ([script] path = routes.py). The functions used
# below (startup_route, timer_route, event_route, route, raise_event,
# subscribe_event, get_statistic, log, ...) are put in this file's namespace
# by evsrv; see docs/scripting.md, "Routing script". Edit it and run
# `evsrv-ctl reload_routes` to apply changes without losing MI subscriptions.

# Where the examples send their notifications; `nc -kul 127.0.0.1 8888` shows them.
MONITOR = "udp:127.0.0.1:8888"
REFRESHED = "udp:127.0.0.1:8889"
TCP_LOAD_LIMIT = 80  # percent of one CPU


# 1. A permanent subscription, made once when the server is up: never expires.
@startup_route
def subscribe_monitor():
    subscribe_event("E_PIKE_BLOCKED", MONITOR)


# 2. A subscription that expires after 20 minutes unless refreshed: the timer
#    runs every hour, so it is down for 40 minutes in each hour (as the
#    OpenSIPS example shows, refreshing must be more frequent than the expire
#    to keep a subscription alive).
@timer_route("refresh_subscription", 3600)
def refresh_subscription():
    subscribe_event("E_PIKE_BLOCKED", REFRESHED, 1200)


# 3. Handle an event in process: the pike module raises E_PIKE_BLOCKED when a
#    source floods the MI. Declaring the route subscribes route:E_PIKE_BLOCKED.
@event_route("E_PIKE_BLOCKED")
def pike_blocked(event):
    log.warn("MI flood: {ip} is blocked", ip=event["ip"])


# 4. Load check: raise E_SCRIPT_TCP_LOAD with the limit and the load (the core
#    module's load:cpu statistic, percent of one CPU) when over the limit.
@timer_route("check_load", 10)
def check_load():
    load = get_statistic("load:cpu")
    if load > TCP_LOAD_LIMIT:
        raise_event("E_SCRIPT_TCP_LOAD", ["limit", "load"], [TCP_LOAD_LIMIT, load])


# 5. Accounting: evsrv sees no SIP traffic itself, so the proxy (or anything
#    else) reports calls by raising E_SIP_MESSAGE through the MI, e.g.
#      evsrv-ctl raise_event E_SIP_MESSAGE \
#        '{"method":"INVITE","status":0,"from":"sip:a@x","to":"sip:b@x","callid":"c1"}'
#    and this route turns them into the accounting trio.
@event_route("E_SIP_MESSAGE")
def sip_message(event):
    method, status = event["method"], event["status"]
    if method == "INVITE" and not status:
        account("START", event)
    elif method == "INVITE" and status == 200:
        account("ESTABLISHED", event)
    elif method == "BYE":
        account("STOP", event)


@route("account")
def account(stage, event):
    raise_event("E_SCRIPT_CALL_" + stage, ["from", "to", "callid"],
                [event["from"], event["to"], event["callid"]])


# Names given literally to raise_event()/subscribe_event()/event_route() are
# published when the script loads; computed ones are published here, so MI
# clients can subscribe to them before the first call.
for stage in ("START", "ESTABLISHED", "STOP"):
    publish_event("E_SCRIPT_CALL_" + stage)
