"""Several faces in one photo: each face aligned, reenacted with the same driving clip, and all pasted
back into one output video.

Faces are rendered one after the other (the engine holds one face's run at a time); each face's
result crops wait on disk (a memory-mapped ``.npy`` in a temporary folder) until every face is done,
then one pass pastes them all into the photo, frame by frame. Where two faces' crop footprints
overlap (the release's crop is 2.3x the face), each pixel goes to the face whose box centre is
nearest, so one face's crop never paints over the other face. Outside every crop the photo is
untouched, bit for bit.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import FaceError, InputError
from engine.face.align import METHODS, CropTransform, PasteBack, detect_faces
from engine.io import check_output_path, read_rgb

if TYPE_CHECKING:
    from engine.api import Reenactor, RunOptions
    from engine.runtime.control import RunControl

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
    if faces == "all":
        return list(range(count))
    wanted = [faces] if isinstance(faces, int) else list(faces)
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
        out = self.original.astype(np.float32)
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


def render_faces(engine: Reenactor, image: str | Path | np.ndarray, driving: Any, out: str | Path | None = None, *,
                 faces: FaceSelection = "all", align: str = "auto", options: RunOptions | None = None,
                 control: RunControl | None = None, max_frames: int | None = None,
                 fps: float | Fraction | None = None) -> FacesResult:
    """Every selected face of ``image`` reenacted by ``driving``, pasted into one video of the photo.

    Progress is reported per face (stage ``face K/N: motion`` ...); a photo without a face, or an index
    beyond the faces found, is one FaceError before any network runs."""
    from engine.runtime.control import RunControl

    if align not in METHODS:
        raise InputError(f"several faces need face alignment: align must be one of {', '.join(METHODS)}")
    photo = image if isinstance(image, np.ndarray) else read_rgb(image)
    indices = select_faces(len(detect_faces(photo, align, engine.weights_dir)), faces)
    path = check_output_path(out) if out is not None else None
    control = control or RunControl()
    transforms: list[CropTransform] = []
    rate = Fraction(25)
    num_frames = 0
    with tempfile.TemporaryDirectory(prefix="frvd-faces-") as tmp:
        stores: list[np.ndarray] = []
        for k, index in enumerate(indices):
            handle = engine.set_source(photo, align, index)
            assert handle.crop is not None
            transforms.append(handle.crop)
            label = f"face {k + 1}/{len(indices)}"
            face_control = RunControl(progress=_prefixed(control, label), _cancelled=control._cancelled)
            result = engine.render(handle, driving, options=options, control=face_control, max_frames=max_frames,
                                   fps=fps)
            assert result.frames is not None
            store = np.lib.format.open_memmap(Path(tmp) / f"face{k}.npy", "w+", np.uint8, result.frames.shape)
            store[:] = result.frames
            stores.append(store)
            rate, num_frames = Fraction(result.fps).limit_denominator(10_000), result.num_frames
            del result  # one face's frames in memory at a time
        paste = MultiPaste(photo, transforms)

        def composed() -> Iterator[np.ndarray]:
            for i in range(num_frames):
                control.report("paste", i + 1, num_frames)
                yield paste([store[i] for store in stores])

        if path is None:
            frames = np.stack(list(composed()))
        else:
            engine.write_output(path, composed(), rate, driving, options)
            frames = None
    return FacesResult(indices, num_frames, float(rate), path, frames)


def _prefixed(control: RunControl, label: str):
    def report(stage: str, done: int, total: int) -> None:
        if control.progress is not None:
            control.progress(f"{label}: {stage}", done, total)

    return report
