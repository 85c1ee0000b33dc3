# -*- test-case-name: tests.test_tap -*-
"""
C{twistd evsrv} / C{twist evsrv}: command-line options and service creation.
"""

import sys

from twisted.python import usage

from evsrv.config import ConfigError, read_config
from evsrv.server import EvsrvService, module_factories, transport_factories


class Options(usage.Options):
    synopsis = "[-c FILE]"
    longdesc = ("OpenSIPS-compatible event notification server. Without -c it runs the "
                "embedded default: MI on udp:127.0.0.1:8080 and /tmp/evsrv_mi.sock, "
                "every built-in transport enabled.")
    optParameters = [
        ["config", "c", None, "The ini file (default: the embedded configuration)."],
    ]
    optFlags = [
        ["ignore-store", None, "If the subscription store cannot be read, rename it aside "
                               "and start with no stored subscriptions (otherwise start-up "
                               "stops)."],
    ]


def makeService(options, reactor=None):
    """
    Read the configuration and open the MI sockets; a problem with either
    ends start-up with one line on stderr and exit status 1.
    """
    if reactor is None:
        from twisted.internet import reactor
    try:
        config = read_config(options["config"], transport_factories(), module_factories())
        service = EvsrvService(config, reactor, ignore_store=bool(options["ignore-store"]))
        service.listen()
    except ConfigError as e:
        sys.stderr.write(f"evsrv: {e}\n")
        raise SystemExit(1) from None
    return service
