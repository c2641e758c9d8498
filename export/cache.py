"""Content-addressed build cache for exported graphs and engines.

Each artifact lives in ``OUT/<graph>/<kind>/`` (kind: ``onnx-fp32``, ``onnx-fp16``, ``trt-fp16``,
...) next to a ``meta.json`` that records:

* ``key``: sha256 of ``key_inputs`` - the graph spec, the weights that feed it (per checkpoint
  file, by content), the precision, the tool versions, the engine source that shapes the graph,
  and for TensorRT the GPU name and the ONNX artifact's own key;
* ``files``: name -> {sha256, bytes} of every file of the artifact.

An artifact is reused only when its key matches AND every file still has its recorded size and
hash, so a truncated, corrupt or foreign file is rebuilt, never loaded. Artifacts are written in a
staging folder and renamed into place, so an interrupted build leaves the previous one intact.

The reading side (layout, meta.json, integrity check, sha256 helpers) is ``engine.graphs.artifacts``,
which the backends use without this package; ``ArtifactStore`` here adds keys and writing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from engine.graphs.artifacts import CACHE_FORMAT, META, ArtifactReader, Lookup, sha256_file, sha256_json, tensors_hash

REPO = Path(__file__).resolve().parents[1]
# Sources whose edits change what a graph computes or how it is written.
CODE_GLOBS = ("engine/models/**/*.py", "engine/kernels/grid_sample.py", "engine/kernels/decomposed.py",
              "engine/graphs/*.py", "export/onnx_export.py",
              "export/grid_sample_onnx.py", "export/attention_onnx.py")
EXPORT_TOOLS = ("torch", "onnx", "onnxscript", "onnx-ir", "diffusers", "transformers")


def state_dict_hash(module: torch.nn.Module) -> str:
    """Hash of a module's tensors (names, dtypes, shapes, bytes): the identity of in-memory weights."""
    return tensors_hash(module.state_dict())


def tool_versions(names: Iterable[str] = EXPORT_TOOLS) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def code_hash(root: Path = REPO, globs: Iterable[str] = CODE_GLOBS) -> str:
    digest = hashlib.sha256()
    for pattern in globs:
        for path in sorted(root.glob(pattern)):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class FileHashMemo:
    """sha256 of weight files, remembered by (path, size, mtime) so unchanged files are read once.

    A touched file whose bytes did not change hashes the same, so it rebuilds nothing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def __call__(self, file: Path) -> str:
        st = file.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        key = str(file.resolve())
        entry = self.entries.get(key)
        if entry and entry["stamp"] == stamp:
            return entry["sha256"]
        digest = sha256_file(file)
        self.entries[key] = {"stamp": stamp, "sha256": digest}
        return digest

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        tmp.replace(self.path)


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the key inputs that differ (what the build says it rebuilt for)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changed_fields(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


class ArtifactStore(ArtifactReader):
    """The build side of the cache: key comparison, staging, atomic commit."""

    def lookup(self, graph: str, kind: str, key: str, key_inputs: Mapping[str, Any]) -> Lookup:
        """Reusable for ``key``? The key is compared first, so a stale artifact is never hashed."""
        meta = self.read_meta(graph, kind)
        if meta is not None and meta.get("key") != key:
            fields = changed_fields(meta.get("key_inputs", {}), key_inputs)
            return Lookup(False, "inputs changed" + (f": {', '.join(fields)}" if fields else ""), meta)
        return self.verify(graph, kind)

    def staging(self, graph: str, kind: str) -> Path:
        folder = self.root / graph / f".{kind}.staging-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def commit(self, staging: Path, graph: str, kind: str, key: str, key_inputs: Mapping[str, Any],
               info: Mapping[str, Any]) -> dict:
        """Hash the staged files, write meta.json, swap the folder into place; returns the meta."""
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(staging.iterdir()) if p.is_file()}
        meta = {"format": CACHE_FORMAT, "graph": graph, "kind": kind, "key": key, "key_inputs": dict(key_inputs),
                "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        (staging / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        final = self.dir(graph, kind)
        old = final.with_name(f".{kind}.old-{os.getpid()}")
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return meta

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)


def make_key(inputs: Mapping[str, Any]) -> str:
    return sha256_json({"format": CACHE_FORMAT, **inputs})
