"""Read driving videos and write result videos (PyAV / FFmpeg).

Reading policies:

* Frames are decoded to RGB with FFmpeg's swscale (``to_ndarray(format="rgb24")``); on the official
  clips this is bit-identical to the official release's ``cv2.VideoCapture`` + BGR->RGB.
* Display rotation metadata (phone clips) is applied, rounded to a multiple of 90 degrees.
* Each frame is centre-cropped to a square of its short side (same policy as :mod:`engine.io.image`)
  and resized with ``cv2.resize(..., INTER_LINEAR)`` like the official release; a square frame that
  already has the requested size is returned unchanged.
* The frame rate is the stream's *average* rate (an exact Fraction). A variable-frame-rate clip is
  therefore treated as constant-rate: every decoded frame is kept, none are duplicated or dropped.

Writing policies (:func:`write_video`):

* H.264 (libx264, yuv420p, CRF 18 by default, tagged BT.601 limited range - what swscale's RGB->YUV
  produces) in MP4 with ``+faststart``; the rate is kept exactly by using ``1/rate`` as the encoder time
  base (e.g. 30000/1001 stays 30000/1001).
* yuv420p needs even dimensions, so odd-sized frames are padded by one edge-replicated row/column at
  the bottom/right (content is never cropped away).
* Audio from ``audio_from`` is copied without re-encoding when it is AAC with a normal MP4 header
  (``extradata``), otherwise transcoded to AAC. It is aligned to the source's first video frame and
  trimmed to the written video's duration (to within one audio packet, ~23 ms).
* The file is written to a hidden temporary file beside the target and ``os.replace``\\ d into place only
  after the container is finalised; on any exception (KeyboardInterrupt included) the temporary file is
  removed and the target is left untouched.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import InputError, lazy_import
from engine.io.image import check_input_file, check_size, square_crop_box

if TYPE_CHECKING:
    import av
    import cv2
else:
    av = lazy_import("av", "reading and writing video files")
    cv2 = lazy_import("cv2", "resizing video frames")

__all__ = [
    "VideoClip",
    "VideoInfo",
    "check_output_path",
    "iter_video_frames",
    "probe_video",
    "read_video",
    "write_video",
]

DEFAULT_CRF = 18
_AUDIO_BITRATE = 192_000
# Sample rates the AAC encoder accepts; anything else is resampled to 48 kHz.
_AAC_RATES = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000})


@dataclass(frozen=True)
class VideoInfo:
    """Container-level facts about a driving video (nothing is decoded)."""

    path: Path
    width: int  # as stored, before rotation metadata is applied
    height: int
    rate: Fraction  # average frame rate
    frame_count: int  # as declared by the container; 0 when unknown (only a hint)
    codec: str
    has_audio: bool

    @property
    def fps(self) -> float:
        return float(self.rate)


@dataclass(frozen=True)
class VideoClip:
    """Decoded driving frames, uint8 ``[F, size, size, 3]`` RGB, plus their timing."""

    frames: np.ndarray
    rate: Fraction  # exact average frame rate; use this (not fps) when writing the result
    has_audio: bool
    path: Path
    source_size: tuple[int, int]  # (width, height) of the decoded frames before crop/resize

    @property
    def fps(self) -> float:
        return float(self.rate)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


# ----------------------------------------------------------------------------------------- reading


def _open_input(path: str | Path) -> tuple[Path, av.container.InputContainer, av.video.stream.VideoStream]:
    p = check_input_file(path, "driving video")
    try:
        container = av.open(str(p), mode="r")
    except av.error.PermissionError as exc:
        raise InputError(f"driving video '{p}' cannot be read (permission denied); fix its permissions.") from exc
    except av.error.FFmpegError as exc:
        raise InputError(
            f"driving video '{p}' is not a readable video or is corrupt ({exc.strerror}); "
            "pass an MP4 (or other FFmpeg-readable) clip, re-encoding it if necessary."
        ) from exc
    if not container.streams.video:
        container.close()
        raise InputError(
            f"driving video '{p}' has no video stream (it is empty or audio-only); pass a clip with video."
        )
    stream = container.streams.video[0]
    _check_not_truncated(p, container, stream)
    return p, container, stream


def _check_not_truncated(p: Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
    """Refuse a file whose sample index points past its end (an interrupted download or copy).

    FFmpeg itself just stops early and reports success, so such a clip would silently drive only
    its first few frames.
    """
    end = max((entry.pos + entry.size for entry in stream.index_entries), default=0)
    actual = p.stat().st_size
    if end > actual:
        container.close()
        raise InputError(
            f"driving video '{p}' is truncated: its index expects {end} bytes but the file has {actual}; "
            "the download or copy was incomplete - fetch it again."
        )


def _average_rate(p: Path, stream: av.video.stream.VideoStream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate.numerator, rate.denominator)
    raise InputError(f"driving video '{p}' declares no frame rate; re-encode it with a fixed rate (e.g. ffmpeg -r 25).")


def probe_video(path: str | Path) -> VideoInfo:
    """Read the container header of a driving video; raises InputError like :func:`read_video`."""
    p, container, stream = _open_input(path)
    with container:
        return VideoInfo(
            path=p,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            rate=_average_rate(p, stream),
            frame_count=int(stream.frames or 0),
            codec=stream.codec_context.name,
            has_audio=bool(container.streams.audio),
        )


def fit_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an RGB frame to a square and resize it as the release does (cv2 bilinear)."""
    height, width = rgb.shape[:2]
    left, top, right, bottom = square_crop_box(width, height)
    square = rgb[top:bottom, left:right]
    if square.shape[0] == size:
        return np.ascontiguousarray(square)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)


