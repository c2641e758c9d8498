"""Reading side of the build cache: the on-disk layout, meta.json and the integrity check.

Each artifact lives in ``OUT/<graph>/<kind>/`` (kind: ``onnx-fp32``, ``onnx-fp16``, ``trt-fp16``,
...) next to a ``meta.json`` whose ``files`` maps name -> {sha256, bytes} for every file of the
artifact. An artifact is usable only when its metadata is readable and of this ``CACHE_FORMAT``
and every file still has its recorded size and hash, so a truncated, corrupt or foreign file is
rebuilt, never loaded. The backends read artifacts through ``ArtifactReader``; the writing side
(keys, staging, commit) is ``export.cache.ArtifactStore``, which extends it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1
META = "meta.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensors_hash(tensors: Mapping[str, Any]) -> str:
    """Hash of named tensors (names, dtypes, shapes, bytes): the identity of in-memory weights (a module's
    state dict). The build cache keys every graph on it per checkpoint slot."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Lookup:
    usable: bool
    reason: str  # "cached", or why it must be (re)built
    meta: dict | None = None


class ArtifactReader:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def dir(self, graph: str, kind: str) -> Path:
        return self.root / graph / kind

    def read_meta(self, graph: str, kind: str) -> dict | None:
        try:
            meta = json.loads((self.dir(graph, kind) / META).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None

    def verify(self, graph: str, kind: str, hash_files: bool = True) -> Lookup:
        """Is the stored artifact intact: metadata readable, every file of its recorded size and hash?"""
        folder = self.dir(graph, kind)
        if not (folder / META).exists():
            return Lookup(False, "not built yet")
        meta = self.read_meta(graph, kind)
        if meta is None or not isinstance(meta.get("files"), dict) or not meta["files"]:
            return Lookup(False, "metadata missing or unreadable")
        for name, info in meta["files"].items():
            path = folder / name
            if not path.is_file():
                return Lookup(False, f"{name} is missing", meta)
            if path.stat().st_size != info["bytes"]:
                return Lookup(False, f"{name} is truncated or replaced (size {path.stat().st_size} != {info['bytes']})",
                              meta)
            if hash_files and sha256_file(path) != info["sha256"]:
                return Lookup(False, f"{name} does not match its recorded hash (corrupt or foreign)", meta)
        return Lookup(True, "cached", meta)

    def size(self, graph: str, kind: str) -> int:
        meta = self.read_meta(graph, kind) or {}
        return sum(f["bytes"] for f in meta.get("files", {}).values())
