"""Exact mode's speed side by side with the release's code path (diffusers 0.27.2), same CPU, same weights.

    python benchmarks/bench_exact_speed.py [--fixtures ../shared/fixtures/official] [--side-venv /tmp/side-venv]
                                           [--threads 2] [--rounds 5] [--calls 3] [--frames 40] [--steps 5]
                                           [--json out.json]

1. **One denoiser window call** (WFM + UNet + infofill, the fixture's CFG pair, 14 frames) on the fixture
   weights: ours (``engine.models``, as the engine runs it) against a release-equivalent built in a SIDE
   environment from diffusers 0.27.2's own modules (the version the release pins): its
   ``UNetSpatioTemporalConditionModel`` for the UNet (with the release's in-loop residual additions), and
   the WFM from the same 0.27.2 blocks plus the release's full-attention transformer and fusion blocks.
   The side run checks its output against the fixture's ``noise_pred_window`` before timing.
2. **The plain UNet** (no residuals): ours against diffusers 0.27.2's class itself.
3. **A whole exact run** (fixture pipeline weights, the fixture's driving clip tiled to ``--frames``,
   ``--steps`` Euler steps) at one window per call and at the default batch, interleaved: our total and
   denoise seconds and whether both give the same frames; the motion branch side by side (ours against
   the release's per-frame loop with torch's grid_sample on the same networks); and a release-style
   estimate = our source/decode/writing seconds + (our window calls x the release-equivalent's per-call
   median) + its motion branch (and, as a lower bound, with its motion counted at our speed).

Each round runs both sides in fresh processes, one after the other, the order alternating (keeping both
resident made our side's 2-thread timings stall for seconds at a time), ``--calls`` timed calls each
after a warm-up; medians over all calls are quoted, wall and process CPU time: the 2 cores are shared, so
single timings are noisy. Without the side environment (diffusers 0.27.2, torch, safetensors; never a
project dependency) parts 1-2 are skipped with a message.

Set up the side environment once (outside the project):
    python -m venv /tmp/side-venv && /tmp/side-venv/bin/pip install torch==2.13.0 && \\
    /tmp/side-venv/bin/pip install diffusers==0.27.2 huggingface-hub==0.23.2 "numpy<2" safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = ROOT.parent / "shared" / "fixtures" / "official"


# ------------------------------------------------------------------------ release side (diffusers 0.27.2)


def _release_models(fixtures: Path):  # noqa: ANN202  (runs in the side venv)
    """The release's WFM + UNet (residual quirk) rebuilt from diffusers 0.27.2 modules; returns callables."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNetSpatioTemporalConditionModel
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps
    from diffusers.models.resnet import ResnetBlock2D
    from safetensors.torch import load_file
    from torch import nn

    config = json.loads((fixtures / "wfm_unet_config.json").read_text())["unet_config"]

    class FullTemporal(nn.Module):  # the release's TransformerFullTemporalModel (forward as it runs it)
        def __init__(self, heads: int, channels: int) -> None:
            super().__init__()
            self.norm = nn.GroupNorm(32, channels, eps=1e-6)
            self.proj_in = nn.Linear(channels, channels)
            self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, channels // heads)])
            self.time_pos_embed = TimestepEmbedding(channels, channels * 4, out_dim=channels)
            self.time_proj = Timesteps(channels, True, 0)
            self.proj_out = nn.Linear(channels, channels)
            self.proj_residual = nn.Linear(channels, channels)

        def forward(self, h: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor:
            bf, _, height, width = h.shape
            frames = indicator.shape[-1]
            batch = bf // frames
            h = self.norm(h)
            c = h.shape[1]
            h = h.permute(0, 2, 3, 1).reshape(batch, frames * height * width, c)
            residual = self.proj_residual(h)
            h = self.proj_in(h)
            ids = torch.arange(frames * height * width).repeat(batch, 1).reshape(-1)
            emb = self.time_pos_embed(self.time_proj(ids).to(h.dtype)).reshape(batch, frames * height * width, -1)
            for block in self.transformer_blocks:
                h = block(h, encoder_hidden_states=None) + emb
            h = self.proj_out(h).reshape(bf, height, width, c).permute(0, 3, 1, 2).contiguous()
            return h + residual.reshape(bf, height, width, c).permute(0, 3, 1, 2).contiguous()

    class IFM(nn.Module):
        def __init__(self, lateral: int, inner: int) -> None:
            super().__init__()
            self.resLateral = ResnetBlock2D(in_channels=lateral, out_channels=lateral, temb_channels=None)
            self.resStraight = ResnetBlock2D(in_channels=inner, out_channels=lateral, temb_channels=None)

        def forward(self, lateral: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            return self.resStraight(h, None) + self.resLateral(lateral, None)

    unet = UNetSpatioTemporalConditionModel(**config)
    unet.load_state_dict(load_file(fixtures / "wfm_unet_unet.safetensors"), strict=True)
    wfm = UNetSpatioTemporalConditionModel(**config)  # conv_in, embeddings, down and mid blocks
    del wfm.up_blocks, wfm.conv_norm_out, wfm.conv_act, wfm.conv_out
    chans = config["block_out_channels"]
    heads = config["num_attention_heads"]
    for i, block in enumerate(wfm.down_blocks):
        if hasattr(block, "attentions"):
            block.fullattentions = nn.ModuleList(FullTemporal(heads[i], chans[i]) for _ in block.attentions)
    wfm.mid_block.fullattentions = nn.ModuleList([FullTemporal(heads[-1], chans[-1])])
    convs = [nn.Conv2d(chans[0], chans[0], 1)]
    for i, c in enumerate(chans):
        convs += [nn.Conv2d(c, c, 1) for _ in range(config["layers_per_block"])]
        convs += [nn.Conv2d(c, c, 1)] if i < len(chans) - 1 else []
    wfm.warping_feature_mapper_down_blocks = nn.ModuleList(convs)
    wfm.warping_feature_mapper_mid_block = nn.Conv2d(chans[-1], chans[-1], 1)
    n = len(chans)
    for j in range(1, n):
        setattr(wfm, f"fusion_block{j}", IFM(chans[n - 1 - j], chans[n - j]))
    wfm.fusion_proj = nn.Conv2d(chans[0], config["out_channels"], 1)
    wfm.load_state_dict(load_file(fixtures / "wfm_unet_warping_feature_mapper.safetensors"), strict=True)
    unet.eval(), wfm.eval()
    layers = config["layers_per_block"]
    laterals = [layers * (i + 1) + i for i in range(n - 1)][::-1]  # skip index of each block's last layer

    def embed(model, sample, timestep, ehs, ids):  # noqa: ANN001, ANN202
        batch, frames = sample.shape[:2]
        t = timestep[None].expand(batch)
        emb = model.time_embedding(model.time_proj(t).to(sample.dtype))
        emb = emb + model.add_embedding(model.add_time_proj(ids.flatten()).reshape(batch, -1).to(emb.dtype))
        indicator = torch.zeros(batch, frames, dtype=sample.dtype)
        return (sample.flatten(0, 1), emb.repeat_interleave(frames, 0), ehs.repeat_interleave(frames, 0),
                indicator)

    def wfm_forward(sample, timestep, ehs, ids, heads_cfg):  # noqa: ANN001, ANN202
        batch, frames = sample.shape[:2]
        h, emb, ctx, ind = embed(wfm, sample, timestep, ehs, ids)
        h = wfm.conv_in(h) + heads_cfg
        skips = [h]
        for block in wfm.down_blocks:
            if hasattr(block, "fullattentions"):
                for resnet, attn, full in zip(block.resnets, block.attentions, block.fullattentions):
                    h = resnet(h, emb, image_only_indicator=ind)
                    h0 = h
                    h = attn(h, encoder_hidden_states=ctx, image_only_indicator=ind, return_dict=False)[0]
                    h = h + full(h0, ind)
                    skips.append(h)
                if block.downsamplers is not None:
                    h = block.downsamplers[0](h)
                    skips.append(h)
            else:
                h, res = block(h, emb, image_only_indicator=ind)
                skips += list(res)
        mid = wfm.mid_block
        h = mid.resnets[0](h, emb, image_only_indicator=ind)
        h0 = h
        h = mid.attentions[0](h, encoder_hidden_states=ctx, image_only_indicator=ind, return_dict=False)[0]
        h = mid.resnets[1](h + mid.fullattentions[0](h0, ind), emb, image_only_indicator=ind)
        down = [conv(s) * 1.0 for conv, s in zip(wfm.warping_feature_mapper_down_blocks, skips)]
        mid_res = wfm.warping_feature_mapper_mid_block(h) * 1.0
        for j, index in enumerate(laterals, start=1):
            h = getattr(wfm, f"fusion_block{j}")(skips[index], h)
        infofill = wfm.fusion_proj(h)
        return down, mid_res, infofill.reshape(batch, frames, *infofill.shape[1:])

    def unet_forward(sample, timestep, ehs, ids, down=None, mid_res=None):  # noqa: ANN001, ANN202
        if down is None:  # the plain class itself
            return unet(sample, timestep, encoder_hidden_states=ehs, added_time_ids=ids, return_dict=False)[0]
        batch, frames = sample.shape[:2]
        h, emb, ctx, ind = embed(unet, sample, timestep, ehs, ids)
        h = unet.conv_in(h)
        skips = (h,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=ctx, image_only_indicator=ind)
            else:
                h, res = block(hidden_states=h, temb=emb, image_only_indicator=ind)
            skips += res
            skips = tuple(s + r for s, r in zip(skips, down)) + skips[len(down):]  # the release's in-loop add
        h = unet.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=ctx, image_only_indicator=ind) + mid_res
        for block in unet.up_blocks:
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            if getattr(block, "has_cross_attention", False):
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=ctx,
                          image_only_indicator=ind)
            else:
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, image_only_indicator=ind)
        h = unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))
        return h.reshape(batch, frames, *h.shape[1:])

    return wfm_forward, unet_forward


