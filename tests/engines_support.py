"""Shared, once-per-session background jobs for the export tests (not a test module).

Two slow jobs: ``python -m engine.build --preset tiny`` (all seven graphs) and
``python -m engine.fixtures DIR --backend onnxruntime`` (exports the fixture's own weights,
then reproduces the pipeline fixtures). Each exports a ~19k-node denoiser, which dominates the
export tests' time, so both start as early as possible, side by side (one core each), and the
tests that need them wait. Everything lands in one temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(tempfile.mkdtemp(prefix="frvd-export-tests-"))
TINY_ENGINES = ROOT / "tiny"
FIXTURE_ENGINES = ROOT / "fixture"
MODE_ENGINES = ROOT / "modes"
# The fast modes' split graphs (engine.config.modes): turbo runs on wfm_cond + unet_cond; fast also needs
# wfm + unet - a minute or two more of export on 2 cores, so only with FRVD_EXPORT_MODES=1. Parity is the
# test's (whole runs against torch), so the build skips its own.
MODE_GRAPHS = ["wfm_cond", "unet_cond"] + (["wfm", "unet"] if os.environ.get("FRVD_EXPORT_MODES") == "1" else [])
MODES_IN_SUITE = os.environ.get("FRVD_EXPORT_MODES") in ("1", "turbo")  # the mode-graph job runs only then
TIMEOUT_S = 900


@dataclass
class Job:
    cmd: list[str]
    proc: subprocess.Popen | None = None
    output: str = ""
    returncode: int | None = None

    def start(self) -> None:
        if self.proc is None:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)

    def wait(self) -> Job:
        self.start()
        assert self.proc is not None
        if self.returncode is None:
            self.output, _ = self.proc.communicate(timeout=TIMEOUT_S)
            self.returncode = self.proc.returncode
        return self


JOBS: dict[str, Job] = {}


def _jobs(fixtures_dir: Path | None) -> dict[str, Job]:
    if "tiny" not in JOBS:
        JOBS["tiny"] = Job([sys.executable, "-m", "engine.cli.build", "--preset", "tiny", "--target", "onnx",
                            "--out", str(TINY_ENGINES), "--threads", "1", "--quiet"])
    if "modes" not in JOBS:
        JOBS["modes"] = Job([sys.executable, "-m", "engine.cli.build", "--preset", "tiny", "--target", "onnx",
                             "--out", str(MODE_ENGINES), "--graphs", *MODE_GRAPHS, "--no-parity", "--threads", "1",
                             "--quiet"])
    if fixtures_dir is not None and "fixture" not in JOBS:
        JOBS["fixture"] = Job([sys.executable, "-m", "engine.cli.fixtures", str(fixtures_dir), "--backend",
                               "onnxruntime", "--engines", str(FIXTURE_ENGINES), "--threads", "1"])
    return JOBS


FIXTURES = REPO.parent / "shared" / "fixtures" / "official"  # as tests/conftest.py finds them
HEAVY_FIXTURES = ("tiny_engines", "fixture_job")


def start_if_needed(items: list) -> None:
    """Start the tiny and fixture jobs now if any selected test will wait for one, and the mode-graph job
    if a test needs it (so nothing runs for a -k subset)."""
    wanted = {name for item in items for name in getattr(item, "fixturenames", ())}
    if wanted & {*HEAVY_FIXTURES, "mode_engines"}:
        jobs = _jobs(FIXTURES if FIXTURES.is_dir() else None)
        for name, job in jobs.items():
            if name != "modes" or ("mode_engines" in wanted and MODES_IN_SUITE):
                job.start()


def tiny_engines() -> tuple[Path, dict]:
    """The tiny preset's engines folder and its build report (built once per session)."""
    job = _jobs(None)["tiny"].wait()
    assert job.returncode == 0, job.output[-4000:]
    return TINY_ENGINES, json.loads((TINY_ENGINES / "build_report.json").read_text())


def mode_engines() -> Path:
    """An engines folder with the seven graphs (linked from the tiny build: same weights and options) and
    the fast modes' graphs ``MODE_GRAPHS``."""
    from engine.graphs.modules import GRAPH_NAMES

    tiny, _ = tiny_engines()
    job = _jobs(None)["modes"].wait()
    assert job.returncode == 0, job.output[-4000:]
    for graph in GRAPH_NAMES:
        if not (MODE_ENGINES / graph).exists():
            (MODE_ENGINES / graph).symlink_to(tiny / graph, target_is_directory=True)
    return MODE_ENGINES


def fixture_run(fixtures_dir: Path) -> Job:
    return _jobs(fixtures_dir)["fixture"].wait()


@atexit.register
def _cleanup() -> None:
    for job in JOBS.values():
        if job.proc is not None and job.proc.poll() is None:
            job.proc.kill()
    shutil.rmtree(ROOT, ignore_errors=True)
