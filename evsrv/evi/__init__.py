"""
The event registry: events, parameters, subscriptions, expiry and raising.
"""

from evsrv.evi.interface import (EventInterface, Limits, NestingError, UnknownEvent,
                                 UnknownTransport)
from evsrv.evi.notification import DeliveryReport, Notification, Outcome
from evsrv.evi.params import Param, make_params
from evsrv.evi.subscriptions import Destination, Subscription

__all__ = ["EventInterface", "Limits", "UnknownEvent", "UnknownTransport", "NestingError",
           "DeliveryReport", "Notification", "Outcome", "Param", "make_params",
           "Destination", "Subscription"]
