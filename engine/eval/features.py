"""The networks the perceptual, identity and distribution metrics need, each from a user-given file
(no weights can be downloaded here). A missing file makes its metric ``skipped: needs ...``; a file
that is there but wrong is a ``WeightsError`` naming it.

    LPIPS        AlexNet features (torchvision's ``alexnet`` state dict, ``features.*`` keys) and the
                 lpips package's v0.1 linear heads (``alex.pth``: ``lin0..lin4.model.1.weight``),
                 evaluated by our own code (the lpips package pulls in torchvision)
    ArcFace      InsightFace's recognition model from the buffalo_l pack (``w600k_r50.onnx``), onnxruntime
    Inception    an ONNX feature extractor: float32 [N, 3, 299, 299] RGB in [0, 1] -> [N, 2048] (pool3),
                 e.g. pytorch-fid's ``InceptionV3([3])`` exported with torch.onnx (it normalises inside)
    I3D          an ONNX video network: float32 [N, 3, 16, 224, 224] RGB in [-1, 1] -> [N, D] (FVD's
                 Kinetics-400 logits, D = 400)
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import WeightsError

# ------------------------------------------------------------------------------------ LPIPS

_ALEX = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
_ALEX_INDEX = [0, 3, 6, 8, 10]  # positions of the convolutions in torchvision's ``features``
_LPIPS_SHIFT = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
_LPIPS_SCALE = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]


def _load(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any way of failing to read is "not that file"
        raise WeightsError(f"{what} {path} cannot be read ({type(err).__name__}): {fix}") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"{what} {path} is not a state dict: {fix}")
    return sd


class LPIPS(nn.Module):
    """Zhang et al. (2018) LPIPS v0.1 with AlexNet: unit-normalised ReLU features at five depths,
    squared differences weighted per channel by the linear heads, averaged over space, summed."""

    def __init__(self, alexnet: Path, heads: Path) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in _ALEX)
        self.lins = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, o, *_ in _ALEX)
        fix_a = "give torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth) as --lpips-alexnet"
        fix_h = "give the lpips package's v0.1 AlexNet heads (lpips/weights/v0.1/alex.pth) as --lpips-heads"
        sd_a, sd_h = _load(alexnet, "AlexNet weights", fix_a), _load(heads, "LPIPS heads", fix_h)
        convs = {f"{k}.{p}": sd_a.get(f"features.{i}.{p}")
                 for k, i in enumerate(_ALEX_INDEX) for p in ("weight", "bias")}
        lins = {f"{k}.weight": sd_h.get(f"lin{k}.model.1.weight") for k in range(5)}
        for name, got, module, fix, path in (("AlexNet", convs, self.convs, fix_a, alexnet),
                                             ("LPIPS heads", lins, self.lins, fix_h, heads)):
            want = module.state_dict()
            ok = {k: t for k, t in got.items() if t is not None and tuple(t.shape) == tuple(want[k].shape)}
            bad = [k for k in got if k not in ok]
            if bad:
                raise WeightsError(f"{name} file {path} lacks or mis-shapes {len(bad)} tensors "
                                   f"(first: {bad[0]}): {fix}")
            module.load_state_dict({k: t.float() for k, t in ok.items()})
        self.eval().requires_grad_(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for k, conv in enumerate(self.convs):
            if k in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            feats.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return feats

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] -> distance [N]."""
        fa = self._features((a - _LPIPS_SHIFT) / _LPIPS_SCALE)
        fb = self._features((b - _LPIPS_SHIFT) / _LPIPS_SCALE)
        return sum(lin((x - y) ** 2).mean(dim=(1, 2, 3)) for lin, x, y in zip(self.lins, fa, fb, strict=True))


def lpips_frames(model: LPIPS, result_u8: np.ndarray, target_u8: np.ndarray, chunk: int = 8) -> np.ndarray:
    out = []
    for i in range(0, len(result_u8), chunk):
        a, b = (torch.from_numpy(f[i : i + chunk]).permute(0, 3, 1, 2).float() / 127.5 - 1
                for f in (result_u8, target_u8))
        out.append(model(a, b))
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------------- onnxruntime


class OnnxFeatures:
    """One ONNX network on onnxruntime (CPU), its first input fed, its first output read."""

    def __init__(self, path: Path, what: str, fix: str) -> None:
        import onnxruntime as ort

        self.path, self.what = Path(path), what
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's load errors are all "not a usable model"
            raise WeightsError(f"{what} {path} is not a usable ONNX model ({type(err).__name__}): {fix}") from None
        self.input = self.session.get_inputs()[0].name
        self.fix = fix

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run(None, {self.input: batch.astype(np.float32)})[0]
        except Exception as err:  # noqa: BLE001 - a wrong input layout is the user's file, not a bug here
            raise WeightsError(f"{self.what} {self.path} rejects input {batch.shape} ({type(err).__name__}): "
                               f"{self.fix}") from None
        return out.reshape(out.shape[0], -1).astype(np.float64)


def _resize(frames_u8: np.ndarray, size: int) -> np.ndarray:
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA if f.shape[0] > size
                                else cv2.INTER_LINEAR) for f in frames_u8])


def arcface(path: Path) -> OnnxFeatures:
    return OnnxFeatures(path, "ArcFace model", "give InsightFace's buffalo_l recognition model "
                        "(facecropper/insightface/models/buffalo_l/w600k_r50.onnx) as --arcface")


def arcface_embed(model: OnnxFeatures, frames_u8: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Unit ArcFace embeddings of face crops (the frames are already face crops: resized to 112x112,
    (x - 127.5) / 127.5, RGB as InsightFace's ``ArcFaceONNX`` feeds its swapRB'd BGR input)."""
    out = []
    for i in range(0, len(frames_u8), chunk):
        x = (_resize(frames_u8[i : i + chunk], 112).astype(np.float32) - 127.5) / 127.5
        out.append(model(x.transpose(0, 3, 1, 2)))
    e = np.concatenate(out)
    return e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)


def inception(path: Path) -> OnnxFeatures:
    return OnnxFeatures(path, "Inception model", "give an ONNX Inception feature extractor ([N, 3, 299, 299] "
                        "RGB in [0, 1] -> [N, 2048]; e.g. pytorch-fid's InceptionV3([3]) exported) as --inception")


def inception_features(model: OnnxFeatures, frames_u8: np.ndarray, chunk: int = 16) -> np.ndarray:
    out = [model((_resize(frames_u8[i : i + chunk], 299).astype(np.float32) / 255.0).transpose(0, 3, 1, 2))
           for i in range(0, len(frames_u8), chunk)]
    return np.concatenate(out)


I3D_FRAMES = 16


def i3d(path: Path) -> OnnxFeatures:
    return OnnxFeatures(path, "I3D model", "give an ONNX I3D ([N, 3, 16, 224, 224] RGB in [-1, 1] -> [N, D]) "
                        "as --i3d")


def i3d_features(model: OnnxFeatures, frames_u8: np.ndarray) -> np.ndarray:
    """One feature vector per non-overlapping 16-frame segment of a clip (none for a shorter clip)."""
    out = []
    for i in range(0, len(frames_u8) - I3D_FRAMES + 1, I3D_FRAMES):
        x = _resize(frames_u8[i : i + I3D_FRAMES], 224).astype(np.float32) / 127.5 - 1
        out.append(model(x.transpose(3, 0, 1, 2)[None]))
    return np.concatenate(out) if out else np.zeros((0, 0))