def _decode(
    p: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    size: int,
    max_frames: int | None,
) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """Yield (frame [size, size, 3], (width, height) after rotation); closes the container at the end."""
    count = 0
    try:
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                raise InputError(
                    f"driving video '{p}' is corrupt: decoding failed after {count} frame(s) "
                    f"({exc.strerror}); re-encode or re-download the clip."
                ) from exc
            rgb = frame.to_ndarray(format="rgb24")
            # frame.rotation is the counter-clockwise display angle; np.rot90 also turns counter-clockwise.
            quarter_turns = round(frame.rotation / 90) % 4
            if quarter_turns:
                rgb = np.rot90(rgb, quarter_turns)
            yield fit_square(rgb, size), (rgb.shape[1], rgb.shape[0])
            count += 1
            if max_frames is not None and count >= max_frames:
                return
        if count == 0:
            raise InputError(
                f"driving video '{p}' contains no decodable frames (it may be cut before its first key "
                "frame); re-encode it or pass another clip."
            )
    finally:
        container.close()


def _check_args(size: int, max_frames: int | None) -> None:
    check_size(size)
    if max_frames is not None and (not isinstance(max_frames, int | np.integer) or max_frames < 1):
        raise ValueError(f"max_frames must be None or a positive integer, got {max_frames!r}")


def iter_video_frames(path: str | Path, size: int, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Stream the frames of a driving video one at a time, each uint8 ``[size, size, 3]`` RGB.

    The file is opened (and a missing / unreadable / video-less file reported as InputError) when this
    is called; decoding errors and "no decodable frames" are raised while iterating. Use
    :func:`probe_video` for the frame rate.
    """
    _check_args(size, max_frames)
    p, container, stream = _open_input(path)
    stream.thread_type = "AUTO"
    return (frame for frame, _ in _decode(p, container, stream, size, max_frames))


def read_video(path: str | Path, size: int, max_frames: int | None = None) -> VideoClip:
    """Decode a whole driving video (or its first ``max_frames`` frames) into a :class:`VideoClip`."""
    _check_args(size, max_frames)
    p, container, stream = _open_input(path)
    try:
        rate = _average_rate(p, stream)
    except InputError:
        container.close()
        raise
    has_audio = bool(container.streams.audio)
    stream.thread_type = "AUTO"
    # Preallocate from the declared count (usually exact) so memory peaks at one copy of the clip;
    # grow by doubling if the container under-declared.
    capacity = min(int(stream.frames or 0), 4096) or 64  # a corrupt header may claim billions
    if max_frames is not None:
        capacity = min(capacity, max_frames)
    buffer = np.empty((capacity, size, size, 3), dtype=np.uint8)
    count = 0
    source_size = (0, 0)
    for frame, frame_size in _decode(p, container, stream, size, max_frames):
        source_size = frame_size
        if count == buffer.shape[0]:
            grown = np.empty((2 * count, size, size, 3), dtype=np.uint8)
            grown[:count] = buffer
            buffer = grown
        buffer[count] = frame
        count += 1
    frames = buffer if count == buffer.shape[0] else buffer[:count].copy()
    return VideoClip(frames=frames, rate=rate, has_audio=has_audio, path=p, source_size=source_size)


# ----------------------------------------------------------------------------------------- writing


def check_output_path(path: str | Path) -> Path:
    """Check, before any work is done, that an MP4 can be written at ``path``; return it as a Path.

    Creates missing parent directories (the output will be written there anyway) and proves the
    directory is writable by creating and removing a probe file, which also catches read-only file
    systems that permission bits do not show.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() != ".mp4":
        raise InputError(
            f"output path '{p}' must end in .mp4 (the engine writes H.264 MP4); use e.g. '{p.with_suffix('.mp4')}'."
        )
    if p.is_dir():
        raise InputError(f"output path '{p}' is an existing directory; give a file name such as '{p / 'out.mp4'}'.")
    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(
            f"output path '{p}' cannot be created: a parent of it is a file, not a directory; choose another path."
        ) from exc
    except OSError as exc:
        raise InputError(
            f"output directory '{parent}' cannot be created ({exc.strerror}); create it or choose another path."
        ) from exc
    probe = parent / f".{p.name}.{secrets.token_hex(4)}.probe"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"output directory '{parent}' is not writable ({exc.strerror}); choose another output path."
        ) from exc
    return p


