"""
The layers of evsrv (docs/architecture.md), enforced: every import runs
down, never up, and never sideways between peer packages; an import inside a
function says why in a comment; Twisted's private names are used in one
module only; every package is shipped in the wheel.
"""

import ast
import configparser
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "evsrv"

# (rank, modules or packages): a module may import only from lower ranks, or
# from its own package. Same rank, other package: peers, which must not
# import each other.
LAYERS = [
    (8.2, ["evsrv.__main__"]),
    (8.1, ["evsrv.run"]),                       # the evsrv command: twist + tap
    (8, ["evsrv.tap", "evsrv.ctl", "evsrv.testing"]),
    (7.5, ["evsrv.client"]),                    # MI clients: evsrv-ctl's and the tests' 
    (7, ["evsrv.server"]),                      # builds the parts below, in order
    (6, ["evsrv.shutdown", "evsrv.config"]),
    (5.9, ["evsrv.exitstatus"]),
    (5.5, ["evsrv.plugins"]),
    (5.2, ["evsrv.ingest"]),                    # OpenSIPS as a publisher: ingest, upstreams
    (5, ["evsrv.http", "evsrv.modules", "evsrv.script"]),
    (4, ["evsrv.mi", "evsrv.transports", "evsrv.persistence"]),
    (3, ["evsrv.evi"]),
    (2, ["evsrv.encoding", "evsrv.interfaces"]),
    (1.5, ["evsrv"]),  # the package itself: __version__
    (1, ["evsrv.util"]),
]

PRIVATE_TWISTED = re.compile(r"\btwisted(\.\w+)*\._\w+|_exitWithSignal|_SomeApplicationRunner"
                             r"|_getLogObserver")
PRIVATE_HOME = "evsrv.util.twisted_private"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str):
    """
    @return: C{(rank, unit)}, the unit being the listed module or package
        that holds C{name}.
    """
    best = None
    for rank, units in LAYERS:
        for unit in units:
            if name == unit or name.startswith(unit + "."):
                if best is None or len(unit) > len(best[1]):
                    best = (rank, unit)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best


def modules():
    return sorted(p for p in SOURCE.rglob("*.py") if "specs" not in p.parts)


def imports(path: Path):
    """
    @return: C{(line, imported module, inside a function, has a comment)}
        for every import in C{path}.
    """
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    in_function.add(id(inner))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module_name(path).rsplit(".", node.level - (path.name == "__init__.py"))
                names = [".".join(filter(None, [package[0], node.module]))]
            else:
                names = [node.module]
                if node.module == "evsrv":
                    # "from evsrv import x": x may be a module of the package
                    names = [f"evsrv.{a.name}" if (SOURCE / f"{a.name}.py").exists()
                             or (SOURCE / a.name).is_dir() else "evsrv" for a in node.names]
        else:
            continue
        end = getattr(node, "end_lineno", node.lineno)
        statement = "\n".join(lines[node.lineno - 1:end])
        before = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
        commented = "#" in statement or before.startswith("#")
        for name in names:
            found.append((node.lineno, name, id(node) in in_function, commented))
    return found


def upward_imports():
    wrong = []
    for path in modules():
        here = module_name(path)
        rank, unit = layer_of(here)
        for line, name, _, _ in imports(path):
            if not name.startswith("evsrv"):
                continue
            their_rank, their_unit = layer_of(name)
            if their_unit == unit:
                continue  # within one package (or module)
            if their_rank > rank:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here} (layer {rank}) imports "
                             f"{name} (layer {their_rank}): upwards")
            elif their_rank == rank:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here} imports its peer {name}")
    return wrong


def silent_late_imports():
    return [f"{path.relative_to(ROOT)}:{line}: import of {name} inside a function without a "
            f"comment saying why"
            for path in modules() for line, name, in_function, commented in imports(path)
            if in_function and not commented]


def test_every_module_is_in_a_layer():
    for path in modules():
        layer_of(module_name(path))


def test_imports_run_down_the_layers():
    wrong = upward_imports()
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_say_why():
    silent = silent_late_imports()
    assert not silent, "\n".join(silent)


def test_twisted_private_names_are_used_in_one_place():
    users = []
    for path in modules():
        if module_name(path) == PRIVATE_HOME:
            continue
        for number, text in enumerate(path.read_text().splitlines(), 1):
            code = text.split("#", 1)[0]
            # docstrings may name them (C{...}); code may not
            code = re.sub(r"[CL]\{[^}]*\}?", "", code)
            if PRIVATE_TWISTED.search(code):
                users.append(f"{path.relative_to(ROOT)}:{number}: {text.strip()}")
    assert not users, "only evsrv/util/twisted_private.py may use them:\n" + "\n".join(users)


def test_every_package_is_in_the_wheel():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    packages = {module_name(p.parent) for p in SOURCE.rglob("__init__.py")}
    assert packages <= listed, f"missing from setup.cfg [options] packages: " \
                               f"{sorted(packages - listed)}"


@pytest.fixture
def fake_tree(tmp_path, monkeypatch):
    """
    An evsrv/ source tree of the test's own, for the checks to read.
    """
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "SOURCE", tmp_path / "evsrv")

    def write(name, text=""):
        path = tmp_path.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    write("evsrv/__init__.py")
    write("evsrv/exitstatus.py")
    write("evsrv/server.py")
    write("evsrv/evi/__init__.py")
    write("evsrv/mi/__init__.py")
    write("evsrv/persistence/__init__.py")
    return write


@pytest.mark.parametrize("source, expected", [
    ("import evsrv.mi.controller\n", "evsrv.mi.controller"),
    ("from evsrv.mi import jsonrpc\n", "evsrv.mi"),
    ("from evsrv import exitstatus\n", "evsrv.exitstatus"),
    ("from evsrv import __version__\n", "evsrv"),
])
def test_the_checker_reads_imports(fake_tree, source, expected):
    fake_tree("evsrv/evi/probe.py", source)
    assert [name for _, name, _, _ in imports(SOURCE_OF()/ "evi" / "probe.py")] == [expected]


def test_the_checker_finds_upward_peer_and_silent_late_imports(fake_tree):
    fake_tree("evsrv/evi/up.py", "def f():\n    from evsrv.server import EvsrvService\n")
    fake_tree("evsrv/mi/peer.py", "from evsrv.persistence import journal\n")
    fake_tree("evsrv/mi/fine.py", "from evsrv.evi import up  # noqa\n"
                                  "def f():\n    # optional: only for TLS\n    import ssl\n")
    assert upward_imports() == [
        "evsrv/evi/up.py:2: evsrv.evi.up (layer 3) imports evsrv.server (layer 7): upwards",
        "evsrv/mi/peer.py:1: evsrv.mi.peer imports its peer evsrv.persistence"]
    assert silent_late_imports() == [
        "evsrv/evi/up.py:2: import of evsrv.server inside a function without a comment "
        "saying why"]


def SOURCE_OF():
    return sys.modules[__name__].SOURCE


def test_test_case_name_headers_name_test_modules_that_exist():
    # trial-style headers tell an editor which tests to run for a module
    wrong = []
    for path in modules():
        match = re.match(r"# -\*- test-case-name: (.*) -\*-", path.read_text())
        if not match:
            continue
        for name in (n.strip() for n in match.group(1).split(",")):
            if not (ROOT / Path(*name.split("."))).with_suffix(".py").exists():
                wrong.append(f"{path.relative_to(ROOT)}: {name}")
    assert not wrong, "\n".join(wrong)
