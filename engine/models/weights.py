"""The release's ``pretrained_weights/`` folder -> checked state dicts.

Every checkpoint is checked against an expected key -> shape map before anything is
loaded (the packaged full-size manifests for the official preset, the module itself
otherwise); a missing file, a missing/unexpected key or a wrong shape is one
``WeightsError`` naming the file and the first offending keys. ``.pth`` files are read
with ``weights_only=True``; ``.safetensors`` are accepted everywhere. Nothing is
downloaded, ever.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from engine.config.settings import read_json_object
from engine.errors import WeightsError

SVD = "stable-video-diffusion-img2vid-xt"


@dataclass(frozen=True)
class WeightFile:
    name: str  # the network it fills
    candidates: tuple[str, ...]  # paths relative to pretrained_weights/, first found wins
    manifest: str | None  # key in the packaged key manifests


def _variants(folder: str, stem: str) -> tuple[str, ...]:
    return tuple(f"{folder}/{stem}{v}.{ext}" for ext in ("safetensors", "bin") for v in ("", ".fp16"))


LAYOUT: tuple[WeightFile, ...] = (
    WeightFile(
        "appearance_feature_extractor",
        ("liveportrait/appearance_feature_extractor.pth", "liveportrait/appearance_feature_extractor.safetensors"),
        "appearance_feature_extractor.pth",
    ),
    WeightFile(
        "motion_extractor",
        ("liveportrait/motion_extractor.pth", "liveportrait/motion_extractor.safetensors"),
        "motion_extractor.pth",
    ),
    WeightFile(
        "warping_module",
        ("liveportrait/warping_module.pth", "liveportrait/warping_module.safetensors"),
        "warping_module.pth",
    ),
    WeightFile(
        "spade_generator",
        ("liveportrait/spade_generator.pth", "liveportrait/spade_generator.safetensors"),
        "spade_generator.pth",
    ),
    WeightFile(
        "head_embedder",
        ("checkpoint-30000-14frames/head_embedder.pth", "checkpoint-30000-14frames/head_embedder.safetensors"),
        "head_embedder.pth",
    ),
    WeightFile(
        "warping_feature_mapper",
        (
            "checkpoint-30000-14frames/warping_feature_mapper.pth",
            "checkpoint-30000-14frames/warping_feature_mapper.safetensors",
        ),
        "warping_feature_mapper.pth",
    ),
    WeightFile(
        "unet",
        _variants(f"{SVD}/unet", "diffusion_pytorch_model"),
        "svd_xt_unet (unet/diffusion_pytorch_model.safetensors)",
    ),
    WeightFile("vae", _variants(f"{SVD}/sd-vae-ft-mse", "diffusion_pytorch_model"), None),
    WeightFile("image_encoder", _variants(f"{SVD}/image_encoder", "model"), None),
)

CONFIG_FILES = {
    "unet": f"{SVD}/unet/config.json",
    "vae": f"{SVD}/sd-vae-ft-mse/config.json",
    "image_encoder": f"{SVD}/image_encoder/config.json",
    "feature_extractor": f"{SVD}/feature_extractor/preprocessor_config.json",
    "scheduler": f"{SVD}/scheduler/scheduler_config.json",
}


# Optional: the release's source aligner (``--is_align``). InsightFace's FaceAnalysis("buffalo_l", root=R)
# reads R/models/buffalo_l/*.onnx and the release passes R = pretrained_weights/facecropper/insightface.
# The release also runs facecropper/landmark.onnx (203 points) but only for landmarks its align step
# throws away; the crop comes from the 106 points alone, so that file is not needed here.
FACECROPPER_FILES = {
    "detector": "facecropper/insightface/models/buffalo_l/det_10g.onnx",
    "landmark_106": "facecropper/insightface/models/buffalo_l/2d106det.onnx",
}


def locate_facecropper(weights_dir: Path | None) -> tuple[dict[str, Path] | None, str]:
    """(paths of the release's face models, "") when all are present, else (None, why not).

    Absent is not an error: alignment then falls back to the built-in detector.
    """
    if weights_dir is None:
        return None, "no weights folder was given"
    root = Path(weights_dir)
    if not (root / "facecropper").is_dir():
        return None, f"{root / 'facecropper'} does not exist"
    paths = {name: root / rel for name, rel in FACECROPPER_FILES.items()}
    missing = [FACECROPPER_FILES[n] for n, p in paths.items() if not p.is_file()]
    if missing:
        return None, f"{root} lacks {', '.join(missing)}"
    return paths, ""


def locate(weights_dir: Path) -> dict[str, Path]:
    """Path of every checkpoint in a pretrained_weights/ folder; one error lists all that are missing."""
    root = Path(weights_dir)
    if not root.is_dir():
        raise WeightsError(
            f"weights folder {root} does not exist: pass --weights the release's pretrained_weights/ folder"
        )
    found, missing = {}, []
    for wf in LAYOUT:
        path = next((root / c for c in wf.candidates if (root / c).is_file()), None)
        if path is None:
            missing.append(wf.candidates[0])
        else:
            found[wf.name] = path
    if missing:
        raise WeightsError(
            f"weights folder {root} lacks {', '.join(missing)}: copy the release's pretrained_weights/ "
            "layout unchanged (see README, 'Official weights')"
        )
    return found


# What training writes (``engine.train``): the release's two trained files at a folder's root, as in its
# ``checkpoint-<step>/``. For ``tiny`` such a folder overrides the seeded WFM and HeadNet.
TRAINED = ("warping_feature_mapper", "head_embedder")


def trained_files(folder: Path) -> dict[str, Path] | None:
    """``{slot: path}`` when ``folder`` holds both trained files (``.pth`` or ``.safetensors``), else None."""
    root = Path(folder)
    found = {}
    for name in TRAINED:
        path = next((root / f"{name}{ext}" for ext in (".pth", ".safetensors") if (root / f"{name}{ext}").is_file()),
                    None)
        if path is None:
            return None
        found[name] = path
    return found


def read_json_config(weights_dir: Path, which: str) -> dict | None:
    path = Path(weights_dir) / CONFIG_FILES[which]
    if not path.is_file():
        return None
    return read_json_object(path, WeightsError, "config", "restore it from the release")


def _unreadable(path: Path, err: Exception) -> WeightsError:
    """Say in our words what a reader's failure means and what to do (its own message is for developers)."""
    if isinstance(err, PermissionError):
        return WeightsError(f"checkpoint {path} cannot be read (permission denied): make it readable")
    if path.stat().st_size == 0:
        return WeightsError(f"checkpoint {path} is empty: the download did not finish; download it again")
    if path.suffix != ".safetensors" and _is_plain_pickle(path):
        return WeightsError(
            f"checkpoint {path} is a plain Python pickle, not a PyTorch checkpoint (torch.save): "
            "use the release's file, or re-save the weights with torch.save(model.state_dict(), path)"
        )
    if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err):
        # weights_only refuses anything but tensors and plain containers: pickled code could run on load
        return WeightsError(
            f"checkpoint {path} holds Python objects besides tensors (a whole pickled model?), which are not "
            "loaded for safety: use the release's file, or re-save it as model.state_dict()"
        )
    if path.suffix != ".safetensors" and not _head(path, 4) == b"PK\x03\x04" and not _starts_like_torch_legacy(path):
        return WeightsError(
            f"checkpoint {path} is not a readable PyTorch checkpoint (neither torch.save's zip archive nor its "
            "legacy format: another kind of file, or damaged): download it again from the source listed in "
            "README, 'Official weights'"
        )
    kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch checkpoint"
    return WeightsError(
        f"checkpoint {path} is not a complete {kind} (cut short, or not a weights file at all): "
        "download it again from the source listed in README, 'Official weights'"
    )


