"""The official-release pipeline fixture on exported graphs (``python -m engine.fixtures --backend onnxruntime``).

``onnxruntime_factory`` is a ``backend_factory`` for ``engine.fixtures.pipeline.reproduce``:
it exports the fixture networks' graphs into an engines folder (through the build cache) and runs
exact mode on onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

from engine.backends import Backend
from engine.backends.ort_backend import OrtBackend
from engine.config.settings import EngineConfig
from engine.graphs.modules import GraphOptions
from engine.models.networks import Networks
from export.build import BuildConfig, Builder, summary
from export.sources import from_networks


def onnxruntime_factory(engines: Path, fixture_dir: Path, window_batch: int = 1, quiet: bool = True):
    """``backend_factory`` that exports the fixture networks' graphs into ``engines`` (cached) and
    returns an onnxruntime backend over them; builds with a failing graph stop before the run."""

    def factory(nets: Networks, engine_cfg: EngineConfig) -> Backend:
        tc = engine_cfg.time_context
        where = {"kind": "fixture", "dir": str(fixture_dir), "time_context": tc}
        source = from_networks(nets, engine_cfg.model, tc, where)
        opts = GraphOptions(image_size=engine_cfg.size, window=engine_cfg.windows.size,
                            max_windows=max(4, window_batch), opt_windows=window_batch, time_context=tc)
        report = Builder(source, opts, engines, BuildConfig(quiet=quiet)).run()
        if report["failed"]:
            raise RuntimeError(f"exported graphs failed their parity check:\n{summary(report)}")
        expect = {"model": engine_cfg.model, "time_context": tc, "image_size": engine_cfg.size,
                  "window": engine_cfg.windows.size}
        return OrtBackend(engines, expect=expect, device="cpu")

    return factory
