# -*- test-case-name: tests.test_modules -*-
"""
The C{core} module: threshold events and the load statistic.

 - C{E_CORE_THRESHOLD} (C{source}, C{time} in µs, C{extra}) when an MI
   command (source C{mi}, extra the command) or the delivery of a raise
   (source C{evi}, extra the event) takes longer than C{exec_threshold} ms;
 - C{E_CORE_PKG_THRESHOLD} (C{usage} %, C{threshold}, C{used}, C{size},
   C{pid}) when the process's resident memory passes C{memory_threshold} %
   of C{memory_size};
 - C{load:cpu}: percent of one CPU the process used over the last
   C{check_interval} seconds (what the example script's E_SCRIPT_TCP_LOAD
   check reads).

Each event is raised once per crossing: again only after the measure went
back under its threshold.
"""

import os
import resource

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from evsrv.util.coercers import non_negative, positive
from evsrv.modules import ModuleFactory

THRESHOLD = "E_CORE_THRESHOLD"
PKG_THRESHOLD = "E_CORE_PKG_THRESHOLD"


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class CoreThresholds(Service):
    _log = Logger()

    def __init__(self, context, exec_threshold_ms, memory_threshold, memory_size,
                 check_interval, memory=resident_bytes, cpu=cpu_seconds):
        self.clock = context.reactor
        self.evi = context.evi
        self.exec_threshold = exec_threshold_ms / 1000.0
        self.memory_threshold = memory_threshold
        self.memory_size = memory_size
        self.check_interval = check_interval
        self._memory = memory
        self._cpu = cpu
        self._above = {"mi": False, "evi": False, "memory": False}
        self._load = 0.0
        self._last_cpu = None
        statistics = context.statistics
        statistics.gauge("load", "cpu", lambda: round(self._load))
        statistics.gauge("core", "resident_memory", memory)
        if self.exec_threshold > 0:
            context.controller.observe_commands(self._mi_timed)
            self.evi.observe_reports(self._delivery_timed)
        self._checker = LoopingCall(self.check)
        self._checker.clock = self.clock

    def _crossed(self, kind: str, above: bool) -> bool:
        was = self._above[kind]
        self._above[kind] = above
        return above and not was

    def _mi_timed(self, method, seconds):
        if self._crossed("mi", seconds > self.exec_threshold):
            self._raise(THRESHOLD, {"source": "mi", "time": int(seconds * 1e6), "extra": method})

    def _delivery_timed(self, report, seconds):
        if report.event.startswith("E_CORE_"):
            return  # never measure our own threshold events (no feedback loop)
        if self._crossed("evi", seconds > self.exec_threshold):
            self._raise(THRESHOLD, {"source": "evi", "time": int(seconds * 1e6),
                                    "extra": f"{report.event} to {report.subscribers} "
                                             f"subscriber(s)"})

    def check(self):
        now = self.clock.seconds()
        cpu = self._cpu()
        if self._last_cpu is not None and now > self._last_cpu[0]:
            self._load = 100.0 * (cpu - self._last_cpu[1]) / (now - self._last_cpu[0])
        self._last_cpu = (now, cpu)
        if self.memory_threshold <= 0:
            return
        used = self._memory()
        usage = int(used * 100 / self.memory_size)
        if self._crossed("memory", usage >= self.memory_threshold):
            self._raise(PKG_THRESHOLD, {"usage": usage, "threshold": self.memory_threshold,
                                        "used": used, "size": self.memory_size,
                                        "pid": os.getpid()})

    def _raise(self, name, params):
        self._log.warn("{event}: {params}", event=name, params=params)
        self.evi.raise_event(name, params).addErrback(
            lambda f: self._log.failure("raising {event} failed", f, event=name))

    def startService(self):
        super().startService()
        self._checker.start(self.check_interval, now=True)

    def stopService(self):
        if self._checker.running:
            self._checker.stop()
        return super().stopService()


def _size(text: str) -> int:
    units = {"k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30}
    text = text.strip().lower()
    factor = units.get(text[-1:], 1)
    value = int(text[:-1] if text[-1:] in units else text) * factor
    if value <= 0:
        raise ValueError("must be a positive size such as 512M")
    return value


def _build(settings, context):
    return CoreThresholds(context, settings["exec_threshold"], settings["memory_threshold"],
                          settings["memory_size"], settings["check_interval"])


coreModule = ModuleFactory(
    "core",
    {"exec_threshold": ("500", non_negative(float),
                        "ms an MI command or a delivery may take before E_CORE_THRESHOLD "
                        "(0: off)"),
     "memory_threshold": ("80", non_negative(int),
                          "percent of memory_size before E_CORE_PKG_THRESHOLD (0: off)"),
     "memory_size": ("512M", _size, "the memory budget of the process"),
     "check_interval": ("5", positive(float), "seconds between memory/load checks")},
    _build, "threshold events and the load statistic")
