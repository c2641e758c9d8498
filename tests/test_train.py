"""Training (engine.train) on the tiny preset, CPU: the fresh start is the release's ``from_unet`` key by key,
a resumed run continues with bit-identical losses, a checkpoint renders through the engine, and bad input
is one ``error:`` line with exit 2 and nothing left behind."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import train as train_cli
from engine.config import presets
from engine.models.networks import build_networks
from engine.models.wfm import WarpingFeatureMapper
from engine.train import checkpoint as ckpt
from engine.train.data import Layout
from engine.train.loop import TrainConfig, train_loop
from engine.train.setup import build

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "engine" / "assets"
SMALL = dict(preset="tiny", size=64, frames=2, batch=1, workers=0, quiet=True, lr=1e-3)


def test_fresh_start_is_from_unet_key_by_key() -> None:
    torch.manual_seed(0)
    nets = build_networks(presets.tiny())
    with torch.no_grad():
        for p in nets.denoiser.unet.parameters():
            p.normal_()  # every UNet tensor distinct, so a wrong source key cannot match by accident
    wfm = WarpingFeatureMapper.from_unet(nets.denoiser.unet)
    unet_sd, wfm_sd = nets.denoiser.unet.state_dict(), wfm.state_dict()
    copied = zero = other = 0
    for key, value in wfm_sd.items():
        if ".proj_residual." in key:
            assert torch.count_nonzero(value) == 0, key
            zero += 1
        elif "fullattentions" in key:
            assert torch.equal(value, unet_sd[key.replace("fullattentions", "attentions")]), key
            copied += 1
        elif key in unet_sd:
            assert torch.equal(value, unet_sd[key]), key
            copied += 1
        else:  # zero-convs, fusion blocks and fusion_proj: the WFM's own
            assert key.startswith(("warping_feature_mapper_", "fusion_")), key
            other += 1
    assert zero > 0 and copied > 0 and other > 0
    for key, value in wfm_sd.items():  # ControlNet-style injection paths start at zero
        if key.startswith(("warping_feature_mapper_", "fusion_proj")):
            assert torch.count_nonzero(value) == 0, key


def test_layout_two_processes_see_the_micro_batches_of_one_with_twice_the_accumulation() -> None:
    one, two = Layout(batch=2, accumulate=2, world=1), Layout(batch=2, accumulate=1, world=2)
    for step in range(3):
        assert [one.micro_batch(step, a, 0) for a in range(2)] == [two.micro_batch(step, 0, r) for r in range(2)]


def test_resume_is_bit_identical_and_a_checkpoint_renders(tmp_path: Path) -> None:
    whole = train_loop(TrainConfig(data=CLIPS, out=tmp_path / "whole", steps=3, **SMALL))
    # interrupted after step 2 (what Ctrl-C / SIGTERM do: set the stop event), then resumed
    stop = threading.Event()
    part = train_loop(TrainConfig(data=CLIPS, out=tmp_path / "part", steps=3, **SMALL), stop,
                      on_step=lambda done, _record: stop.set() if done == 2 else None)
    assert part.stopped and part.checkpoint == tmp_path / "part" / "checkpoint-2"
    rest = train_loop(TrainConfig(data=CLIPS, out=tmp_path / "part", steps=3, **SMALL))
    assert rest.start_step == 2 and part.losses == {k: whole.losses[k] for k in (0, 1)}
    assert rest.losses == {2: whole.losses[2]}  # bit-identical, not approximately
    assert len(set(whole.losses.values())) == 3

    # the last checkpoint holds the release's two files; tiny + that folder renders with them
    folder = whole.checkpoint
    assert folder == tmp_path / "whole" / "checkpoint-3"
    assert sorted(p.name for p in folder.iterdir()) == ["head_embedder.pth", "state.pt", "warping_feature_mapper.pth"]
    from engine.api import EngineOptions, Reenactor, RunOptions

    trained = torch.load(folder / "warping_feature_mapper.pth", weights_only=True)
    with Reenactor.from_preset("tiny", EngineOptions(size=64), weights=folder) as engine:
        loaded = engine.backend.nets.denoiser.wfm.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in trained.items())
        frames = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
        result = engine.render(frames[0], frames, options=RunOptions(steps=1))
        assert result.frames.shape == (2, 64, 64, 3)
    with Reenactor.from_preset("tiny", EngineOptions(size=64)) as seeded:
        assert not torch.equal(seeded.backend.nets.denoiser.wfm.state_dict()[next(iter(trained))],
                               next(iter(trained.values())))


def test_checkpoints_keep_the_last_k_and_write_atomically(tmp_path: Path) -> None:
    model, nets = build("tiny", None, "fresh", seed=0)
    pair = {"warping_feature_mapper": nets.denoiser.wfm, "head_embedder": nets.head_net}
    for step in (1, 2, 3):
        ckpt.save(tmp_path, step, pair, {"step": step, "meta": {"preset": "tiny", "fingerprint": "x"}}, keep=2)
    assert [s for s, _ in ckpt.checkpoints(tmp_path)] == [2, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    with pytest.raises(Exception, match="preset 'tiny'"):
        ckpt.load(tmp_path / "checkpoint-3", "other", "official")


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = train_cli.main(argv)
    return code, capsys.readouterr().err


def test_bad_inputs_are_one_error_line_and_leave_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "broken.mp4").write_bytes(b"not a video")
    cases = {
        "missing data": ["--data", str(tmp_path / "nope")],
        "no readable clip": ["--data", str(junk)],
    }
    for what, args in cases.items():
        code, err = _cli([*args, "--out", str(out), "--steps", "1"], capsys)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1, (what, err)
        assert "Traceback" not in err
        assert not out.exists(), what

    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", str(CLIPS), "--out", str(out), "--steps", "0"])
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err and not out.exists()

    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        code, err = _cli(["--data", str(CLIPS), "--out", str(locked / "run"), "--steps", "1"], capsys)
        locked.chmod(0o700)
        assert code == 2 and "not writable" in err and not (locked / "run").exists()

    # a run folder holding another preset's checkpoint is refused and left as it was
    wrong = tmp_path / "wrong" / "checkpoint-5"
    wrong.mkdir(parents=True)
    torch.save({"step": 5, "meta": {"preset": "official", "fingerprint": "0"}}, wrong / "state.pt")
    code, err = _cli(["--data", str(CLIPS), "--out", str(wrong.parent), "--steps", "6", "--size", "64",
                      "--workers", "0"], capsys)
    assert code == 2 and "written for preset 'official'" in err
    assert sorted(p.name for p in wrong.parent.iterdir()) == ["checkpoint-5"]
    shutil.rmtree(tmp_path / "wrong")


def test_two_processes_equal_one_with_twice_the_accumulation(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (gloo), batch 1 each == 1 process accumulating 2 micro-batches."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["--data", str(CLIPS), "--size", "64", "--frames", "2", "--steps", "2", "--workers", "0",
              "--lr", "1e-3", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), "-m", "engine.train", *common, "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = [json.loads(line)["loss"] for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]

    torch.set_num_threads(1)
    try:
        one = train_loop(TrainConfig(data=CLIPS, out=tmp_path / "one", steps=2, accumulate=2,
                                     **dict(SMALL, lr=1e-3)))
    finally:
        torch.set_num_threads(2)
    assert len(ddp) == 2
    np.testing.assert_allclose(ddp, [one.losses[0], one.losses[1]], rtol=1e-5)
    a = torch.load(tmp_path / "ddp" / "checkpoint-2" / "warping_feature_mapper.pth", weights_only=True)
    b = torch.load(tmp_path / "one" / "checkpoint-2" / "warping_feature_mapper.pth", weights_only=True)
    worst = max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in a)
    assert worst < 1e-4, worst


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    from engine.train.modules import from_networks
    from engine.train.setup import enable_gradient_checkpointing
    from engine.train.step import Draws, set_batch_layout, train_step

    model, nets = build("tiny", None, "fresh", seed=0)
    modules = from_networks(nets, model)
    modules.prepare_for_training()
    set_batch_layout(modules, 1)
    gen = torch.Generator().manual_seed(1)
    vid = torch.rand((1, 2, 3, 64, 64), generator=gen) * 2 - 1
    draws = Draws.sample(1, 2, 64, generator=gen)
    draws.random_p.fill_(0.5)  # nothing dropped

    def grads() -> tuple[float, dict[str, torch.Tensor]]:
        for p in modules.wfm.parameters():
            p.grad = None
        loss = train_step(modules, vid, vid[:, :1], draws).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in modules.wfm.named_parameters() if p.grad is not None}

    plain_loss, plain = grads()
    assert enable_gradient_checkpointing(modules.wfm) == 5 and enable_gradient_checkpointing(modules.unet) == 9
    ckpt_loss, checkpointed = grads()
    assert ckpt_loss == plain_loss and plain.keys() == checkpointed.keys()
    for name, g in plain.items():
        assert torch.allclose(checkpointed[name], g, rtol=1e-4, atol=1e-6 * float(g.abs().max()) + 1e-12), name


def test_8bit_adam_without_bitsandbytes_is_a_clear_error(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    out = tmp_path / "run"
    code, err = _cli(["--data", str(CLIPS), "--out", str(out), "--steps", "1", "--optimizer", "adamw8bit",
                      "--workers", "0", "--size", "64"], capsys)
    assert code == 2 and "bitsandbytes" in err and err.count("error:") == 1 and not out.exists()
