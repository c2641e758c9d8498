"""FLOP cost model of the full-size FRVD pipeline, counted on the meta device (no weights, no memory).

Every network is built under ``torch.device("meta")`` and run once on meta tensors of the shapes the
pipeline feeds it, inside ``torch.utils.flop_counter.FlopCounterMode``; the per-call counts are then
multiplied by how often ``ReenactPipeline`` calls each network for a clip of N frames and turned into
compute floors on reference GPUs.

    python benchmarks/count_flops.py [--preset official] [--frames 100] [--size 512] [--json out.json]
        [--mode exact|fast|turbo|ultra] [--steps N] [--sampler S] [--schedule S] [--guidance-mode G]
        [--wfm-every K] [--overlap N] [--kv-downsample 1|2] [--decoder full|tiny] [--stream]

A mode (engine.config.modes) fixes how often each denoiser graph runs: CFG pairs or conditional rows only
(guidance strategy), the WFM at every evaluation or every k-th (WFM reuse), the solver's number of
model evaluations (Heun: 2 per step but the last), the window count (overlap; ``--stream``: the
causal stream's windows), and the WFM's full-attention cost (``--kv-downsample``). Each knob given
overrides the mode's value. ``tests/test_count_flops.py`` checks the prediction against
FlopCounterMode's count of a real tiny run in several modes (within 1 %).

Conventions: one multiply-add = 2 FLOPs; FlopCounterMode counts matmul, convolution and attention ops
only (norms, activations, softmax, grid_sample and other elementwise work are not counted), so the floors
are compute-bound lower limits, not predictions.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.cli.args import add_knob_arguments, knob_values
from engine.config import modes, presets
from engine.config.modes import RunConfig
from engine.config.settings import SVD_XT_SCHEDULER, ModelConfig, WindowConfig
from engine.diffusion import sampling
from engine.diffusion.windows import window_indices
from engine.kernels.grid_sample import grid_sample_impl
from engine.models import taesd
from engine.models.approx import kv_downsample, pooled_tokens
from engine.models.liveportrait.motion_branch import INPUT_SIZE as LIVEPORTRAIT_SIZE  # F and M run at 256x256
from engine.models.networks import Networks, build_networks
from engine.models.svd_blocks import FullTemporalTransformer
from engine.runtime.stream import CausalWindows

CFG_BATCH = 2  # the release evaluates every window as one [uncond, cond] pair
CLIP_SIZE = 224
LATENT_SCALE = 8  # VAE downsampling factor

# Peak dense (no 2:4 sparsity) tensor-core rates, TFLOP/s. FP32 accumulation is what PyTorch's fp16
# GEMMs and convolutions use, so it is the relevant rate on GeForce cards (which halve it vs FP16 acc).
GPUS: dict[str, dict[str, Any]] = {
    "rtx4090": {
        "tflops": 165.2,
        "tf32_tflops": 82.6,
        "what": "FP16 tensor, FP32 accumulate, dense",
        "source": "NVIDIA Ada GPU Architecture whitepaper, appendix table for GeForce RTX 4090: "
        "165.2 (330.4 sparse) with FP32 accumulate, 330.3 (660.6 sparse) with FP16 accumulate; TF32 82.6",
    },
    "rtx4090_fp16_accumulate": {
        "tflops": 330.3,
        "tf32_tflops": 82.6,
        "what": "FP16 tensor, FP16 accumulate, dense (not what PyTorch uses; upper bound)",
        "source": "NVIDIA Ada GPU Architecture whitepaper (as above)",
    },
    "a100": {
        "tflops": 312.0,
        "tf32_tflops": 156.0,
        "what": "FP16/BF16 tensor, dense",
        "source": "NVIDIA A100 Tensor Core GPU datasheet: FP16/BF16 312 (624 sparse), TF32 156",
    },
    "h100_sxm": {
        "tflops": 989.4,
        "tf32_tflops": 494.7,
        "what": "FP16/BF16 tensor, dense",
        "source": "NVIDIA H100 Tensor Core GPU datasheet: FP16/BF16 1979 with sparsity (half dense), TF32 989 sparse",
    },
}
RELEASE_REPORTED = {
    "gpu": "rtx4090",
    "seconds_per_100_frames": 240.0,
    "source": "FRVD release README (MingtaoGuo/Face-Reenactment-Video-Diffusion): "
    "'Approximately 4 minutes per 100-frame video on an RTX 4090'",
}
# The LivePortrait modules run in float32 in the release (autocast disabled); cuDNN convolutions still use
# TF32 tensor cores by default (torch.backends.cudnn.allow_tf32 = True), so they get the TF32 rate.
LIVEPORTRAIT_NETWORKS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")

# Attention-core ops: on meta, F.scaled_dot_product_attention decomposes to its math path (two bmm per
# call: Q K^T and P V); on CUDA it is one fused SDPA op. Linear layers never lower to bmm here.
_ATTENTION_OP = re.compile(r"(^|\.)(bmm|baddbmm|_?scaled_dot_product\w*|_flash_attention\w*|_efficient_attention\w*)$")
_FULLATTENTION_MODULE = re.compile(r"(^|\.)fullattentions\.\d+$")


@dataclass(frozen=True)
class Shapes:
    """The per-call input geometry of one pipeline run."""

    size: int  # output image side
    latent: int  # latent side = size / 8
    window: int  # frames per window
    cfg_batch: int = CFG_BATCH


@dataclass
class Count:
    """FLOPs of one call: the total and FlopCounterMode's per-module, per-op breakdown."""

    total: int
    by_module: dict[str, dict[str, int]]


