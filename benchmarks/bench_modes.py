"""Every named mode and a sweep of knobs: work per frame, speed and drift from exact mode, side by side.

    python benchmarks/bench_modes.py [--frames 16] [--steps 4 8 12 25] [--fixtures DIR]
                                     [--json modes.json] [--png modes.png] [--quick]
                                     [--student FILE] [--tiny-decoder FILE]

For each configuration (exact, fast, turbo, then DPM-Solver++(2M) on the release's schedule with
steps x guidance strategy {full, first half, none} x WFM reuse {every evaluation, every 2nd}):

* TFLOP per output frame at the official size (512^2, 100 frames; benchmarks/count_flops.py);
* tiny-preset CPU wall time of the whole render as a ratio to exact mode measured in the same run
  (``--rounds`` interleaved passes, exact timed in each; medians);
* drift from exact: PSNR, SSIM and max |difference| of the uint8 frames, and the relative error
  max|z - z_exact| / max|z_exact| of the final latents - on the tiny preset's seeded weights and,
  with --fixtures, on the fixture set's weights (its own source and driving clip).

With ``--student`` (python -m engine.distill --what student) and/or ``--tiny-decoder`` (TAESD weights),
the distilled rows join: the student in its own steps (full decoder, then the tiny one: ``ultra`` when
the student is a 1-step kv-2 one), and exact / turbo decoded by the tiny decoder; each on an engine
carrying those networks, its drift and wall ratio against the same exact reference.

With random weights drift is a regression signal, not a measure of image quality: the networks are
untrained, so their outputs are not faces. The same comparison on the official weights
(``--preset official --weights DIR`` of engine.cli.reenact, mode by mode) gives the real figure.
Writes JSON and a Pareto plot (TFLOP per frame vs drift) when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import count_flops  # noqa: E402  (a sibling script)

from engine.api import Reenactor, RunOptions  # noqa: E402
from engine.config import modes  # noqa: E402
from engine.runtime import ExactRun, RunHooks  # noqa: E402

NOTE = ("random weights: drift is a regression signal, not image quality; run the same modes on the official "
        "weights for the real figure")


STUDENT_MODES = ("ultra",)  # modes that need an engine given a distilled student


def configurations(steps: list[int]) -> list[tuple[str, RunOptions]]:
    out = [(m, RunOptions(mode=m)) for m in modes.MODES if m not in STUDENT_MODES]
    for n in steps:
        for guidance in ("full", f"first:{max(1, n // 2)}", "none"):
            for k in (1, 2):
                name = f"dpmpp_2m-{n}-{guidance}-wfm{k}"
                out.append((name, RunOptions(mode="exact", sampler="dpmpp_2m", schedule="release", steps=n,
                                             guidance_mode=guidance, wfm_every=k)))
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of uint8 frames [F, H, W, 3] (7x7 uniform windows, the usual constants)."""
    x = torch.from_numpy(a).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(b).permute(0, 3, 1, 2).double()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, 7, stride=1)

    mx, my = mean(x), mean(y)
    vx, vy, cov = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def drift(frames: np.ndarray, latents: torch.Tensor, ref_frames: np.ndarray, ref_latents: torch.Tensor) -> dict:
    diff = frames.astype(np.float64) - ref_frames
    mse = float((diff**2).mean())
    rel = float((latents.double() - ref_latents.double()).abs().max() / ref_latents.double().abs().max())
    return {"psnr_db": 10 * np.log10(255**2 / mse) if mse > 0 else float("inf"), "ssim": ssim(frames, ref_frames),
            "max_abs": float(np.abs(diff).max()), "latent_rel_err": rel}


def run(engine: Reenactor, source: Any, clip: np.ndarray, options: RunOptions
        ) -> tuple[np.ndarray, torch.Tensor, float]:
    """(frames, final latents, seconds) of one whole render, driven on this thread."""
    cfg = engine.run_config(options)
    record: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    hooks = RunHooks(latents=lambda latents: record.update(final_latents=latents[None]))
    frames = np.stack(list(ExactRun(engine.stages, cfg, source.features, iter(clip), engine._noise(cfg),
                                    hooks=hooks).frames()))
    return frames, record["final_latents"], time.perf_counter() - t0


