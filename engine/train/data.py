"""Training data: face clips sampled as the release's ``dataset.py`` (``TalkingHeadVideoDataset``) does.

One sample = ``frames`` frames of one clip: ``clip_length = min(len, (frames - 1) * sample_rate + 1)``, a
random start, ``linspace`` indices over the clip; the reference is a random frame of the same clip and is
ALSO frame 0 of the video (the release's list starts with it). Both get the same crop (the release's
``RandomResizedCrop(scale=(1, 1), ratio=(0.9, 1))``, which always falls back to the centre crop whose
aspect ratio is clamped to [0.9, 1]) and resize, then ``/127.5 - 1``.

Reproducible and resumable: sample ``k`` (a global counter over the whole run) reads clip
``permutation(seed, epoch)[k % N]`` with its own generator seeded by ``(seed, k)``, so the data depend on
``k`` only - not on workers, processes or where a run was interrupted. Clips are decoded with PyAV in the
DataLoader's workers. Unreadable, too short (fewer than ``frames`` frames) or face-less clips are found
when the dataset is opened, reported in one warning line each and counted.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from engine.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
ASPECT_RANGE = (0.9, 1.0)  # the release's RandomResizedCrop ratio


@dataclass(frozen=True)
class Clip:
    path: Path
    frames: int
    crop: tuple[float, ...] | None = None  # 2x3 face-crop matrix (flattened) when --align is used


@dataclass
class ScanReport:
    clips: list[Clip] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> paths

    def skip(self, reason: str, path: Path, detail: str = "") -> None:
        self.skipped.setdefault(reason, []).append(str(path))
        print(f"warning: skipping clip {path}: {reason}{': ' + detail if detail else ''}", file=sys.stderr)

    def summary(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in sorted(self.skipped.items())]
        return f"{len(self.clips)} clips usable" + (f"; skipped {', '.join(parts)}" if parts else "")


def list_clips(source: Path) -> list[Path]:
    """A folder (searched recursively for video files) or a text file listing one clip per line
    (relative paths are relative to the list file; blank lines and ``#`` comments ignored)."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if source.is_file():
        if source.suffix.lower() in VIDEO_SUFFIXES:
            return [source]
        try:
            lines = source.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            raise InputError(f"--data {source} is neither a folder nor a readable text list of clips") from None
        entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        return [p if p.is_absolute() else source.parent / p for p in map(Path, entries)]
    raise InputError(f"--data {source} does not exist: pass a folder of face clips or a text file listing them")


def count_frames(path: Path) -> int:
    """Decodable frames of a clip (the header count when it has one; decoding otherwise). Raises on an
    unreadable file."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def decode_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """RGB uint8 frames at ``indices`` (decoded in order, stopping after the last one needed)."""
    wanted, last, out = set(indices), max(indices), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"{path}: frames {sorted(missing)[:3]} could not be decoded")
    return out


def scan(source: Path, frames: int, align: str = "none", weights_dir: Path | None = None) -> ScanReport:
    """Open every clip once: frame count, readability, length, and (``align``) a face in its first frame."""
    report = ScanReport()
    for path in list_clips(source):
        try:
            n = count_frames(path)
        except Exception as err:  # noqa: BLE001 - any reader failure means an unreadable clip
            report.skip("unreadable", path, str(err).splitlines()[0] if str(err) else type(err).__name__)
            continue
        if n < frames:
            report.skip("too short", path, f"{n} frames < {frames}")
            continue
        crop = None
        if align != "none":
            from engine.face.align import crop_transform

            try:
                first = decode_frames(path, [0])[0]
                crop = tuple(crop_transform(first, align, weights_dir=weights_dir).matrix.reshape(-1).tolist())
            except InputError as err:
                report.skip("no face", path, str(err))
                continue
        report.clips.append(Clip(path, n, crop))
    return report


def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centre crop whose aspect ratio w/h is clamped to ``ASPECT_RANGE``."""
    ratio = width / height
    if ratio > ASPECT_RANGE[1]:
        w, h = int(round(height * ASPECT_RANGE[1])), height
    elif ratio < ASPECT_RANGE[0]:
        w, h = width, int(round(width / ASPECT_RANGE[0]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def to_training_pixels(frame: np.ndarray, size: int, crop: tuple[float, ...] | None) -> np.ndarray:
    """One RGB frame -> [size, size, 3] uint8: the face crop (if any), then the release's crop and resize."""
    if crop is not None:
        from engine.face.align import CROP_SIZE, CropTransform
        from engine.face.align import crop as warp_crop

        return warp_crop(frame, CropTransform.from_matrix(np.asarray(crop), CROP_SIZE, frame.shape[:2]), size)
    left, top, right, bottom = center_crop_box(frame.shape[1], frame.shape[0])
    square = frame[top:bottom, left:right]
    if square.shape[:2] == (size, size):
        return np.ascontiguousarray(square)
    shrink = square.shape[0] > size
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def sample_indices(rng: np.random.Generator, length: int, frames: int, sample_rate: int) -> tuple[list[int], int]:
    """(video frame indices, reference index), the release's sampling."""
    clip_length = min(length, (frames - 1) * sample_rate + 1)
    start = int(rng.integers(0, length - clip_length + 1))
    indices = np.linspace(start, start + clip_length - 1, frames, dtype=int).tolist()
    ref = int(rng.integers(0, length))
    return indices, ref


class ClipDataset(Dataset):
    """Item ``k`` = global sample ``k``: ``{"pixel_values_vid": [F, 3, S, S], "pixel_values_ref_img": [1, 3, S, S],
    "sample": k}`` in [-1, 1]."""

    def __init__(self, clips: list[Clip], frames: int, size: int, sample_rate: int = 4, seed: int = 0) -> None:
        if not clips:
            raise InputError("no usable clip in the training data")
        self.clips, self.frames, self.size, self.sample_rate, self.seed = clips, frames, size, sample_rate, seed

    def __len__(self) -> int:  # nominal: samples are addressed by a global counter, see ``clip_for``
        return len(self.clips)

    def clip_for(self, k: int) -> Clip:
        n = len(self.clips)
        order = np.random.default_rng([self.seed, k // n, 0x5EED]).permutation(n)
        return self.clips[int(order[k % n])]

    def __getitem__(self, k: int) -> dict[str, torch.Tensor | int]:
        clip = self.clip_for(k)
        rng = np.random.default_rng([self.seed, k])
        indices, ref = sample_indices(rng, clip.frames, self.frames, self.sample_rate)
        decoded = decode_frames(clip.path, sorted({ref, *indices[1:]}))
        images = [decoded[ref]] + [decoded[i] for i in indices[1:]]  # frame 0 IS the reference (release)
        pixels = np.stack([to_training_pixels(im, self.size, clip.crop) for im in images])
        vid = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return {"pixel_values_vid": vid, "pixel_values_ref_img": vid[:1].clone(), "sample": k}


@dataclass(frozen=True)
class Layout:
    """How one optimisation step's samples are spread: ``batch`` per micro-step, ``accumulate`` micro-steps,
    ``world`` processes. Step ``s`` consumes global samples ``[s * per_step, (s + 1) * per_step)``; rank ``r``'s
    micro-step ``a`` takes ``batch`` consecutive ones at ``(a * world + r) * batch``, so 2 processes x 1
    micro-step see exactly the micro-batches of 1 process x 2 micro-steps."""

    batch: int
    accumulate: int = 1
    world: int = 1

    @property
    def per_step(self) -> int:
        return self.batch * self.accumulate * self.world

    def micro_batch(self, step: int, micro: int, rank: int) -> list[int]:
        base = step * self.per_step + (micro * self.world + rank) * self.batch
        return list(range(base, base + self.batch))


class StepSampler(Sampler[list[int]]):
    """Batches of global sample ids for one rank, from ``start_step`` to ``end_step`` (the data position)."""

    def __init__(self, layout: Layout, rank: int, start_step: int, end_step: int) -> None:
        self.layout, self.rank, self.start, self.end = layout, rank, start_step, end_step

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            for micro in range(self.layout.accumulate):
                yield self.layout.micro_batch(step, micro, self.rank)

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.layout.accumulate


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values_vid": torch.stack([i["pixel_values_vid"] for i in items]),
        "pixel_values_ref_img": torch.stack([i["pixel_values_ref_img"] for i in items]),
        "sample": torch.tensor([i["sample"] for i in items]),
    }


def loader(dataset: ClipDataset, layout: Layout, rank: int, start_step: int, end_step: int,
           workers: int = 2) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` for one rank; PyAV decodes in its ``workers`` processes."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepSampler(layout, rank, start_step, end_step),
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )
