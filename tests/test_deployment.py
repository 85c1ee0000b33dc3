"""
Deployment: the wheel (built from a copy of the tree, installed into a fresh
venv with its dependencies), its console scripts and twistd plugin, and the
systemd unit in etc/.
"""

import configparser
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from evsrv.run import split_arguments

ROOT = Path(__file__).resolve().parent.parent


def _packages():
    return sorted(".".join(p.parent.relative_to(ROOT).parts)
                  for p in (ROOT / "evsrv").rglob("__init__.py")
                  if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Built from a copy so that setuptools' build/ and egg-info never touch the work tree.
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    shutil.copytree(ROOT / "evsrv", src / "evsrv", ignore=ignore)
    shutil.copytree(ROOT / "twisted", src / "twisted", ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(src)],
                   check=True, timeout=120, capture_output=True)
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
    for package in _packages():
        assert package.replace(".", "/") + "/__init__.py" in names, package
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "evsrv = evsrv.run:main" in entry_points
    assert "evsrv-ctl = evsrv.ctl:main" in entry_points


def test_wheel_installs_into_fresh_venv(wheel, tmp_path):
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    bin_dir = target / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the cwd is outside the tree: nothing can be imported from the checkout
    run = dict(cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=180)
    install = subprocess.run([str(bin_dir / "pip"), "install", "-q", str(wheel)], **run)
    assert install.returncode == 0, install.stdout + install.stderr
    # what the README's production section says to run after every install
    regen = subprocess.run([str(bin_dir / "python"), "-c",
                            "from twisted.plugin import IPlugin, getPlugins; "
                            "list(getPlugins(IPlugin))"], **run)
    assert regen.returncode == 0, regen.stderr
    site = subprocess.run([str(bin_dir / "python"), "-c",
                           "import twisted.plugins, evsrv; print(twisted.plugins.__path__[0]); "
                           "print(evsrv.__file__)"], **run).stdout.split()
    assert site[1].startswith(str(target)), site  # the installed copy, not the checkout
    assert (Path(site[0]) / "dropin.cache").exists()

    twistd = subprocess.run([str(bin_dir / "twistd"), "-n", "evsrv", "--help"], **run)
    assert twistd.returncode == 0, twistd.stderr
    assert "--config=" in twistd.stdout and "The ini file" in twistd.stdout
    listing = subprocess.run([str(bin_dir / "twistd"), "--help"], **run)
    assert "evsrv" in listing.stdout and "OpenSIPS-compatible" in listing.stdout

    ctl = subprocess.run([str(bin_dir / "evsrv-ctl"), "--help"], **run)
    assert ctl.returncode == 0, ctl.stderr
    assert "usage: evsrv-ctl" in ctl.stdout

    evsrv = subprocess.run([str(bin_dir / "evsrv"), "--help"], **run)
    assert evsrv.returncode == 0, evsrv.stderr
    assert "--config=" in evsrv.stdout

    # the console script reaches the server: a missing ini ends start-up with status 1
    bad = subprocess.run([str(bin_dir / "evsrv"), "-c", str(tmp_path / "missing.ini")], **run)
    assert bad.returncode == 1 and "missing.ini" in bad.stderr


def test_split_arguments():
    assert split_arguments(["-c", "x.ini"]) == ([], ["-c", "x.ini"])
    assert split_arguments(["--log-format=json", "-c", "x.ini", "--log-level", "warn"]) == (
        ["--log-format=json", "--log-level", "warn"], ["-c", "x.ini"])
    assert split_arguments(["--", "--log-file=x"]) == ([], ["--log-file=x"])


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "etc" / "evsrv.service")
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
