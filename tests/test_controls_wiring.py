"""The live knobs (smoothing and motion controls, engine.config.controls) from their one declaration each:
every one is a flag of ``python -m engine.reenact`` and ``python -m engine.webcam``, a job field and a
stream start option of the server and a column of engine.batch's manifest, with the declared type and
limits; a value given there reaches the run; a bad value is one clear error."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.batch import manifest
from engine.cli import reenact, webcam
from engine.config.controls import CONTROL_NAMES, MotionControls
from engine.config.knobs import Knob, knob_fields
from engine.config.modes import OPTION_NAMES, RUN_KNOBS, RunOptions
from engine.serve import options as serve_options
from engine.serve.config import ServeConfig
from engine.serve.errors import ApiError


def _sample(default: Any, k: Knob) -> Any:
    """A value other than the default, within the declaration's limits."""
    if k.choices is not None:
        return next(c for c in k.choices if c != default)
    if isinstance(default, bool):
        return not default
    assert k.lo is not None and k.hi is not None
    return next(v for v in (k.lo + (k.hi - k.lo) / 2, k.lo) if v != default)


def _flag(name: str, value: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    return [flag] if value is True else [flag, str(value)]


CONTROLS = [(f.name, _sample(f.default, k)) for f, k in knob_fields(MotionControls)]


def test_the_controls_are_declared_once_and_every_run_knob_has_one_name() -> None:
    assert [f.name for f in fields(MotionControls)] == list(CONTROL_NAMES) == [n for n, _ in CONTROLS]
    assert len(set(OPTION_NAMES)) == len(OPTION_NAMES) == len(RUN_KNOBS)  # no knob declared twice
    assert set(CONTROL_NAMES) <= set(OPTION_NAMES)


@pytest.mark.parametrize(("name", "value"), CONTROLS)
def test_every_control_reaches_the_run_from_every_front_end(name: str, value: Any) -> None:
    # python -m engine.reenact: the flag, checked while parsing, is in the run the engine resolves
    run = reenact.parse_args(_flag(name, value)).run.resolve()
    assert getattr(run.controls, name) == value
    # python -m engine.webcam: the flag goes into its RunOptions (in process) or start options (server)
    assert webcam.controls_of(webcam.parse_args(_flag(name, value))) == {name: value}
    # the server: a job's form field (text) and a stream's start option (JSON) both resolve to the value
    assert name in serve_options.JOB_FIELDS and name in serve_options.RUN_FIELDS
    for raw in (str(value).lower() if isinstance(value, bool) else str(value), value):
        job = serve_options.parse({name: raw}, ServeConfig(), 128, serve_options.JOB_FIELDS)
        assert getattr(job.run.resolve().controls, name) == value
    # engine.batch: a manifest column of the declared type
    assert name in manifest.COLUMNS and manifest.OPTION_TYPES[name] is type(value)
    item_options = {name: manifest._value(name, str(value))}
    assert getattr(RunOptions(**item_options).resolve().controls, name) == value
    # the JSON a job is stored as keeps it
    assert getattr(RunOptions.from_json(json.loads(json.dumps(RunOptions(**item_options).to_json())))
                   .resolve().controls, name) == value


@pytest.mark.parametrize("bad", [["--smooth", "2"], ["--pose-scale", "nan"], ["--expression-scale", "-1"],
                                 ["--eyes", "left"], ["--lock-pose", "--absolute-motion"]])
def test_a_bad_control_on_the_cli_is_one_error_line_exit_2(bad: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as exit_:
        reenact.main([*bad, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize(("field", "raw"), [("smooth", "-1"), ("pose_scale", "nan"), ("expression_scale", "1e9"),
                                           ("lock_pose", "maybe"), ("lips", "left")])
def test_a_bad_control_on_the_server_is_a_422_naming_its_field(field: str, raw: str) -> None:
    with pytest.raises(ApiError) as err:
        serve_options.parse({field: raw}, ServeConfig(), 128, serve_options.JOB_FIELDS)
    assert err.value.status == 422 and err.value.field == field


def test_lock_pose_on_the_cli_keeps_the_source_pose_for_every_frame(tmp_path: Path, monkeypatch) -> None:
    """``--lock-pose`` through ``python -m engine.reenact``: the motion stage's rotation is the source's at
    every frame, while the driving head turns."""
    from engine.runtime import stages

    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # source, driving, resulting rotation
    original = stages.controlled_motion

    def recording(source, source_rotation, driving, driving_rotation, *args, **kwargs):
        kp = original(source, source_rotation, driving, driving_rotation, *args, **kwargs)
        seen.append((source_rotation, driving_rotation, kp.rotation))
        return kp

    monkeypatch.setattr(stages, "controlled_motion", recording)
    out = tmp_path / "out.mp4"
    argv = ["--size", "64", "--max-frames", "14", "--steps", "1", "--quiet", "--out", str(out), "--lock-pose"]
    assert reenact.main(argv) == 0
    assert json.loads(out.with_suffix(".json").read_text())["run"]["controls"]["lock_pose"] is True
    driving = torch.cat([d for _, d, _ in seen])
    rotations = torch.cat([r for _, _, r in seen])
    assert rotations.shape[0] >= 14 and (driving - driving[:1]).abs().max() > 1e-3  # the driving head turns
    assert torch.allclose(rotations, seen[0][0].expand_as(rotations), atol=1e-6)  # the source's pose, kept


def test_the_webcam_takes_steps_seed_size_and_device_from_their_declarations(capsys) -> None:
    from engine.config.settings import SEED_MAX

    # its own default (one step keeps it live), the declared limits otherwise
    assert webcam.run_options_of(webcam.parse_args([])) == {"steps": 1}
    given = webcam.parse_args(["--steps", "3", "--seed", "7", "--size", "128", "--device", "cpu"])
    assert webcam.run_options_of(given) == {"steps": 3, "seed": 7}
    assert (given.size, given.device) == (128, "cpu")
    for bad in (["--steps", "0"], ["--seed", str(SEED_MAX + 1)], ["--size", "100"]):
        with pytest.raises(SystemExit) as exit_:
            webcam.parse_args(bad)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "error: " in err and err.count("\n") == 1, err
