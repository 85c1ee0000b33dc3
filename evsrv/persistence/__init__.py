"""
Subscriptions that survive restarts: MI subscriptions are written to an
SQLite file in the state directory and restored at start-up.
"""

from evsrv.persistence.database import StoreError, StoreNotWritable, SubscriptionDatabase
from evsrv.persistence.journal import StoreWriteError, SubscriptionJournal

__all__ = ["StoreError", "StoreNotWritable", "StoreWriteError", "SubscriptionDatabase",
           "SubscriptionJournal"]
