"""Finding a built graph in an engines folder, checked before anything is loaded.

The build cache (export/cache.py) writes ``<engines>/<graph>/<kind>/`` with a meta.json that
holds the file hashes, the model config and the graph options (read with engine/artifact_store.py,
which has no export dependency). Here an artifact is accepted
only if every file matches its recorded size and hash, its spec is the one this code would
build from the recorded config (else the specs changed since: rebuild), and it was built for
the model, resolution, window size and time-context layout the pipeline runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.backends.base import BackendError
from engine.config.settings import ModelConfig
from engine.graphs.artifacts import ArtifactReader
from engine.graphs.modules import ALL_GRAPH_NAMES, GRAPH_NAMES, MODE_GRAPH_NAMES, GraphOptions, build_specs
from engine.graphs.spec import GraphSpec

REBUILD = "python -m engine.build --preset ... --target {target} --out {engines}"


@dataclass(frozen=True)
class Artifact:
    graph: str
    kind: str
    folder: Path
    meta: dict
    spec: GraphSpec

    def file(self, name: str) -> Path:
        return self.folder / name


def spec_from_meta(meta: Mapping[str, Any]) -> GraphSpec:
    model = ModelConfig(**meta["model"])
    spec = build_specs(model, GraphOptions(**meta["options"]), ALL_GRAPH_NAMES)[meta["graph"]]
    if spec.fingerprint() != meta.get("spec_fingerprint"):
        raise BackendError(
            f"the {meta['graph']} artifact was built from another version of its graph spec; rebuild it"
        )
    return spec


def graphs_to_open(engines: Path, kinds: Sequence[str]) -> list[str]:
    """The seven graphs every run needs, plus whichever fast-mode graphs (``MODE_GRAPH_NAMES``) the folder
    holds in one of ``kinds`` (they are built on request: ``engine.cli.build --graphs wfm unet ...``)."""
    root = Path(engines)
    present = [g for g in MODE_GRAPH_NAMES if any((root / g / k / "meta.json").is_file() for k in kinds)]
    return [*GRAPH_NAMES, *present]


def open_artifact(engines: Path, graph: str, kinds: Sequence[str], target: str, verify: bool = True) -> Artifact:
    """The first usable artifact of ``kinds`` for ``graph``; one clear error when none is."""
    store = ArtifactReader(engines)
    reasons = []
    for kind in kinds:
        found = store.verify(graph, kind, hash_files=verify)
        if found.usable and found.meta is not None:
            return Artifact(graph, kind, store.dir(graph, kind), found.meta, spec_from_meta(found.meta))
        reasons.append(f"{kind}: {found.reason}")
    raise BackendError(
        f"{engines} has no usable {graph} graph ({'; '.join(reasons)}); build it with "
        + REBUILD.format(target=target, engines=engines)
    )


def check_expected(art: Artifact, expect: Mapping[str, Any] | None) -> None:
    """Refuse an artifact built for another model / size / window / time-context layout."""
    if not expect:
        return
    opts = replace(
        GraphOptions(**art.meta["options"]),
        image_size=int(expect["image_size"]),
        window=int(expect["window"]),
        time_context=str(expect["time_context"]),
    )
    wanted = build_specs(expect["model"], opts)[art.graph]
    if wanted.fingerprint() != art.spec.fingerprint():
        built = art.meta["options"]
        raise BackendError(
            f"{art.folder} was built for another model or shape (image size {built['image_size']}, window "
            f"{built['window']}, time context {built['time_context']}, model {art.meta['model'].get('name')}); "
            f"this run needs image size {expect['image_size']}, window {expect['window']}, time context "
            f"{expect['time_context']}, model {expect['model'].name}: rebuild with python -m engine.build"
        )
