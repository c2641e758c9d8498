"""Shared, once-per-session background jobs for the export tests (not a test module).

Two slow jobs: ``python -m engine.build --preset tiny`` (all seven graphs) and
``python -m engine.fixtures DIR --backend onnxruntime`` (exports the fixture's own weights,
then reproduces the pipeline fixtures). Each exports a ~19k-node denoiser, which dominates the
export tests' time, so both start as early as possible, side by side (one core each), and the
tests that need them wait. Everything lands in one temporary folder removed at exit.

Under pytest-xdist the workers share one folder per run (named by the run's id): the first worker to
claim a job starts it detached, writing its output and exit status to files that every worker waits
on; the controller (tests/conftest.py) kills what is left and removes the folder at the end.
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
XDIST_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # set in xdist workers: one id per run


def shared_root(run_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"frvd-export-tests-{run_id}"


if XDIST_RUN:
    ROOT = shared_root(XDIST_RUN)
    ROOT.mkdir(exist_ok=True)
else:
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
    name: str
    cmd: list[str]
    proc: subprocess.Popen | None = None
    output: str = ""
    returncode: int | None = None
    claimed: bool = False  # xdist: this worker, or another, started it

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        if XDIST_RUN:
            if self.claimed:
                return
            self.claimed = True
            try:
                fd = os.open(ROOT / f"{self.name}.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return  # another worker runs it
            log, rc = ROOT / f"{self.name}.log", ROOT / f"{self.name}.rc"
            script = f"{shlex.join(self.cmd)} >{shlex.quote(str(log))} 2>&1; echo $? >{shlex.quote(str(rc))}.tmp; " \
                     f"mv {shlex.quote(str(rc))}.tmp {shlex.quote(str(rc))}"
            proc = subprocess.Popen(["sh", "-c", script], cwd=REPO, env=env, start_new_session=True)
            os.write(fd, str(proc.pid).encode())
            os.close(fd)
        elif self.proc is None:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)

    def wait(self) -> Job:
        self.start()
        if self.returncode is not None:
            return self
        if XDIST_RUN:
            rc, deadline = ROOT / f"{self.name}.rc", time.monotonic() + TIMEOUT_S
            while not rc.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.cmd} did not finish in {TIMEOUT_S} s")
                time.sleep(0.5)
            self.output = (ROOT / f"{self.name}.log").read_text()
            self.returncode = int(rc.read_text())
            return self
        assert self.proc is not None
        self.output, _ = self.proc.communicate(timeout=TIMEOUT_S)
        self.returncode = self.proc.returncode
        return self


JOBS: dict[str, Job] = {}


def _jobs(fixtures_dir: Path | None) -> dict[str, Job]:
    if "tiny" not in JOBS:
        JOBS["tiny"] = Job("tiny", [sys.executable, "-m", "engine.cli.build", "--preset", "tiny", "--target", "onnx",
                            "--out", str(TINY_ENGINES), "--threads", "1", "--quiet"])
    if "modes" not in JOBS:
        JOBS["modes"] = Job("modes", [sys.executable, "-m", "engine.cli.build", "--preset", "tiny", "--target", "onnx",
                             "--out", str(MODE_ENGINES), "--graphs", *MODE_GRAPHS, "--no-parity", "--threads", "1",
                             "--quiet"])
    if fixtures_dir is not None and "fixture" not in JOBS:
        JOBS["fixture"] = Job("fixture", [sys.executable, "-m", "engine.cli.fixtures", str(fixtures_dir), "--backend",
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


def cleanup_shared(run_id: str) -> None:
    """xdist controller, at the end: stop the jobs the workers started, remove their folder."""
    root = shared_root(run_id)
    for lock in root.glob("*.lock"):
        try:
            os.killpg(int(lock.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass  # finished already
    shutil.rmtree(root, ignore_errors=True)


@atexit.register
def _cleanup() -> None:
    if XDIST_RUN:
        return  # shared with the other workers: the controller cleans up
    for job in JOBS.values():
        if job.proc is not None and job.proc.poll() is None:
            job.proc.kill()
    shutil.rmtree(ROOT, ignore_errors=True)
