"""
Deployment: the wheel (built from a copy of the tree, installed into a fresh
venv with its dependencies), its console scripts and twistd plugin, the
README's production steps as written, and the systemd unit in etc/ with the
production ini it reads.
"""

import configparser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from evsrv import __version__
from evsrv.run import split_arguments
from evsrv.tap import production_config

# real processes (an installed wheel, evsrv servers, the official clients)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

# The absolute paths of the production setup (README, the unit, the
# production ini); in tests each lives under a scratch directory instead.
PREFIXES = ("/opt/evsrv", "/etc/evsrv", "/var/lib/evsrv", "/run/evsrv")
_PREFIX = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, PREFIXES)) + r")(?![\w-])")


def under(root: Path, text: str) -> str:
    """
    C{text} with each production path moved under C{root}.
    """
    return _PREFIX.sub(lambda m: str(root) + m.group(1), text)


def _packages():
    return sorted(".".join(p.parent.relative_to(ROOT).parts)
                  for p in (ROOT / "evsrv").rglob("__init__.py")
                  if "__pycache__" not in p.parts)


def copy_checkout(dest: Path) -> Path:
    """
    What a checkout holds for building the wheel, copied to C{dest}: building
    in the copy keeps setuptools' build/, egg-info and dist/ out of the work tree.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    shutil.copytree(ROOT / "evsrv", dest / "evsrv", ignore=ignore)
    shutil.copytree(ROOT / "twisted", dest / "twisted", ignore=ignore)
    return dest


def clean_env(**extra):
    # nothing of the test's own venv or of the checkout may leak into the
    # installed copy
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = copy_checkout(tmp_path_factory.mktemp("src") / "evsrv")
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(out), str(src)],
                           timeout=120, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    (path,) = out.glob("evsrv-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/evsrv_plugin.py" in names
    # twisted/ and twisted/plugins/ are Twisted's namespaces: shipping an
    # __init__.py there would replace Twisted's own on install.
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    specs = sorted(p.name for p in (ROOT / "evsrv" / "specs").glob("*.xml"))
    assert specs
    for spec in specs:
        assert f"evsrv/specs/{spec}" in names
    assert "evsrv/data/production.ini" in names
    assert "evsrv/__main__.py" in names
    for package in _packages():
        assert package.replace(".", "/") + "/__init__.py" in names, package
    dist_info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
    # setuptools puts license_files in dist-info/ or (newer) dist-info/licenses/
    assert {f"{dist_info}/LICENSE", f"{dist_info}/licenses/LICENSE"} & names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "evsrv = evsrv.run:main" in entry_points
    assert "evsrv-ctl = evsrv.ctl:main" in entry_points


def test_license_is_the_gpl_2():
    text = (ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["license"] == "GPL-2.0-or-later"
    assert setup["metadata"]["license_files"].split() == ["LICENSE"]


def readme_section(title: str) -> str:
    text = (ROOT / "docs" / "production.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def shell_blocks(section: str) -> list:
    return re.findall(r"^```sh\n(.*?)^```$", section, re.S | re.M)


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """
    The README's production install block, run as written in a scratch
    directory standing for C{/} (C{root}): the production paths are moved
    under it, C{python3} is the Python running the tests, and "a checkout"
    is a copy of the tree.

    @return: C{root}.
    """
    # short: the UNIX MI socket under it must fit in 107 bytes
    root = Path(tempfile.mkdtemp(prefix="evsrv-root-"))
    checkout = copy_checkout(tmp_path_factory.mktemp("checkout") / "evsrv")
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)

    install = shell_blocks(readme_section("Running in production"))[0]
    script = under(root, install)
    for line in script.splitlines():
        if line.lstrip().startswith("#"):
            continue
        # a step writing anywhere else would write into the real system
        for path in re.findall(r"(?:^|[\s>=])(/[^\s\"';]*)", line):
            assert path.startswith(str(root)), f"README step outside {PREFIXES}: {line}"
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["sh", "-eux", "-c", script], cwd=str(checkout), env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    yield root
    shutil.rmtree(root)


def read_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "etc" / "evsrv.service")
    return unit


def read_ini(text):
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(text)
    return ini


def test_production_install_is_the_shipped_ini(production):
    # the README installs what --print-config prints: the wheel's own copy
    installed = (production / "etc" / "evsrv" / "evsrv.ini").read_text()
    assert installed == production_config()
    assert installed == (ROOT / "evsrv" / "data" / "production.ini").read_text()
    venv = production / "opt" / "evsrv" / "venv"
    run = dict(cwd=str(production), env=clean_env(), capture_output=True, text=True,
               timeout=60)
    # the installed copy runs, not the checkout
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import evsrv, twisted.plugins; print(evsrv.__file__); "
                            "print(twisted.plugins.__path__[0])"], **run).stdout.split()
    assert where[0].startswith(str(venv)), where
    assert (Path(where[1]) / "dropin.cache").exists()


def _json_log(path):
    events = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip("\x1e").strip()
        if line:
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"log_format": line})  # a traceback, shown on failure
    return events


def test_production_steps_start_and_answer(production):
    """
    The README's steps, then what systemd does with etc/evsrv.service: make
    its directories, start its ExecStart in its WorkingDirectory; evsrv-ctl
    reaches the MI on every listener.
    """
    root = production
    service = read_unit()["Service"]
    state = root / "var" / "lib" / service["StateDirectory"]
    runtime = root / "run" / service["RuntimeDirectory"]
    state.mkdir(parents=True, mode=int(service.get("StateDirectoryMode", "0755"), 8))
    runtime.mkdir(parents=True)
    try:
        _start_and_talk(root, service, state, runtime)
    finally:
        shutil.rmtree(state)
        shutil.rmtree(runtime)


def _start_and_talk(root, service, state, runtime):
    ini_path = root / "etc" / "evsrv" / "evsrv.ini"
    ini_text = ini_path.read_text()
    # what the sandbox changes: the paths (under root) and the fixed ports
    # (0: others may be running evsrv on 8080/8888 here)
    sandboxed = under(root, ini_text)
    for fixed, free in (("udp = 127.0.0.1:8080\n", "udp = 127.0.0.1:0\n"),
                        ("listen = 127.0.0.1:8888\n", "listen = 127.0.0.1:0\n")):
        assert sandboxed.count(fixed) == 1, fixed
        sandboxed = sandboxed.replace(fixed, free)
    ini_path.write_text(sandboxed)
    try:
        argv = under(root, service["ExecStart"]).split()
        log_path = root / "evsrv.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, cwd=under(root, service["WorkingDirectory"]),
                                       env=clean_env(PYTHONUNBUFFERED="1"), stdout=log,
                                       stderr=subprocess.STDOUT)
        try:
            events = _wait_started(process, log_path)
            _talk(root, events, runtime)
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0, log_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert not (runtime / "mi.sock").exists()  # removed at stop
        # the subscription made below was saved in the state directory
        assert (state / "subscriptions.sqlite").is_file()
    finally:
        ini_path.write_text(ini_text)


def _wait_started(process, log_path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _json_log(log_path)
        if any("started:" in e.get("log_format", "") for e in events):
            return events
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError("evsrv did not start:\n" + log_path.read_text())


def _talk(root, events, runtime):
    listening = [e for e in events if "listening on" in e.get("log_format", "")]
    mi = [e["where"] for e in listening if e["log_format"].startswith("MI listening")]
    http = {e["serves"]: e["url"] for e in listening if e["log_format"].startswith("HTTP")}
    # one line per listener, each named
    (udp,) = [w for w in mi if w.startswith("udp:")]
    assert [w for w in mi if w.startswith("unix:")] == [f"unix:{runtime / 'mi.sock'}"]
    assert len(mi) == 2
    assert sorted(http) == ["MI", "metrics", "status page"]
    assert len(listening) == 5
    assert udp.startswith("udp:127.0.0.1:")
    assert all(url.startswith("http://127.0.0.1:") for url in http.values())

    ctl = str(root / "opt" / "evsrv" / "venv" / "bin" / "evsrv-ctl")

    def call(*args):
        result = subprocess.run([ctl, *args], env=clean_env(), capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    address = udp[len("udp:"):]
    assert f"evsrv {__version__}" in call("-a", address, "version")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    try:
        target = "udp:127.0.0.1:%d" % receiver.getsockname()[1]
        assert call("-s", str(runtime / "mi.sock"), "event_subscribe",
                    "E_CORE_THRESHOLD", target, "60").strip() == "OK"
        assert target in call("--http", http["MI"], "subscribers_list")
        assert call("-a", address, "raise_event", "E_CORE_THRESHOLD",
                    '{"from":"production test"}').strip() == "OK"
        notification = json.loads(receiver.recv(65536))
        assert notification["method"] == "E_CORE_THRESHOLD"
        assert notification["params"] == {"from": "production test"}
    finally:
        receiver.close()


def test_installed_commands(production, tmp_path):
    bin_dir = production / "opt" / "evsrv" / "venv" / "bin"
    # the cwd is outside the tree: nothing can be imported from the checkout
    run = dict(cwd=str(tmp_path), env=clean_env(), capture_output=True, text=True,
               timeout=60)

    twistd = subprocess.run([str(bin_dir / "twistd"), "-n", "evsrv", "--help"], **run)
    assert twistd.returncode == 0, twistd.stderr
    assert "--config=" in twistd.stdout and "The ini file" in twistd.stdout
    listing = subprocess.run([str(bin_dir / "twistd"), "--help"], **run)
    assert "evsrv" in listing.stdout and "OpenSIPS-compatible" in listing.stdout

    ctl = subprocess.run([str(bin_dir / "evsrv-ctl"), "--help"], **run)
    assert ctl.returncode == 0, ctl.stderr
    assert "usage: evsrv-ctl" in ctl.stdout

    for command in ([str(bin_dir / "evsrv")], [str(bin_dir / "python"), "-m", "evsrv"]):
        help_ = subprocess.run([*command, "--help"], **run)
        assert help_.returncode == 0, help_.stderr
        assert help_.stdout.startswith("Usage: evsrv [options]\n")
        for option in ("-c, --config=", "--ignore-store", "--print-config", "--version",
                       "--log-level=", "--log-format=", "--log-file=", "--reactor="):
            assert option in help_.stdout, option
        version = subprocess.run([*command, "--version"], **run)
        assert version.returncode == 0, version.stderr
        first, second = version.stdout.splitlines()
        assert first == f"evsrv {__version__}"
        assert second.startswith("Twisted ")
        printed = subprocess.run([*command, "--print-config"], **run)
        assert (printed.returncode, printed.stdout) == (0, production_config())
        # the command reaches the server: a missing ini ends start-up with status 1
        bad = subprocess.run([*command, "-c", str(tmp_path / "missing.ini")], **run)
        assert bad.returncode == 1 and "missing.ini" in bad.stderr
        usage = subprocess.run([*command, "--no-such-option"], **run)
        assert usage.returncode == 64
        assert usage.stderr.startswith("Error: ") and "Usage: evsrv" in usage.stderr


def test_split_arguments():
    assert split_arguments(["-c", "x.ini"]) == ([], ["-c", "x.ini"])
    assert split_arguments(["--log-format=json", "-c", "x.ini", "--log-level", "warn"]) == (
        ["--log-format=json", "--log-level", "warn"], ["-c", "x.ini"])
    assert split_arguments(["--", "--log-file=x"]) == ([], ["--log-file=x"])


def test_systemd_unit():
    unit = read_unit()
    service = unit["Service"]
    exec_start = service["ExecStart"].split()
    # foreground twist (not twistd, which would daemonize), the production ini
    assert Path(exec_start[0]).name == "twist"
    assert "evsrv" in exec_start
    assert exec_start[-2:] == ["-c", "/etc/evsrv/evsrv.ini"]
    assert service["Type"] == "simple"
    assert service["Restart"] == "on-failure"
    assert service["User"] == "evsrv"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_agrees_with_production_ini_and_readme():
    service = read_unit()["Service"]
    ini = read_ini(production_config())
    state = "/var/lib/" + service["StateDirectory"]
    runtime = "/run/" + service["RuntimeDirectory"]
    assert state == "/var/lib/evsrv" and runtime == "/run/evsrv"
    # the store in the state directory (the only writable one), private
    assert ini["store"]["directory"] == state
    assert ini["store"]["backend"] == "sqlite"
    assert service["StateDirectoryMode"] == "0700"
    assert service["WorkingDirectory"] == state
    # UNIX MI sockets in the runtime directory: /tmp is private to the unit
    assert service["PrivateTmp"] == "yes"
    unix = [p.strip() for p in ini["mi"]["unix"].split(",")]
    assert unix and all(Path(p).parent == Path(runtime) for p in unix)
    # every listener on loopback, no script unless the user adds one
    for address in [a.strip() for a in ini["mi"]["udp"].split(",")] + [ini["http"]["listen"]]:
        assert address.startswith("127.0.0.1:"), address
    assert not ini.has_option("script", "path")
    # nothing of it in /tmp or relative to the (read-only) ini directory
    for section in ini.sections():
        for key, value in ini[section].items():
            assert "/tmp" not in value, (section, key)
    # the README installs the wheel where ExecStart runs it, the ini where it reads it
    install = shell_blocks(readme_section("Running in production"))[0]
    exec_start = service["ExecStart"].split()
    assert f"python3 -m venv {Path(exec_start[0]).parent.parent}\n" in install
    assert f"--print-config > {exec_start[-1]}\n" in install
    systemd = shell_blocks(readme_section("Running in production"))[1]
    assert "cp etc/evsrv.service /etc/systemd/system/" in systemd
