# -*- test-case-name: tests.test_persistence -*-
"""
The SQLite file of MI subscriptions. Blocking: the journal calls it from
its own thread, and start-up reads it before the reactor runs.

One row per (event, destination), where the destination is the listing
text (C{subscribers_list}'s C{socket}), the subscription's identity. The
row keeps the socket text as the client first sent it, since the listing
may leave out parts a transport needs (a broker password).
"""

import errno
import os
import sqlite3
import time
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE subscriptions (
    event TEXT NOT NULL,
    destination TEXT NOT NULL,
    socket TEXT NOT NULL,
    expire INTEGER NOT NULL,
    subscribed_at REAL NOT NULL,
    PRIMARY KEY (event, destination)
) WITHOUT ROWID;
CREATE INDEX subscriptions_deadline ON subscriptions (subscribed_at + expire);
"""

_UPSERT = """
INSERT INTO subscriptions (event, destination, socket, expire, subscribed_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (event, destination)
DO UPDATE SET expire = excluded.expire, subscribed_at = excluded.subscribed_at
"""


_DELETE = "DELETE FROM subscriptions WHERE event = ? AND destination = ?"

# Errors a single row causes (its values cannot be bound or violate a
# constraint), as opposed to the file or the disk failing
# (sqlite3.OperationalError: full, read-only, I/O error), which fails the
# whole batch.
_ROW_ERRORS = (ValueError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
               sqlite3.DataError, sqlite3.IntegrityError)


class StoreError(Exception):
    """
    The store cannot be opened or read (corrupt, unreadable, another
    schema); the message names the file and says why.
    """


class StoreNotWritable(StoreError):
    """
    The store's directory (or file) cannot be written by this process: no
    permission, or a read-only file system. Setting the file aside
    (C{--ignore-store}) cannot help; the message says what does.
    """


def _not_writable(where, why) -> StoreNotWritable:
    return StoreNotWritable(
        f"{where}: not writable ({why}) by this user (uid {os.geteuid()}); the subscription "
        f"store is written there: make it writable, choose another [store] directory, "
        f"or set [store] backend = none")


class StoredSubscription:
    __slots__ = ("event", "destination", "socket", "expire", "subscribed_at")

    def __init__(self, event, destination, socket, expire, subscribed_at):
        self.event = event
        self.destination = destination
        self.socket = socket
        self.expire = expire
        self.subscribed_at = subscribed_at

    @property
    def deadline(self):
        return self.subscribed_at + self.expire

    def __repr__(self):
        return (f"<StoredSubscription {self.event} {self.destination} expire={self.expire} "
                f"at={self.subscribed_at}>")


class SubscriptionDatabase:
    """
    @param path: the SQLite file; its directory is made (mode 0700) if
        missing. The file is made with mode 0600: sockets may hold broker
        passwords.
    @param sync: C{"full"} (a commit survives power loss) or C{"normal"}
        (it survives a crash of evsrv, not of the machine).
    @raise StoreError: the file cannot be opened, is not an SQLite
        database, fails its integrity check, or has another schema.
    """

    def __init__(self, path: Path, sync="full"):
        self.path = Path(path)
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            if e.errno in _NOT_WRITABLE:
                raise _not_writable(_first_missing(directory), _reason(e)) from None
            raise StoreError(f"{directory}: cannot make the store directory: {_reason(e)}") \
                from None
        # SQLite writes the -wal and -shm files beside the store: the
        # directory must be writable, not only the file.
        for where in (directory, self.path):
            if where.exists() and not os.access(where, os.W_OK):
                read_only = os.statvfs(where).f_flag & os.ST_RDONLY
                raise _not_writable(where, "read-only file system" if read_only
                                    else "permission denied")
        try:
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            # check_same_thread off: opened here, then used by the journal's
            # single writer thread only (never two threads at once)
            self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            if getattr(e, "errno", None) in _NOT_WRITABLE:
                raise _not_writable(directory, _reason(e)) from None
            raise StoreError(f"{self.path}: cannot open: {_reason(e)}") from None
        try:
            self._prepare(sync)
        except sqlite3.Error as e:
            self._db.close()
            if isinstance(e, sqlite3.OperationalError) and "readonly" in str(e):
                # root on a read-only file system passes os.access
                raise _not_writable(directory, _reason(e)) from None
            raise StoreError(f"{self.path}: unreadable subscription store: {_reason(e)}") \
                from None

    def _prepare(self, sync):
        db = self._db
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables:
            db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        elif version != SCHEMA_VERSION or "subscriptions" not in tables:
            raise sqlite3.DatabaseError(
                f"not an evsrv subscription store of schema {SCHEMA_VERSION} "
                f"(user_version {version}, tables {', '.join(sorted(tables)) or 'none'})")
        # WAL: a commit is one append (and one fsync with synchronous=FULL)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {sync.upper()}")

    def load(self):
        """
        @return: every stored row as L{StoredSubscription}, oldest first.
        @raise StoreError: the rows cannot be read.
        """
        try:
            rows = self._db.execute(
                "SELECT event, destination, socket, expire, subscribed_at FROM subscriptions "
                "ORDER BY subscribed_at").fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: unreadable subscription store: {_reason(e)}") \
                from None
        return [StoredSubscription(*row) for row in rows]

    def write(self, puts, deletes, expired_before=None):
        """
        Apply one batch in one transaction (one disk sync).

        A change that cannot be written on its own account (text SQLite
        cannot store, a number out of range) is left out and reported; the
        rest of the batch is written: one bad change never costs the others.

        @param puts: C{(event, destination, socket, expire, subscribed_at)}
            rows to insert or refresh (a refresh keeps the stored socket).
        @param deletes: C{(event, destination)} pairs to remove.
        @param expired_before: also remove rows whose deadline is before this
            time (expired subscriptions nobody unsubscribed).
        @return: C{[((event, destination), reason)]}, the changes left out.
        @raise sqlite3.Error: nothing of the batch was applied (the file or
            the disk failed).
        """
        db = self._db
        rejected = []
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("SAVEPOINT batch")
            try:
                if puts:
                    db.executemany(_UPSERT, puts)
                if deletes:
                    db.executemany(_DELETE, deletes)
                db.execute("RELEASE batch")
            except _ROW_ERRORS:
                # Found out only now, and rarely: apply the changes one by one
                # to learn which cannot be written.
                db.execute("ROLLBACK TO batch")
                db.execute("RELEASE batch")
                for statement, rows in ((_UPSERT, puts), (_DELETE, deletes)):
                    for row in rows:
                        try:
                            db.execute(statement, row)
                        except _ROW_ERRORS as e:
                            rejected.append((tuple(row[:2]), f"cannot be stored: {e}"))
            if expired_before is not None:
                db.execute("DELETE FROM subscriptions WHERE subscribed_at + expire < ?",
                           (expired_before,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return rejected

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM subscriptions").fetchone()[0]

    def close(self):
        self._db.close()


def move_aside(path: Path) -> Path:
    """
    Rename an unusable store (and its WAL files) out of the way, keeping it
    for inspection. @return: the new name.
    """
    path = Path(path)
    target = path.with_name(f"{path.name}.unusable-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(path) + suffix)
        if source.exists():
            source.rename(str(target) + suffix)
    return target


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _first_missing(directory: Path) -> Path:
    """
    The deepest existing parent of C{directory} (where C{mkdir} failed).
    """
    while not directory.exists() and directory.parent != directory:
        directory = directory.parent
    return directory


def _reason(e):
    return getattr(e, "strerror", None) or str(e)
