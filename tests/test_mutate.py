"""
tools/mutate.py (issue 16): the mutants it makes, and its list of equivalent
ones. (Running them is `make mutate`, not part of the suite.)
"""

import ast
import importlib.util

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("mutate", ROOT / "tools" / "mutate.py")
mutate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutate)

SOURCE = '''\
"""A module docstring."""
LIMIT = 10


def f(a, b=0):
    """Not mutated either."""
    if a < b and not a:
        a += 1
    self._log.info("message text %s", "x")
    return a + b == "s"


class C:
    __slots__ = ("x",)

    def __repr__(self):
        return "<C %d>" % (1 + 2)
'''


def test_the_mutants_of_a_module_each_one_change():
    mutants = mutate.mutants_of("m.py", SOURCE)
    changed = [(m.line, m.description, m.apply(SOURCE).splitlines()[m.line - 1].strip())
               for m in mutants]
    assert changed == [
        (2, "statement deleted", "pass"),
        (2, "`10` -> `11`", "LIMIT = 11"),
        (5, "`0` -> `1`", "def f(a, b=1):"),
        (7, "`<` -> `<=`", "if a <= b and not a:"),
        (7, "`and` -> `or`", "if a < b or not a:"),
        (7, "`not` removed", "if a < b and a:"),
        (8, "statement deleted", "pass"),
        (8, "`+=` -> `-=`", "a -= 1"),
        (8, "`1` -> `0`", "a += 0"),
        (9, "statement deleted", "pass"),  # a log call may go; its text is not mutated
        (10, "return value -> None", "return None"),
        (10, "`+` -> `-`", "return a - b == \"s\""),
        (10, "`==` -> `!=`", "return a + b != \"s\""),
        (10, "`'s'` -> `''`", "return a + b == ''"),
    ]
    for m in mutants:
        ast.parse(m.apply(SOURCE))
        # everything else is left as it was, comments and all
        assert [line for n, line in enumerate(m.apply(SOURCE).splitlines(), 1)
                if n != m.line] == [line for n, line in enumerate(SOURCE.splitlines(), 1)
                                    if n != m.line]


def test_repeated_lines_and_changes_are_told_apart():
    source = "a = 1\nif a < 0 or a < 0:\n    a = 1\n"
    keys = [m.key() for m in mutate.mutants_of("m.py", source)]
    assert ("m.py", "a = 1 (#1)", "`1` -> `0`") in keys
    assert ("m.py", "a = 1 (#2)", "`1` -> `0`") in keys
    assert ("m.py", "if a < 0 or a < 0:", "`<` -> `<=`") in keys
    assert ("m.py", "if a < 0 or a < 0:", "`<` -> `<=` (#2 on the line)") in keys
    assert len(keys) == len(set(keys))


def test_the_equivalent_list_is_well_formed():
    known = mutate.read_equivalent()
    assert known, "tools/mutate-equivalent.txt is empty"
    for (path, text, mutation), reason in known.items():
        assert (ROOT / path).is_file(), path
        assert text and mutation and reason.strip(), (path, text)


@pytest.mark.parametrize("path, expected", [
    ("evsrv/evi/subscriptions.py", ["tests/test_subscriptions.py", "tests/test_evi.py"]),
    ("evsrv/evi/expiry.py", ["tests/test_subscriptions.py"]),
])
def test_each_module_runs_its_own_tests(path, expected):
    assert mutate.tests_for(path) == expected
