# -*- test-case-name: tests.test_tap -*-
"""
C{evsrv} (and C{python -m evsrv}): the console script of the wheel,
C{twist evsrv} under one name.

Twist's own options (C{--log-format}, C{--log-level}, C{--log-file},
C{--reactor}) may be given anywhere; every other argument goes to the evsrv
plugin (C{-c FILE}, C{--ignore-store}, C{--print-config}, C{--version}).
C{evsrv --help} lists them all. The server runs in the foreground, logging
to stdout, as a service manager (systemd) wants it. It exits with 0, or 75
(notifications left undelivered) or 74 (subscriptions not saved) after a
graceful shutdown (L{evsrv.exitstatus}); 1 when it cannot start, 64 on a
usage error (as twist).
"""

import sys

from twisted.logger import InvalidLogLevelError, LogLevel
from twisted.python import usage

from evsrv import exitstatus, tap
from evsrv.util.twisted_private import twist_main, twist_option_help

# twist's options that take a value (they may be written --opt=VALUE or --opt VALUE)
_TWIST_OPTIONS = ("--log-format", "--log-level", "--log-file", "--reactor")

EX_USAGE = 64


def split_arguments(argv):
    """
    @return: (twist arguments, evsrv plugin arguments).
    """
    twist, plugin = [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        name = arg.split("=", 1)[0]
        if name in _TWIST_OPTIONS:
            twist.append(arg)
            if "=" not in arg and args:
                twist.append(args.pop(0))
        elif arg == "--":
            plugin.extend(args)
            break
        else:
            plugin.append(arg)
    return twist, plugin


def _twist_option(name):
    """
    A stand-in for twist's option C{name}: same help text (twist's own);
    twist itself takes the value later, and checks it then.
    """
    def option(self, value):
        self.twist_options[name] = value
    option.__doc__ = twist_option_help(name)
    return option


class CommandOptions(tap.Options):
    """
    The whole command line of C{evsrv}: the plugin's options and twist's. It
    is parsed once up front, so that C{--help} shows every option, and so
    that a mistake is reported against this command, not twist's.
    """
    synopsis = "Usage: evsrv [options]"
    longdesc = (tap.Options.longdesc + " evsrv is `twist evsrv` under one name; the "
                "--log-* and --reactor options are twist's.")

    def __init__(self):
        super().__init__()
        self.twist_options = {}

    opt_log_level = _twist_option("log_level")
    opt_log_format = _twist_option("log_format")
    opt_log_file = _twist_option("log_file")
    opt_reactor = _twist_option("reactor")

    def postOptions(self):
        # checked here, where a mistake can be shown with evsrv's own usage;
        # --log-file and --reactor are left to twist (checking them would
        # open the file or install the reactor)
        if "log_level" in self.twist_options:
            try:
                LogLevel.levelWithName(self.twist_options["log_level"])
            except InvalidLogLevelError:
                raise usage.UsageError(
                    f"Invalid log level: {self.twist_options['log_level']}") from None
        if self.twist_options.get("log_format", "text").lower() not in ("text", "json"):
            raise usage.UsageError(f"Invalid log format: {self.twist_options['log_format']}")
        super().postOptions()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    options = CommandOptions()
    try:
        options.parseOptions(argv)  # --help, --version and --print-config end here
    except usage.UsageError as e:
        sys.stderr.write(f"Error: {e}\n\n{options}\n")
        raise SystemExit(EX_USAGE) from None

    twist, plugin = split_arguments(argv)
    # Stopped by SIGTERM/SIGINT, Twist.main ends with the shutdown's exit
    # status itself (see evsrv.exitstatus); stopped otherwise (reactor.stop()
    # from code), it returns and the status is applied here.
    exitstatus.install()
    twist_main(["evsrv", *twist, "evsrv", *plugin])
    status = exitstatus.recorded()
    if status:
        raise SystemExit(status)
