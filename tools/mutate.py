#!/usr/bin/env python3
"""
Mutation testing for evsrv (issue 16: tests that fail when the code is wrong).

For each source module given (files, or directories of them), every mutant
(one small change of the code, below) is written into a private copy of the
working tree under /tmp -- the tree itself is never modified -- and the
module's own tests (L{TESTS}, or the defaults of L{tests_for}) run against
it with C{-x -q -p no:randomly} and a timeout. A mutant is I{killed} when a
test fails (or the tests cannot even be collected), I{timeout} when they do
not finish in time, I{survived} when they all pass: then no test notices
that the code is wrong there.

Mutations (from the stdlib C{ast}, applied as minimal text edits so that the
rest of the file, comments included, is unchanged):

  - comparisons: C{<} <-> C{<=}, C{>} <-> C{>=}, C{==} <-> C{!=},
    C{is} <-> C{is not}, C{in} <-> C{not in};
  - arithmetic: C{+} <-> C{-} (also C{+=} <-> C{-=});
  - boolean: C{and} <-> C{or} (every operator of the expression at once);
  - C{not} removed;
  - constants: C{0} <-> C{1}, another int C{n} -> C{n+1}, a float C{x} ->
    C{x+1}, C{True} <-> C{False}, a string or bytes C{"x"} -> C{""} (and
    C{""} -> C{"x"});
  - statement deleted (an expression -- a call --, an assignment or an
    augmented assignment becomes C{pass});
  - return value replaced by C{None}.

Not mutated: docstrings, annotations, f-strings, the text of log calls
(C{self._log.info("...")}: their deletion still is a mutant), C{__slots__}
and C{__all__}, C{__repr__} bodies, and lines marked C{# pragma: no mutate}.

Before its mutants, each module's tests run once on the unmodified copy:
they must pass, and they record which test runs which line of the module
(a C{sys.settrace} tracer limited to that file), so a mutant runs only the
tests that execute its line, and a mutant on a line that no test executes
survives without running anything ("not covered").

Equivalent mutants (no observable difference) are listed in
C{tools/mutate-equivalent.txt} with a reason each, one per line::

    path | source line, stripped | mutation | reason

(the line's text, not its number, so that the entry survives edits above
it; the mutation as printed in the report, e.g. C{`<` -> `<=`}). They are
shown but not counted. The score is (killed + timeout) / (mutants -
equivalent).

Usage::

    tools/mutate.py evsrv/evi/subscriptions.py          # one module
    tools/mutate.py -j 2 evsrv/evi evsrv/mi             # directories
    tools/mutate.py --list evsrv/encoding.py            # the mutants, not run
    tools/mutate.py --list --keys evsrv/encoding.py     # as lines of the allow-list
    tools/mutate.py --show 12 evsrv/encoding.py         # mutant 12 as a diff
    tools/mutate.py --only 12,13 evsrv/encoding.py      # run just these
    tools/mutate.py --tests tests/test_x.py evsrv/y.py  # other tests

Exit status: 0 when every module reaches C{--min-score} (default 0: always
0 unless a module's own tests fail unmodified), 1 otherwise.
"""

import argparse
import ast
import difflib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = ROOT / "tools" / "mutate-equivalent.txt"
MAX_JOBS = 2  # a shared 2-core machine

# Module -> its own tests. A module not listed gets the defaults of
# tests_for(): its "test-case-name" header and tests/test_<name>.py,
# tests/test_<package>_<name>.py when they exist. Both the old and the new
# place of a moved module may be listed.
TESTS = {
    "evsrv/evi/subscriptions.py": ["tests/test_subscriptions.py", "tests/test_evi.py"],
    "evsrv/evi/interface.py": ["tests/test_evi.py", "tests/test_subscriptions.py",
                               "tests/test_persistence.py"],  # its journal and limits
    "evsrv/evi/expiry.py": ["tests/test_subscriptions.py"],
    "evsrv/evi/events.py": ["tests/test_evi.py"],
    "evsrv/evi/notification.py": ["tests/test_evi.py"],
    "evsrv/evi/params.py": ["tests/test_evi.py", "tests/test_vectors.py"],
    "evsrv/evi/policy.py": ["tests/test_policy.py"],
    "evsrv/policy.py": ["tests/test_policy.py"],
    "evsrv/encoding.py": ["tests/test_vectors.py", "tests/test_flatstore_transport.py"],
    "evsrv/mi/commands.py": ["tests/test_mi_commands.py", "tests/test_vectors.py",
                             "tests/test_mi_malformed.py"],
    "evsrv/mi/controller.py": ["tests/test_mi_controller.py", "tests/test_mi_commands.py",
                               "tests/test_mi_malformed.py"],
    "evsrv/mi/dispatch.py": ["tests/test_mi_malformed.py", "tests/test_vectors.py",
                             "tests/test_mi_acl.py"],
    "evsrv/mi/jsonrpc.py": ["tests/test_mi_malformed.py", "tests/test_vectors.py"],
    "evsrv/mi/text.py": ["tests/test_mi_malformed.py", "tests/test_vectors.py"],
    "evsrv/mi/protocol.py": ["tests/test_mi_acl.py", "tests/test_mi_malformed.py"],
}