# torch.save writes a zip archive (b"PK\x03\x04"); its legacy (pre-1.6) format opens with its magic
# number, pickled (protocol 2, a LONG1)
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _head(path: Path, n: int) -> bytes:
    with path.open("rb") as f:
        return f.read(n)


def _starts_like_torch_legacy(path: Path) -> bool:
    return _head(path, len(_TORCH_LEGACY_MAGIC)) == _TORCH_LEGACY_MAGIC


def _is_plain_pickle(path: Path) -> bool:
    """A ``pickle.dump`` file: a pickle protocol header (PROTO 2-5) without torch's magic number."""
    head = _head(path, 2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not _starts_like_torch_legacy(path)


def _torch_load(path: Path, mmap: bool) -> object:
    with warnings.catch_warnings():
        # torch warns about the pickle protocol of a file it is about to refuse: our one error says it all
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely: safetensors, or a pickle restricted to tensors (weights_only)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        try:
            sd = _torch_load(path, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # a legacy (pre-zip) torch.save file cannot be memory-mapped but is still a valid checkpoint
            sd = _torch_load(path, mmap=False)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to a user
        raise _unreadable(path, err) from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(
            f"checkpoint {path} does not hold a state dict of tensors: use the release's file for this slot"
        )
    return dict(sd)


def expected_from_manifest(manifest_key: str) -> dict[str, tuple[int, ...]]:
    from engine.config.presets import key_manifests

    entries = key_manifests()[manifest_key]["state_dict"]
    return {k: tuple(v["shape"]) for k, v in entries.items()}


def expected_from_module(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The module's own key -> shape map, plus keys a sub-module accepts and ignores (a decoder tail)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for name, sub in module.named_modules():
        if hasattr(sub, "tail_keys"):
            prefix = f"{name}." if name else ""
            expected.update({prefix + k: tuple(v) for k, v in sub.tail_keys().items()})
    return expected


def check_keys(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], path: Path | str
) -> None:
    """Raise one WeightsError naming the file and the first offending keys, if any."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k])}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
    if problems:
        raise WeightsError(
            f"checkpoint {path} does not match the network it should fill: {'; '.join(problems)}. "
            "Use the release's file for this slot, unmodified"
        )


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    path: Path | str,
    expected: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Check every key and shape, then load strictly (a module may drop keys it declares as ignorable)."""
    check_keys(state_dict, expected if expected is not None else expected_from_module(module), path)
    on_meta = any(p.is_meta for p in module.parameters())
    dtype = next(module.parameters()).dtype
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}
    module.load_state_dict(sd, strict=True, assign=on_meta)
