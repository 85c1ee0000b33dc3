"""
The transport contract (L{evsrv.interfaces}): every built-in transport
declares the capabilities it has and really provides them (verifyObject),
and a plugin written before the capability interfaces keeps working, with
one warning at start-up.
"""

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface import providedBy
from zope.interface.verify import verifyObject

from evsrv.config import parse_config
from evsrv.evi.subscriptions import Destination
from evsrv.interfaces import (CAPABILITIES, DestinationRefused, IAdmission, IEventTransport,
                              IFailFast, IPeerHosts, declare_legacy_capabilities)
from evsrv.server import EvsrvService, module_factories, transport_factories
from evsrv.transports import TransportContext
from evsrv.transports.factories import TransportFactory
from evsrv.util.statistics import Statistics
from tests.conftest import BASE_INI

BUILTINS = sorted(name for name, f in transport_factories().items() if f.builtin)


def build(name, tmp_path):
    factory = transport_factories()[name]
    settings = {key: coerce(default) for key, (default, coerce, _) in factory.options.items()}
    return factory.build(settings, TransportContext(Clock(), Statistics(), tmp_path))


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_transports_provide_what_they_declare(name, tmp_path):
    transport = build(name, tmp_path)
    declared = list(providedBy(transport))
    assert IEventTransport in declared
    for interface in declared:
        verifyObject(interface, transport)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_transports_declare_every_capability_they_have(name, tmp_path):
    # nothing found by method name only: the built-ins are not legacy plugins
    transport = build(name, tmp_path)
    assert declare_legacy_capabilities(transport) == []
    for interface, attribute in CAPABILITIES:
        assert interface.providedBy(transport) == hasattr(transport, attribute), \
            (name, interface.__name__)


def test_every_network_transport_tells_the_policy_where_it_sends(tmp_path):
    # a transport the [policy] cannot check would be a hole in it
    for name in BUILTINS:
        assert IPeerHosts.providedBy(build(name, tmp_path)), name


def test_fail_fast_is_declared_by_tcp_and_jsonrpc_only(tmp_path):
    assert [n for n in BUILTINS if IFailFast.providedBy(build(n, tmp_path))] == \
        ["jsonrpc", "tcp"]
    assert IAdmission.implementedBy(type(build("rabbitmq", tmp_path)))


class LegacyTransport:
    """
    A third-party transport of the old kind: methods, no declarations.
    """
    name = "legacy"
    schemes = ("legacy",)

    def parse(self, scheme, rest):
        return Destination(f"legacy:{rest}", rest)

    @staticmethod
    def peer_hosts(destination):
        return (destination.address,)

    def deliver(self, notification, subscriptions):
        raise AssertionError("not used")


def test_a_legacy_transport_keeps_working_with_one_warning(tmp_path):
    factories = dict(transport_factories())
    factories["legacy"] = TransportFactory("legacy", ("legacy",), {},
                                           lambda settings, context: LegacyTransport(),
                                           builtin=False)
    text = BASE_INI + "[transports]\nenabled = udp, legacy\n[store]\nbackend = none\n"
    config = parse_config(text, "<test>", tmp_path, factories, module_factories())
    warnings = []

    def observe(event):
        if event.get("log_level") == LogLevel.warn and event.get("transport") == "legacy":
            warnings.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    try:
        service = EvsrvService(config, Clock(), factories=factories)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert warnings == ["transport legacy has the methods of IPeerHosts without declaring "
                        "them; declare them with @implementer(...) (from evsrv.interfaces)"]
    transport = service.transports["legacy"]
    assert IPeerHosts.providedBy(transport)
    assert not IPeerHosts.implementedBy(LegacyTransport)  # declared on the instance only
    # and the [policy] checks it: its default deny list refuses the metadata address
    results = []
    service.evi.parse_socket("legacy:169.254.169.254").addBoth(results.append)
    assert results[0].check(DestinationRefused), results
    service.evi.parse_socket("legacy:192.0.2.1").addBoth(results.append)
    assert results[1][0] is transport
