"""
The event registry: events, parameters, subscriptions, expiry and raising.
"""

from evsrv.evi.interface import EventInterface, NestingError, UnknownEvent, UnknownTransport
from evsrv.evi.notification import DeliveryReport, Notification, Outcome
from evsrv.evi.params import Param, make_params
from evsrv.evi.subscriptions import Destination, Subscription

__all__ = ["EventInterface", "UnknownEvent", "UnknownTransport", "NestingError",
           "DeliveryReport", "Notification", "Outcome", "Param", "make_params",
           "Destination", "Subscription"]
