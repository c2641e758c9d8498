"""Source face alignment (the release's ``--is_align``) and paste-back (LivePortrait's ``flag_pasteback``).

``crop_transform`` finds the face and returns the similarity transform from the source image to the
crop the networks see; ``crop`` applies it; ``paste_back`` warps generated crops back into the source
image with a feathered mask, at the source's own size.

The crop maths is the release's (``src/facecropper/crop.py``, LivePortrait's): from the 106 landmarks,
the axis from the eye centre to the lip centre cancels roll; the landmarks' extent in that rotated frame,
made square and multiplied by ``scale``, is the crop side; the centre moves ``vy_ratio`` of that side
along the axis (negative = towards the forehead). The constants are the release's ``CropConfig``:
dsize 512, scale 2.3, vx_ratio 0, vy_ratio -0.125, rotation on.

Two ways to find the face:

* ``insightface``: the release's own models from ``pretrained_weights/facecropper/`` (InsightFace
  buffalo_l detector + 106 landmarks, run by ``engine.face.cropper`` on onnxruntime).
* ``opencv``: needs no download. OpenCV's bundled Haar cascade (``haarcascade_frontalface_default``)
  gives a face box; the box is mapped to the landmark extent the release would measure (centre at 0.65
  of the box height, extent 0.85 of its side: eyebrows to chin and cheek to cheek, measured on the
  bundled portraits) with no roll correction. The crop is close to the release's, not identical.

``auto`` uses ``insightface`` when the files are there and ``opencv`` otherwise, saying so in
``CropTransform.note``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import FaceError, WeightsError, lazy_import

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2", "face alignment")

METHODS = ("auto", "insightface", "opencv")
CROP_SIZE = 512  # the release's CropConfig.dsize
CROP_SCALE = 2.3  # CropConfig.scale
CROP_VX_RATIO = 0.0  # CropConfig.vx_ratio (crop_image never forwards it, so 0 either way)
CROP_VY_RATIO = -0.125  # CropConfig.vy_ratio
# Haar box -> the 106 landmarks' extent (see the module docstring).
HAAR_CENTER_Y = 0.65
HAAR_EXTENT = 0.85
# Faces smaller than this fraction of the largest one's area are background: they do not make the
# choice ambiguous (the release always takes the largest), but --face-index can still pick them.
COMPETING_AREA = 0.25
DETECT_MAX_SIDE = 1024  # Haar runs on a copy at most this large: faster, and its box size is what matters


@dataclass(frozen=True)
class Box:
    """A detected face in source pixels; ``score`` is the detector's confidence (Haar: neighbour count)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def __str__(self) -> str:
        return f"{self.width:.0f}x{self.height:.0f} px at ({self.x0:.0f}, {self.y0:.0f})"


@dataclass(frozen=True)
class CropTransform:
    """Similarity transform source -> crop (2x3 ``matrix``) and back (``inverse``) for a ``size``-square crop."""

    matrix: np.ndarray
    inverse: np.ndarray
    size: int
    source_shape: tuple[int, int]  # (height, width) of the source image
    method: str = "opencv"  # what found the face: "insightface" or "opencv"
    box: Box | None = None
    note: str = ""  # one line for the user when ``auto`` could not use the release's models

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, size: int, source_shape: tuple[int, int], **kw) -> CropTransform:
        m = np.asarray(matrix, np.float64).reshape(2, 3)
        return cls(m, cv2.invertAffineTransform(m), int(size), (int(source_shape[0]), int(source_shape[1])), **kw)

    def scaled(self, size: int) -> CropTransform:
        """The same region as a ``size``-square crop (pixel centres kept, as ``cv2.resize`` does)."""
        if size == self.size:
            return self
        k = size / self.size
        m = self.matrix * k
        m[:, 2] += 0.5 * k - 0.5  # x' + 0.5 = (x + 0.5) * k
        return replace(self, matrix=m, inverse=cv2.invertAffineTransform(m), size=int(size))

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        return _apply(self.matrix, points)

    def to_source(self, points: np.ndarray) -> np.ndarray:
        return _apply(self.inverse, points)


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


# ----------------------------------------------------------------------------- the release's maths