def bench(label: str, engine: Reenactor, source: Any, clip: np.ndarray, configs: list[tuple[str, RunOptions]],
          rounds: int = 1, others: dict[str, tuple[Reenactor, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Drift of every configuration from the first (exact), and wall times: ``rounds`` interleaved
    passes over all configurations, exact first and last in each; medians. ``others``: configurations
    that run on another engine (a student, a tiny decoder), by name, with that engine's source handle."""
    ref_frames, ref_latents, _ = run(engine, source, clip, configs[0][1])
    others = others or {}
    times: dict[str, list[float]] = {name: [] for name, _ in configs}
    rows: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        for name, options in configs[1:]:
            eng, src = others.get(name, (engine, source))
            frames, latents, seconds = run(eng, src, clip, options)
            times[name].append(seconds)
            if r == 0:
                rows[name] = drift(frames, latents, ref_frames, ref_latents)
                print(f"  [{label}] {name:32s} {seconds:7.2f} s  PSNR {rows[name]['psnr_db']:6.2f} dB  "
                      f"latent rel {rows[name]['latent_rel_err']:.3g}", flush=True)
        times[configs[0][0]].append(run(engine, source, clip, configs[0][1])[2])
    rows[configs[0][0]] = {"psnr_db": float("inf"), "ssim": 1.0, "max_abs": 0.0, "latent_rel_err": 0.0}
    t_exact = float(np.median(times[configs[0][0]]))
    for name, row in rows.items():
        row.update(seconds=float(np.median(times[name])), seconds_all=times[name],
                   wall_ratio_vs_exact=float(np.median(times[name])) / t_exact)
    return rows


def fixture_engine(fixture_dir: Path) -> tuple[Reenactor, Any, np.ndarray]:
    from engine.backends import create_backend
    from engine.fixtures import read_config, read_tensors
    from engine.fixtures.pipeline import engine_config, load_fixture_networks, model_config

    cfg = read_config(fixture_dir, "pipeline")
    model = model_config(cfg)
    engine_cfg = engine_config(cfg, model, "release", 1)
    nets = load_fixture_networks(fixture_dir, model, "release")
    engine = Reenactor(create_backend("torch", engine_cfg, nets=nets), engine_cfg, "fixture")
    io = read_tensors(fixture_dir, "pipeline_io.safetensors")
    source = engine.set_source(io["source_u8"].numpy())
    return engine, source, io["driving_u8"].numpy()


def cfg_coupling(build_nets: Any, model: Any, size: int) -> dict[str, dict[str, float]]:
    """Per time-context layout: how much the conditional prediction of a CFG pair changes when the
    conditional rows run alone - grouped as the pair graph groups rows, and in the conditional-only
    graph (``release_cond`` layout for release). Relative max error on the spec's sample inputs."""
    from engine.backends.torch_backend import TorchBackend
    from engine.graphs.modules import ALL_GRAPH_NAMES, GraphOptions, build_specs

    out = {}
    for layout in ("release", "fixed"):
        specs = build_specs(model, GraphOptions(image_size=size, time_context=layout), ALL_GRAPH_NAMES)
        backend = TorchBackend(build_nets(layout), specs)
        feeds = specs["denoiser"].sample_inputs("export")
        pair = backend.run("denoiser", **feeds)["unet_out"][1::2].double()
        cond = {k: v[1::2] for k, v in feeds.items()}

        def err(t: torch.Tensor, ref: torch.Tensor = pair) -> float:
            return float((t.double() - ref).abs().max() / ref.abs().max())

        out[layout] = {"alone_plain": err(backend.run("denoiser", **cond)["unet_out"]),
                       "alone_cond_graph": err(backend.run("denoiser_cond", **cond)["unet_out"])}
    return out


def distilled_rows(args: argparse.Namespace, configs: list, knobs: dict, tflop: dict, source_path: Path
                   ) -> dict[str, tuple[Reenactor, Any]]:
    """Append the student / tiny-decoder configurations (and their knobs and TFLOP) in place; return the
    engines they run on."""
    from engine.api import EngineOptions
    from engine.models.student import read_info

    others: dict[str, tuple[Reenactor, Any]] = {}
    rows: list[tuple[str, RunOptions, Reenactor]] = []
    if args.tiny_decoder is not None:
        eng = Reenactor.from_preset("tiny", EngineOptions(tiny_decoder=args.tiny_decoder))
        rows += [(f"{m}+tiny-decoder", RunOptions(mode=m, decoder="tiny"), eng) for m in ("exact", "turbo")]
    if args.student is not None:
        info = read_info(args.student)[1]
        eng = Reenactor.from_preset("tiny", EngineOptions(student=args.student, tiny_decoder=args.tiny_decoder))
        tag = f"student-{info.steps}step-kv{info.kv_downsample}"
        student = RunOptions(mode="ultra", steps=info.steps, kv_downsample=info.kv_downsample, decoder="full")
        rows.append((tag, student, eng))
        # fast and turbo on an engine given the student: its steps, their windows and WFM reuse
        rows += [(f"{m}+{tag}", RunOptions(mode=m), eng) for m in ("fast", "turbo")]
        if args.tiny_decoder is not None:
            rows.append((f"{tag}+tiny-decoder",
                         RunOptions(mode="ultra", steps=info.steps, kv_downsample=info.kv_downsample), eng))
    for name, options, eng in rows:
        configs.append((name, options))
        knobs[name] = eng.run_config(options)  # the engine's resolution (a student changes it)
        tflop[name] = count_flops.cost_model("official", 100, 512, knobs=knobs[name])["per_frame"] / 1e12
        others[name] = (eng, eng.set_source(source_path))
    return others


def machine() -> dict[str, Any]:
    """Where the wall ratios were measured: a shared machine's load makes them noisy (interleaved rounds help)."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_start": list(os.getloadavg()),
            "torch": torch.__version__}


def pareto_png(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, rows in report["drift"].items():
        names = [n for n in rows if n != "exact"]
        xs = [report["tflop_per_frame"][n] for n in names]
        ys = [max(rows[n]["latent_rel_err"], 1e-7) for n in names]
        ax.scatter(xs, ys, label=label, s=18)
        for n, x, y in zip(names, xs, ys, strict=True):
            if not n.startswith("dpmpp_2m-"):  # the named modes and the distilled rows; the sweep unlabelled
                ax.annotate(n, (x, y), fontsize=7 if "+" in n or n.startswith("student") else 9,
                            weight="bold" if n in modes.MODES else "normal")
    ax.axvline(report["tflop_per_frame"]["exact"], color="grey", ls="--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="TFLOP per output frame (official, 512², 100 frames)",
           ylabel="final-latent relative error vs exact",
           title="FRVD modes: work vs drift (random weights: a regression signal only)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=16, help="tiny clip length (2 windows)")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 12, 25])
    p.add_argument("--fixtures", type=Path, default=None, help="also measure drift on the fixture set's weights")
    p.add_argument("--quick", action="store_true", help="named modes only, no sweep")
    p.add_argument("--rounds", type=int, default=1, help="interleaved timing passes (medians)")
    p.add_argument("--student", type=Path, default=None, help="a distilled student: its rows join")
    p.add_argument("--tiny-decoder", type=Path, default=None, help="TAESD decoder weights: tiny-decoder rows join")
    p.add_argument("--json", type=Path, default=Path("outputs/bench_modes.json"))
    p.add_argument("--png", type=Path, default=Path("outputs/bench_modes.png"))
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    configs = configurations([] if args.quick else args.steps)
    knobs = {name: modes.resolve(o.mode, **o.knobs()) for name, o in configs}
    tflop = {name: count_flops.cost_model("official", 100, 512, knobs=k)["per_frame"] / 1e12
             for name, k in knobs.items()}
    engine = Reenactor.from_preset("tiny")
    source_path = Path(__file__).resolve().parents[1] / "engine" / "assets" / "source.png"
    source = engine.set_source(source_path)
    others = distilled_rows(args, configs, knobs, tflop, source_path)
    clip = np.random.default_rng(0).integers(0, 256, (args.frames, 128, 128, 3), dtype=np.uint8)
    report: dict[str, Any] = {"note": NOTE, "machine": machine(), "tflop_per_frame": tflop,
                              "knobs": {n: asdict(k) for n, k in knobs.items()}, "drift": {}}
    from engine.config import presets
    from engine.models.networks import build_tiny

    report["cfg_coupling"] = {"tiny": cfg_coupling(lambda layout: build_tiny(presets.tiny(), 0, layout),
                                                   presets.tiny(), 128)}
    report["drift"]["tiny"] = bench("tiny", engine, source, clip, configs, args.rounds, others)
    if args.fixtures is not None:
        from engine.fixtures.pipeline import load_fixture_networks

        fixture = fixture_engine(args.fixtures)
        report["cfg_coupling"]["fixture_weights"] = cfg_coupling(
            lambda layout: load_fixture_networks(args.fixtures, fixture[0].cfg.model, layout),
            fixture[0].cfg.model, fixture[0].cfg.size)
        report["drift"]["fixture_weights"] = bench("fixture", *fixture, configs, args.rounds)
    print("CFG coupling (conditional rows alone vs in their pair, relative):", report["cfg_coupling"])
    print(f"\n{'configuration':32s} {'TFLOP/frame':>11s} {'x less':>7s} {'wall/exact':>10s} {'PSNR dB':>8s} "
          f"{'SSIM':>6s} {'latent rel':>10s}   ({NOTE})")
    for name in tflop:
        row = report["drift"]["tiny"][name]
        print(f"{name:32s} {tflop[name]:11.2f} {tflop['exact'] / tflop[name]:7.2f} {row['wall_ratio_vs_exact']:10.3f} "
              f"{row['psnr_db']:8.2f} {row['ssim']:6.3f} {row['latent_rel_err']:10.3g}")
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")
    if pareto_png(report, args.png):
        print(f"-> {args.json}, {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
