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
from engine.graphs.modules import (
    ALL_GRAPH_NAMES,
    GRAPH_NAMES,
    MODE_GRAPH_NAMES,
    OPTIONAL_GRAPH_NAMES,
    GraphOptions,
    build_specs,
)
from engine.graphs.spec import GraphSpec
from engine.models.student import StudentInfo, read_info

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
    spec = build_specs(model, GraphOptions(**meta["options"]), ALL_GRAPH_NAMES + OPTIONAL_GRAPH_NAMES)[meta["graph"]]
    if spec.fingerprint() != meta.get("spec_fingerprint"):
        raise BackendError(
            f"the {meta['graph']} artifact was built from another version of its graph spec; rebuild it"
        )
    return spec


def graphs_to_open(engines: Path, kinds: Sequence[str]) -> list[str]:
    """The seven graphs every run needs, plus whichever fast-mode graphs (``MODE_GRAPH_NAMES``) and tiny decoder
    the folder holds in one of ``kinds`` (built on request: ``engine.cli.build --graphs wfm unet ...``,
    ``--tiny-decoder FILE``)."""
    root = Path(engines)
    present = [g for g in MODE_GRAPH_NAMES + OPTIONAL_GRAPH_NAMES
               if any((root / g / k / "meta.json").is_file() for k in kinds)]
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
    wanted = build_specs(expect["model"], opts, ALL_GRAPH_NAMES + OPTIONAL_GRAPH_NAMES)[art.graph]
    if wanted.fingerprint() != art.spec.fingerprint():
        built = art.meta["options"]
        raise BackendError(
            f"{art.folder} was built for another model or shape (image size {built['image_size']}, window "
            f"{built['window']}, time context {built['time_context']}, model {art.meta['model'].get('name')}); "
            f"this run needs image size {expect['image_size']}, window {expect['window']}, time context "
            f"{expect['time_context']}, model {expect['model'].name}: rebuild with python -m engine.build"
        )


# the checkpoint slots a student file fills, by its tensor prefix (engine.models.student.parts)
STUDENT_SLOTS = {"warping_feature_mapper": "denoiser.wfm.", "unet": "denoiser.unet.", "head_embedder": "head_net."}


def distilled_slot_hashes(student: Path | None, tiny_decoder: Path | None, model: ModelConfig
                          ) -> dict[str, str]:
    """The build cache's weight identity (``tensors_hash``) of every slot the given files fill; each file's own
    checks (exists, format, keys) raise first."""
    from engine.graphs.artifacts import tensors_hash
    from engine.models import taesd

    hashes = {}
    if student is not None:
        tensors = read_info(student)[0]
        for slot, prefix in STUDENT_SLOTS.items():
            hashes[slot] = tensors_hash({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if tiny_decoder is not None:
        vae = model.vae
        decoder = taesd.load(tiny_decoder, int(vae.get("latent_channels", 4)), taesd.width_for(vae))
        hashes["tiny_decoder"] = tensors_hash(decoder.state_dict())
    return hashes


def built_student(artifacts: Mapping[str, Artifact], student: Path | None, tiny_decoder: Path | None,
                  model: ModelConfig) -> StudentInfo | None:
    """An engine on built graphs (``engine.build --student/--tiny-decoder``): every graph made from a slot the
    given files fill must hold exactly their weights, and graphs built from a student need it given (its
    steps and kv_downsample come from the file). Returns the student's info; one clear error otherwise."""
    hashes = distilled_slot_hashes(student, tiny_decoder, model)
    if tiny_decoder is not None and "tiny_decoder" not in artifacts:
        raise BackendError(f"--tiny-decoder {tiny_decoder}: these engines have no tiny_decoder graph; build it "
                           f"with python -m engine.build ... --tiny-decoder {tiny_decoder}")
    for art in artifacts.values():
        built = art.meta.get("key_inputs", {}).get("weights", {})
        for slot in set(art.spec.slots) & set(hashes):
            if built.get(slot) != hashes[slot]:
                flag = "--tiny-decoder" if slot == "tiny_decoder" else "--student"
                given = tiny_decoder if slot == "tiny_decoder" else student
                raise BackendError(f"the {art.graph} graph in {art.folder.parent.parent} was built from other "
                                   f"{slot} weights than {flag} {given}: rebuild the engines with python -m "
                                   f"engine.build ... {flag} {given}")
        recorded = (art.meta.get("source") or {}).get("student")
        if student is None and recorded and set(art.spec.slots) & set(STUDENT_SLOTS):
            raise BackendError(f"the {art.graph} graph in {art.folder.parent.parent} was built from the student "
                               f"{recorded.get('file')}: give it (--student FILE) so that runs use its steps")
    return read_info(student)[1] if student is not None else None
