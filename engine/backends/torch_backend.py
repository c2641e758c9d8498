"""Eager PyTorch: each graph is its spec's module (engine.graphs.modules) over the live ``Networks``.

This is the reference every other backend is compared with. It accepts any shape the
networks accept (the spec's ranges bind only exported graphs), and runs the LivePortrait
graphs with autocast disabled, in float32, as the release does.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.backends.base import Backend, GraphRunner, Tensors, check_names
from engine.graphs.spec import GraphSpec

if TYPE_CHECKING:
    from engine.models.networks import Networks


class TorchGraph(GraphRunner):
    def __init__(self, spec: GraphSpec, module: nn.Module) -> None:
        super().__init__(spec)
        self.module = module.eval()
        param = next(module.parameters())
        self.device, self.dtype = param.device, param.dtype

    def _region(self) -> contextlib.AbstractContextManager:
        if self.spec.fp32_only:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return contextlib.nullcontext()

    @torch.no_grad()
    def run(self, feeds: Mapping[str, torch.Tensor]) -> Tensors:
        check_names(self.spec, feeds)
        args = []
        for name in self.spec.input_names:
            t = feeds[name].to(self.device)
            args.append(t.to(self.dtype) if t.is_floating_point() else t)
        with self._region():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.spec.output_names, out))


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, nets: Networks, specs: Mapping[str, GraphSpec]) -> None:
        runners = {name: TorchGraph(spec, spec.factory(nets)) for name, spec in specs.items()}
        device = next(iter(runners.values())).device if runners else torch.device("cpu")
        super().__init__(runners, device)
        self.nets: Networks = nets
        self.specs = dict(specs)
        self._pooled: dict[int, TorchBackend] = {}

    def kv_downsample(self, factor: int) -> TorchBackend:
        """This backend with the denoiser's full attentions on ``factor`` x ``factor``-pooled keys/values
        (engine.models.approx): built once per factor over the same parameters; this one stays exact."""
        if factor == 1:
            return self
        if factor not in self._pooled:
            from engine.models.approx import kv_downsample

            nets = dataclasses.replace(self.nets, denoiser=kv_downsample(self.nets.denoiser, factor))
            denoiser_graphs = {n: s for n, s in self.specs.items()
                               if {"warping_feature_mapper", "unet"} & set(s.slots)}
            self._pooled[factor] = TorchBackend(nets, denoiser_graphs)
        return self._pooled[factor]
