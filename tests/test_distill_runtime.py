"""The tiny VAE decoder, the student file and the ``ultra`` mode on the tiny preset (64 px): loading
(key checks, one clear error), an ultra render and stream, a student training step that lowers its
loss, ``engine.distill --what vae-decoder`` with resume, and the cost model's ultra budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.api import EngineOptions, Reenactor, RunOptions
from engine.cli import distill as distill_cli
from engine.cli import reenact as reenact_cli
from engine.distill import frvd
from engine.errors import InputError, WeightsError
from engine.io import read_video
from engine.models import networks, student, taesd

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets"
SIZE = 64


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1-step 'student' (the teacher's own weights: the plumbing, not a trained one) and a TAESD decoder."""
    d = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    model, _, nets = networks.load_preset("tiny", None)
    taesd.save(taesd.build(4, taesd.width_for(model.vae)), d / "taesd.safetensors", {"note": "seeded"})
    student.save(nets, d / "student.safetensors", steps=1, kv_downsample=2, preset="tiny")
    return {"student": d / "student.safetensors", "taesd": d / "taesd.safetensors", "dir": d}


@pytest.fixture(scope="module")
def ultra_engine(files: dict[str, Path]) -> Reenactor:
    return Reenactor.from_preset("tiny", EngineOptions(size=SIZE, student=files["student"],
                                                       tiny_decoder=files["taesd"]))


def test_taesd_layouts_load_the_same(tmp_path: Path) -> None:
    torch.manual_seed(1)
    dec = taesd.build(4, 16)
    sd = dec.state_dict()
    original = {f"{int(k.split('.')[1]) + 1}.{k.split('.', 2)[2]}": v for k, v in sd.items()}  # madebyollin's
    torch.save(original, tmp_path / "taesd_decoder.pth")
    torch.save({f"decoder.{k}": v for k, v in sd.items()} | {"encoder.x": torch.zeros(1)}, tmp_path / "full.pth")
    z = torch.randn(1, 4, 8, 8)
    for name in ("taesd_decoder.pth", "full.pth"):
        assert torch.equal(taesd.load(tmp_path / name, 4, 16)(z), dec.eval()(z))
    with pytest.raises(WeightsError, match="wrong shape"):
        taesd.load(tmp_path / "full.pth", 4, 64)
    with pytest.raises(WeightsError, match="does not exist"):
        taesd.load(tmp_path / "nope.safetensors")


def test_ultra_render_and_stream(ultra_engine: Reenactor) -> None:
    src = ultra_engine.set_source(ASSETS / "source.png")
    frames = read_video(ASSETS / "driving.mp4", SIZE, 16).frames
    offline = ultra_engine.render(src, frames, mode="ultra").frames
    assert offline.shape == (16, SIZE, SIZE, 3)
    with ultra_engine.stream(src, mode="ultra") as s:
        for f in frames:
            s.push(f)
            s.ready()
        s.end()
        streamed = np.stack([r.frame for r in s.results()])
    assert streamed.shape == offline.shape and streamed.std() > 0
    cfg = ultra_engine.run_config(RunOptions(mode="ultra"))
    assert (cfg.sampler, cfg.steps, cfg.decoder, cfg.kv_downsample) == ("distilled", 1, "tiny", 2)
    with pytest.raises(InputError, match="needs the teacher"):
        ultra_engine.run_config(RunOptions(mode="exact"))
    with pytest.raises(InputError, match="distilled for 1 steps"):
        ultra_engine.run_config(RunOptions(mode="ultra", steps=2))