def _axes_106(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ux, uy): uy points from the eye centre to the lip centre (release's parse_pt2_from_pt106)."""
    eye = (pts[[33, 35, 40, 39]].mean(axis=0) + pts[[87, 89, 94, 93]].mean(axis=0)) / 2
    lip = (pts[52] + pts[61]) / 2
    uy = lip - eye
    n = np.linalg.norm(uy)
    uy = np.array([0.0, 1.0]) if n <= 1e-3 else uy / n
    return np.array([uy[1], -uy[0]]), uy


def _matrix(center: np.ndarray, extent: float, ux: np.ndarray, uy: np.ndarray, size: int,
            scale: float, vx_ratio: float, vy_ratio: float) -> np.ndarray:
    """Source -> crop. Rows s*ux, s*uy are the release's [[s cos, s sin], [-s sin, s cos]] written directly."""
    side = extent * scale
    center = center + ux * (vx_ratio * side) + uy * (vy_ratio * side)
    s = size / side
    lin = s * np.stack([ux, uy])
    return np.concatenate([lin, (np.array([size / 2, size / 2]) - lin @ center)[:, None]], axis=1)


def matrix_from_landmarks(pts106: np.ndarray, size: int = CROP_SIZE, scale: float = CROP_SCALE,
                          vx_ratio: float = CROP_VX_RATIO, vy_ratio: float = CROP_VY_RATIO,
                          rotate: bool = True) -> np.ndarray:
    """The release's ``crop_image`` transform (2x3, source -> crop) from InsightFace's 106 landmarks."""
    pts = np.asarray(pts106, np.float64).reshape(-1, 2)
    if pts.shape[0] != 106:
        raise ValueError(f"expected 106 landmarks, got {pts.shape[0]}")
    ux, uy = _axes_106(pts)
    center0 = pts.mean(axis=0)
    rpts = (pts - center0) @ np.stack([ux, uy]).T
    lo, hi = rpts.min(axis=0), rpts.max(axis=0)
    mid = (lo + hi) / 2
    center = center0 + ux * mid[0] + uy * mid[1]
    extent = float(max(hi - lo))  # need_square: the larger side
    if not rotate:
        ux, uy = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    return _matrix(center, extent, ux, uy, size, scale, vx_ratio, vy_ratio)


def matrix_from_box(box: Box, size: int = CROP_SIZE, scale: float = CROP_SCALE,
                    vx_ratio: float = CROP_VX_RATIO, vy_ratio: float = CROP_VY_RATIO) -> np.ndarray:
    """The release's transform for a Haar box, through the landmark extent it stands for (no roll)."""
    center = np.array([box.x0 + 0.5 * box.width, box.y0 + HAAR_CENTER_Y * box.height])
    extent = HAAR_EXTENT * max(box.width, box.height)
    return _matrix(center, extent, np.array([1.0, 0.0]), np.array([0.0, 1.0]), size, scale, vx_ratio, vy_ratio)


# ----------------------------------------------------------------------------- detection


def _check_image(image_u8: np.ndarray) -> np.ndarray:
    a = np.asarray(image_u8)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 1:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a[..., :3])


@functools.lru_cache(maxsize=1)
def _haar() -> cv2.CascadeClassifier:
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise WeightsError(
            f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 dropped them): "
            "install opencv-python-headless<5 (bash scripts/setup.sh does)"
        )
    haar_dir = cv2.data.haarcascades  # type: ignore[attr-defined]  # checked above; not in OpenCV's stubs
    path = Path(haar_dir) / "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise WeightsError(f"OpenCV's face cascade {path} is missing or unreadable: reinstall opencv-python-headless")
    return cascade


