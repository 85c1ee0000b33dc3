"""
C{evsrv}: the console script of the wheel, C{twist evsrv} under one name.

Twist's own options (C{--log-format}, C{--log-level}, C{--log-file},
C{--reactor}) may be given anywhere; every other argument goes to the evsrv
plugin (C{-c FILE}, C{--help}). The server runs in the foreground, logging
to stdout, as a service manager (systemd) wants it.
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
    twist, plugin = split_arguments(sys.argv[1:] if argv is None else argv)
    Twist.main(["evsrv", *twist, "evsrv", *plugin])
