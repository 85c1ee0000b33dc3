# -*- test-case-name: tests.test_shutdown -*-
"""
Graceful shutdown of an L{evsrv.server.EvsrvService} (SIGTERM, SIGINT, or
C{stopService} from embedding code), step by step:

 1. The MI stops at once: the datagram ports, the FIFOs and the HTTP port
    stop listening (HTTP connections are closed, UNIX socket and FIFO files
    removed) before anything else, so no request can start a change that
    would not be saved. A client gets no reply (UDP: the kernel answers
    "port unreachable"; UNIX, FIFO: the path is gone, and FIFO replies still
    waiting for their client are dropped; HTTP: connection refused).
    Meanwhile every C{[upstream:NAME]} proxy is unsubscribed (expire 0), so
    the proxies stop sending; one that does not answer within its MI
    C{timeout} is not waited for. The ingest listeners stay open until the
    children stop (step 3): what still arrives is raised and acknowledged.
 2. Drain: every transport with a C{drain} method (see
    L{evsrv.interfaces.IEventTransport}) gets until the deadline, C{[shutdown]
    timeout} seconds from now, to deliver what it holds. They drain side by
    side, so a dead destination costs the deadline once, not once per
    transport. Raises keep being delivered meanwhile (timers, modules,
    scripts). A transport that has not reported shortly after the deadline
    is not waited for: the shutdown never hangs on a slow or dead peer.
 3. The children stop: whatever a transport still holds is dropped (and
    counted as dropped).
 4. The subscription journal is closed: every change a client was told "OK"
    about is written.
 5. One summary line in the log (delivered and undelivered per transport,
    whether the subscriptions were saved), a warning per destination left
    with undelivered notifications, and the process exit status
    (L{evsrv.exitstatus}).

"Undelivered" counts every notification that failed or was dropped from
the moment the MI closed until the transports stopped: those still queued,
in flight or awaiting a reply at the deadline, and those that failed while
draining (e.g. waited longer than the transport's C{queue_timeout}).
"""

import os
from dataclasses import dataclass, field

from twisted.internet.defer import CancelledError, DeferredList, inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from evsrv import exitstatus
from evsrv.interfaces import ICounted, IDrainable
# DRAIN_POLL and wait_drained stay importable from here (tests, embedding code)
from evsrv.transports.kit import DRAIN_POLL, DrainResult, wait_drained  # noqa: F401

DRAIN_GRACE = 0.25  # seconds after the deadline a transport may take to report

_log = Logger(namespace="evsrv.shutdown")


@dataclass
class TransportReport:
    """
    One transport's part of the shutdown.

    @ivar result: its L{DrainResult}; C{None} when it has no C{drain} (it
        holds nothing: every notification leaves at once); L{NO_REPORT}
        when its drain failed or did not answer in time.
    """
    name: str
    delivered: int = 0
    undelivered: int = 0
    result: object = None

    @property
    def counted(self) -> bool:
        return not (isinstance(self.result, DrainResult) and self.result.through_members)

    @property
    def lossy(self) -> bool:
        """
        Whether something of this transport may not have reached its peers.
        """
        if not self.counted:
            return False
        return (self.undelivered > 0 or self.result is NO_REPORT
                or (isinstance(self.result, DrainResult) and not self.result.complete))


class _NoReport:
    def __repr__(self):
        return "NO_REPORT"


NO_REPORT = _NoReport()  # a drain that failed or did not answer in time


@dataclass
class ShutdownReport:
    """
    Everything L{stop_server} found out; C{status} is the exit status.
    """
    transports: list = field(default_factory=list)
    elapsed: float = 0.0
    persisted: object = None  # True, False, or None (no store)
    persist_error: str = ""

    @property
    def delivered(self) -> int:
        return sum(t.delivered for t in self.transports if t.counted)

    @property
    def undelivered(self) -> int:
        return sum(t.undelivered for t in self.transports if t.counted)

    @property
    def status(self) -> int:
        if self.persisted is False:
            return exitstatus.NOT_PERSISTED
        if any(t.lossy for t in self.transports):
            return exitstatus.UNDELIVERED
        return exitstatus.OK

    def summary(self) -> str:
        parts = []
        for t in self.transports:
            if not (t.delivered or t.undelivered or t.result is NO_REPORT
                    or (isinstance(t.result, DrainResult) and not t.result.complete)):
                continue
            text = f"{t.name} {t.delivered} delivered, {t.undelivered} undelivered"
            if t.result is NO_REPORT:
                text += ", did not finish draining"
            elif not t.counted:
                text += " (counted at its members)"
            parts.append(text)
        if self.persisted is None:
            saved = "subscriptions not stored ([store] backend = none)"
        elif self.persisted:
            saved = "subscriptions saved"
        else:
            saved = f"subscriptions NOT saved ({self.persist_error})"
        return (f"shutdown in {self.elapsed:.1f} s: {self.delivered} notification(s) "
                f"delivered, {self.undelivered} undelivered "
                f"({'; '.join(parts) or 'nothing was pending'}); {saved}; "
                f"exit status {self.status}")


def _counts(transport):
    if not ICounted.providedBy(transport):
        return None
    counters = transport.counters
    return (counters.sent.value, counters.failed.value + counters.dropped.value)