def _detect_opencv(image: np.ndarray) -> list[Box]:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    k = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    if k < 1.0:
        gray = cv2.resize(gray, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    min_side = max(24, min(gray.shape) // 16)
    rects, neighbours = _haar().detectMultiScale2(gray, scaleFactor=1.1, minNeighbors=5,
                                                  minSize=(min_side, min_side))
    return [Box(float(x / k), float(y / k), float((x + w) / k), float((y + h) / k), float(n))
            for (x, y, w, h), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(neighbours).reshape(-1))]


def _insightface(paths: dict[str, Path]):
    # keyed on size and mtime too, so a replaced file is read again in a long-lived process
    key = tuple(sorted((k, str(p), p.stat().st_size, p.stat().st_mtime_ns) for k, p in paths.items()))
    return _insightface_cached(key)


@functools.lru_cache(maxsize=2)
def _insightface_cached(key: tuple):
    from engine.face.cropper import InsightFace

    return InsightFace({k: Path(p) for k, p, *_ in key})


def _resolve(method: str, weights_dir: Path | None):
    """(method actually used, InsightFace models or None, note for the user)."""
    from engine.models.weights import locate_facecropper

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "opencv":
        return "opencv", None, ""
    paths, why = locate_facecropper(weights_dir)
    if paths is None:
        if method == "insightface":
            raise WeightsError(
                f"face alignment with the release's InsightFace models needs pretrained_weights/facecropper/: "
                f"{why}. Copy that folder from the release (README, 'Official weights') or use the built-in "
                "OpenCV detector (--align opencv)"
            )
        note = (f"face alignment: using the built-in OpenCV detector ({why}; the release's InsightFace "
                "models in pretrained_weights/facecropper/ are used when present)")
        return "opencv", None, note
    return "insightface", _insightface(paths), ""


def detect_faces(image_u8: np.ndarray, method: str = "opencv", weights_dir: Path | None = None) -> list[Box]:
    """Every face found in an RGB uint8 image, largest first (the release's ``large-small`` order)."""
    image = _check_image(image_u8)
    used, models, _ = _resolve(method, weights_dir)
    if used == "insightface":
        boxes = [Box(float(d[0]), float(d[1]), float(d[2]), float(d[3]), float(d[4])) for d in models.detect(image)]
    else:
        boxes = _detect_opencv(image)
    return sorted(boxes, key=lambda b: b.area, reverse=True)


def select_face(boxes: list[Box], face_index: int | None = None) -> int:
    """Index of the face to use in ``boxes`` (largest first); a FaceError saying what to do otherwise."""
    if not boxes:
        raise FaceError(
            "no face found in the source image: use a photo with one clearly visible, roughly frontal face, "
            "or turn alignment off (--align none) to use the image as it is"
        )
    listing = "; ".join(f"{i}: {b}" for i, b in enumerate(boxes[:5])) + ("; ..." if len(boxes) > 5 else "")
    if face_index is not None:
        if not 0 <= face_index < len(boxes):
            raise FaceError(
                f"--face-index {face_index} is out of range: {len(boxes)} face(s) found, largest first "
                f"({listing}); pass 0..{len(boxes) - 1}"
            )
        return face_index
    competing = [b for b in boxes if b.area >= COMPETING_AREA * boxes[0].area]
    if len(competing) > 1:
        raise FaceError(
            f"{len(competing)} faces of similar size found in the source image, largest first ({listing}): "
            "pass --face-index N to choose one (0 = the largest)"
        )
    return 0


def crop_transform(image_u8: np.ndarray, method: str = "auto", face_index: int | None = None,
                   weights_dir: Path | None = None, size: int = CROP_SIZE) -> CropTransform:
    """Find the face and return the release's source -> crop transform for a ``size``-square crop.

    ``method``: ``auto`` (the release's models from ``weights_dir/facecropper/`` when present, else
    OpenCV, with a ``note``), ``insightface`` (a WeightsError when the files are missing) or ``opencv``.
    """
    image = _check_image(image_u8)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    used, models, note = _resolve(method, weights_dir)
    if used == "insightface":
        dets = models.detect(image)
        order = np.argsort(-(dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1]), kind="stable")
        dets = dets[order]
        boxes = [Box(float(d[0]), float(d[1]), float(d[2]), float(d[3]), float(d[4])) for d in dets]
        i = select_face(boxes, face_index)
        matrix = matrix_from_landmarks(models.landmarks(image, dets[i]), size)
    else:
        boxes = sorted(_detect_opencv(image), key=lambda b: b.area, reverse=True)
        i = select_face(boxes, face_index)
        matrix = matrix_from_box(boxes[i], size)
    return CropTransform.from_matrix(matrix, size, image.shape[:2], method=used, box=boxes[i], note=note)


