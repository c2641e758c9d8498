"""The session API: the README snippet as written, cached sources, cancellation that leaves nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from engine.api import EngineOptions, Reenactor, RunOptions
from engine.cli.reenact import DEFAULT_DRIVING, DEFAULT_SOURCE
from engine.errors import EngineError, InputError
from engine.io.video import read_video, write_video
from engine.runtime import Cancelled, RunControl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine() -> Reenactor:
    return Reenactor.from_preset("tiny")


def count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def readme_snippet() -> str:
    """The Python block of README's 'Python API' section, verbatim."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(DEFAULT_SOURCE, tmp_path / "face.png")
    # the bundled clip's first 14 frames (one window): the snippet runs as written, in half the time
    clip = read_video(DEFAULT_DRIVING, 128, max_frames=14)
    write_video(tmp_path / "drive.mp4", clip.frames, clip.rate)
    monkeypatch.chdir(tmp_path)
    with av.open("drive.mp4") as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    code = readme_snippet()
    assert "RunOptions(steps=4)" in code and "r.render(src, \"drive.mp4\", out=\"out.mp4\")" in code
    ns: dict = {"frame_rgb_uint8": first}
    exec(compile(code, "README.md (Python API)", "exec"), ns)  # noqa: S102 - the documented snippet itself

    r, video, s, out = ns["r"], ns["video"], ns["s"], ns["out"]
    assert video.out == Path("out.mp4") and count_frames(Path("out.mp4")) == video.num_frames == 14
    assert json.loads(Path("out.json").read_text())["run"]["steps"] == 25  # render: exact, the defaults
    assert s.lookahead == 13
    # one frame pushed, flushed by end(): its result comes back
    assert out.index == 0 and out.frame.shape == (128, 128, 3) and out.frame.dtype == np.uint8 and out.latency > 0
    r.close()


def test_set_source_is_cached_by_content(engine: Reenactor) -> None:
    a = engine.set_source(DEFAULT_SOURCE)
    b = engine.set_source(np.array(a.image))
    assert a is b


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_render_cancellation_leaves_no_output(engine: Reenactor, tmp_path: Path) -> None:
    control = RunControl()
    seen = []

    def progress(stage: str, done: int, total: int) -> None:
        seen.append(stage)
        if stage == "denoise":
            control.cancel()

    control.progress = progress
    with pytest.raises(Cancelled):
        engine.render(DEFAULT_SOURCE, DEFAULT_DRIVING, tmp_path / "out.mp4", options=RunOptions(steps=3),
                      control=control)
    assert "denoise" in seen and "decode" not in seen
    assert _no_leftovers(tmp_path) == []


def test_render_cancelled_while_writing_leaves_no_output(engine: Reenactor, tmp_path: Path) -> None:
    control = RunControl()
    control.progress = lambda stage, done, total: control.cancel() if stage == "decode" else None
    with pytest.raises(Cancelled):
        engine.render(DEFAULT_SOURCE, DEFAULT_DRIVING, tmp_path / "out.mp4", options=RunOptions(steps=1),
                      control=control)
    assert _no_leftovers(tmp_path) == []


def test_stream_cancellation_stops_results_and_frees_the_engine(engine: Reenactor) -> None:
    control = RunControl()
    frames = np.zeros((20, 128, 128, 3), np.uint8)
    with engine.stream(DEFAULT_SOURCE, RunOptions(steps=1), control) as s:
        for f in frames:
            s.push(f)
        control.cancel()
        s.end()
        with pytest.raises(Cancelled):
            list(s.results())
    # the engine's lock was released: another run works
    assert engine.render(DEFAULT_SOURCE, frames[:3], options=RunOptions(steps=1)).frames.shape == (3, 128, 128, 3)


def test_bad_options_are_one_clear_error(engine: Reenactor) -> None:
    with pytest.raises(InputError, match="finite"):
        engine.render(DEFAULT_SOURCE, DEFAULT_DRIVING, options=RunOptions(guidance=float("nan")))
    with pytest.raises(InputError, match="steps"):
        engine.run_config(RunOptions(steps=0))
    with pytest.raises(InputError, match="preset"):
        Reenactor.from_preset("huge")
    with pytest.raises(InputError, match="multiple of 64"):
        Reenactor.from_preset("tiny", EngineOptions(size=100))
    with pytest.raises(EngineError, match="official"):
        Reenactor.from_preset("official")


def test_networks_built_for_one_time_context_refuse_another() -> None:
    from dataclasses import replace

    from engine.backends import BackendError, create_backend
    from engine.models.networks import load_preset

    r = Reenactor.from_preset("tiny")
    _, _, nets = load_preset("tiny", None, 0, "fixed")
    cfg = replace(r.cfg, time_context="release")
    with pytest.raises(BackendError, match="time context"):
        create_backend("torch", cfg, nets=nets)