def _as_rate(fps: float | Fraction) -> Fraction:
    if isinstance(fps, Fraction):
        rate = fps
    else:
        if not math.isfinite(float(fps)):
            raise ValueError(f"fps must be finite, got {fps!r}")
        # A float such as 29.97002997 comes from 30000/1001; recover the exact NTSC-style fraction.
        rate = Fraction(fps).limit_denominator(10_000)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


def _frames_of(frames: Iterable[np.ndarray] | np.ndarray) -> Iterator[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"frames array must be [F, H, W, 3], got shape {frames.shape}")
    return iter(frames)


def _check_frame(frame: np.ndarray, index: int, shape: tuple[int, ...] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index} must be uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
    if shape is not None and frame.shape != shape:
        raise ValueError(f"frame {index} has shape {frame.shape}, but the first frame had {shape}")
    return frame


def _create_temp(target: Path) -> Path:
    # os.open with mode 0o666 lets the umask decide the final permissions, as for a normal file.
    for _ in range(100):
        tmp = target.with_name(f".{target.stem}.{secrets.token_hex(6)}.partial.mp4")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise InputError(f"cannot create a temporary file beside '{target}'; clean up '.{target.stem}.*' files.")


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray] | np.ndarray,
    fps: float | Fraction,
    audio_from: Path | None = None,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = "medium",
) -> Path:
    """Encode RGB uint8 frames ``[H, W, 3]`` to an H.264 MP4 at ``path`` and return the path.

    ``frames`` may be a ``[F, H, W, 3]`` array or any iterable (e.g. a generator, so frames can be
    streamed out of the model). ``fps`` should be the driving clip's exact ``rate`` Fraction.
    ``audio_from``: a media file whose first audio track is copied in (nothing happens if it has none).
    See the module docstring for the padding, audio and atomic-write policies.
    """
    out_path = check_output_path(path)
    rate = _as_rate(fps)
    audio_src = check_input_file(audio_from, "audio source") if audio_from is not None else None
    tmp = _create_temp(out_path)
    try:
        _encode(tmp, _frames_of(frames), rate, audio_src, crf, preset)
        os.replace(tmp, out_path)
    except BaseException:
        # BaseException so Ctrl-C / SystemExit mid-encode never leave a half-written file behind.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return out_path


def _encode(
    tmp: Path, frames: Iterator[np.ndarray], rate: Fraction, audio_src: Path | None, crf: int, preset: str
) -> None:
    first = next(frames, None)
    if first is None:
        raise ValueError("write_video got no frames to write")
    first = _check_frame(first, 0, None)
    shape = first.shape
    height, width = shape[0], shape[1]
    pad = ((0, height % 2), (0, width % 2), (0, 0))

    container = av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
    audio: _AudioCopier | None = None
    try:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset})
        stream.width = width + width % 2
        stream.height = height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / rate
        # swscale converts RGB to BT.601 limited-range YUV; say so in the bitstream, or players that
        # assume BT.709 for untagged video (browsers) shift the colours slightly.
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 6  # SMPTE 170M (BT.601)
        cc.color_range = 1  # MPEG / limited
        if audio_src is not None:
            audio = _AudioCopier.open(container, audio_src)

        count = 0
        frame: np.ndarray | None = first
        while frame is not None:
            if count:
                frame = _check_frame(frame, count, shape)
            if pad[0][1] or pad[1][1]:
                frame = np.pad(frame, pad, mode="edge")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = count
            vf.time_base = stream.codec_context.time_base
            container.mux(stream.encode(vf))
            count += 1
            if audio is not None:
                audio.feed_until(count / rate)
            frame = next(frames, None)
        container.mux(stream.encode(None))
        if audio is not None:
            audio.finish(count / rate)
    except BaseException:
        # The file is discarded anyway; a failure while closing must not mask the original error.
        with contextlib.suppress(Exception):
            container.close()
        if audio is not None:
            with contextlib.suppress(Exception):
                audio.close()
        raise
    container.close()