def test_fast_and_turbo_run_the_student(ultra_engine: Reenactor) -> None:
    """On an engine given a student, fast/turbo run its sampler and keep their windows, WFM reuse, decoder."""
    for mode, overlap in (("fast", 6), ("turbo", 2)):
        cfg = ultra_engine.run_config(RunOptions(mode=mode))
        assert (cfg.sampler, cfg.steps, cfg.guidance_mode, cfg.kv_downsample) == ("distilled", 1, "none", 2), mode
        assert (cfg.overlap, cfg.wfm_every, cfg.decoder) == (overlap, 2, "full"), mode
    with pytest.raises(InputError, match="distilled for 1 steps"):
        ultra_engine.run_config(RunOptions(mode="turbo", steps=4))
    # turbo with ultra's remaining knobs is ultra's computation, bit for bit: the student really runs
    src = ultra_engine.set_source(ASSETS / "source.png")
    frames = read_video(ASSETS / "driving.mp4", SIZE, 3).frames
    ultra = ultra_engine.render(src, frames, mode="ultra").frames
    turbo = ultra_engine.render(src, frames, options=RunOptions(mode="turbo", overlap=1, decoder="tiny")).frames
    assert np.array_equal(turbo, ultra)


def _reenact(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = reenact_cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["no-student", "missing", "mismatch", "bad-taesd", "turbo-missing"])
def test_reenact_bad_distilled_inputs(files: dict[str, Path], tmp_path: Path, capsys, case: str) -> None:
    d = files["dir"]
    if case == "mismatch":  # a student of another model: one tensor of another shape
        from safetensors.torch import load_file, save_file

        sd = load_file(str(files["student"]))
        key = next(k for k in sd if k.startswith("denoiser.") and sd[k].ndim == 4)
        sd[key] = torch.zeros(1, *sd[key].shape[1:])
        save_file(sd, str(tmp_path / "other.safetensors"), metadata={"format": student.FORMAT, "info": json.dumps(
            {"steps": 1, "kv_downsample": 2, "preset": "tiny"})})
    flags = {"no-student": ["--tiny-decoder", str(files["taesd"])],
             "missing": ["--student", str(d / "nope.safetensors"), "--tiny-decoder", str(files["taesd"])],
             "mismatch": ["--student", str(tmp_path / "other.safetensors"), "--tiny-decoder", str(files["taesd"])],
             "bad-taesd": ["--student", str(files["student"]), "--tiny-decoder", str(files["student"])],
             "turbo-missing": ["--student", str(d / "nope.safetensors")]}[case]
    out = tmp_path / "out.mp4"
    mode = "turbo" if case.startswith("turbo") else "ultra"
    code, err = _reenact(["--mode", mode, "--size", str(SIZE), "--max-frames", "2", "--quiet", "--out", str(out),
                          *flags], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert {"no-student": "engine.distill --what student", "missing": "does not exist", "mismatch": "does not fit",
            "bad-taesd": "not a TAESD decoder", "turbo-missing": "does not exist"}[case] in err
    assert not out.exists()


def test_student_training_step_lowers_its_loss(files: dict[str, Path]) -> None:
    """Teacher-forced steps towards a fixed trajectory (not the teacher's: the mechanics of the update)."""
    engine = Reenactor.from_preset("tiny", EngineOptions(size=SIZE))
    ex = frvd.Example(engine.set_source(ASSETS / "source.png").features,
                      read_video(ASSETS / "driving.mp4", SIZE, 14).frames, seed=0)
    cfg = frvd.knob_cfg(engine, "exact", sampler="distilled", steps=1, guidance_mode="none")
    prep = frvd.prepare(engine, cfg, ex)
    gen = torch.Generator().manual_seed(0)
    traj = [prep.x_init, torch.randn(prep.x_init.shape, generator=gen)]
    from engine.graphs.mode_modules import DenoiserCondGraph

    denoiser = engine.backend.nets.denoiser
    denoiser.requires_grad_(True)
    opt = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        losses.append(frvd.train_step(engine, cfg, prep, traj, DenoiserCondGraph(engine.backend.nets)))
        opt.step()
    denoiser.requires_grad_(False)
    assert losses[-1] < losses[0], losses


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


DATA = ["--data", str(ASSETS), "--size", str(SIZE), "--frames", "2", "--examples", "2", "--save-every", "1",
        "--quiet"]  # engine/assets: two clips, the second held out


def test_distill_vae_decoder_resumes_bit_identically(tmp_path: Path, capsys) -> None:
    """engine.train's loop: 3 iterations == 2, then a resumed run to 3 (the same losses, bit for bit)."""
    base = ["--what", "vae-decoder", *DATA]
    assert distill_cli.main([*base, "--out", str(tmp_path / "whole"), "--iters", "3"]) == 0
    part = tmp_path / "part"
    assert distill_cli.main([*base, "--out", str(part), "--iters", "2"]) == 0
    assert distill_cli.main([*base, "--out", str(part), "--iters", "3"]) == 0
    assert _losses(part) == _losses(tmp_path / "whole") and len(set(_losses(part))) == 3
    kept = sorted(p.name for p in part.iterdir() if p.name.startswith("checkpoint-"))
    assert kept == ["checkpoint-2", "checkpoint-3"]
    report = json.loads((part / "report.json").read_text())
    assert report["held_out_frames"] == 2 and np.isfinite(report["held_out_psnr_vs_full_decoder"])
    taesd.load(part / "taesd_decoder.safetensors", 4, report["width"])
    capsys.readouterr()
    # a run folder of another distillation is refused; one clip leaves nothing to hold out
    assert distill_cli.main(["--what", "student", *DATA, "--out", str(part), "--iters", "4"]) == 2
    assert "use another --out" in capsys.readouterr().err
    one = ["--what", "vae-decoder", "--data", str(ASSETS / "driving.mp4"), "--out", str(tmp_path / "one")]
    assert distill_cli.main(one) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--holdout 0" in err, err
    assert not (tmp_path / "one").exists()


def test_distill_student_resumes_bit_identically(tmp_path: Path) -> None:
    """The student's loop resumed (teacher trajectories from the run folder's cache) == one whole run."""
    from engine.distill.train import DistillConfig, distill_loop

    def cfg(out: Path, iters: int) -> DistillConfig:
        return DistillConfig(what="student", data=ASSETS / "driving.mp4", out=out, size=SIZE, frames=2, examples=1,
                             holdout=0, iters=iters, lr=1e-3, save_every=1, quiet=True)

    whole = distill_loop(cfg(tmp_path / "whole", 3))
    assert whole is not None and whole["drift"] == []
    shutil.copytree(tmp_path / "whole" / "teacher", tmp_path / "part" / "teacher")  # the cache, reused
    distill_loop(cfg(tmp_path / "part", 2))
    distill_loop(cfg(tmp_path / "part", 3))
    assert _losses(tmp_path / "part") == _losses(tmp_path / "whole")
    a = student.read_info(tmp_path / "whole" / "student.safetensors")[0]
    b = student.read_info(tmp_path / "part" / "student.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distill_two_processes_equal_one_with_twice_the_accumulation(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (gloo), 1 example each == 1 process accumulating 2 (engine.train's DDP)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["--what", "vae-decoder", *DATA, "--holdout", "0", "--iters", "2", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), "-m", "engine.distill", *common, "--out", str(tmp_path / "ddp")],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    try:
        assert distill_cli.main([*common, "--accumulate", "2", "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(_losses(tmp_path / "ddp"), _losses(tmp_path / "one"), rtol=1e-5)
    a = taesd.load(tmp_path / "ddp" / "taesd_decoder.safetensors", 4, 16).state_dict()
    b = taesd.load(tmp_path / "one" / "taesd_decoder.safetensors", 4, 16).state_dict()
    assert max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in a) < 1e-4


def test_cost_model_ultra_within_real_time_budget() -> None:
    from benchmarks.count_flops import calls_per_video
    from engine.config import modes

    calls = calls_per_video(100, modes.MODES["ultra"])
    assert calls["tiny_decoder"] == 100 and calls["vae_decoder"] == 0 and calls["wfm"] == calls["unet"] == 0
    assert calls["wfm_cond"] == calls["unet_cond"] == 8  # 1 evaluation x 8 windows (overlap 1)