def count_flops(fn: Callable[[], Any]) -> tuple[Count, Any]:
    """Run ``fn`` under FlopCounterMode (no printing) -> (counts, fn's result)."""
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        out = fn()
    by_module = {mod: {str(op): int(n) for op, n in ops.items()} for mod, ops in counter.get_flop_counts().items()}
    return Count(total=int(counter.get_total_flops()), by_module=by_module), out


def build_meta(model: ModelConfig) -> Networks:
    """Every network on the meta device: shapes only, no initialisation, no memory."""
    with torch.device("meta"):
        nets = build_networks(model)
    # A few parameters come from legacy constructors (diffusers' AlphaBlender uses torch.Tensor([a])) that
    # ignore the default device and land on the CPU; move them so no op mixes CPU and meta tensors.
    return nets.to("meta")


def _cross_attention_dim(model: ModelConfig) -> int:
    dim = model.unet.get("cross_attention_dim", 1024)
    return int(dim[0] if isinstance(dim, list | tuple) else dim)


def _num_kp(model: ModelConfig) -> int:
    return int(model.liveportrait["motion_extractor_params"].get("num_kp", 21))


def _attention_hooks(module: nn.Module, records: list[dict[str, Any]], kv: int = 1) -> list[Any]:
    """Forward hooks on every full spatio-temporal transformer that log the analytic core FLOPs of
    its self-attentions (from the shapes: the attention forward itself may be a lean function)."""
    handles = []
    for name, sub in module.named_modules():
        if not isinstance(sub, FullTemporalTransformer):
            continue

        def hook(mod: nn.Module, args: tuple, _out: Any, name: str = name) -> None:
            hidden, indicator = args[0], args[1]
            frames, h, w = int(indicator.shape[-1]), int(hidden.shape[-2]), int(hidden.shape[-1])
            batch, lq = int(indicator.shape[0]), frames * h * w
            lk = pooled_tokens(lq, frames, h, w, kv)
            for i, block in enumerate(mod.transformer_blocks):
                heads = block.attn1.heads
                head_dim = block.attn1.to_q.out_features // heads
                # Q K^T and P V: 2 matmuls of B*heads*(Lq x d x Lk) multiply-adds each = 4*B*h*Lq*Lk*d FLOPs
                records.append(
                    {"module": f"{name}.transformer_blocks.{i}.attn1", "batch": batch, "tokens": lq,
                     "kv_tokens": lk, "heads": heads, "head_dim": head_dim,
                     "flops": 4 * batch * heads * lq * lk * head_dim}
                )  # fmt: skip

        handles.append(sub.register_forward_hook(hook))
    return handles


def full_attention_flops(count: Count) -> tuple[int, int, list[str]]:
    """(attention-core FLOPs, all FLOPs inside the fullattentions modules, op names seen as core)."""
    core, modules, ops_seen = 0, 0, set()
    for mod, ops in count.by_module.items():
        if not _FULLATTENTION_MODULE.search(mod):
            continue  # only the fullattentions.N level: its parents and children would double count
        modules += sum(ops.values())
        for op, n in ops.items():
            if _ATTENTION_OP.search(op):
                core += n
                ops_seen.add(op)
    return core, modules, sorted(ops_seen)