def close_listeners(services, ports=(), paths=()):
    """
    Close MI listeners: stop C{services} (the server's
    L{evsrv.mi.protocol.ListeningPorts}, its HTTP service), then stop
    listening on C{ports} no service holds, then remove the UNIX socket
    files at C{paths}. What fails is logged.

    @return: a Deferred firing once all are closed; it does not fail.
    """
    waits = [maybeDeferred(service.stopService) for service in services]
    waits += [maybeDeferred(port.stopListening) for port in ports]
    return DeferredList(waits, consumeErrors=True).addCallback(_report_mi_errors, paths)


def _report_mi_errors(results, paths):
    for ok, failure in results:
        if not ok:
            _log.failure("shutdown: closing an MI listener failed", failure)
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            _log.warn("shutdown: cannot remove the MI socket {path}: {error}", path=path,
                      error=e.strerror)


def _drain_all(transports, clock, deadline):
    """
    Drain every transport at once. @return: Deferred firing with a dict
    name -> L{DrainResult} / L{NO_REPORT} (transports without C{drain} are
    left out).
    """
    results = {}
    pending = {}
    for name, transport in transports.items():
        if not IDrainable.providedBy(transport):
            continue
        pending[name] = maybeDeferred(transport.drain, deadline)

    def got(result, name):
        pending.pop(name, None)
        if not isinstance(result, DrainResult):
            _log.warn("shutdown: transport {transport} reported {result!r} instead of a "
                      "DrainResult", transport=name, result=result)
            result = NO_REPORT
        results[name] = result

    def failed(failure, name):
        pending.pop(name, None)
        results[name] = NO_REPORT
        if not failure.check(CancelledError):
            _log.failure("shutdown: draining transport {transport} failed", failure,
                         transport=name)

    waits = [d.addCallbacks(got, failed, callbackArgs=(name,), errbackArgs=(name,))
             for name, d in list(pending.items())]
    done = DeferredList(waits)
    if not pending:
        return done.addCallback(lambda _: results)

    # A transport that does not keep its deadline is not waited for.
    def give_up():
        for name, d in list(pending.items()):
            _log.warn("shutdown: transport {transport} did not finish draining by the "
                      "deadline; what it holds is dropped", transport=name)
            d.cancel()
    guard = clock.callLater(max(0.0, deadline - clock.seconds()) + DRAIN_GRACE, give_up)

    def finished(_):
        if guard.active():
            guard.cancel()
        return results
    return done.addCallback(finished)


@inlineCallbacks
def _close_journal(server, report):
    journal = getattr(server, "journal", None)
    if journal is None:
        report.persisted = None
        return
    try:
        yield journal.close()
    except Exception as e:
        report.persisted = False
        report.persist_error = str(e) or type(e).__name__
        _log.error("shutdown: the subscriptions could not be saved: {error}",
                   error=report.persist_error)
    else:
        report.persisted = True


@inlineCallbacks
def stop_server(server, stop_children):
    """
    Stop C{server} gracefully (see the module docstring).

    @param server: what it stops, through its public parts: C{reactor},
        C{config.shutdown_timeout}, C{transports} (name to transport),
        C{journal} (or C{None}) and C{close_mi()} (a Deferred; it closes
        every MI listener and removes the UNIX socket files, as
        L{close_listeners} does); if it has one, C{unsubscribe_upstreams()}
        (a Deferred that does not fail).
    @param stop_children: stops every child service (MultiService's
        C{stopService}).
    @return: a Deferred firing with the L{ShutdownReport} once everything is
        stopped; it does not fail.
    """
    # The process exit status follows this report from now on.
    exitstatus.install()
    clock = server.reactor
    timeout = server.config.shutdown_timeout
    started = clock.seconds()
    # the [upstream] proxies are told to stop sending while the MI closes
    # (each bounded by its MI timeout; a server without upstreams: nothing)
    unsubscribing = maybeDeferred(getattr(server, "unsubscribe_upstreams", lambda: None))
    yield server.close_mi()
    yield unsubscribing
    _log.info("shutdown: MI closed; delivering what the transports hold for up to "
              "{timeout:g} s", timeout=timeout)
    transports = dict(server.transports)
    before = {name: _counts(t) for name, t in transports.items()}
    deadline = clock.seconds() + timeout
    drained = yield _drain_all(transports, clock, deadline)
    try:
        yield stop_children()
    except Exception:
        _log.failure("shutdown: stopping the services failed")
    report = ShutdownReport()
    for name, transport in transports.items():
        t = TransportReport(name, result=drained.get(name))
        after = _counts(transport)
        if after is not None and before[name] is not None:
            t.delivered = after[0] - before[name][0]
            t.undelivered = after[1] - before[name][1]
        elif isinstance(t.result, DrainResult):
            t.undelivered = t.result.count
        report.transports.append(t)
    yield _close_journal(server, report)
    report.elapsed = clock.seconds() - started
    _log_report(report)
    exitstatus.record(report.status)
    return report


def _log_report(report):
    for t in report.transports:
        if not isinstance(t.result, DrainResult):
            continue
        for destination, (count, state) in t.result.destinations.items():
            if count:
                _log.warn("shutdown: {socket}: {count} notification(s) undelivered ({state})",
                          socket=destination, count=count, state=state, transport=t.name)
            else:
                _log.warn("shutdown: {socket}: closed before it had read everything "
                          "({state})", socket=destination, state=state, transport=t.name)
    if report.status == exitstatus.OK:
        _log.info("{summary}", summary=report.summary())
    else:
        _log.warn("{summary}", summary=report.summary())
