"""``python -m engine.verify --backend onnxruntime --engines DIR``: built graphs vs torch.

Runs every graph found in DIR on its spec's sample inputs, on the chosen backend and on the
torch modules rebuilt from the weights the build recorded; prints max abs / relative error per
output against the spec's tolerance and exits non-zero on any breach.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from engine.cli.args import Parser, existing_dir, positive_int
from engine.errors import EngineError
from engine.graphs.modules import ALL_GRAPH_NAMES


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m engine.verify", description=__doc__)
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], required=True)
    p.add_argument("--engines", type=Path, required=True, help="folder written by python -m engine.build --out")
    p.add_argument("--graphs", nargs="+", choices=ALL_GRAPH_NAMES, default=None, help="default: every built graph")
    p.add_argument("--precision", choices=["fp32", "fp16"], default=None,
                   help="which artifacts (default: fp32 for onnxruntime, fp16 for tensorrt)")
    p.add_argument("--cuda-graphs", action="store_true", help="tensorrt: replay captured CUDA graphs")
    p.add_argument("--threads", type=positive_int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision or ("fp16" if args.backend == "tensorrt" else "fp32")

    from export.verify import table, verify

    try:
        existing_dir(args.engines, "--engines", "folder written by python -m engine.build --out")
        with torch.no_grad():
            rows = verify(args.backend, args.engines, args.graphs, precision, args.cuda_graphs)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(table(rows))
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
