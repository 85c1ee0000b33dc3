# -*- test-case-name: tests.test_xmlrpc_transport, tests.test_upstream -*-
"""
Small pieces of twisted.web shared by the HTTP clients (the xmlrpc
transport, the upstream MI client).
"""

from twisted.internet.defer import succeed
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesBody:
    """
    A request body already in memory, written at once (and again if the
    request is repeated).
    """
    __slots__ = ("body", "length")

    def __init__(self, body: bytes):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass
