"""One interface for every way of running the engine's graphs.

A backend is a set of named graphs (``engine.graphs.modules.GRAPH_NAMES``); each graph is a
``GraphRunner`` with ``run(feeds) -> outputs``, both dicts keyed by the graph spec's tensor
names, whatever executes it (eager torch, onnxruntime, TensorRT). Outputs are fresh tensors
the caller owns (never views of a buffer the next call overwrites), on the backend's device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch

from engine.errors import EngineError
from engine.graphs.spec import GraphSpec

if TYPE_CHECKING:  # the networks load only for the torch backend
    from engine.models.networks import Networks

Tensors = dict[str, torch.Tensor]


class BackendError(EngineError):
    """A backend cannot be created or a graph cannot run (missing engine, wrong shape, ...)."""


def check_names(spec: GraphSpec, feeds: Mapping[str, torch.Tensor]) -> None:
    missing = [n for n in spec.input_names if n not in feeds]
    unexpected = [n for n in feeds if n not in spec.input_names]
    if missing or unexpected:
        raise BackendError(
            f"graph {spec.name}: feeds must be exactly {spec.input_names} (missing {missing}, unexpected {unexpected})"
        )


class GraphRunner(ABC):
    """One executable graph."""

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @abstractmethod
    def run(self, feeds: Mapping[str, torch.Tensor]) -> Tensors:
        """Inputs by name -> outputs by name (the spec's names, in the spec's order)."""

    def fixed_dims(self) -> dict[str, int]:
        """Dims this runner only takes at one value (empty when every size is accepted)."""
        return {}

    def max_dims(self) -> dict[str, int]:
        """Largest accepted value of each bounded dim (empty when unbounded)."""
        return {}

    def close(self) -> None:
        """Release what the runner holds (sessions, engines, CUDA graphs); idempotent."""
        return None  # runners that hold nothing release nothing


class Backend:
    """Named graph runners sharing a device.

    Declared capability: ``nets``, the eager networks behind the graphs (the torch backend's), for what
    rewrites the networks themselves (``kv_downsample``); None where the graphs are built artifacts."""

    name = "base"
    nets: Networks | None = None

    def __init__(self, runners: Mapping[str, GraphRunner], device: torch.device | str = "cpu") -> None:
        self.runners = dict(runners)
        self.device = torch.device(device)

    def __contains__(self, graph: str) -> bool:
        return graph in self.runners

    def __getitem__(self, graph: str) -> GraphRunner:
        if graph not in self.runners:
            raise BackendError(f"backend {self.name} has no graph {graph!r} (it has {sorted(self.runners)})")
        return self.runners[graph]

    def graphs(self) -> Iterable[str]:
        return self.runners.keys()

    def run(self, graph: str, **feeds: torch.Tensor) -> Tensors:
        """``backend.run("warp", feature_volume=..., kp_source=..., kp_driving=...)``."""
        return self[graph].run(feeds)

    def kv_downsample(self, factor: int) -> Backend:
        """This backend with the denoiser's full attentions on ``factor`` x ``factor``-pooled keys/values
        (engine.models.approx). Only a backend with eager networks (``nets``) can rewrite them."""
        if factor == 1:
            return self
        raise BackendError(f"kv_downsample {factor} changes the networks' attention: it runs on the torch backend "
                           f"only, not on {self.name}")

    def fixed_dim(self, graph: str, dim: str) -> int | None:
        return self[graph].fixed_dims().get(dim)

    def max_dim(self, graph: str, dim: str) -> int | None:
        return self[graph].max_dims().get(dim)

    def close(self) -> None:
        """Release every runner (idempotent); the backend cannot run afterwards."""
        runners, self.runners = self.runners, {}
        errors = []
        for runner in runners.values():
            try:
                runner.close()
            except Exception as exc:  # close the others anyway, then report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