PYTEST_ARGS = ["-x", "-q", "-p", "no:randomly", "--no-header", "-o", "console_output_style=classic"]
try:
    import hypothesis  # noqa: F401 (the property tests: the same examples for every mutant)
    PYTEST_ARGS.append("--hypothesis-seed=0")
except ImportError:
    pass
IGNORED = {".git", ".venv", ".hypothesis", "__pycache__", "build", "dist", "var",
           ".pytest_cache"}
LOG_METHODS = {"debug", "info", "warn", "warning", "error", "failure", "critical"}
PRAGMA = "pragma: no mutate"


# -- mutants ------------------------------------------------------------------

class Mutant:
    """
    One change of one module: C{edits} are C{((row, col), (row, col), text)}
    with character columns, applied to the original text.
    """

    def __init__(self, path, index, line, end_line, description, edits, text):
        self.path = path
        self.index = index
        self.line = line
        self.end_line = end_line
        self.description = description
        self.edits = edits
        self.text = text  # the stripped source line it starts on
        self.status = None  # killed, timeout, survived, uncovered, equivalent
        self.reason = None
        self.seconds = 0.0

    def key(self):
        return (self.path, self.text, self.description)

    def apply(self, source: str) -> str:
        lines = source.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        out = source
        for start, end, text in sorted(self.edits, reverse=True):
            a = offsets[start[0] - 1] + start[1]
            b = offsets[end[0] - 1] + end[1]
            out = out[:a] + text + out[b:]
        return out

    def label(self):
        return f"{self.path}:{self.line}: {self.description}  [{self.text[:70]}]"


_CMP = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="),
        ast.GtE: (">=", ">"), ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="),
        ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is"),
        ast.In: ("in", "not in"), ast.NotIn: ("not in", "in")}
_ARITH = {ast.Add: ("+", "-"), ast.Sub: ("-", "+")}
_BOOL = {ast.And: ("and", "or"), ast.Or: ("or", "and")}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