def measure(model: ModelConfig, nets: Networks, shapes: Shapes, kv: int = 1) -> dict[str, Any]:
    """FLOPs per call of every network, plus the WFM's full-attention breakdown. The WFM and the UNet
    are counted for a CFG pair (``wfm``, ``unet``) and for one conditional row (``wfm_cond``,
    ``unet_cond``); ``kv`` > 1 counts the WFM with pooled keys/values (engine.models.approx)."""
    lp, trunk = LIVEPORTRAIT_SIZE, model.trunk_channels
    b, h = shapes.cfg_batch, shapes.latent
    per_call: dict[str, int] = {}
    out: dict[str, Any] = {"per_call": per_call}
    with torch.device("meta"), torch.no_grad(), grid_sample_impl("torch"):
        motion = nets.motion
        image = torch.empty(1, 3, lp, lp)
        c, f_s = count_flops(lambda: motion.appearance_feature_extractor(image))
        per_call["appearance_feature_extractor"] = c.total
        c, _ = count_flops(lambda: motion.motion_extractor(image))
        per_call["motion_extractor"] = c.total
        kp = torch.empty(1, _num_kp(model), 3)
        c, warped = count_flops(lambda: motion.warping_module(f_s, kp_driving=kp, kp_source=kp))
        per_call["warping_module"] = c.total
        c, trunk_out = count_flops(lambda: motion.spade_generator(warped.out))
        per_call["spade_generator"] = c.total
        if trunk_out.shape[1] != trunk:
            raise RuntimeError(f"SPADE trunk gives {trunk_out.shape[1]} channels, HeadNet expects {trunk}")
        c, head = count_flops(lambda: nets.head_net(trunk_out[None]))
        per_call["head_net"] = c.total
        if tuple(head.shape[-2:]) != (h, h):
            raise ValueError(
                f"the motion trunk is {tuple(head.shape[-2:])} but {shapes.size}px images give {h}x{h} latents; "
                f"the pipeline only runs at the preset's native size ({model.image_size})"
            )

        # One denoiser call: one window's CFG pair, as the DenoiseStage builds it; then one conditional row.
        pooled = dataclasses.replace(nets, denoiser=kv_downsample(nets.denoiser, kv))
        for rows, suffix in ((b, ""), (1, "_cond")):
            down, mid = _count_denoiser(model, pooled, shapes, rows, suffix, per_call, out, kv)
        del down, mid
        vae = nets.vae
        c, _ = count_flops(lambda: vae.encode(torch.empty(1, 3, shapes.size, shapes.size)).latent_dist.mode())
        per_call["vae_encoder"] = c.total
        c, _ = count_flops(lambda: vae.decode(torch.empty(1, vae.config.latent_channels, h, h)).sample)
        per_call["vae_decoder"] = c.total
        tiny = taesd.build(vae.config.latent_channels, taesd.width_for(model.vae))
        c, _ = count_flops(lambda: tiny(torch.empty(1, vae.config.latent_channels, h, h)))
        per_call["tiny_decoder"] = c.total
        c, _ = count_flops(lambda: nets.image_encoder(torch.empty(1, 3, CLIP_SIZE, CLIP_SIZE)).image_embeds)
        per_call["clip_image_encoder"] = c.total
    return out


def _count_denoiser(model: ModelConfig, nets: Networks, shapes: Shapes, rows: int, suffix: str,
                    per_call: dict[str, int], out: dict[str, Any], kv: int) -> tuple[Any, Any]:
    t, h = shapes.window, shapes.latent
    sample = torch.empty(rows, t, model.unet.get("in_channels", 8), h, h)
    timestep = torch.empty(rows)
    context = torch.empty(rows, 1, _cross_attention_dim(model))
    time_ids = torch.empty(rows, 3)
    head_latents = torch.empty(rows * t, model.head_channels, h, h)
    records: list[dict[str, Any]] = []
    handles = _attention_hooks(nets.denoiser.wfm, records, kv)
    try:
        c, (down, mid, _) = count_flops(lambda: nets.denoiser.wfm(sample, timestep, context, time_ids, head_latents))
    finally:
        for handle in handles:
            handle.remove()
    per_call["wfm" + suffix] = c.total
    if not suffix:
        core, modules, ops_seen = full_attention_flops(c)
        analytic = sum(r["flops"] for r in records)
        out["wfm_full_attention"] = {
            # counted when FlopCounterMode saw the attention ops; otherwise the analytic value stands in
            "sdpa_flops_per_call": core if core > 0 else analytic,
            "method": "counted" if core > 0 else "analytic (4*B*heads*Lq*Lk*d; no attention op was counted)",
            "counted_ops": ops_seen,
            "counted_sdpa_flops_per_call": core,
            "analytic_sdpa_flops_per_call": analytic,
            "modules_flops_per_call": modules,
            "layers": records,
        }
    c, _ = count_flops(
        lambda: nets.denoiser.unet(
            sample, timestep, context, time_ids,
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        )
    )  # fmt: skip
    per_call["unet" + suffix] = c.total
    return down, mid


