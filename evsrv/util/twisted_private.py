# -*- test-case-name: tests.test_tap, tests.test_shutdown -*-
"""
The one place evsrv reaches into Twisted's private names, each where
Twisted offers no public hook. Every use says what it needs and why; if a
later Twisted renames something, the failure is here (and in
tests/test_tap.py and tests/test_shutdown.py), not spread over the code.

 - C{twist}'s main and option texts (C{twisted.application.twist._twist},
   C{._options}): the C{evsrv} command is C{twist evsrv} under one name and
   shows twist's own help for the options it passes on. Imported when
   called: importing them at module load would pull in the reactor before
   C{--reactor} could choose one.
 - C{_exitWithSignal} (in C{twisted.application.app} and C{._twist}): on
   SIGTERM, twist and twistd send the signal to the process again so that it
   dies by it; there is no public way to choose the exit status instead
   (see L{evsrv.exitstatus}).
 - twistd's default log observer (C{twisted.scripts.twistd
   ._SomeApplicationRunner} and its logger's C{_getLogObserver}): twistd has
   no log-level option; evsrv wraps the observer twistd would have made in
   a level filter (see L{evsrv.tap}).
"""

import importlib

# (module name, attribute) of every caller of Twisted's re-raise of the signal
EXIT_WITH_SIGNAL = (("twisted.application.app", "_exitWithSignal"),
                    ("twisted.application.twist._twist", "_exitWithSignal"))


def twist_main(argv):
    """
    Run C{twist} with C{argv} (C{argv[0]} is the program name).
    """
    from twisted.application.twist._twist import Twist  # late: see the module docstring
    Twist.main(argv)


def twist_option_help(name: str) -> str:
    """
    The help text twist gives its option C{name} (e.g. C{"log_level"}).
    """
    from twisted.application.twist._options import TwistOptions  # late: as twist_main
    return getattr(TwistOptions, f"opt_{name}").__doc__


def replace_exit_with_signal(make_replacement) -> list:
    """
    Replace Twisted's re-raise of the stopping signal, in each module that
    calls it, by C{make_replacement(original)}; a replacement already made
    (marked C{_evsrv_original}) is kept.

    @return: the names this Twisted does not have (nothing replaced there).
    """
    missing = []
    for module_name, attribute in EXIT_WITH_SIGNAL:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        original = getattr(module, attribute, None)
        if original is None:
            missing.append(f"{module_name}.{attribute}")
            continue
        if getattr(original, "_evsrv_original", None) is not None:
            continue  # already ours
        replacement = make_replacement(original)
        replacement._evsrv_original = original
        setattr(module, attribute, replacement)
    return missing


def twistd_default_log_observer(options):
    """
    The log observer twistd makes from its parsed C{options} when no
    C{--logger} is given (C{--logfile}, C{--syslog}, or stdout with C{-n}).
    """
    from twisted.scripts.twistd import _SomeApplicationRunner  # only under twistd
    return _SomeApplicationRunner.loggerFactory(options)._getLogObserver()
