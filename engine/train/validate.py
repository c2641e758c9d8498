"""Validation render during training: a held-out clip through the engine's exact mode, with the modules in
memory (the weights being trained), written side by side with the driving clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.backends import create_backend
from engine.config.settings import EngineConfig, ModelConfig
from engine.io import read_video
from engine.models.networks import Networks
from engine.train.step import TrainModules, set_batch_layout


def render_validation(nets: Networks, model: ModelConfig, modules: TrainModules, cfg, size: int,
                      clip: Path, out: Path) -> Path:
    """Source = the clip's first frame, driving = its first ``cfg.frames`` frames; ``cfg.val_steps`` Euler
    steps. Returns the written video (source | driving | result)."""
    from engine.api import Reenactor, RunOptions

    frames = read_video(clip, size, max_frames=cfg.frames).frames
    engine_cfg = EngineConfig(model=model, size=size, time_context=cfg.time_context,
                              device=str(next(nets.denoiser.parameters()).device))
    set_batch_layout(modules, 2, cfg.time_context)  # inference batches are CFG pairs
    dtypes = {name: next(m.parameters()).dtype for name, m in nets.modules().items()}
    try:
        nets.to(engine_cfg.device, torch.float32)
        engine = Reenactor(create_backend("torch", engine_cfg, nets=nets), engine_cfg, model.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            engine.render(np.ascontiguousarray(frames[0]), frames, out, options=RunOptions(steps=cfg.val_steps),
                          side_by_side_with_inputs=True)
    finally:
        for name, module in nets.modules().items():
            if next(module.parameters()).dtype != dtypes[name]:
                module.to(dtype=dtypes[name])
        set_batch_layout(modules, cfg.batch, cfg.time_context)
    return out