UNITS = {
    "appearance_feature_extractor": "source image (256x256)",
    "motion_extractor": "image (256x256): the source + every driving frame",
    "warping_module": "driving frame",
    "spade_generator": "driving frame",
    "head_net": "driving frame (the uncond row is zeros, not computed)",
    "wfm": "window call: CFG pair x window frames",
    "unet": "window call: CFG pair x window frames",
    "wfm_cond": "window call, conditional row only: window frames",
    "unet_cond": "window call, conditional row only: window frames",
    "vae_encoder": "source image",
    "vae_decoder": "frame",
    "tiny_decoder": "frame (TAESD, engine.models.taesd)",
    "clip_image_encoder": "source image (224x224)",
}


def window_count(frames: int, size: int, overlap: int, stream: bool = False) -> int:
    """Windows the offline run (engine.diffusion.windows) or the causal stream (CausalWindows) denoises."""
    if not stream:
        return len(window_indices(max(frames, size), size, overlap))
    plan, emitted, count = CausalWindows(size, overlap), 0, 0
    while (window := plan.next_window(frames, emitted, True)) is not None:
        emitted, count = max(i for i in window) + 1, count + 1
    return count


def denoiser_calls(knobs: RunConfig, scheduler: dict[str, Any] | None = None) -> dict[str, int]:
    """Per window: how often each denoiser graph runs in one solver loop (engine.config.modes.eval_plan)."""
    sigmas = sampling.make_schedule(knobs.sampler, knobs.steps, scheduler or SVD_XT_SCHEDULER, knobs.schedule).sigmas
    plan = modes.eval_plan(knobs.sampler, sigmas, knobs.guidance_mode, knobs.wfm_every)
    return {
        "wfm": sum(e.wfm and e.cfg for e in plan),
        "unet": sum(e.cfg for e in plan),
        "wfm_cond": sum(e.wfm and not e.cfg for e in plan),
        "unet_cond": sum(not e.cfg for e in plan),
    }


def calls_per_video(frames: int, knobs: RunConfig, window: int = WindowConfig().size,
                    stream: bool = False) -> dict[str, int]:
    """How often the runtime calls each network for a clip of ``frames`` frames in ``knobs``."""
    # clips shorter than a window are padded to one; every padded frame is motion-encoded and decoded
    padded = max(frames, window)
    n_windows = window_count(frames, window, knobs.overlap, stream)
    per_window = denoiser_calls(knobs)
    return {
        "appearance_feature_extractor": 1,
        "motion_extractor": padded + 1,
        "warping_module": padded,
        "spade_generator": padded,
        "head_net": padded,
        **{name: n * n_windows for name, n in per_window.items()},
        "vae_encoder": 1,
        "vae_decoder": padded if knobs.decoder == "full" else 0,
        "tiny_decoder": padded if knobs.decoder == "tiny" else 0,
        "clip_image_encoder": 1,
    }


def video_flops(per_call: dict[str, int], calls: dict[str, int]) -> int:
    return sum(per_call[name] * calls[name] for name in per_call)


def floors(per_call: dict[str, int], calls: dict[str, int], frames: int, calls_100: dict[str, int]) -> dict:
    """Compute-bound seconds on each reference GPU (every counted FLOP at the peak dense rate)."""
    total, total_100 = video_flops(per_call, calls), video_flops(per_call, calls_100)
    lp_100 = sum(per_call[n] * calls_100[n] for n in LIVEPORTRAIT_NETWORKS)
    result = {}
    for gpu, spec in GPUS.items():
        rate = spec["tflops"] * 1e12
        result[gpu] = {
            "tflops": spec["tflops"],
            "per_video": total / rate,
            "per_frame": total / rate / frames,
            "per_100_frames": total_100 / rate,
            # LivePortrait in fp32 (TF32 convs) instead of fp16: barely moves the floor
            "per_100_frames_liveportrait_at_tf32": (total_100 - lp_100) / rate + lp_100 / (spec["tf32_tflops"] * 1e12),
        }
    return result


