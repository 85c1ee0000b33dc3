"""
The MI controller (L{evsrv.mi.controller}): a command that answers later is
answered within C{request_timeout} whatever it waits for.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from evsrv.mi.controller import Command, MIController, MIError
from evsrv.util.statistics import Statistics


def controller_with(handler, timeout=10.0):
    clock = Clock()
    controller = MIController(Statistics(), clock=clock, request_timeout=timeout)
    controller.register(Command("slow", [[]], handler))
    return controller, clock


def outcome(d):
    results = []
    d.addBoth(results.append)
    return results


def test_a_command_that_never_answers_times_out(logged_errors):
    pending = Deferred()
    controller, clock = controller_with(lambda call: pending)
    results = outcome(controller.execute("slow", None))
    clock.advance(9.9)
    assert results == []
    clock.advance(0.1)
    error = results[0].value
    assert isinstance(error, MIError)
    assert (error.code, error.message) == (500, "Request timed out")
    assert error.data == "slow did not finish within 10 s; its outcome is unknown, repeat it"
    assert controller.statistics.value("mi:requests_timed_out") == 1
    # the command's late result goes nowhere, and nothing is left behind
    pending.callback("late")
    assert len(results) == 1 and clock.getDelayedCalls() == []


def test_a_late_failure_after_the_timeout_is_not_an_unhandled_error(logged_errors):
    pending = Deferred()
    controller, clock = controller_with(lambda call: pending)
    results = outcome(controller.execute("slow", None))
    clock.advance(10)
    pending.errback(MIError(400, "Bad parameter value"))
    assert len(results) == 1


def test_a_command_that_answers_in_time_is_not_touched():
    pending = Deferred()
    controller, clock = controller_with(lambda call: pending)
    results = outcome(controller.execute("slow", None))
    clock.advance(5)
    pending.callback("OK")
    assert results == ["OK"] and clock.getDelayedCalls() == []
    failing = Deferred()
    controller.commands["slow"].handler = lambda call: failing
    results = outcome(controller.execute("slow", None))
    failing.errback(MIError(404, "Not found"))
    assert results[0].value.code == 404 and clock.getDelayedCalls() == []


def test_synchronous_commands_set_no_timer():
    controller, clock = controller_with(lambda call: "OK")
    assert outcome(controller.execute("slow", None)) == ["OK"]
    assert clock.getDelayedCalls() == []
