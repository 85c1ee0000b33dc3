# -*- test-case-name: tests.test_persistence -*-
"""
Group commit of subscription changes: an MI subscribe is answered only once
its change is on disk, yet a thousand subscribers refreshing every few
seconds cost a few disk syncs per second, not a thousand.

A change waits up to C{batch_delay} seconds for company, then the batch
goes to the database in one transaction, run in a thread so the reactor
never waits on the disk: at most one disk sync per C{batch_delay}, however
many subscribers refresh. While a transaction runs, new changes gather for
the next one, which starts when it is done or when its first change has
waited C{batch_delay}, whichever comes later.
Changes to the same subscription within a batch collapse into the last one.

A slow disk makes MI answers slower, never lost or reordered; a failing
disk (full, read-only, gone) fails the waiting requests with
L{StoreWriteError}, and later batches try again. A change that cannot be
written on its own account (text SQLite cannot hold) fails alone: the other
changes of its batch are written and answered as usual.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from evsrv.interfaces import StoreWriteError
from evsrv.util.ratelimit import RateLimitedLog

_PUT, _DELETE = "put", "delete"


class SubscriptionJournal:
    """
    @param database: a L{evsrv.persistence.SubscriptionDatabase}.
    @param clock: C{IReactorTime}, for the batch delay and purge times.
    @param run: C{run(f, *args) -> Deferred} running C{f} off the reactor
        thread (never two at once); default: the reactor's thread pool.
    @param batch_delay: seconds a first change waits for others.
    """
    _log = Logger()

    def __init__(self, database, clock, statistics, batch_delay=0.01, run=None):
        self.database = database
        self.clock = clock
        self.batch_delay = batch_delay
        if run is None:
            def run(f, *args):
                return deferToThreadPool(clock, clock.getThreadPool(), f, *args)
        self._run = run
        self._changes = {}   # (event, destination) -> (kind, row)
        # (event, destination) -> Deferreds answered by the next batch; the
        # key None holds flush() callers, answered when the whole batch is
        self._waiters = {}
        self._timer = None
        self._first_at = None  # clock time of the oldest change not yet written
        self._writing = None  # Deferred of the transaction in flight
        self._closed = False
        self._errors = RateLimitedLog(self._log, clock)
        self.writes = statistics.counter("store", "writes")
        self.rows_written = statistics.counter("store", "changes_written")
        self.write_failures = statistics.counter("store", "write_failures")
        self.changes_rejected = statistics.counter("store", "changes_rejected")
        statistics.gauge("store", "pending", lambda: len(self._changes))

    # -- changes ------------------------------------------------------------

    def put(self, event, destination, socket, expire, subscribed_at) -> Deferred:
        """
        Store (or refresh) a subscription. @return: a Deferred firing once it
        is durable; fails with L{StoreWriteError}.
        """
        return self._add((event, destination),
                         (_PUT, (event, destination, socket, expire, subscribed_at)))

    def delete(self, event, destination) -> Deferred:
        """
        Forget a subscription. @return: as L{put}.
        """
        return self._add((event, destination), (_DELETE, (event, destination)))

    def _add(self, key, change) -> Deferred:
        if self._closed:
            return _failed("the store is closed")
        if self._first_at is None:
            self._first_at = self.clock.seconds()
        self._changes[key] = change
        waiter = Deferred()
        self._waiters.setdefault(key, []).append(waiter)
        if self._writing is None and self._timer is None:
            self._timer = self.clock.callLater(self.batch_delay, self._flush)
        return waiter

    # -- writing ------------------------------------------------------------

    def _flush(self):
        self._timer = None
        if self._writing is not None:
            return
        changes, waiters = self._changes, self._waiters
        self._changes, self._waiters = {}, {}
        self._first_at = None
        if not changes:
            for waiter in waiters.get(None, ()):  # flush() callers, nothing left to write
                waiter.callback(None)
            return
        puts = [row for kind, row in changes.values() if kind == _PUT]
        deletes = [row for kind, row in changes.values() if kind == _DELETE]
        # rows nobody refreshed or removed go too (their subscriptions are
        # long gone from memory); a small grace avoids racing the clock
        expired_before = self.clock.seconds() - 1
        self._writing = self._run(self.database.write, puts, deletes, expired_before)
        self._writing.addCallbacks(self._written, self._failed,
                                   callbackArgs=(len(changes), waiters),
                                   errbackArgs=(len(changes), waiters))

    def _written(self, rejected, count, waiters):
        self._writing = None
        self.writes.value += 1
        self.rows_written.value += count - len(rejected or ())
        for key, reason in rejected or ():
            self.changes_rejected.value += 1
            self._errors.warn("subscription store {path}: {destination} of {event} not "
                              "written: {reason}", path=str(self.database.path),
                              event=key[0][:80], destination=key[1][:120], reason=reason)
            for waiter in waiters.pop(key, ()):
                waiter.errback(StoreWriteError(reason))
        for batch in waiters.values():
            for waiter in batch:
                waiter.callback(None)
        self._next()

    def _failed(self, failure, count, waiters):
        self._writing = None
        self.write_failures.value += 1
        reason = failure.getErrorMessage()
        self._errors.warn("subscription store {path}: {count} change(s) not written: "
                          "{reason}", path=str(self.database.path), count=count,
                          reason=reason)
        for batch in waiters.values():
            for waiter in batch:
                waiter.errback(StoreWriteError(reason))
        self._next()

    def _next(self):
        if not (self._changes or self._waiters) or self._timer is not None:
            return
        waited = (self.clock.seconds() - self._first_at) if self._first_at is not None else 0
        if self._first_at is None or waited >= self.batch_delay:
            self._flush()  # flush() callers only, or changes that waited long enough
        else:
            self._timer = self.clock.callLater(self.batch_delay - waited, self._flush)

    # -- closing ------------------------------------------------------------

    def flush(self) -> Deferred:
        """
        Write whatever is pending now. @return: a Deferred firing once every
        change made so far is durable (or failed).
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._changes and self._writing is None:
            return succeed(None)
        done = Deferred()
        self._waiters.setdefault(None, []).append(done)
        if self._writing is None:
            self._flush()
        return done

    def close(self) -> Deferred:
        """
        Write what is pending, then close the file; later changes fail.
        @return: a Deferred firing when closed; it fails with
            L{StoreWriteError} if the last changes could not be written.
        """
        if self._closed:
            return succeed(None)
        d = self.flush()
        self._closed = True

        def close_file(result):
            closing = self._run(self.database.close)
            return closing.addCallback(lambda _: result)
        return d.addBoth(close_file)


def _failed(reason):
    return fail(StoreWriteError(reason))