def release_calls(fixtures: Path) -> tuple[dict, dict]:
    """The release-equivalent's calls (side venv) and its parity with the fixture."""
    import diffusers
    import torch
    from safetensors.torch import load_file

    wfm_forward, unet_forward = _release_models(fixtures)
    io = load_file(fixtures / "wfm_unet_io.safetensors")
    inputs = (io["latent_model_input"], io["timestep"], io["encoder_hidden_states"], io["added_time_ids"])
    heads = torch.cat([torch.zeros_like(io["head_latents"]), io["head_latents"]])

    def denoiser() -> torch.Tensor:
        down, mid, infofill = wfm_forward(*inputs, heads)
        return unet_forward(*inputs, down, mid) + infofill

    def err(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    check = {"diffusers": diffusers.__version__, "torch": torch.__version__,
             "denoiser_rel_err": err(denoiser(), io["noise_pred_window"]),
             "unet_rel_err": err(unet_forward(*inputs), io["unet_plain_out"])}
    return {"denoiser": denoiser, "unet": lambda: unet_forward(*inputs)}, check


def worker(side: str, fixtures: Path, threads: int, calls: int) -> int:
    """One process, one side: warm-up, then ``calls`` timed calls of each; one JSON line on stdout."""
    import torch

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    if side == "ours":
        sys.path.insert(0, str(ROOT))
        fns, check = _ours(fixtures)
    else:
        fns, check = release_calls(fixtures)
    out: dict = {"check": check}
    for name, fn in fns.items():
        fn()
        wall, cpu = [], []
        for _ in range(calls):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[name] = {"wall": wall, "cpu": cpu}
    print(json.dumps(out), flush=True)
    return 0


def run_worker(python: Path, side: str, fixtures: Path, threads: int, calls: int) -> dict:
    cmd = [str(python), __file__, "--worker", side, "--fixtures", str(fixtures), "--threads", str(threads),
           "--calls", str(calls)]
    # the same OpenMP wait policy on both sides (importing engine sets PASSIVE unless one is given)
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ ours


def _ours(fixtures: Path):  # noqa: ANN202
    import torch

    from engine.fixtures import read_tensors
    from engine.fixtures.wfm_unet import build_models
    head, wfm, unet = build_models(fixtures)
    io = read_tensors(fixtures, "wfm_unet_io.safetensors")
    inputs = (io["latent_model_input"], io["timestep"], io["encoder_hidden_states"], io["added_time_ids"])
    heads = torch.cat([torch.zeros_like(io["head_latents"]), io["head_latents"]])

    def denoiser() -> torch.Tensor:
        down, mid, infofill = wfm(*inputs, head_latents=heads)
        return unet(*inputs, down, mid) + infofill

    ref = io["noise_pred_window"]
    check = {"denoiser_rel_err": float((denoiser() - ref).abs().max() / ref.abs().max())}
    return {"denoiser": denoiser, "unet": lambda: unet(*inputs)}, check


def whole_run(fixtures: Path, frames: int, steps: int, rounds: int) -> dict:
    """The whole exact run at one window per call and at the default batch (engine.config.window_batch),
    interleaved round by round; per batch: median seconds per stage, and whether the frames are identical."""
    import numpy as np

    from engine.api import Reenactor, RunOptions
    from engine.backends import create_backend
    from engine.config.window_batch import auto_window_batch
    from engine.diffusion.windows import window_indices
    from engine.fixtures import read_config, read_tensors
    from engine.fixtures.pipeline import engine_config, load_fixture_networks, model_config
    from engine.runtime.common import free_memory

    cfg = read_config(fixtures, "pipeline")
    model = model_config(cfg)
    io = read_tensors(fixtures, "pipeline_io.safetensors")
    driving = io["driving_u8"].numpy()
    clip = np.concatenate([driving] * (-(-frames // len(driving))))[:frames]
    options = RunOptions(steps=steps)
    engines = {}
    for batch in (1, auto_window_batch(model, int(cfg["call_kwargs"]["height"]), "float32", "cpu", free_memory("cpu"))):
        engine_cfg = engine_config(cfg, model, "release", batch)
        nets = load_fixture_networks(fixtures, model, "release")
        engine = Reenactor(create_backend("torch", engine_cfg, nets=nets), engine_cfg, "fixture")
        source = engine.set_source(io["source_u8"].numpy())
        engine.render(source, clip[:14], options=options)  # warm-up
        engines[f"window_batch_{batch}"] = (engine, source)
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    pixels: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for name in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
            engine, source = engines[name]
            c0 = time.process_time()
            result = engine.render(source, clip, options=options)
            runs[name].append(dict(result.seconds, cpu_total=time.process_time() - c0))
            pixels[name] = result.frames
    engine = next(iter(engines.values()))[0]
    windows = len(window_indices(frames, engine.cfg.windows.size, engine.run_config(options).overlap))
    out: dict = {"frames": frames, "steps": steps, "windows": windows, "denoiser_window_calls": windows * steps,
                 "rounds": rounds}
    for name, rs in runs.items():
        out[name] = {"seconds_median": {k: round(statistics.median(x[k] for x in rs), 4) for k in rs[0]},
                     "seconds_total_all": [round(x["total"], 4) for x in rs]}
    first, *others = pixels
    out["same_frames_as_one_window_per_call"] = {name: bool(np.array_equal(pixels[first], pixels[name]))
                                                 for name in others}
    out["motion_seconds"] = motion_side_by_side(engine, engines[first][1], clip, rounds)
    return out


def motion_side_by_side(engine: Any, source: Any, clip: Any, rounds: int) -> dict:
    """The motion branch (keypoints, 3-D warp, trunk, HeadNet) over the whole clip, ours (``MOTION_CHUNK``
    frames per call, our grid-sample kernel) against the release's way on the same networks: one frame
    per call (its ``MotionExtractorEval`` loop) with ``torch.nn.functional.grid_sample``. Interleaved
    rounds; medians."""
    import torch

    from engine.kernels.grid_sample import grid_sample_impl

    def ours() -> torch.Tensor:
        return engine.stages.motion(source.features)(clip)

    def release_way() -> torch.Tensor:
        stage = engine.stages.motion(source.features)
        with grid_sample_impl("torch"):
            return torch.cat([stage(clip[i : i + 1]) for i in range(len(clip))])

    times: dict[str, list[float]] = {"ours": [], "release_way": []}
    heads = {}
    for r in range(rounds):
        for name, fn in (("ours", ours), ("release_way", release_way))[:: 1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            heads[name] = fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    rel = float((heads["ours"] - heads["release_way"]).abs().max() / heads["release_way"].abs().max())
    return {**med, "speedup": round(med["release_way"] / med["ours"], 3), "head_latents_rel_err": rel}


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    p.add_argument("--side-venv", type=Path, default=Path("/tmp/side-venv"),
                   help="a venv with diffusers 0.27.2 (see above); skipped when missing")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--skip-run", action="store_true", help="only the per-call comparison")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--calls", type=int, default=3, help="timed calls per process and round")
    p.add_argument("--worker", choices=("ours", "release"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    fixtures = args.fixtures.resolve()
    if args.worker:
        return worker(args.worker, fixtures, args.threads, args.calls)

    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    report: dict = {"benchmark": "exact_speed", "threads": args.threads, "rounds": args.rounds,
                    "calls_per_round": args.calls,
                    "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "torch": torch.__version__},
                    "note": ("each round runs ours and the release-equivalent in fresh processes, one after the other "
                             "(order alternating); medians over all timed calls; the CPU is shared, single timings "
                             "are noisy")}
    side_python = args.side_venv / "bin" / "python"
    sides = {"ours": Path(sys.executable)}
    if side_python.is_file():
        sides["release"] = side_python
    else:
        print(f"no side environment at {args.side_venv} (diffusers 0.27.2): skipping the side-by-side part",
              file=sys.stderr)
    samples: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            result = run_worker(sides[side], side, fixtures, args.threads, args.calls)
            report[f"check_{side}"] = result.pop("check")
            for name, t in result.items():
                for kind in ("wall", "cpu"):
                    samples.setdefault(f"{name}_{side}", {}).setdefault(kind, []).extend(t[kind])
    med = {k: round(statistics.median(v["wall"]), 4) for k, v in samples.items()}
    cpu_med = {k: round(statistics.median(v["cpu"]), 4) for k, v in samples.items()}
    report["call_seconds_median"], report["call_cpu_seconds_median"] = med, cpu_med
    report["call_seconds_all"] = {k: [round(x, 4) for x in v["wall"]] for k, v in samples.items()}
    if "release" in sides:
        report["speedup_vs_release"] = {f"{n}_{kind}": round(m[f"{n}_release"] / m[f"{n}_ours"], 3)
                                        for n in ("denoiser", "unet") for kind, m in (("wall", med), ("cpu", cpu_med))}
    if not args.skip_run:
        run = whole_run(fixtures, args.frames, args.steps, max(3, args.rounds // 2))
        if "release" in sides:
            per_call = med["denoiser_release"]
            for name in [k for k in run if k.startswith("window_batch_")]:
                s = run[name]["seconds_median"]
                # the release runs one window per call: its denoise time is the calls x its per-call median
                estimate = s["total"] - s.get("denoise", 0.0) + run["denoiser_window_calls"] * per_call
                run[name]["release_style_estimate_s"] = round(estimate, 4)
                run[name]["speedup_vs_release_style_estimate"] = round(estimate / s["total"], 3)
                # and its motion branch the release's way (one frame per call, torch's grid_sample)
                motion = run["motion_seconds"]
                with_motion = estimate + motion["release_way"] - motion["ours"]
                run[name]["release_style_estimate_with_its_motion_s"] = round(with_motion, 4)
                run[name]["speedup_vs_release_style_estimate_with_its_motion"] = round(with_motion / s["total"], 3)
            run["estimate_note"] = ("release-style estimate = our non-denoise time + the window calls x the "
                                    "release-equivalent's per-call median (the release's motion branch counted at "
                                    "our speed: a lower bound); '_with_its_motion' swaps in the motion branch run "
                                    "the release's way on the same networks (motion_seconds); decode, source and "
                                    "writing stay at our times in both")
        report["whole_run"] = run
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
