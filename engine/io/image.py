"""Load a source portrait as a square uint8 RGB array.

Policies (all applied by :func:`load_image`):

* **Orientation** - the EXIF Orientation tag is applied (``ImageOps.exif_transpose``) so a phone photo
  is used the way it is displayed, not the way its pixels happen to be stored.
* **Aspect ratio** - a non-square image is centre-cropped to a square of its short side, then resized.
  The official FRVD ``inference.py`` squashes any image straight to 512x512, which distorts faces; for
  the square inputs it ships (and for any square input) the two policies give identical pixels.
* **Resize** - PIL bicubic, as the official release (``Image.resize([512, 512])``). A square image that
  already has the requested size is returned bit-for-bit unchanged. Downscales of 6x or more first
  ``reduce()`` by an integer factor (``reducing_gap=3``), which is visually indistinguishable and keeps
  huge inputs fast; smaller downscales are exactly the official filter.
* **Huge JPEGs** - decoded at 1/2, 1/4 or 1/8 scale with ``Image.draft`` when the result still has at
  least twice the requested side, so an 8000x8000 JPEG never costs 192 MB of RGB. JPEGs whose short side
  is under 4x the requested size are decoded at full resolution, i.e. exactly like the official pipeline.
* **Decompression bombs** - images over ``MAX_SOURCE_PIXELS`` (100 megapixels; a 64 MP PNG passes) are
  refused from the header, before any pixel is decoded. The limit is enforced here rather than by changing
  the process-wide ``PIL.Image.MAX_IMAGE_PIXELS``, which other code in the process may rely on.
* **Alpha** (LA, RGBA, PA, palette or L/RGB with a transparency key) - composited onto white. A portrait
  cut out onto a transparent background then looks like a studio shot instead of showing whatever colour
  the transparent pixels happen to hold (often black, which is what ``convert("RGB")`` would give).
* **Bit depth** - 16-bit greyscale (``I;16*``) and 32-bit integer (``I``) images are treated as
  0..65535 and scaled with ``round(v / 257)`` (65535 -> 255 exactly); 32-bit float (``F``) as 0..1.
  16-bit RGB(A) PNGs are reduced to 8 bits by Pillow's decoder itself (high byte, within 1 of exact).
* **Colour** - CMYK, YCbCr, 1-bit and palette images use Pillow's conversion to RGB. Embedded ICC
  profiles are ignored, as in the official pipeline.
* **Animated files** (GIF, APNG, multi-page TIFF) - the first frame is used.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import InputError

__all__ = [
    "MAX_SOURCE_PIXELS",
    "MIN_SOURCE_SIDE",
    "check_input_file",
    "check_size",
    "load_image",
    "side_by_side",
    "square_crop_box",
]

#: Refuse images with more pixels than this (checked from the header, before decoding).
MAX_SOURCE_PIXELS = 100_000_000
#: Refuse images whose short side is below this: a face in fewer pixels carries no usable detail.
MIN_SOURCE_SIDE = 64
# Downscales by this factor or more may go through Image.reduce() first (see module docstring).
_REDUCING_GAP = 3.0
# JPEG draft decoding keeps at least this multiple of the requested side, so the final bicubic
# resize still has real detail to filter rather than DCT-scaled blur.
_DRAFT_MARGIN = 2

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"LA", "La", "RGBA", "RGBa", "PA"})


def check_input_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path if it names an existing regular file, else raise InputError.

    ``what`` names the role of the file in the message (e.g. "source image", "driving video").
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} '{p}' does not exist; check the path (and the current directory).")
    if p.is_dir():
        raise InputError(f"{what} '{p}' is a directory; pass the path of a file inside it instead.")
    if not p.is_file():
        raise InputError(f"{what} '{p}' is not a regular file; pass the path of a media file.")
    return p


def square_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred square of side ``min(width, height)``.

    Shared by images and video frames so both inputs are framed identically.
    """
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return left, top, left + side, top + side


def check_size(size: int) -> None:
    """Raise ValueError unless ``size`` is a positive integer."""
    # A bad size is a bug in the caller, not a problem with the user's file.
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")


def _open(p: Path) -> Image.Image:
    """Open lazily (header only) and turn every way of failing into one InputError."""
    try:
        # Our own pixel limit (checked by the caller) replaces PIL's warning; PIL still raises
        # DecompressionBombError beyond twice its own limit, which we translate below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(p)
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"source image '{p}' is far larger than {MAX_SOURCE_PIXELS // 1_000_000} megapixels and was "
            "refused as a possible decompression bomb; downscale it (e.g. to 1024x1024) and try again."
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"source image '{p}' is not an image format this engine can read; "
            "pass a PNG or JPEG portrait (512x512 works best)."
        ) from exc
    except PermissionError as exc:
        raise InputError(f"source image '{p}' cannot be read (permission denied); fix its permissions.") from exc
    except OSError as exc:
        raise InputError(f"source image '{p}' cannot be read ({exc}); check the file.") from exc


