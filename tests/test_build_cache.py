"""The build cache: keys, metadata and integrity checks, and engine.cli.build runs that rebuild only
what changed (graphs from a release-layout weights folder with tiny-preset checkpoints)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.backends.base import BackendError
from engine.backends.ort_backend import OrtBackend
from engine.cli.build import main as build_main
from engine.config import presets
from engine.models import weights
from engine.models.networks import build_tiny
from export.cache import ArtifactStore, FileHashMemo, changed_fields, make_key, state_dict_hash

GRAPHS = ["appearance", "image_encoder"]  # the two fastest graphs to export


# ------------------------------------------------------------------------------ store, keys


def _stage(store: ArtifactStore, payload: bytes = b"0123456789") -> Path:
    staging = store.staging("g", "onnx-fp32")
    (staging / "model.onnx").write_bytes(payload)
    (staging / "model.onnx.data").write_bytes(payload * 3)
    return staging


def test_commit_then_verify_detects_truncation_corruption_and_loss(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    meta = store.commit(_stage(store), "g", "onnx-fp32", "k1", {"a": 1}, {"note": "x"})
    assert meta["key"] == "k1" and set(meta["files"]) == {"model.onnx", "model.onnx.data"}
    assert store.verify("g", "onnx-fp32").usable
    data = tmp_path / "g" / "onnx-fp32" / "model.onnx.data"

    data.write_bytes(data.read_bytes()[:-1])  # truncated
    assert "truncated" in store.verify("g", "onnx-fp32").reason
    data.write_bytes(b"X123456789" + b"0123456789" * 2)
    assert "hash" in store.verify("g", "onnx-fp32").reason  # same size, other bytes: corrupt or foreign
    data.unlink()
    assert "missing" in store.verify("g", "onnx-fp32").reason
    (tmp_path / "g" / "onnx-fp32" / "meta.json").write_text("{not json")
    assert not store.verify("g", "onnx-fp32").usable
    assert store.verify("g", "trt-fp16").reason == "not built yet"


def test_lookup_compares_keys_before_hashing_and_names_what_changed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    inputs = {"weights": {"vae": "aa"}, "precision": "fp32", "tools": {"torch": "2"}}
    key = make_key(inputs)
    store.commit(_stage(store), "g", "onnx-fp32", key, inputs, {})
    assert store.lookup("g", "onnx-fp32", key, inputs).usable
    changed = {**inputs, "weights": {"vae": "bb"}}
    found = store.lookup("g", "onnx-fp32", make_key(changed), changed)
    assert not found.usable and found.reason == "inputs changed: weights.vae"
    assert make_key(inputs) == make_key(dict(reversed(list(inputs.items()))))  # order-free
    assert changed_fields({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]


def test_a_recommit_replaces_the_artifact_atomically(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.commit(_stage(store, b"old"), "g", "onnx-fp32", "k1", {}, {})
    store.commit(_stage(store, b"new!"), "g", "onnx-fp32", "k2", {}, {})
    assert (tmp_path / "g" / "onnx-fp32" / "model.onnx").read_bytes() == b"new!"
    assert store.read_meta("g", "onnx-fp32")["key"] == "k2"
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["onnx-fp32"]  # no staging or old folders left


def test_file_hash_memo_rehashes_only_changed_stamps(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    memo = FileHashMemo(tmp_path / "memo.json")
    first = memo(f)
    memo.save()
    again = FileHashMemo(tmp_path / "memo.json")
    assert again(f) == first
    f.write_bytes(b"abd")
    assert again(f) != first


def test_state_dict_hash_sees_every_tensor() -> None:
    a = torch.nn.Linear(3, 2)
    h = state_dict_hash(a)
    with torch.no_grad():
        a.bias[0] += 1
    assert state_dict_hash(a) != h


# ------------------------------------------------------------------------------ engine.cli.build


def _save_release_layout(root: Path, nets) -> dict[str, Path]:
    """Tiny-preset checkpoints written where the release keeps its files."""
    paths = {}
    slots = nets.slots()
    for wf in weights.LAYOUT:
        rel = next(c for c in wf.candidates if c.endswith(".safetensors"))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in slots[wf.name].state_dict().items()}
        tail = getattr(slots[wf.name], "tail_keys", dict)()  # the release's SPADE files carry its unused decoder
        state.update({k: torch.zeros(shape) for k, shape in tail.items()})
        save_file(state, str(path))
        paths[wf.name] = path
    return paths


def _build(weights_dir: Path, out: Path, capsys) -> tuple[dict, str]:
    code = build_main(["--preset", "tiny", "--weights", str(weights_dir), "--out", str(out), "--graphs", *GRAPHS,
                       "--quiet"])
    text = capsys.readouterr().out
    assert code == 0, text
    return json.loads((out / "build_report.json").read_text()), text


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    _save_release_layout(root, build_tiny(presets.tiny(), 0, "release"))
    return root


def test_rebuilds_only_what_changed(weights_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "engines"
    first, _ = _build(weights_dir, out, capsys)
    assert first["exported"] == GRAPHS and not first["failed"]

    # 1. nothing changed: no export, and the summary says so
    second, text = _build(weights_dir, out, capsys)
    assert second["exported"] == [] and second["built"] == [] and second["cached"] == GRAPHS
    assert "nothing rebuilt" in text

    # 2. a touched but unchanged checkpoint hashes the same
    clip = weights_dir / "stable-video-diffusion-img2vid-xt/image_encoder/model.safetensors"
    os.utime(clip, (1, 1))
    assert _build(weights_dir, out, capsys)[0]["exported"] == []

    # 3. new image-encoder weights rebuild that graph only
    nets = build_tiny(presets.tiny(), 0, "release")
    with torch.no_grad():
        next(nets.image_encoder.parameters()).mul_(1.01)
    save_file({k: v.contiguous() for k, v in nets.image_encoder.state_dict().items()}, str(clip))
    third, text = _build(weights_dir, out, capsys)
    assert third["exported"] == ["image_encoder"] and third["cached"] == ["appearance"]
    row = next(r for r in third["graphs"] if r["graph"] == "image_encoder")
    assert row["reason"] == "inputs changed: weights.image_encoder" and row["passed"]

    # 4. a truncated artifact is rebuilt, never loaded
    data = out / "appearance" / "onnx-fp32" / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(BackendError, match="no usable appearance graph"):
        OrtBackend(out, graphs=["appearance"])
    fourth, _ = _build(weights_dir, out, capsys)
    assert fourth["exported"] == ["appearance"]
    assert "truncated" in next(r for r in fourth["graphs"] if r["graph"] == "appearance")["reason"]
    assert OrtBackend(out, graphs=["appearance"]).run("appearance", source=torch.rand(1, 3, 256, 256))[
        "feature_volume"].shape == (1, 16, 4, 16, 16)

    # 5. a foreign file of another graph in its place is caught by its hash and rebuilt
    other = out / "image_encoder" / "onnx-fp32" / "model.onnx"
    (out / "appearance" / "onnx-fp32" / "model.onnx").write_bytes(other.read_bytes())
    fifth, _ = _build(weights_dir, out, capsys)
    assert fifth["exported"] == ["appearance"]


def test_a_missing_checkpoint_is_one_clear_error(tmp_path: Path, capsys) -> None:
    code = build_main(["--preset", "tiny", "--weights", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: weights folder") and "lacks" in err
