"""``engine.train`` and ``engine.distill`` on Ray Train: ``python -m engine.train ... --ray N``,
``python -m engine.distill ... --ray N`` (see docs/scale-out.md).

The same loops as a plain or ``torchrun`` run: Ray Train's ``TorchTrainer`` starts N workers and
initialises their process group (gloo on CPU, nccl on GPUs); ``distributed.setup`` finds that group and
uses it, so data sharding, the one all-reduce per step, checkpoints (atomic, the last K, written by
rank 0 into ``--out``) and resume are the loops' own. ``--out`` must be storage every worker's node
sees (a shared file system on a cluster). When a worker dies, Ray Train restarts the group (up to
``max_failures`` times) and the loop resumes from its last checkpoint in ``--out``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.train.loop import TrainConfig

if typing.TYPE_CHECKING:
    from engine.distill.train import DistillConfig

REPORT = ".ray-report.json"  # distill: the main worker's report, read back by the driver


def _config(cls: type, config: dict[str, Any]) -> Any:
    """A loop's config dataclass back from the plain dict a worker receives (paths were sent as text)."""
    hints = typing.get_type_hints(cls)
    paths = {f.name for f in dataclasses.fields(cls) if Path in (hints[f.name], *typing.get_args(hints[f.name]))}
    return cls(**{k: (Path(v) if k in paths and v is not None else v) for k, v in config.items()})


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the chosen loop (train reports every step's record to Ray; distill's main
    process leaves its report in ``out/REPORT``: Ray returns only metrics that come with a Ray checkpoint)."""
    import ray.train
    import torch

    torch.set_num_threads(max(1, int(config.pop("threads"))))
    if config.pop("loop") == "distill":
        from engine.distill.train import DistillConfig, distill_loop

        report = distill_loop(_config(DistillConfig, config))
        if report is not None:  # the main process
            tmp = Path(config["out"]) / f"{REPORT}.partial"
            tmp.write_text(json.dumps(report, default=str))
            tmp.replace(Path(config["out"]) / REPORT)
        return
    from engine.train.loop import train_loop

    train_loop(_config(TrainConfig, config), on_step=lambda step, record: ray.train.report({"step": step, **record}))


def _fit(loop: str, cfg: Any, workers: int, use_gpu: bool, cpus_per_worker: int, max_failures: int,
         address: str | None) -> Any:
    """Run ``loop`` ("train" | "distill") with ``cfg`` on ``workers`` Ray Train workers -> Ray's Result."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchTrainer

    owns = not ray.is_initialized()
    if owns:
        ray.init(address=address, include_dashboard=False) if address else ray.init(include_dashboard=False)
    try:
        out = Path(cfg.out).resolve()
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
        config.update(out=str(out), threads=cpus_per_worker, loop=loop)
        per_worker = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        trainer = TorchTrainer(
            _worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker),
            run_config=RunConfig(name=f"ray-{loop}", storage_path=str(out / "ray"),
                                 failure_config=FailureConfig(max_failures=max_failures)),
        )
        try:
            return trainer.fit()
        except WorkerGroupError as err:  # a worker's bad input is the run's one clear error, not a traceback
            bad = [e for e in err.worker_failures.values() if isinstance(e, EngineError)]
            if bad:
                raise bad[0] from None
            raise
    finally:
        if owns:
            ray.shutdown()


def fit(cfg: TrainConfig, workers: int, use_gpu: bool = False, cpus_per_worker: int = 1, max_failures: int = 0,
        address: str | None = None) -> list[float]:
    """Train with ``workers`` Ray Train workers; returns the logged loss of every step (``out/log.jsonl``)."""
    cfg.check()
    _fit("train", cfg, workers, use_gpu, cpus_per_worker, max_failures, address)
    lines = (Path(cfg.out).resolve() / "log.jsonl").read_text().splitlines()
    return [float(json.loads(line)["loss"]) for line in lines if line.strip()]


def fit_distill(cfg: DistillConfig, workers: int, cpus_per_worker: int = 1, max_failures: int = 0,
                address: str | None = None) -> dict[str, Any] | None:
    """Distil with ``workers`` Ray Train workers on CPUs (as ``distill_loop``: gloo); returns the main
    process's report (what ``distill_loop`` returns there)."""
    path = Path(cfg.out).resolve() / REPORT
    path.unlink(missing_ok=True)
    _fit("distill", cfg, workers, False, cpus_per_worker, max_failures, address)
    report = json.loads(path.read_text())
    path.unlink()
    return report