@dataclass
class _AudioCopier:
    """Copies (or transcodes to AAC) the first audio track of a file, interleaved with the video.

    ``items`` yields (start time in seconds, packet or frame) in order; ``emit`` writes one item.
    """

    src: Path
    source: av.container.InputContainer
    items: Iterator[tuple[Fraction, Any]]
    emit: Callable[[Any], None]
    flush: Callable[[], None]
    pending: tuple[Fraction, Any] | None = None

    @classmethod
    def open(cls, out: av.container.OutputContainer, src: Path) -> _AudioCopier | None:
        try:
            source = av.open(str(src), mode="r")
        except av.error.FFmpegError as exc:
            raise InputError(
                f"audio source '{src}' is not a readable media file ({exc.strerror}); pass the driving video."
            ) from exc
        if not source.streams.audio:
            source.close()
            return None
        in_audio = source.streams.audio[0]
        # Audio is placed relative to the first video frame, which becomes t=0 in the output.
        start = Fraction(0)
        vs = source.streams.video[0] if source.streams.video else None
        if vs is not None and vs.start_time is not None and vs.time_base is not None:
            start = vs.start_time * Fraction(vs.time_base)
        if in_audio.codec_context.name == "aac" and in_audio.codec_context.extradata:
            out_audio = out.add_stream_from_template(in_audio)

            def remux_items() -> Iterator[tuple[Fraction, Any]]:
                assert in_audio.time_base is not None
                tb = Fraction(in_audio.time_base)
                shift = round(start / tb)
                for packet in source.demux(in_audio):
                    if packet.dts is None:  # demuxer flush packet, carries no data
                        continue
                    packet.pts = None if packet.pts is None else packet.pts - shift
                    packet.dts -= shift
                    packet.stream = out_audio
                    yield (packet.pts if packet.pts is not None else packet.dts) * tb, packet

            return cls(src, source, remux_items(), out.mux, lambda: None)

        rate = in_audio.codec_context.sample_rate if in_audio.codec_context.sample_rate in _AAC_RATES else 48000
        layout = "mono" if in_audio.codec_context.channels == 1 else "stereo"
        out_audio = out.add_stream("aac", rate=rate)
        out_audio.layout = layout
        out_audio.bit_rate = _AUDIO_BITRATE
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate, frame_size=1024)

        def transcode_items() -> Iterator[tuple[Fraction, Any]]:
            # Transcoded audio starts at t=0 with the first decoded sample (any lead-in offset is dropped).
            samples = 0
            # A final None drains the resampler, which buffers up to one frame_size of samples.
            for frame in itertools.chain(source.decode(in_audio), [None]):
                for chunk in resampler.resample(frame):
                    chunk.pts = samples
                    chunk.time_base = Fraction(1, rate)
                    yield Fraction(samples, rate), chunk
                    samples += chunk.samples

        return cls(
            src,
            source,
            transcode_items(),
            lambda chunk: out.mux(out_audio.encode(chunk)),
            lambda: out.mux(out_audio.encode(None)),
        )

    def feed_until(self, t: Fraction) -> None:
        """Write every audio item that starts before ``t`` seconds."""
        while True:
            if self.pending is None:
                try:
                    self.pending = next(self.items)
                except StopIteration:
                    self.items = iter(())
                    return
                except av.error.FFmpegError as exc:
                    raise InputError(
                        f"audio track of '{self.src}' is corrupt ({exc.strerror}); "
                        "re-encode it or write the video without audio."
                    ) from exc
            start, item = self.pending
            if start >= t:
                return
            self.emit(item)
            self.pending = None

    def finish(self, t_end: Fraction) -> None:
        """Write the audio up to the end of the video (dropping the rest) and flush the encoder."""
        self.feed_until(t_end)
        self.flush()
        self.close()

    def close(self) -> None:
        self.source.close()
