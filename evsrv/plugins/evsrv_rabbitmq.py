"""
The rabbitmq: transport as a plugin.
"""

from evsrv.transports.rabbitmq import rabbitmqTransport

__all__ = ["rabbitmqTransport"]
