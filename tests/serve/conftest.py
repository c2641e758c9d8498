"""One shared server for the serve tests (tiny preset at 64 px, 1 step: seconds per job), started
once per session; tests that need their own (restart, auth) start it themselves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_support import Server

# limits small enough that the tests can reach each of them with the bundled media
MAIN_ARGS = ["--size", "64", "--default-steps", "1", "--max-upload-mb", "1", "--max-frames", "20",
             "--max-pixels", "600000", "--max-queue", "4", "--max-streams", "4", "--stream-queue", "4",
             "--idle-timeout", "6", "--header-timeout", "2"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("serve") / "data", MAIN_ARGS).start()
    yield srv
    srv.kill()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    from serve_support import ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
