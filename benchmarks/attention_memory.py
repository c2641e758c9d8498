"""Peak memory of one onnxruntime call of an exported graph, in a fresh process (docs/export.md, "Attention").

    python benchmarks/attention_memory.py denoiser --size 512 --out /tmp/attn [--attention mha] [--torch]
    python benchmarks/attention_memory.py run MODEL.onnx FEEDS.npz OUT.npz [--threads N]

``denoiser`` exports the tiny preset's denoiser for one window per call (the CFG pair, batch 2)
at ``--size`` (512: 64x64 latents, 14 x 64 x 64 = 57,344 tokens in the first WFM block's full
attention), writes the spec's sample inputs, and runs ``run`` in a child process, which imports
only onnxruntime and numpy and reports its own peak RSS (``ru_maxrss``), so the number is the
graph's, not the exporter's. ``--torch`` also runs the torch module on the same inputs and
reports the largest relative error. Prints one JSON object.

With ``--attention decomposed`` (MatMul-Softmax-MatMul) the score matrix of the largest attention
is estimated first and the run is refused when it cannot fit in this machine's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_child(model: Path, feeds: Path, out: Path, threads: int | None) -> dict[str, Any]:
    """Load ``model``, run it once on ``feeds`` (npz), save the outputs; what the child prints."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    t1 = time.perf_counter()
    with np.load(feeds) as data:
        inputs = {name: data[name] for name in data.files}
    outputs = session.run(None, inputs)
    t2 = time.perf_counter()
    np.savez(out, **{o.name: v for o, v in zip(session.get_outputs(), outputs)})
    return {
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
        "load_s": round(t1 - t0, 2),
        "run_s": round(t2 - t1, 2),
    }


def measure(model: Path, feeds: dict[str, Any], workdir: Path, threads: int | None = None,
            timeout: float = 1800) -> tuple[dict[str, Any], dict[str, Any]]:
    """One call of ``model`` in a child process: (its report, its outputs as numpy arrays)."""
    import numpy as np

    workdir.mkdir(parents=True, exist_ok=True)
    feeds_path, out_path = workdir / "feeds.npz", workdir / "outputs.npz"
    np.savez(feeds_path, **{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in feeds.items()})
    cmd = [sys.executable, str(Path(__file__).resolve()), "run", str(model), str(feeds_path), str(out_path)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"onnxruntime child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out_path) as data:
        outputs = {name: data[name] for name in data.files}
    return report, outputs


def largest_scores_bytes(spec: Any, model_config: Any, values: dict[str, int]) -> int:
    """fp32 bytes of the largest attention score matrix of the denoiser: the first WFM block's full
    attention, [2 * windows, heads, F*h*w, F*h*w]."""
    shape = spec.input_shapes(values)["sample"]
    batch, frames, _, h, w = shape
    heads = model_config.unet["num_attention_heads"]
    heads = heads if isinstance(heads, int) else heads[0]
    tokens = frames * h * w
    return batch * heads * tokens * tokens * 4


def denoiser(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from engine.graphs.modules import GraphOptions
    from engine.graphs.spec import max_errors
    from export.build import ONNX_FILE, BuildConfig, Builder
    from export.sources import from_preset

    torch.set_num_threads(args.threads or torch.get_num_threads())
    source = from_preset("tiny", None, 0, "release")
    opts = GraphOptions(image_size=args.size, max_windows=1, opt_windows=1)
    cfg = BuildConfig(graphs=("denoiser",), parity=False, quiet=True, attention=args.attention)
    builder = Builder(source, opts, args.out, cfg)
    spec = builder.specs["denoiser"]
    values = spec.dim_values("export")
    scores = largest_scores_bytes(spec, source.model, values)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    shape = spec.input_shapes(values)["sample"]
    report: dict[str, Any] = {"attention": builder.attention, "size": args.size, "sample": list(shape),
                              "full_attention_tokens": shape[1] * shape[3] * shape[4],
                              "score_matrix_gib": round(scores / 2**30, 2), "machine_gib": round(total / 2**30, 1)}
    if builder.attention == "decomposed" and 2 * scores > total:  # scores and their softmax
        report["refused"] = "the unfused score matrix and its softmax do not fit in this machine's memory"
        return report
    t0 = time.perf_counter()
    row = builder.run()["graphs"][0]
    report["build_s"] = round(time.perf_counter() - t0, 1)
    report["build_status"] = row["status"]
    model = Path(row["path"]) / ONNX_FILE
    feeds = spec.sample_inputs("export", seed=1)
    child, outputs = measure(model, feeds, args.out / "probe", args.threads)
    report.update(child)
    if args.torch:
        module = spec.factory(source.networks()).eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = module(*(feeds[n] for n in spec.input_names))
        report["torch_s"] = round(time.perf_counter() - t0, 2)
        report["max_rel_err"] = {
            name: max_errors(torch.from_numpy(outputs[name]), r)[1] for name, r in zip(spec.output_names, ref)
        }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/attention_memory.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="(child) one onnxruntime call, peak RSS")
    r.add_argument("model", type=Path)
    r.add_argument("feeds", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--threads", type=int, default=None)
    d = sub.add_parser("denoiser", help="export the tiny denoiser at --size and measure one call")
    d.add_argument("--size", type=int, default=512)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--attention", choices=["mha", "onnx23", "decomposed"], default="mha")
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--torch", action="store_true", help="also run torch and report the relative error")
    args = p.parse_args(argv)
    if args.cmd == "run":
        print(json.dumps(run_child(args.model, args.feeds, args.out, args.threads)))
        return 0
    sys.path.insert(0, str(REPO))  # run as a script from anywhere
    print(json.dumps(denoiser(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
