"""
C{evsrv}: the console script of the wheel, C{twist evsrv} under one name.

Twist's own options (C{--log-format}, C{--log-level}, C{--log-file},
C{--reactor}) may be given anywhere; every other argument goes to the evsrv
plugin (C{-c FILE}, C{--help}). The server runs in the foreground, logging
to stdout, as a service manager (systemd) wants it. It exits with 0, or 75
(notifications left undelivered) or 74 (subscriptions not saved) after a
graceful shutdown (L{evsrv.exitstatus}); 1 when it cannot start.
"""

import sys

# twist's options that take a value (they may be written --opt=VALUE or --opt VALUE)
_TWIST_OPTIONS = ("--log-format", "--log-level", "--log-file", "--reactor")


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


def main(argv=None):
    from twisted.application.twist._twist import Twist

    from evsrv import exitstatus
    twist, plugin = split_arguments(sys.argv[1:] if argv is None else argv)
    # Stopped by SIGTERM/SIGINT, Twist.main ends with the shutdown's exit
    # status itself (see evsrv.exitstatus); stopped otherwise (reactor.stop()
    # from code), it returns and the status is applied here.
    exitstatus.install()
    Twist.main(["evsrv", *twist, "evsrv", *plugin])
    status = exitstatus.recorded()
    if status:
        raise SystemExit(status)
