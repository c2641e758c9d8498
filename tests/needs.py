"""What a test needs from the machine: skipped where it is missing, except under CI (``CI=true``), where
a missing ``../shared``, Chromium or kernel library is a broken set-up and fails the test instead."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail under CI (where scripts/setup.sh must have provided it)."""
    if in_ci():
        pytest.fail(f"CI=true requires it: {reason}", pytrace=False)
    pytest.skip(reason)
