# -*- test-case-name: tests.test_tap -*-
"""
C{twistd evsrv} / C{twist evsrv}: command-line options and service creation.
"""

import platform
import sys
from importlib import resources

from twisted import __version__ as twisted_version
from twisted.application.app import ServerOptions
from twisted.logger import (FilteringLogObserver, ILogObserver, LegacyLogObserverWrapper, LogLevel,
                            LogLevelFilterPredicate)
from twisted.python import usage

from evsrv import __version__
from evsrv.config import ConfigError, read_config
from evsrv.server import create_server_from_config, module_factories, transport_factories
from evsrv.util.twisted_private import twistd_default_log_observer


def production_config() -> str:
    """
    The production ini shipped in the wheel (C{evsrv/data/production.ini}).
    """
    return resources.files("evsrv").joinpath("data/production.ini").read_text(encoding="utf-8")


def version_text() -> str:
    """
    What C{--version} prints: evsrv's version, then what it runs on.
    """
    return (f"evsrv {__version__}\n"
            f"Twisted {twisted_version}, Python {platform.python_version()}\n")


def _help(method):
    """
    usage.Options prints an option's docstring with its indentation: keep
    the words only, so that it wraps like twist's.
    """
    method.__doc__ = " ".join(method.__doc__.split())
    return method


class Options(usage.Options):
    synopsis = "[-c FILE] [--ignore-store]"
    longdesc = ("OpenSIPS-compatible event notification server. Without -c it runs the "
                "embedded default, for trying it out: MI on udp:127.0.0.1:8080 and "
                "/tmp/evsrv_mi.sock, HTTP on 127.0.0.1:8888, every built-in transport "
                "enabled. --print-config prints the production ini instead (what "
                "etc/evsrv.service reads from /etc/evsrv/evsrv.ini).")
    optParameters = [
        ["config", "c", None, "The ini file (default: the embedded configuration)."],
    ]
    optFlags = [
        ["ignore-store", None, "If the subscription store cannot be read, rename it aside "
                               "and start with no stored subscriptions (otherwise start-up "
                               "stops)."],
    ]

    @_help
    def opt_print_config(self):
        """
        Print the production configuration shipped with evsrv (every listener on
        loopback, the UNIX MI socket in /run/evsrv, the subscriptions in
        /var/lib/evsrv, no routing script) and exit; it is not the embedded
        default used without -c.
        """
        sys.stdout.write(production_config())
        sys.stdout.flush()
        raise SystemExit(0)

    @_help
    def opt_version(self):
        """
        Print evsrv's version (and Twisted's and Python's) and exit.
        """
        sys.stdout.write(version_text())
        sys.stdout.flush()
        raise SystemExit(0)

    def postOptions(self):
        _filter_twistd_log(self.parent)


# twist filters the log below --log-level (default info); twistd has no such
# option and prints every event, debug included (one line per failed send,
# one per HTTP request). Its --logger option names a factory of the log
# observer, resolved after all options are parsed and called when logging
# starts; unless the user gave one, evsrv names its own, which wraps the
# observer twistd would have made (--logfile, --syslog, stdout with -n) in
# the same filter as twist's default. The factory takes no arguments, so the
# parsed options wait here.
_twistd = {"options": None}


def _filter_twistd_log(parent):
    # twistd's options (twist has its own)
    if not isinstance(parent, ServerOptions) or parent.get("logger"):
        return
    _twistd["options"] = parent
    parent["logger"] = f"{__name__}.twistd_log_observer"


def twistd_log_observer():
    """
    twistd's own log observer (C{--logfile}, C{--syslog} or stdout), showing
    C{info} and above as C{twist} does by default.
    """
    # what twistd's AppLogger.start would use without --logger;
    # tests/test_tap.py fails if a later Twisted changes it
    observer = twistd_default_log_observer(_twistd["options"])
    if not ILogObserver.providedBy(observer):
        observer = LegacyLogObserverWrapper(observer)  # --syslog's is a legacy one
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(LogLevel.info)])


def makeService(options, reactor=None):
    """
    Read the configuration and open the MI sockets; a problem with either
    ends start-up with one line on stderr and exit status 1.
    """
    if reactor is None:
        from twisted.internet import reactor  # the global one: installed only when needed
    try:
        config = read_config(options["config"], transport_factories(), module_factories())
        service = create_server_from_config(config, reactor,
                                            ignore_store=bool(options["ignore-store"]))
        service.listen()
    except ConfigError as e:
        sys.stderr.write(f"evsrv: {e}\n")
        raise SystemExit(1) from None
    return service