class _Generator(ast.NodeVisitor):

    def __init__(self, path, source):
        self.path = path
        self.source = source
        self.lines = source.splitlines()
        self.blines = [line.encode("utf-8", "surrogatepass") for line in self.lines]
        self.tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                       if t.type in (tokenize.OP, tokenize.NAME)
                       and t.string not in ("(", ")", "[", "]", "{", "}")]
        self.mutants = []
        self._skip = set()  # ids of nodes not to mutate (docstrings...)
        self._quiet = 0     # > 0 inside log-call arguments and the like

    # positions
    def pos(self, row, bytecol):
        return (row, len(self.blines[row - 1][:bytecol].decode("utf-8", "surrogatepass")))

    def start(self, node):
        return self.pos(node.lineno, node.col_offset)

    def end(self, node):
        return self.pos(node.end_lineno, node.end_col_offset)

    def between(self, after, before):
        """
        The operator tokens between the end of C{after} and the start of C{before}.
        """
        a, b = self.end(after), self.start(before)
        return [t for t in self.tokens if t.start >= a and t.end <= b]

    def line_text(self, row):
        """
        The stripped text of line C{row}; when other lines read the same,
        with its rank among them, C{(#2)}, so that each line has a name.
        """
        if not hasattr(self, "_texts"):
            self._texts = {}
            counts = {}
            for number, line in enumerate(self.lines, 1):
                text = line.strip()
                counts[text] = counts.get(text, 0) + 1
                self._texts[number] = (text, counts[text])
            self._repeated = {t for t, n in counts.items() if n > 1}
        text, rank = self._texts[row]
        return f"{text} (#{rank})" if text in self._repeated else text

    def add(self, node, description, edits):
        row = node.lineno
        if any(PRAGMA in self.lines[r - 1] for r in range(row, node.end_lineno + 1)):
            return
        self.mutants.append(Mutant(self.path, len(self.mutants) + 1, row, node.end_lineno,
                                   description, edits, self.line_text(row)))

    def replace_tokens(self, node, tokens, old, new):
        if not tokens or " ".join(t.string for t in tokens) != old:
            return  # not found as expected: no mutant rather than a wrong one
        self.add(node, f"`{old}` -> `{new}`", [(tokens[0].start, tokens[-1].end, new)])

    # structure
    def visit_Module(self, node):
        self._docstring(node)
        self.generic_visit(node)

    def visit_ClassDef(self, node):
        self._docstring(node)
        for d in node.decorator_list:
            self.visit(d)
        for base in node.bases:
            self.visit(base)
        for stmt in node.body:
            self.visit(stmt)

    def visit_FunctionDef(self, node):
        if node.name == "__repr__":
            return
        self._docstring(node)
        for d in node.decorator_list:
            self.visit(d)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d]:
            self.visit(default)
        for stmt in node.body:
            self.visit(stmt)
    visit_AsyncFunctionDef = visit_FunctionDef

    def _docstring(self, node):
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            self._skip.add(id(body[0]))

    def visit_JoinedStr(self, node):
        pass  # f-strings: message text

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self._delete(node)
            self.visit(node.value)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in LOG_METHODS:
            owner = func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name.lower().endswith("log"):
                self._quiet += 1
                self.generic_visit(node)
                self._quiet -= 1
                return
        self.generic_visit(node)

    # statements
    def _delete(self, node):
        if id(node) in self._skip:
            return
        self.add(node, "statement deleted", [(self.start(node), self.end(node), "pass")])

    def visit_Expr(self, node):
        if id(node) in self._skip:
            return
        if not (isinstance(node.value, ast.Constant)):
            self._delete(node)
        self.generic_visit(node)

    def visit_Assign(self, node):
        if any(isinstance(t, ast.Name) and t.id in ("__slots__", "__all__")
               for t in node.targets):
            return  # memory layout, star-imports: nothing a test can tell
        self._delete(node)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._delete(node)
        if type(node.op) in _ARITH:
            old, new = _ARITH[type(node.op)]
            self.replace_tokens(node, self.between(node.target, node.value), old + "=", new + "=")
        self.generic_visit(node)

    def visit_Return(self, node):
        value = node.value
        if value is not None and not (isinstance(value, ast.Constant) and value.value is None):
            self.add(node, "return value -> None", [(self.start(value), self.end(value), "None")])
        self.generic_visit(node)

    # expressions
    def visit_Compare(self, node):
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            old, new = _CMP[type(op)]
            self.replace_tokens(node, self.between(left, right), old, new)
            left = right
        self.generic_visit(node)

    def visit_BinOp(self, node):
        if type(node.op) in _ARITH:
            old, new = _ARITH[type(node.op)]
            self.replace_tokens(node, self.between(node.left, node.right), old, new)
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        old, new = _BOOL[type(node.op)]
        edits = []
        for a, b in zip(node.values, node.values[1:]):
            tokens = self.between(a, b)
            if len(tokens) != 1 or tokens[0].string != old:
                edits = None
                break
            edits.append((tokens[0].start, tokens[0].end, new))
        if edits:
            self.add(node, f"`{old}` -> `{new}`", edits)
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            self.add(node, "`not` removed", [(self.start(node), self.start(node.operand), "")])
        self.generic_visit(node)

    def visit_Constant(self, node):
        if self._quiet or id(node) in self._skip:
            return
        value = node.value
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, int):
            new = {0: 1, 1: 0}.get(value, value + 1)
        elif isinstance(value, float):
            new = 1.0 if value == 0 else value + 1
        elif isinstance(value, str):
            new = "" if value else "x"
        elif isinstance(value, bytes):
            new = b"" if value else b"x"
        else:
            return
        self.add(node, f"`{_short(value)}` -> `{_short(new)}`",
                 [(self.start(node), self.end(node), repr(new))])


