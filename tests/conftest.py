from __future__ import annotations

import os
import uuid

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see engine/__init__.py

from pathlib import Path

import engines_support
import pytest
import torch
from hypothesis import settings
from needs import missing

# Derandomised: every run draws the same examples (a failure reproduces; CI does not flake on a new
# draw). No deadline: the machine is shared, and tests check correctness, never time.
settings.register_profile("frvd", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("frvd")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "official"
MEDIA = SHARED / "media"

# two cores: one test process uses both; under pytest-xdist (-n 2) each worker takes one
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def pytest_configure(config: pytest.Config) -> None:
    # xdist controller: fix the run id the workers get, so it can remove their shared job folder
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        if not config.option.testrunuid:
            config.option.testrunuid = uuid.uuid4().hex


def pytest_unconfigure(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        engines_support.cleanup_shared(config.option.testrunuid)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        missing("../shared/fixtures/official is not present beside the repository")
    return FIXTURES


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not MEDIA.is_dir():
        missing("../shared/media is not present beside the repository")
    return MEDIA


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    # The tiny engine build and the onnxruntime fixture run take minutes: start them in the
    # background as soon as the selected tests are known, and only if one of them needs them.
    engines_support.start_if_needed(items)


@pytest.fixture(scope="session")
def mode_engines() -> Path:
    """Tiny engines plus the fast modes' split graphs (engines_support.MODE_GRAPHS)."""
    return engines_support.mode_engines()


@pytest.fixture(scope="session")
def tiny_engines() -> tuple[Path, dict]:
    """The tiny preset's engines folder and its build report (built once per session)."""
    return engines_support.tiny_engines()