def _to_8bit_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB following the module's alpha / bit-depth policies."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        arr = np.asarray(img).astype(np.float64)
        scale = 255.0 if mode == "F" else 255.0 / 65535.0
        grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # convert("RGBA") resolves palette alpha, transparency keys and premultiplied modes.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Load ``path`` as a ``uint8`` array of shape ``[size, size, 3]`` (RGB).

    See the module docstring for the orientation, crop, resize, alpha and bit-depth policies.
    Raises :class:`~engine.errors.InputError` (naming the file) when the file is missing, a directory,
    not an image, truncated or corrupt, too small (short side < ``MIN_SOURCE_SIDE``) or too large
    (over ``MAX_SOURCE_PIXELS``).
    """
    check_size(size)
    out = _read(path, size)
    if out.shape != (size, size, 3):
        raise AssertionError(f"internal error: expected {(size, size, 3)}, got {out.shape}")
    return out


def read_rgb(path: str | Path) -> np.ndarray:
    """The whole image as ``uint8 [H, W, 3]`` RGB at its own size (oriented, 8-bit, alpha on white),
    with the same checks as :func:`load_image`: what face alignment and paste-back work on."""
    return _read(path, None)


def _read(path: str | Path, size: int | None) -> np.ndarray:
    """``size``: centre-crop and resize to ``size`` (decoding JPEGs at reduced scale); None: as stored."""
    p = check_input_file(path, "source image")
    with _open(p) as img:
        width, height = img.size
        if width * height > MAX_SOURCE_PIXELS:
            raise InputError(
                f"source image '{p}' is {width}x{height} ({width * height / 1e6:.0f} megapixels), over the "
                f"{MAX_SOURCE_PIXELS // 1_000_000} megapixel limit that guards against decompression bombs; "
                "downscale it (e.g. to 1024x1024) and try again."
            )
        if min(width, height) < MIN_SOURCE_SIDE:
            raise InputError(
                f"source image '{p}' is only {width}x{height} pixels; its short side must be at least "
                f"{MIN_SOURCE_SIDE} px to hold a usable face - use a larger portrait (512x512 works best)."
            )
        try:
            if img.format == "JPEG" and size is not None:
                # Scale-on-decode; Pillow only picks a scale that leaves both sides >= the request.
                img.draft(None, (_DRAFT_MARGIN * size, _DRAFT_MARGIN * size))
            img.load()
            oriented = _exif_transpose(img)
            box = square_crop_box(*oriented.size)
            if size is not None and box != (0, 0, *oriented.size):
                oriented = oriented.crop(box)
            rgb = _to_8bit_rgb(oriented)
        except MemoryError:
            raise
        except Exception as exc:
            # Pillow's plugins raise an open-ended set of types (OSError, SyntaxError, ValueError,
            # struct.error, zlib.error, ...) for malformed data, so anything here is a bad file.
            raise InputError(
                f"source image '{p}' is truncated or corrupt ({type(exc).__name__}: {exc}); "
                "re-export or re-download it, or use another image."
            ) from exc
        # Still inside the `with`: `rgb` may be `img` itself, whose pixels go away when it is closed.
        if size is not None and rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=_REDUCING_GAP)
        # np.array (not asarray) so the caller gets its own writeable buffer.
        return np.array(rgb, dtype=np.uint8)


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        # Broken EXIF blocks are common in the wild (edited photos); the pixels are still fine, so
        # use them as stored rather than refusing an otherwise good portrait.
        return img


def side_by_side(*frame_arrays: np.ndarray) -> np.ndarray:
    """Concatenate images ``[H, W, C]`` and/or clips ``[F, H, W, C]`` along the width.

    A single image is repeated across the frames of the clips (e.g. source | driving | result).
    All inputs need the same height, channel count and dtype; clips need the same frame count.
    """
    if not frame_arrays:
        raise ValueError("side_by_side needs at least one array")
    arrays = [np.asarray(a) for a in frame_arrays]
    for i, a in enumerate(arrays):
        if a.ndim not in (3, 4):
            raise ValueError(f"array {i} must be [H, W, C] or [F, H, W, C], got shape {a.shape}")
    if len({a.dtype for a in arrays}) > 1:
        raise ValueError(f"arrays have different dtypes: {[str(a.dtype) for a in arrays]}")
    if len({a.shape[-3] for a in arrays}) > 1 or len({a.shape[-1] for a in arrays}) > 1:
        raise ValueError(f"arrays need the same height and channels, got shapes {[a.shape for a in arrays]}")
    counts = {a.shape[0] for a in arrays if a.ndim == 4}
    if len(counts) > 1:
        raise ValueError(f"clips have different frame counts: {sorted(counts)}")
    if counts:
        n = counts.pop()
        arrays = [a if a.ndim == 4 else np.broadcast_to(a, (n, *a.shape)) for a in arrays]
    return np.concatenate(arrays, axis=-2)