def mutants_of(path: str, source: str) -> list:
    generator = _Generator(path, source)
    generator.visit(ast.parse(source))
    out = []
    seen = {}
    for mutant in sorted(generator.mutants, key=lambda m: (m.line, m.edits[0][0])):
        try:
            ast.parse(mutant.apply(source))
        except SyntaxError:
            continue
        mutant.index = len(out) + 1
        # the same change twice on one line: told apart by their order
        same = seen[mutant.line, mutant.description] = seen.get(
            (mutant.line, mutant.description), 0) + 1
        if same > 1:
            mutant.description += f" (#{same} on the line)"
        out.append(mutant)
    return out


# -- the equivalent list -------------------------------------------------------

def read_equivalent(path=EQUIVALENT_FILE) -> dict:
    """
    C{{(path, line text, mutation): reason}} from the allow-list.
    """
    known = {}
    if not path.exists():
        return known
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(" | ")]
        if len(parts) != 4 or not parts[3]:
            sys.exit(f"{path}:{number}: expected 'path | line | mutation | reason'")
        known[tuple(parts[:3])] = parts[3]
    return known


# -- the private copy ----------------------------------------------------------

def _ignore(directory, names):
    out = set()
    for name in names:
        if name in IGNORED or name.startswith(".venv") or name.endswith((".pyc", ".sock")):
            out.add(name)
            continue
        try:
            mode = os.lstat(os.path.join(directory, name)).st_mode
        except OSError:
            out.add(name)
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            out.add(name)  # sockets, fifos
    return out


def make_copy(source: Path, base: Path, name: str) -> Path:
    target = base / name
    shutil.copytree(source, target, ignore=_ignore, symlinks=True)
    return target


COVERAGE_PLUGIN = r'''
"""
Written by tools/mutate.py: which test runs which line of one file.
"""
import json, os, sys, threading
import pytest

_TARGET = os.environ["EVSRV_MUTATE_TARGET"]
_OUT = os.environ["EVSRV_MUTATE_COVERAGE"]
_current = ["<import>"]
_lines = {}
_durations = {}
_failed = []


def _local(frame, event, arg):
    if event == "line":
        _lines.setdefault(_current[0], set()).add(frame.f_lineno)
    return _local


def _global(frame, event, arg):
    if frame.f_code.co_filename == _TARGET:
        _lines.setdefault(_current[0], set()).add(frame.f_lineno)
        return _local
    return None


sys.settrace(_global)
threading.settrace(_global)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    yield
    _current[0] = "<between>"


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    if report.failed:
        _failed.append(report.nodeid)


def pytest_sessionfinish(session):
    sys.settrace(None)
    threading.settrace(None)
    with open(_OUT, "w") as f:
        json.dump({"lines": {k: sorted(v) for k, v in _lines.items()},
                   "durations": _durations, "failed": _failed}, f)
'''


class Workspace:
    """
    The private copies of the tree, one per job, under one /tmp directory.
    """

    def __init__(self, jobs: int, keep: bool):
        self.base = Path(tempfile.mkdtemp(prefix="evsrv-mutate-"))
        self.keep = keep
        # one snapshot of the tree (others edit it meanwhile), then copies of it
        self.copies = [make_copy(ROOT, self.base, "w0")]
        for i in range(1, jobs):
            self.copies.append(make_copy(self.copies[0], self.base, f"w{i}"))
        self.plugin_dir = self.base / "plugin"
        self.plugin_dir.mkdir()
        (self.plugin_dir / "_evsrv_mutate_cov.py").write_text(COVERAGE_PLUGIN)
        self._free = list(self.copies)
        self._lock = threading.Condition()

    def acquire(self) -> Path:
        with self._lock:
            while not self._free:
                self._lock.wait()
            return self._free.pop()

    def release(self, copy: Path) -> None:
        with self._lock:
            self._free.append(copy)
            self._lock.notify()

    def close(self):
        if self.keep:
            print(f"(copies kept in {self.base})", file=sys.stderr)
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def environment(copy: Path, extra=None) -> dict:
    env = dict(os.environ)
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS"):
        env.pop(name, None)
    # no stale bytecode: a mutant may have the size and mtime second of the original
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + ([str(extra)] if extra else []))
    env["PYTHONHASHSEED"] = "0"
    return env


_running = set()        # the pytest processes running now (each its own session)
_running_lock = threading.Lock()
_stop = threading.Event()  # set on Ctrl-C: no new mutant starts


def stop_all():
    _stop.set()
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        _kill(proc)


