"""Where a build's networks come from, and the identity of their weights per checkpoint slot.

The build cache keys every graph on the weights that feed it (``GraphSpec.slots``), so a
changed checkpoint file rebuilds only the graphs made from it. Release-layout folders are
identified by file content (sha256, remembered by size and mtime); in-memory networks (the
seeded tiny init, a fixture's weights) by their state-dict tensors. Networks are loaded only
when a graph actually has to be exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.config.settings import ModelConfig
from engine.models import weights
from engine.models.networks import Networks, build_tiny, load_preset
from export.cache import FileHashMemo, state_dict_hash


@dataclass
class NetworkSource:
    model: ModelConfig
    time_context: str
    description: dict[str, Any]  # JSON: how to load these networks again (engine.cli.verify does)
    _hashes: Callable[[], dict[str, str]]
    _loader: Callable[[], Networks]
    _nets: Networks | None = field(default=None, repr=False)
    _hash_cache: dict[str, str] | None = field(default=None, repr=False)

    def slot_hashes(self) -> dict[str, str]:
        if self._hash_cache is None:
            self._hash_cache = self._hashes()
        return self._hash_cache

    def networks(self) -> Networks:
        if self._nets is None:
            self._nets = self._loader()
        return self._nets

    def model_dict(self) -> dict[str, Any]:
        return asdict(self.model)


def _module_hashes(nets: Networks) -> dict[str, str]:
    return {slot: state_dict_hash(module) for slot, module in nets.slots().items()}


def from_networks(nets: Networks, model: ModelConfig, time_context: str, description: dict[str, Any]) -> NetworkSource:
    return NetworkSource(model, time_context, description, lambda: _module_hashes(nets), lambda: nets, nets)


def from_preset(preset: str, weights_dir: Path | None = None, seed: int = 0, time_context: str = "release",
                memo: FileHashMemo | None = None) -> NetworkSource:
    """``preset`` filled from a release-layout folder, or (tiny, no folder) the seeded init."""
    description = {"kind": "preset", "preset": preset, "weights": str(weights_dir) if weights_dir else None,
                   "seed": seed, "time_context": time_context}
    if weights_dir is None:
        if preset == "official":
            raise weights.WeightsError("--preset official needs --weights DIR (the release's pretrained_weights/)")
        from engine.config import presets
        model = presets.from_name(preset)
        return from_networks(build_tiny(model, seed, time_context), model, time_context, description)

    root = Path(weights_dir)
    paths = weights.locate(root)  # one clear error listing every missing file, before anything else
    model = _model_config(preset, root)
    hasher = memo or FileHashMemo(root / ".frvd_hashes.json")

    def hashes() -> dict[str, str]:
        return {slot: hasher(path) for slot, path in paths.items()}

    def load() -> Networks:
        return load_preset(preset, root, seed, time_context)[2]

    return NetworkSource(model, time_context, description, hashes, load)


def _model_config(preset: str, root: Path) -> ModelConfig:
    """The official preset reads its configs from the weights folder; reduced presets are fixed."""
    from engine.config import presets
    from engine.models.networks import _official_config

    return _official_config(root)[0] if preset == "official" else presets.from_name(preset)


def from_fixture(fixture_dir: Path, time_context: str = "release") -> NetworkSource:
    """The pipeline fixture's networks (tiny widths, the release's recorded random weights)."""
    from engine.fixtures import pipeline as fixture

    cfg = fixture.read_config(fixture_dir, "pipeline")
    model = fixture.model_config(cfg)
    nets = fixture.load_fixture_networks(fixture_dir, model, time_context)
    description = {"kind": "fixture", "dir": str(fixture_dir), "time_context": time_context}
    return from_networks(nets, model, time_context, description)


def with_distilled(source: NetworkSource, student: Path | None, tiny_decoder: Path | None) -> NetworkSource:
    """``source`` with a distilled student's denoiser and HeadNet (engine.models.student) and/or a TAESD
    decoder (engine.models.taesd) loaded into its networks, both recorded (file, sha256) in its description
    so that an engine given the files can check its graphs were built from them."""
    if student is None and tiny_decoder is None:
        return source
    from engine.graphs.artifacts import sha256_file
    from engine.models import student as student_file
    from engine.models import taesd

    nets = source.networks()
    description = dict(source.description)
    if student is not None:
        student_file.load_into(nets, Path(student))
        description["student"] = {"file": str(student), "sha256": sha256_file(Path(student))}  # named in errors
    if tiny_decoder is not None:
        vae = source.model.vae
        nets.tiny_decoder = taesd.load(Path(tiny_decoder), int(vae.get("latent_channels", 4)), taesd.width_for(vae))
        description["tiny_decoder"] = {"file": str(tiny_decoder), "sha256": sha256_file(Path(tiny_decoder))}
    return from_networks(nets, source.model, source.time_context, description)


def load_source(description: dict[str, Any]) -> NetworkSource:
    """Rebuild the source a build recorded (engine.cli.verify compares backends with it)."""
    if description.get("kind") == "fixture":
        return from_fixture(Path(description["dir"]), description.get("time_context", "release"))
    if description.get("kind") == "preset":
        weights_dir = Path(description["weights"]) if description.get("weights") else None
        source = from_preset(description["preset"], weights_dir, int(description.get("seed", 0)),
                             description.get("time_context", "release"))
        files = {k: Path(description[k]["file"]) if description.get(k) else None for k in ("student", "tiny_decoder")}
        return with_distilled(source, files["student"], files["tiny_decoder"])
    raise ValueError(f"cannot rebuild networks from {description!r}")
