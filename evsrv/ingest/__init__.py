"""
OpenSIPS proxies as publishers: evsrv takes the events a proxy raises and
raises them again to its own subscribers.

 - the ingest (C{[ingest]}): listeners that receive event_datagram
   (C{udp}, C{unix}) and event_stream (C{tcp}, reliable mode answered)
   notifications, and the rules that say which are raised
   (L{controller}, L{listeners});
 - the upstreams (C{[upstream:NAME]}): evsrv keeps its ingest address
   subscribed at each proxy's MI (L{upstream}, through the non-blocking MI
   clients of L{miclient}).

L{build_ingest} makes both from the configuration; the server listens
(L{IngestService.listen}) with its MI, starts them with itself, and
unsubscribes early in a graceful stop (L{UpstreamService.unsubscribe}).
"""

from evsrv.ingest.controller import IngestController, ingest_params
from evsrv.ingest.listeners import IngestListenError, IngestService
from evsrv.ingest.miclient import (DatagramMIClient, HTTPMIClient, MIErrorReply, MIUnavailable,
                                   mi_client)
from evsrv.ingest.upstream import STATES, Upstream, UpstreamService
from evsrv.util.statistics import Statistics

__all__ = ["IngestController", "IngestService", "IngestListenError", "Upstream",
           "UpstreamService", "STATES", "DatagramMIClient", "HTTPMIClient", "MIErrorReply",
           "MIUnavailable", "mi_client", "ingest_params", "build_ingest"]


def build_ingest(ingest, upstreams, reactor, evi, statistics):
    """
    The ingest listeners and the upstreams of a configuration.

    @param ingest: the C{[ingest]} settings (L{evsrv.config.IngestConfig}).
    @param upstreams: name -> C{[upstream:NAME]} settings
        (L{evsrv.config.UpstreamConfig}), in the file's order.
    @return: C{(IngestService, UpstreamService)}; nothing listens yet.
    """
    listening = ingest.udp or ingest.unix or ingest.tcp
    # a server without ingest listeners shows no ingest statistics
    controller = IngestController(
        evi, reactor, statistics if listening else Statistics(), events=ingest.events, allow=ingest.allow,
        max_size=ingest.max_size, max_rate=ingest.max_rate, max_events=ingest.max_events,
        loop_window=ingest.loop_window)
    service = IngestService(controller, reactor, udp=ingest.udp, unix=ingest.unix,
                            unix_mode=ingest.unix_mode, tcp=ingest.tcp,
                            max_connections=ingest.max_connections)
    made = []
    for name, settings in upstreams.items():
        # published now, so that local clients can subscribe before the
        # proxy first raises them
        for event in settings.events:
            evi.publish(event)
        client = mi_client(reactor, settings.mi, settings.timeout)
        made.append(Upstream(name, client, settings.events,
                             settings.socket or _bound_socket(service, settings.kind),
                             reactor, statistics, expire=settings.expire,
                             check_interval=settings.check_interval,
                             retry_min=settings.retry_min, retry_max=settings.retry_max))
    return service, UpstreamService(made, reactor)


def _bound_socket(service, kind):
    """
    The socket of the first C{kind} ingest listener as bound (its real port
    when the ini says port 0), known once the service listens.
    """
    def socket():
        address = service.address(kind)
        if address is None:
            raise RuntimeError(f"no [ingest] {kind} listener")
        _, host, port = address
        return f"unix:{host}" if kind == "unix" else f"{kind}:{host}:{port}"
    return socket