def _kill(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started, with its children
        except (ProcessLookupError, PermissionError):
            pass


def run_pytest(python, copy: Path, args, timeout, extra_env=None, plugin_dir=None):
    """
    @return: C{(returncode or None on timeout, seconds, output)}.
    """
    env = environment(copy, plugin_dir)
    if extra_env:
        env.update(extra_env)
    started = time.monotonic()
    proc = subprocess.Popen([python, "-m", "pytest"] + args, cwd=copy, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    with _running_lock:
        _running.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, time.monotonic() - started, out.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - started, ""
    finally:
        _kill(proc)
        proc.wait()
        with _running_lock:
            _running.discard(proc)


# -- one module ----------------------------------------------------------------

def tests_for(path: str) -> list:
    if path in TESTS:
        return [t for t in TESTS[path] if (ROOT / t).exists()]
    found = []
    source = (ROOT / path).read_text()
    header = re.search(r"test-case-name:\s*([\w.]+)", source[:500])
    candidates = []
    if header:
        candidates.append(header.group(1).replace(".", "/") + ".py")
    p = Path(path)
    candidates.append(f"tests/test_{p.stem}.py")
    candidates.append(f"tests/test_{p.parent.name}_{p.stem}.py")
    for candidate in candidates:
        if (ROOT / candidate).exists() and candidate not in found:
            found.append(candidate)
    return found


class ModuleRun:

    def __init__(self, path, tests, mutants, options, workspace, equivalent):
        self.path = path
        self.tests = tests
        self.mutants = mutants
        self.options = options
        self.workspace = workspace
        self.equivalent = equivalent
        self.error = None
        self.coverage = {}
        self.durations = {}
        self.baseline = 0.0
        self.seconds = 0.0

    def prepare(self):
        """
        Run the tests unmodified (plain, then traced): they must pass.
        """
        copy = self.workspace.copies[0]
        check = subprocess.run([self.options.python, "-c", "import evsrv; print(evsrv.__file__)"],
                               cwd=copy, env=environment(copy), capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(copy)):
            self.error = f"evsrv is not imported from the copy: {check.stdout}{check.stderr}"
            return False
        rc, seconds, out = run_pytest(self.options.python, copy, PYTEST_ARGS + self.tests,
                                      self.options.baseline_timeout)
        self.baseline = seconds
        if rc != 0:
            self.error = (f"the tests fail unmodified (exit {rc}):\n"
                          + "\n".join(out.splitlines()[-15:]))
            return False
        coverage_file = self.workspace.base / "coverage.json"
        env = {"EVSRV_MUTATE_TARGET": str(copy / self.path),
               "EVSRV_MUTATE_COVERAGE": str(coverage_file)}
        rc, _, out = run_pytest(self.options.python, copy,
                                PYTEST_ARGS[1:] + ["-p", "_evsrv_mutate_cov"] + self.tests,
                                self.options.baseline_timeout * 3, env, self.workspace.plugin_dir)
        if rc != 0:
            self.error = (f"the tests fail when traced (exit {rc}):\n"
                          + "\n".join(out.splitlines()[-15:]))
            return False
        data = json.loads(coverage_file.read_text())
        for test, lines in data["lines"].items():
            for line in lines:
                self.coverage.setdefault(line, set()).add(test)
        self.durations = data["durations"]
        return True

    def selection(self, mutant):
        tests = set()
        for line in range(mutant.line, mutant.end_line + 1):
            tests |= self.coverage.get(line, set())
        if not tests:
            return None
        if tests & {"<import>", "<between>"}:
            return list(self.tests)  # module level: every test
        return sorted(tests, key=lambda t: (self.durations.get(t, 0.0), t))

    def timeout(self, tests):
        """
        Seconds a mutant's run may take: three times what its tests took
        unmodified (traced, so already slower), plus the start-up.
        """
        if self.options.timeout:
            return self.options.timeout
        if tests == self.tests:
            return max(30.0, 3 * self.baseline + 15)
        return 20.0 + 3 * sum(self.durations.get(t, 1.0) for t in tests)

    def run_mutant(self, mutant, source):
        if _stop.is_set():
            return
        reason = self.equivalent.get(mutant.key())
        if reason is not None:
            mutant.status, mutant.reason = "equivalent", reason
            return
        tests = self.selection(mutant)
        if tests is None:
            mutant.status = "uncovered"
            return
        copy = self.workspace.acquire()
        target = copy / self.path
        try:
            target.write_text(mutant.apply(source))
            rc, seconds, out = run_pytest(self.options.python, copy, PYTEST_ARGS + tests,
                                          self.timeout(tests))
            if rc in (4, 5) and tests != self.tests:  # a test id pytest cannot select
                rc, more, out = run_pytest(self.options.python, copy, PYTEST_ARGS + self.tests,
                                           self.timeout(self.tests))
                seconds += more
            mutant.seconds = seconds
            if _stop.is_set():
                return
            if rc is None:
                mutant.status = "timeout"
            elif rc == 0:
                mutant.status = "survived"
            elif rc in (1, 2, 3, 4):  # 4: not even collected (conftest import failed)
                mutant.status = "killed"
            else:
                mutant.status = "error"
                mutant.reason = f"pytest exit {rc}: " + " ".join(out.splitlines()[-3:])
        finally:
            target.write_text(source)
            self.workspace.release(copy)

    def run(self, pool, progress):
        started = time.monotonic()
        if not self.tests:
            for mutant in self.mutants:
                mutant.reason = self.equivalent.get(mutant.key())
                mutant.status = "uncovered" if mutant.reason is None else "equivalent"
            return
        if not self.prepare():
            self.seconds = time.monotonic() - started
            return
        source = (self.workspace.copies[0] / self.path).read_text()
        total = len(self.mutants)
        done = [0]
        lock = threading.Lock()

        def one(mutant):
            self.run_mutant(mutant, source)
            with lock:
                done[0] += 1
                if progress:
                    print(f"  [{done[0]}/{total}] {mutant.status:<10} #{mutant.index} "
                          f"{mutant.label()}", file=sys.stderr, flush=True)
        list(pool.map(one, self.mutants))
        self.seconds = time.monotonic() - started

    def counts(self):
        counts = dict.fromkeys(("killed", "timeout", "survived", "uncovered", "equivalent",
                                "error"), 0)
        for mutant in self.mutants:
            if mutant.status in counts:
                counts[mutant.status] += 1
        return counts


def score(counts):
    caught = counts["killed"] + counts["timeout"]
    judged = caught + counts["survived"] + counts["uncovered"] + counts["error"]
    return 100.0 * caught / judged if judged else 100.0


# -- command line --------------------------------------------------------------

def resolve(paths) -> list:
    """
    Source files under the given paths, relative to the tree, each once.
    A file that is not there any more is looked for by name under evsrv/
    (modules move).
    """
    out = []
    for arg in paths:
        path = (ROOT / arg) if not Path(arg).is_absolute() else Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.exists():
            files = [path]
        else:
            moved = sorted(p for p in (ROOT / "evsrv").rglob(Path(arg).name)
                           if "__pycache__" not in p.parts)
            if len(moved) != 1:
                sys.exit(f"{arg}: no such file")
            print(f"({arg} is now {moved[0].relative_to(ROOT)})", file=sys.stderr)
            files = moved
        for f in files:
            rel = str(f.resolve().relative_to(ROOT))
            if rel not in out:
                out.append(rel)
    return out


def parse_ids(text):
    return {int(i) for i in text.split(",")} if text else None


def table(runs, total_seconds) -> str:
    rows = [("module", "mutants", "killed", "timeout", "survived", "uncov.", "equiv.", "killed%")]
    overall = dict.fromkeys(("killed", "timeout", "survived", "uncovered", "equivalent",
                             "error"), 0)
    count = 0
    for run in runs:
        if run.error:
            rows.append((run.path, "-", "-", "-", "-", "-", "-", "FAILED"))
            continue
        c = run.counts()
        for k in overall:
            overall[k] += c[k]
        count += len(run.mutants)
        rows.append((run.path, len(run.mutants), c["killed"], c["timeout"], c["survived"],
                     c["uncovered"], c["equivalent"], f"{score(c):.1f}%"))
    rows.append(("overall", count, overall["killed"], overall["timeout"], overall["survived"],
                 overall["uncovered"], overall["equivalent"], f"{score(overall):.1f}%"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [str(row[0]).ljust(widths[0])] + [str(v).rjust(w) for v, w in
                                                   zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if n == 0 or n == len(rows) - 2:
            lines.append("-" * len(lines[-1]))
    minutes, seconds = divmod(int(total_seconds), 60)
    not_run = sum(1 for run in runs if not run.error for m in run.mutants if m.status is None)
    lines.append(f"({minutes} min {seconds} s" + (f"; interrupted: {not_run} mutants not run)"
                                                  if not_run else ")"))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Mutation testing: do a module's own tests fail when its code is wrong?")
    parser.add_argument("paths", nargs="+", help="source files or directories")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help=f"mutants run at once (default 1, at most {MAX_JOBS})")
    parser.add_argument("--tests", action="append",
                        help="test files to run instead of the module's own (repeatable)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per mutant (default: 20 + 3 x what its tests took "
                             "unmodified)")
    parser.add_argument("--baseline-timeout", type=float, default=600.0)
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--keys", action="store_true",
                        help="with --list: as lines for tools/mutate-equivalent.txt")
    parser.add_argument("--show", help="print these mutants (ids, comma-separated) as diffs")
    parser.add_argument("--only", help="run only these mutants (ids, comma-separated)")
    parser.add_argument("--json", help="write every mutant's result to this file")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="exit 1 if a module scores below this %%")
    parser.add_argument("--keep", action="store_true", help="keep the private copies")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-mutant progress")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the venv (default: this one)")
    options = parser.parse_args(argv)
    if not 1 <= options.jobs <= MAX_JOBS:
        parser.error(f"-j must be between 1 and {MAX_JOBS}")

    paths = resolve(options.paths)
    equivalent = read_equivalent()
    only = parse_ids(options.only)
    show = parse_ids(options.show)
    plans = []
    for path in paths:
        source = (ROOT / path).read_text()
        mutants = mutants_of(path, source)
        if show is not None or options.list:
            for m in mutants:
                if show is not None and m.index not in show:
                    continue
                if options.keys:
                    print(" | ".join(m.key()) + " | ")
                    continue
                print(f"#{m.index} {m.label()}")
                if show is not None:
                    sys.stdout.writelines(difflib.unified_diff(
                        source.splitlines(True), m.apply(source).splitlines(True),
                        path, path + " (mutant)", n=2))
            continue
        if only is not None:
            mutants = [m for m in mutants if m.index in only]
        if not mutants:
            continue  # (a package's __init__.py: imports only)
        tests = options.tests or tests_for(path)
        if not tests:
            print(f"{path}: no tests known for it, its mutants all survive (add it to TESTS "
                  f"in tools/mutate.py, or give --tests)", file=sys.stderr)
        plans.append((path, tests, mutants))
    if show is not None or options.list:
        return 0

    started = time.monotonic()
    workspace = Workspace(options.jobs, options.keep)
    runs = []
    pool = ThreadPoolExecutor(options.jobs)
    try:
        for path, tests, mutants in plans:
            print(f"{path}: {len(mutants)} mutants, tests: {' '.join(tests)}",
                  file=sys.stderr, flush=True)
            run = ModuleRun(path, tests, mutants, options, workspace, equivalent)
            runs.append(run)
            run.run(pool, not options.quiet)
            if run.error:
                print(f"{path}: {run.error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: partial results", file=sys.stderr)
        stop_all()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        workspace.close()
    elapsed = time.monotonic() - started

    used = set()
    print()
    for run in runs:
        for m in run.mutants:
            if m.status == "equivalent":
                used.add(m.key())
        survivors = [m for m in run.mutants if m.status in ("survived", "uncovered", "error")]
        if survivors:
            print(f"{run.path}: surviving mutants")
            for m in survivors:
                note = " (no test runs this line)" if m.status == "uncovered" else (
                    f" ({m.reason})" if m.reason else "")
                print(f"  line {m.line}: {m.description}  [{m.text[:70]}]{note}")
    stale = [k for k in equivalent if k[0] in paths and k not in used and only is None]
    if stale and runs and not any(r.error for r in runs):
        print(f"\n{EQUIVALENT_FILE.name}: entries that matched no mutant (stale?)")
        for k in stale:
            print("  " + " | ".join(k))
    print()
    print(table(runs, elapsed))
    if options.json:
        with open(options.json, "w") as f:
            json.dump([{"path": m.path, "index": m.index, "line": m.line,
                        "description": m.description, "text": m.text, "status": m.status,
                        "reason": m.reason, "seconds": round(m.seconds, 2)}
                       for run in runs for m in run.mutants], f, indent=1)
    failed = any(r.error for r in runs) or any(
        score(r.counts()) < options.min_score for r in runs if not r.error)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
