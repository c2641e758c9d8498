"""``engine.train`` on Ray Train: ``python -m engine.train ... --ray N`` (see docs/scale-out.md).

The same ``train_loop`` as a plain or ``torchrun`` run: Ray Train's ``TorchTrainer`` starts N workers
and initialises their process group (gloo on CPU, nccl on GPUs); ``distributed.setup`` finds that group
and uses it, so data sharding, the one all-reduce per step, checkpoints (atomic, the last K, written by
rank 0 into ``--out``) and resume are the loop's own. ``--out`` must be storage every worker's node
sees (a shared file system on a cluster). When a worker dies, Ray Train restarts the group (up to
``max_failures`` times) and the loop resumes from its last checkpoint in ``--out``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from engine.train.loop import TrainConfig


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the loop, reporting every step's record to Ray."""
    import ray.train
    import torch

    from engine.train.loop import train_loop

    torch.set_num_threads(max(1, int(config.pop("threads"))))
    paths = {f.name for f in dataclasses.fields(TrainConfig) if f.name in ("data", "out", "weights", "val_clip")}
    fields: dict[str, Any] = {k: (Path(v) if k in paths and v is not None else v) for k, v in config.items()}
    cfg = TrainConfig(**fields)
    train_loop(cfg, on_step=lambda step, record: ray.train.report({"step": step, **record}))


def fit(cfg: TrainConfig, workers: int, use_gpu: bool = False, cpus_per_worker: int = 1, max_failures: int = 0,
        address: str | None = None) -> list[float]:
    """Train with ``workers`` Ray Train workers; returns the logged loss of every step (``out/log.jsonl``)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg.check()
    owns = not ray.is_initialized()
    if owns:
        ray.init(address=address, include_dashboard=False) if address else ray.init(include_dashboard=False)
    try:
        out = Path(cfg.out).resolve()
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
        config.update(out=str(out), threads=cpus_per_worker)
        per_worker = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        trainer = TorchTrainer(
            _worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker),
            run_config=RunConfig(name="ray-train", storage_path=str(out / "ray"),
                                 failure_config=FailureConfig(max_failures=max_failures)),
        )
        trainer.fit()
    finally:
        if owns:
            ray.shutdown()
    lines = (out / "log.jsonl").read_text().splitlines()
    return [float(json.loads(line)["loss"]) for line in lines if line.strip()]
