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


def test_without_a_request_timeout_a_late_answer_waits_and_sets_no_timer():
    clock = Clock()
    controller = MIController(Statistics(), clock=clock, request_timeout=None)
    pending = Deferred()
    controller.register(Command("slow", [[]], lambda call: pending))
    results = outcome(controller.execute("slow", None))
    assert results == [] and clock.getDelayedCalls() == []
    clock.advance(3600)
    pending.callback("OK")
    assert results == ["OK"]


def test_the_timeout_is_logged_and_has_a_text_dialect_answer(logged_errors):
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        controller, clock = controller_with(lambda call: Deferred(), timeout=2.5)
        results = outcome(controller.execute("slow", None))
        clock.advance(2.5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert results[0].value.legacy == (500, "request timed out")
    assert [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn] == [
        "MI command slow still running after 2.5 s: answered as timed out"]


def test_command_timing_observers_see_every_command_and_how_long_it_took():
    pending = Deferred()
    controller, clock = controller_with(lambda call: pending)
    controller.register(Command("quick", [[]], lambda call: "OK"))
    timings = []
    controller.observe_commands(lambda method, seconds: timings.append((method, seconds)))
    results = outcome(controller.execute("slow", None))
    clock.advance(1.5)
    pending.callback("late OK")
    assert results == ["late OK"]
    assert outcome(controller.execute("quick", None)) == ["OK"]
    assert timings == [("slow", 1.5), ("quick", 0.0)]


def test_calls_and_errors_are_counted_per_command(logged_errors):
    answers = iter(["OK", MIError(400, "Bad"), "OK"])

    def handler(call):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer
    controller, clock = controller_with(handler)
    results = [outcome(controller.execute("slow", None))[0] for _ in range(3)]
    assert results[0] == results[2] == "OK" and results[1].value.code == 400
    assert outcome(controller.execute("nope", None))[0].value.code == -32601
    command = controller.commands["slow"]
    assert (command.calls, command.errors) == (3, 1)
    assert controller.statistics.value("mi:requests") == 4
    assert controller.statistics.value("mi:errors") == 2


def test_a_command_that_raises_is_an_internal_error_and_logged(logged_errors):
    def broken(call):
        raise RuntimeError("x" * 300)
    controller, clock = controller_with(broken)
    error = outcome(controller.execute("slow", None))[0].value
    assert (error.code, error.message, error.legacy) == (500, "Internal error",
                                                         (500, "command failed"))
    assert error.data == ("slow: " + "x" * 300)[:200]
    assert len(logged_errors.flush(RuntimeError)) == 1


def test_a_text_request_of_a_command_without_input_ignores_its_lines():
    seen = []
    controller, clock = controller_with(lambda call: "OK")
    controller.register(Command("listing", [[]], lambda call: seen.append(call.params) or "OK",
                                text_no_input=True))
    assert outcome(controller.execute("listing", ["stray"], "text")) == ["OK"]
    assert seen == [{}]
    # the JSON dialect still checks what it is given
    assert outcome(controller.execute("listing", ["stray"]))[0].value.code == -32602


def test_without_a_clock_nothing_is_timed():
    controller = MIController(Statistics())
    controller.register(Command("quick", [[]], lambda call: "OK"))
    timings = []
    controller.observe_commands(lambda method, seconds: timings.append(method))
    assert outcome(controller.execute("quick", None)) == ["OK"]
    assert timings == []