@functools.lru_cache(maxsize=8)
def _measured(preset: str, size: int, window: int, kv: int) -> dict[str, Any]:
    model = presets.from_name(preset)
    return measure(model, build_meta(model), Shapes(size=size, latent=size // LATENT_SCALE, window=window), kv)


def cost_model(
    preset: str = "official",
    frames: int = 100,
    size: int | None = None,
    steps: int | None = None,
    windows: WindowConfig | None = None,
    knobs: RunConfig | None = None,
    stream: bool = False,
    mode: str = "exact",
) -> dict[str, Any]:
    """The whole report (see the module docstring) as a JSON-ready dict. ``knobs`` (default: the
    release's, with ``steps`` when given) says how the run samples."""
    windows = windows or WindowConfig()
    knobs = knobs or modes.resolve("exact", steps=steps)
    if frames < 1:
        raise ValueError("frames must be >= 1")
    t0 = time.perf_counter()
    model = presets.from_name(preset)
    size = size or model.image_size
    if size % LATENT_SCALE:
        raise ValueError(f"size {size} is not a multiple of {LATENT_SCALE}")
    measured = _measured(preset, size, windows.size, knobs.kv_downsample)
    per_call = measured["per_call"]
    full_attn = measured["wfm_full_attention"]

    calls = calls_per_video(frames, knobs, windows.size, stream)
    calls_100 = calls_per_video(100, knobs, windows.size, stream)
    per_video = video_flops(per_call, calls)
    n_windows = window_count(frames, windows.size, knobs.overlap, stream)
    sdpa = full_attn["sdpa_flops_per_call"]
    sdpa_calls = calls["wfm"] + calls["wfm_cond"] / CFG_BATCH  # a conditional row is half a pair's attention

    network_totals = {name: per_call[name] * calls[name] for name in per_call if calls[name]}
    wfm_total = network_totals.get("wfm", 0) + network_totals.get("wfm_cond", 0)
    share = {name: n / per_video for name, n in network_totals.items() if not name.startswith("wfm")}
    share["wfm_full_attention_sdpa"] = sdpa * sdpa_calls / per_video
    share["wfm_other"] = (wfm_total - sdpa * sdpa_calls) / per_video
    share = dict(sorted(share.items(), key=lambda kv: -kv[1]))

    floor = floors(per_call, calls, frames, calls_100)
    reported = dict(RELEASE_REPORTED)
    reported["floor_seconds_per_100_frames"] = floor[reported["gpu"]]["per_100_frames"]
    reported["implied_utilisation"] = reported["floor_seconds_per_100_frames"] / reported["seconds_per_100_frames"]
    # the release's figure is for its own settings: full-size networks, 512 px, 25 Euler steps
    reported["comparable"] = preset == "official" and size == 512 and knobs == modes.MODES["exact"]

    return {
        "preset": preset,
        "size": size,
        "latent_size": size // LATENT_SCALE,
        "frames": frames,
        "padded_frames": max(frames, windows.size),
        "steps": knobs.steps,
        "mode": mode,
        "knobs": asdict(knobs),
        "stream": stream,
        "evaluations_per_window": denoiser_calls(knobs),
        "sampler_default": RunConfig().sampler,
        "windows": {"size": windows.size, "overlap": knobs.overlap, "count": n_windows, "cfg_batch": CFG_BATCH},
        "counter": {
            "tool": "torch.utils.flop_counter.FlopCounterMode",
            "device": "meta",
            "torch": torch.__version__,
            "convention": "2 FLOPs per multiply-add; matmul/conv/attention ops only "
            "(norms, activations, softmax, grid_sample, elementwise not counted)",
            "seconds": round(time.perf_counter() - t0, 2),
        },
        "networks": {
            name: {
                "flops_per_call": per_call[name],
                "calls_per_video": calls[name],
                "flops_per_video": network_totals[name],
                "unit": UNITS[name],
            }
            for name in network_totals
        },
        "wfm_full_attention": full_attn,
        "per_window_step": {
            "wfm": per_call["wfm"],
            "unet": per_call["unet"],
            "total": per_call["wfm"] + per_call["unet"],
            "wfm_full_attention_sdpa": sdpa,
            "wfm_full_attention_modules": full_attn["modules_flops_per_call"],
        },
        "per_video": per_video,
        "per_frame": per_video / frames,
        "share": share,
        "gpus": GPUS,
        "floor_seconds": floor,
        "release_reported": reported,
    }


def _t(flops: float) -> str:
    return f"{flops / 1e12:10.3f}"


def format_table(report: dict[str, Any]) -> str:
    """A readable summary of ``report``."""
    w = report["windows"]
    lines = [
        f"FRVD cost model: preset {report['preset']}, {report['size']}px ({report['latent_size']}x"
        f"{report['latent_size']} latents), {report['frames']} frames, {report['steps']} steps, "
        f"{w['count']} windows of {w['size']} (overlap {w['overlap']}) x CFG batch {w['cfg_batch']}",
        f"mode {report['mode']}{' (stream)' if report['stream'] else ''}: "
        + ", ".join(f"{k} {v}" for k, v in report["knobs"].items())
        + "; per window: " + ", ".join(f"{k} x{v}" for k, v in report["evaluations_per_window"].items()),
        "",
        f"{'network':30s} {'TFLOP/call':>10s} {'calls':>7s} {'TFLOP/video':>12s} {'share':>7s}  per call = ...",
    ]
    share = report["share"]
    for name, net in report["networks"].items():
        s = share.get(name, share["wfm_full_attention_sdpa"] + share["wfm_other"])
        lines.append(
            f"{name:30s} {_t(net['flops_per_call'])} {net['calls_per_video']:7d} {_t(net['flops_per_video'])}  "
            f"{100 * s:6.2f}%  {net['unit']}"
        )
    step, fa = report["per_window_step"], report["wfm_full_attention"]
    lines += [
        "",
        f"per window-step (WFM + UNet, both CFG halves): {step['total'] / 1e12:.3f} TFLOP "
        f"(WFM {step['wfm'] / 1e12:.3f}, UNet {step['unet'] / 1e12:.3f})",
        f"  WFM full attention: SDPA core {step['wfm_full_attention_sdpa'] / 1e12:.3f} TFLOP "
        f"({100 * step['wfm_full_attention_sdpa'] / step['total']:.1f}% of the step; {fa['method']}, "
        f"analytic {fa['analytic_sdpa_flops_per_call'] / 1e12:.3f}), whole modules "
        f"{step['wfm_full_attention_modules'] / 1e12:.3f}",
        f"per video: {report['per_video'] / 1e15:.3f} PFLOP; per output frame: {report['per_frame'] / 1e12:.3f} TFLOP",
        "",
        "share of the video's FLOPs: "
        + ", ".join(f"{k} {100 * v:.2f}%" for k, v in report["share"].items() if v >= 0.001),
        "",
        f"{'floor (compute-bound)':30s} {'TFLOP/s':>8s} {'per video s':>12s} {'per frame s':>12s} "
        f"{'per 100 fr s':>13s}",
    ]
    for gpu, fl in report["floor_seconds"].items():
        lines.append(
            f"{gpu:30s} {fl['tflops']:8.1f} {fl['per_video']:12.2f} {fl['per_frame']:12.3f} "
            f"{fl['per_100_frames']:13.2f}"
        )
    rel = report["release_reported"]
    lines += [
        "",
        f"release reported {rel['seconds_per_100_frames']:.0f} s / 100 frames on {rel['gpu']}: floor "
        f"{rel['floor_seconds_per_100_frames']:.1f} s => implied utilisation {100 * rel['implied_utilisation']:.0f}%"
        + ("" if rel["comparable"] else " (NOT comparable: the release ran official, 512 px, 25 steps)"),
        f"(counted in {report['counter']['seconds']} s on the meta device)",
    ]
    return "\n".join(lines)


def knob_arguments(p: argparse.ArgumentParser) -> None:
    """--mode and one flag per run knob, from its declaration (engine.config.modes.RunConfig)."""
    p.add_argument("--mode", default="exact", choices=sorted(modes.MODES))
    add_knob_arguments(p, RunConfig, default_is="the mode's")


def knobs_from(args: argparse.Namespace) -> RunConfig:
    return modes.resolve(args.mode, **knob_values(args, RunConfig))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="official", choices=sorted(presets.PRESETS))
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--size", type=int, default=None, help="image side (default: the preset's, 512 for official)")
    knob_arguments(p)
    p.add_argument("--stream", action="store_true", help="the causal stream's windows instead of the offline ones")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        knobs = knobs_from(args)
    except ValueError as err:
        p.error(str(err))
    report = cost_model(args.preset, args.frames, args.size, knobs=knobs, stream=args.stream, mode=args.mode)
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
