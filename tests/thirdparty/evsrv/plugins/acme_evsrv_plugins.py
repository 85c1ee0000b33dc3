"""
A third-party evsrv plugin module, as another distribution would ship it:
this directory has no __init__.py, and evsrv finds it through
pluginPackagePaths once tests/thirdparty is on sys.path.

 - transport `acme`: `acme:NAME` sockets; each notification is appended as a
   line to <directory>/<NAME>.log (directory from [transport:acme]);
 - module `acme`: publishes E_ACME_HELLO and raises it when the server
   starts, with the greeting from [module:acme].
"""

from pathlib import Path

from twisted.application.service import Service
from zope.interface import implementer

from evsrv.evi.notification import Outcome
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import BadSocket, IEventTransport
from evsrv.modules import ModuleFactory
from evsrv.transports.factories import TransportFactory


@implementer(IEventTransport)
class AcmeTransport:
    name = "acme"
    schemes = ("acme",)

    def __init__(self, directory: Path):
        self.directory = directory

    def parse(self, scheme, rest):
        if not rest.isidentifier():
            raise BadSocket(f"acme: {rest!r} is not a plain name")
        return Destination(f"acme:{rest}", self.directory / f"{rest}.log")

    def deliver(self, notification, subscriptions):
        outcome = Outcome()
        line = notification.payload("json") + b"\n"
        for sub in subscriptions:
            with open(sub.address, "ab") as f:
                f.write(line)
            sub.sent += 1
            outcome.delivered += 1
        return outcome


class AcmeModule(Service):
    def __init__(self, context, greeting):
        self.evi = context.evi
        self.reactor = context.reactor
        self.greeting = greeting
        self.evi.publish("E_ACME_HELLO")

    def startService(self):
        super().startService()
        # once the whole server (and the script's startup route) is up
        self.reactor.callWhenRunning(self.evi.raise_event, "E_ACME_HELLO",
                                     {"greeting": self.greeting})


def _directory(text):
    path = Path(text)
    if not path.is_dir():
        raise ValueError("not a directory")
    return path


acmeTransport = TransportFactory(
    "acme", ("acme",), {"directory": (".", _directory, "where the .log files go")},
    lambda settings, context: AcmeTransport(settings["directory"]), builtin=False)

acmeModule = ModuleFactory(
    "acme", {"greeting": ("hello", str, "what E_ACME_HELLO says")},
    lambda settings, context: AcmeModule(context, settings["greeting"]))