# ----------------------------------------------------------------------------- crop and paste back


def crop(image_u8: np.ndarray, transform: CropTransform, size: int | None = None) -> np.ndarray:
    """The ``size``-square crop (default: the transform's), bilinear, black outside the source (the release's)."""
    image = _check_image(image_u8)
    t = transform.scaled(size) if size else transform
    return cv2.warpAffine(image, t.matrix, (t.size, t.size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def default_feather(transform: CropTransform) -> float:
    """Feather width in source pixels: 1/16 of the crop's footprint side (keeps the seam off the face)."""
    return transform.size / _scale(transform.matrix) / 16


def _scale(m: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


class PasteBack:
    """Warps crops back into one source image, frame after frame, with a mask computed once."""

    def __init__(self, original_u8: np.ndarray, transform: CropTransform, feather_px: float | None = None) -> None:
        self.original = _check_image(original_u8)
        if self.original.shape[:2] != tuple(transform.source_shape):
            raise ValueError(f"transform is for a {transform.source_shape} source, image is {self.original.shape}")
        self.transform = transform
        feather = default_feather(transform) if feather_px is None else float(feather_px)
        if not np.isfinite(feather) or feather < 0:
            raise ValueError(f"feather_px must be a finite number >= 0, got {feather_px!r}")
        self.feather_px = feather
        self._masks: dict[int, np.ndarray] = {}

    def mask(self, crop_size: int) -> np.ndarray:
        """[H, W, 1] float32 weight of the pasted crop: 1 inside, ramping to 0 over the feather band."""
        if crop_size not in self._masks:
            t = self.transform.scaled(crop_size)
            band = self.feather_px * _scale(t.matrix)  # source px -> crop px
            c = np.arange(crop_size, dtype=np.float32) + 0.5
            edge = np.minimum(c, crop_size - c)  # distance of each pixel centre to the crop's edge
            d = np.minimum(edge[:, None], edge[None, :])
            w = np.clip(d / band, 0.0, 1.0) if band > 0 else (d > 0).astype(np.float32)
            w = w * w * (3 - 2 * w)  # smoothstep: no visible kink where the band starts
            h, wd = self.transform.source_shape
            back = cv2.warpAffine(w.astype(np.float32), t.inverse, (wd, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            self._masks[crop_size] = back[..., None]
        return self._masks[crop_size]

    def warp(self, frame_u8: np.ndarray) -> np.ndarray:
        """A square crop warped into the source's frame: [H, W, 3] uint8 (black outside the crop)."""
        frame = _check_image(frame_u8)
        if frame.shape[0] != frame.shape[1]:
            raise ValueError(f"crop frames are square, got {frame.shape}")
        t = self.transform.scaled(frame.shape[0])
        h, w = self.transform.source_shape
        # cubic, not the release's bilinear: crops are usually enlarged on the way back, and cubic keeps
        # ~2.5 dB more of the source in a crop -> paste round trip on the bundled portraits
        return cv2.warpAffine(frame, t.inverse, (w, h), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))

    def __call__(self, frame_u8: np.ndarray) -> np.ndarray:
        warped = self.warp(frame_u8)
        m = self.mask(frame_u8.shape[0])
        out = m * warped.astype(np.float32) + (1.0 - m) * self.original.astype(np.float32)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def paste_back(original_u8: np.ndarray, crops_u8: np.ndarray | Iterable[np.ndarray], transform: CropTransform,
               feather_px: float | None = None) -> np.ndarray:
    """Crops ([S, S, 3] or [T, S, S, 3], any S) warped into the source image: [H, W, 3] or [T, H, W, 3].

    ``feather_px`` is the width of the blend band in source pixels (default ``default_feather``).
    """
    paster = PasteBack(original_u8, transform, feather_px)
    if isinstance(crops_u8, np.ndarray) and crops_u8.ndim == 3:
        return paster(crops_u8)
    frames = [paster(f) for f in crops_u8]
    if not frames:
        raise ValueError("no crop frames to paste back")
    return np.stack(frames)
