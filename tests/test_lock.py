"""Reproducible installs: the venv holds exactly the versions of the lock it was installed from.

``scripts/setup.sh`` installs with ``-c scripts/constraints-cpu.txt`` and leaves a copy of that lock in
the venv; every package the lock names must be installed at its version, and nothing else may be
installed beside them (a package the lock does not know is an upgrade by accident, like the HF
``kernels`` package that once shadowed ours).
"""

from __future__ import annotations

import os
import re
import site
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "scripts" / "constraints-cpu.txt"
INSTALLED_LOCK = Path(sys.prefix) / "frvd-installed-lock.txt"
NOT_LOCKED = {"frvd-engine", "pip", "setuptools", "wheel"}  # the project itself and the installer


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path}: '{line}' is not an exact pin (NAME==VERSION)"
        pins[_norm(name)] = version
    return pins


def installed() -> dict[str, str]:
    # Only what pip installed into this venv's site-packages. A package may put its own folder on
    # sys.path: Ray, once imported in this process, adds ray/thirdparty_files (its vendored colorama
    # and psutil, with their .dist-info); those are Ray's files, not installed packages.
    sites = {Path(p).resolve() for p in site.getsitepackages()}
    return {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()
            if Path(str(d.locate_file(""))).resolve() in sites}


def test_lock_pins_every_line_exactly() -> None:
    pins = read_lock(LOCK)
    assert len(pins) > 40
    assert pins["torch"] == "2.13.0"  # the same pin as scripts/setup.sh's TORCH_VERSION
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert f"TORCH_VERSION={pins['torch']}" in setup


def test_installed_versions_equal_the_lock() -> None:
    if not INSTALLED_LOCK.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must install through scripts/setup.sh with the lock ({INSTALLED_LOCK} is missing)")
        pytest.skip("this environment was not installed from the lock (scripts/setup.sh --no-lock or by hand)")
    assert INSTALLED_LOCK.read_text() == LOCK.read_text(), "the lock changed since this venv was set up: rerun setup"
    pins, have = read_lock(LOCK), installed()
    wrong = {n: (v, have.get(n)) for n, v in pins.items() if have.get(n, "").split("+")[0] != v}
    assert not wrong, f"installed versions differ from the lock (locked, installed): {wrong}"
    extra = sorted(set(have) - set(pins) - NOT_LOCKED)
    assert not extra, f"installed but not in the lock (rerun scripts/update_lock.sh): {extra}"
