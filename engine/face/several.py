"""Several faces in one photo: each face aligned, reenacted with the same driving clip, and all pasted
back into one output video (the pieces; ``Reenactor.render_faces`` runs them).

Faces are rendered one after the other (the engine holds one face's run at a time); each face's
result crops wait on disk (a memory-mapped ``.npy`` in a temporary folder) until every face is done,
then one pass pastes them all into the photo, frame by frame. Where two faces' crop footprints
overlap (the release's crop is 2.3x the face), each pixel goes to the face whose box centre is
nearest, so one face's crop never paints over the other face. Outside every crop the photo is
untouched, bit for bit.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import FaceError, InputError
from engine.face.align import CropTransform, PasteBack

FaceSelection = str | int | Sequence[int]  # "all", one index, or several (0 = the largest face)


def parse_faces(text: str) -> str | int | tuple[int, ...]:
    """``all``, ``N`` or ``N,M,...`` (the CLI's --face-index) -> the selection; ValueError otherwise."""
    text = text.strip().lower()
    if text == "all":
        return "all"
    try:
        values = tuple(int(part, 10) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not a face index, a comma-separated list of them, or 'all'") from None
    if any(v < 0 for v in values):
        raise ValueError(f"face indices are >= 0 (0 = the largest face), got {text!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"face indices repeat in {text!r}")
    return values[0] if len(values) == 1 else values


def select_faces(count: int, faces: FaceSelection) -> list[int]:
    """Indices into ``count`` faces found (largest first); a FaceError naming what was found otherwise."""
    if count == 0:
        raise FaceError("no face found in the source image: use a photo with clearly visible, roughly frontal "
                        "faces, or turn alignment off (--align none) to use the image as it is")
    if isinstance(faces, str):
        if faces != "all":
            raise InputError(f"faces must be 'all' or face indices, got {faces!r}")
        return list(range(count))
    wanted = [faces] if isinstance(faces, int) else [int(i) for i in faces]
    if not wanted:
        raise InputError("no face index given: pass 'all' or indices such as 0,1")
    beyond = [i for i in wanted if not 0 <= i < count]
    if beyond:
        raise FaceError(f"face index {beyond[0]} is beyond the {count} face(s) found (largest first): "
                        f"pass indices in 0..{count - 1}, or 'all'")
    return wanted


class MultiPaste:
    """Crops of several faces -> one frame of the photo; each pixel belongs to at most one face."""

    def __init__(self, original_u8: np.ndarray, transforms: Sequence[CropTransform]) -> None:
        self.original = original_u8
        self.pasters = [PasteBack(original_u8, t) for t in transforms]
        h, w = original_u8.shape[:2]
        centres = np.array([_centre(t) for t in transforms], np.float32)  # [n, 2] (x, y)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        dist = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
        self.owner = np.argmin(dist, axis=0)  # [H, W]: the nearest face's index
        self._masks: dict[tuple[int, int], np.ndarray] = {}

    def mask(self, k: int, crop_size: int) -> np.ndarray:
        key = (k, crop_size)
        if key not in self._masks:
            self._masks[key] = self.pasters[k].mask(crop_size) * (self.owner == k)[..., None]
        return self._masks[key]

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out: np.ndarray = self.original.astype(np.float32)
        for k, crop in enumerate(crops):
            m = self.mask(k, crop.shape[0])
            out = m * self.pasters[k].warp(crop).astype(np.float32) + (1.0 - m) * out
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _centre(t: CropTransform) -> tuple[float, float]:
    if t.box is not None:
        return (t.box.x0 + t.box.x1) / 2, (t.box.y0 + t.box.y1) / 2
    c = t.to_source(np.array([[t.size / 2, t.size / 2]]))[0]
    return float(c[0]), float(c[1])


@dataclass
class FacesResult:
    faces: list[int]  # the indices rendered (largest first)
    num_frames: int
    fps: float
    out: Path | None
    frames: np.ndarray | None  # [F, H, W, 3] uint8 of the whole photo when no ``out`` was given


class CropStore:
    """Each face's result crops on disk (a memory-mapped ``.npy`` per face in a temporary folder),
    so only one face's frames are in memory at a time; removed on exit."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="frvd-faces-")
        self.faces: list[np.ndarray] = []

    def add(self, frames: np.ndarray) -> None:
        store = np.lib.format.open_memmap(Path(self._tmp.name) / f"face{len(self.faces)}.npy", "w+", np.uint8,
                                          frames.shape)
        store[:] = frames
        store.flush()
        self.faces.append(store)

    def composed(self, paste: MultiPaste, report: Callable[[str, int, int], None]) -> Iterator[np.ndarray]:
        """The photo with every face pasted, frame by frame (as many frames as the shortest face has)."""
        n = min(len(f) for f in self.faces)
        for i in range(n):
            report("paste", i + 1, n)
            yield paste([f[i] for f in self.faces])

    def __enter__(self) -> CropStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.faces.clear()
        self._tmp.cleanup()


def prefixed(progress: Callable[[str, int, int], None] | None, label: str) -> Callable[[str, int, int], None]:
    """A progress function reporting each stage as ``label: stage`` (per-face progress)."""

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(f"{label}: {stage}", done, total)

    return report
