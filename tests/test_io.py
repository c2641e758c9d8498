"""Tests for engine.io: every accepted image kind, every rejected input, and video round trips."""

from __future__ import annotations

import os
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.io import (
    MAX_SOURCE_PIXELS,
    check_output_path,
    iter_video_frames,
    load_image,
    probe_video,
    read_video,
    side_by_side,
    write_video,
)

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets"
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _close(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tol))


def _quadrants(size: int) -> Image.Image:
    """Red | green over blue | white: any crop, flip or rotation mistake moves a colour."""
    img = Image.new("RGB", (size, size), WHITE)
    half = size // 2
    img.paste(RED, (0, 0, half, half))
    img.paste(GREEN, (half, 0, size, half))
    img.paste(BLUE, (0, half, half, size))
    return img


def _assert_quadrants(out: np.ndarray) -> None:
    q1, q3 = out.shape[0] // 4, 3 * out.shape[0] // 4
    for (y, x), colour in zip([(q1, q1), (q1, q3), (q3, q1), (q3, q3)], [RED, GREEN, BLUE, WHITE]):
        assert _close(out[y, x], colour)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A syntactically valid PNG that claims huge dimensions but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 16))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + idat + chunk(b"IEND", b""))


def _write_raw_clip(path: Path, frames: list[np.ndarray], codec: str = "libx264", **stream_attrs) -> None:
    """Encode test clips directly with PyAV so reader tests do not depend on write_video."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = stream_attrs.get("pix_fmt", "yuv420p")
        if "rotation" in stream_attrs:
            stream.set_display_rotation(stream_attrs["rotation"])
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _smooth_frames(n: int, h: int = 64, w: int = 64) -> np.ndarray:
    """Moving smooth gradients: compressible, so H.264 reproduces them closely."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = [np.stack([x / w * 200 + 4 * i, y / h * 200, np.full_like(x, 128 - 4 * i)], axis=-1) for i in range(n)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _write_wav(path: Path, seconds: float, rate: int = 22050) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        samples = (np.sin(np.arange(int(seconds * rate)) / 7.0) * 8000).astype(np.int16)[None]
        for start in range(0, samples.shape[1], 1000):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1000], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


# ------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("name", ["source1.png", "source2.png", "source.jpg"])
def test_media_source_unchanged_at_512(media_dir: Path, name: str) -> None:
    out = load_image(media_dir / name, 512)
    with Image.open(media_dir / name) as img:
        expected = np.asarray(img.convert("RGB"))
    assert out.dtype == np.uint8 and out.shape == (512, 512, 3)
    assert np.array_equal(out, expected)
    assert out.flags.writeable


def test_media_source_resized_with_pil_bicubic(media_dir: Path) -> None:
    with Image.open(media_dir / "source1.png") as img:
        expected = np.asarray(img.convert("RGB").resize((256, 256), Image.Resampling.BICUBIC))
    assert np.array_equal(load_image(media_dir / "source1.png", 256), expected)
    with pytest.raises(ValueError):  # a bad size is a programming error, not the user's file
        load_image(media_dir / "source1.png", 0)


def test_greyscale_becomes_equal_channels(tmp_path: Path) -> None:
    grey = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (128, 1))
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png", 128)
    assert out.shape == (128, 128, 3)
    assert np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 1], grey)
    assert np.array_equal(out[..., 2], grey)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_composited_on_white(tmp_path: Path, mode: str) -> None:
    alpha = np.repeat(np.array([0, 255, 128], np.uint8), [21, 21, 22])[None, :].repeat(64, axis=0)
    colour = np.full((64, 64, 1 if mode == "LA" else 3), 100, np.uint8)
    Image.fromarray(np.dstack([colour, alpha])).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == mode
    out = load_image(tmp_path / "a.png", 64).astype(int)
    assert np.all(out[:, :21] == 255)  # transparent -> white
    assert np.all(out[:, 21:42] == 100)  # opaque -> unchanged
    assert np.all(np.abs(out[:, 42:] - (100 * 128 + 255 * 127) / 255) <= 1)  # half -> blended


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    idx = np.zeros((64, 64), np.uint8)
    idx[:, 32:] = 1
    pal = Image.new("P", (64, 64))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putdata(idx.ravel().tolist())
    pal.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png", 64)
    assert np.all(out[:, :32] == (10, 20, 30)) and np.all(out[:, 32:] == (200, 100, 50))

    pal.save(tmp_path / "pt.png", transparency=0)
    with Image.open(tmp_path / "pt.png") as img:
        assert img.mode == "P" and img.info.get("transparency") == 0
    out = load_image(tmp_path / "pt.png", 64)
    assert np.all(out[:, :32] == 255)  # palette index 0 is transparent -> white
    assert np.all(out[:, 32:] == (200, 100, 50))


def test_16bit_grey_png_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([0, 257, 32896, 65535 // 2, 65535], np.uint16)
    arr = np.repeat(values, 16)[None, :].repeat(80, axis=0)  # 80 x 80
    Image.fromarray(arr).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I;16")
    out = load_image(tmp_path / "g16.png", 80)
    assert np.array_equal(out[0, ::16, 0], np.rint(values / 257).astype(np.uint8))  # [0, 1, 128, 127, 255]
    assert np.array_equal(out[..., 0], out[..., 2])


def test_16bit_rgb_png(tmp_path: Path) -> None:
    rgb16 = np.zeros((64, 64, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = 32896
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    out = load_image(tmp_path / "rgb16.png", 64)
    assert np.all(np.abs(out.astype(int) - (255, 128, 0)) <= 1)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (96, 96), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as img:
        assert img.mode == "CMYK"
    out = load_image(tmp_path / "cmyk.jpg", 64)
    assert _close(out[32, 32], RED)


@pytest.mark.parametrize(("orientation", "marker_at"), [(1, "top_left"), (6, "top_right"), (8, "bottom_left")])
def test_exif_orientation_applied(tmp_path: Path, orientation: int, marker_at: str) -> None:
    img = Image.new("RGB", (128, 128), WHITE)
    img.paste(RED, (0, 0, 40, 40))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "o.jpg", 128)
    corners = {"top_left": out[10, 10], "top_right": out[10, 117], "bottom_left": out[117, 10]}
    assert _close(corners.pop(marker_at), RED)
    assert all(_close(c, WHITE) for c in corners.values())


@pytest.mark.parametrize("size", [(300, 200), (200, 300)])
def test_non_square_is_centre_cropped(tmp_path: Path, size: tuple[int, int]) -> None:
    w, h = size
    img = Image.new("RGB", size, GREEN)
    if w > h:
        img.paste(RED, (0, 0, 50, h))
        img.paste(BLUE, (w - 50, 0, w, h))
    else:
        img.paste(RED, (0, 0, w, 50))
        img.paste(BLUE, (0, h - 50, w, h))
    img.save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 64)
    assert out.shape == (64, 64, 3)
    assert np.all(out == GREEN)  # both 50 px bands lie outside the centred 200x200 square


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_huge_8000px_image(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"big.{ext}"
    _quadrants(8000).save(path, **({"quality": 90} if ext == "jpg" else {"compress_level": 1}))
    out = load_image(path, 256)
    assert out.shape == (256, 256, 3)
    _assert_quadrants(out)


@pytest.mark.parametrize(("width", "height"), [(12000, 9000), (60000, 60000)])
def test_decompression_bomb_refused(tmp_path: Path, width: int, height: int) -> None:
    assert width * height > MAX_SOURCE_PIXELS
    path = tmp_path / "bomb.png"
    _png_header_only(path, width, height)
    with pytest.raises(InputError, match="decompression bomb") as err:
        load_image(path, 512)
    assert str(path) in str(err.value)


def _truncated(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("missing.png", lambda p: None, "does not exist"),
        ("adir.png", lambda p: p.mkdir(), "is a directory"),
        ("notes.png", lambda p: p.write_text("hello, not an image"), "not an image"),
        ("random.jpg", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not an image"),
        ("empty.png", lambda p: p.write_bytes(b""), "not an image"),
        ("cut.jpg", _truncated, "truncated or corrupt"),
        ("cut.png", _truncated, "truncated or corrupt"),
        ("tiny.png", lambda p: Image.new("RGB", (8, 8)).save(p), "at least 64"),
        ("thin.png", lambda p: Image.new("RGB", (63, 400)).save(p), "at least 64"),
    ],
)
def test_bad_images_raise_input_error(tmp_path: Path, name: str, make, match: str) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError, match=match) as err:
        load_image(path, 512)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- reading video


def test_media_driving_unchanged_at_512_and_matches_cv2(media_dir: Path) -> None:
    clip = read_video(media_dir / "driving1.mp4", 512, max_frames=8)
    assert clip.frames.shape == (8, 512, 512, 3) and clip.frames.dtype == np.uint8
    assert clip.rate == 25 and clip.fps == 25.0 and not clip.has_audio
    # The official release reads with cv2.VideoCapture and cv2.resize (a no-op at 512x512).
    cap = cv2.VideoCapture(str(media_dir / "driving1.mp4"))
    try:
        for i in range(8):
            ok, bgr = cap.read()
            assert ok
            assert np.array_equal(clip.frames[i], cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()


def test_media_driving_with_audio_probe_and_stream(media_dir: Path) -> None:
    info = probe_video(media_dir / "driving.mp4")
    assert (info.width, info.height, info.rate, info.codec, info.has_audio) == (512, 512, 30, "h264", True)
    streamed = list(iter_video_frames(media_dir / "driving.mp4", 128, max_frames=5))
    clip = read_video(media_dir / "driving.mp4", 128, max_frames=5)
    assert clip.has_audio and len(clip) == 5 and len(streamed) == 5
    assert all(np.array_equal(a, b) for a, b in zip(streamed, clip.frames))
    expected = cv2.resize(read_video(media_dir / "driving.mp4", 512, max_frames=1).frames[0], (128, 128))
    assert np.array_equal(clip.frames[0], expected)


@pytest.mark.parametrize(("codec", "pix_fmt"), [("libx264", "yuv444p"), ("mpeg4", "yuv420p")])
def test_odd_size_clip_is_cropped_and_resized(tmp_path: Path, codec: str, pix_fmt: str) -> None:
    frame = np.full((77, 101, 3), GREEN, np.uint8)
    # The centred 77x77 square drops 12 px each side; 6 px bands leave room for codec ringing.
    frame[:, :6] = RED
    frame[:, -6:] = BLUE
    path = tmp_path / "odd.mkv"
    _write_raw_clip(path, [frame] * 3, codec, pix_fmt=pix_fmt)
    clip = read_video(path, 64)
    assert clip.frames.shape == (3, 64, 64, 3) and clip.source_size == (101, 77)
    assert all(_close(p, GREEN, 20) for p in clip.frames[:, [1, 32, 62], [1, 32, 62]].reshape(-1, 3))


def test_rotation_metadata_applied(tmp_path: Path) -> None:
    frame = np.full((64, 80, 3), 255, np.uint8)
    frame[:24, :24] = RED  # stored top-left
    path = tmp_path / "rot.mp4"
    _write_raw_clip(path, [frame] * 2, rotation=90)  # displayed turned 90 degrees counter-clockwise
    clip = read_video(path, 64)
    assert clip.source_size == (64, 80)  # portrait after rotation
    # Rotated frame is 80 tall; the marker lands in rows 56..79, of which the centre crop keeps 56..71.
    assert _close(clip.frames[0, 60, 3], RED, 30)  # top-left moved to bottom-left
    assert _close(clip.frames[0, 3, 3], WHITE, 30)
    assert _close(clip.frames[0, 60, 60], WHITE, 30)


def test_variable_frame_rate_uses_average_rate(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mp4"
    pts = [0, 40, 80, 100, 140, 200, 240, 250, 300, 360]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    clip = read_video(path, 64)
    assert len(clip) == len(pts)  # every frame kept, none duplicated
    with av.open(str(path)) as c:
        assert clip.rate == c.streams.video[0].average_rate
    assert 20 < clip.fps < 35


def _zero_frame_mp4(path: Path) -> None:
    """A clip holding only P-frames: the container is valid, but nothing is decodable."""
    full = path.with_name("full.mp4")
    _write_raw_clip(full, list(_smooth_frames(6)))
    with av.open(str(full)) as src, av.open(str(path), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None and not packet.is_keyframe:
                packet.stream = out
                dst.mux(packet)


def _empty_mp4(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        out.start_encoding()


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("missing.mp4", lambda p: None, "does not exist"),
        ("adir.mp4", lambda p: p.mkdir(), "is a directory"),
        ("random.mp4", lambda p: p.write_bytes(np.random.default_rng(0).bytes(8192)), "not a readable video"),
        ("empty.mp4", lambda p: p.write_bytes(b""), "not a readable video"),
        ("pframes.mp4", _zero_frame_mp4, "no decodable frames"),
        ("noframes.mp4", _empty_mp4, "no video stream"),
        ("audio.wav", lambda p: _write_wav(p, 0.2), "no video stream"),
    ],
)
def test_bad_videos_raise_input_error(tmp_path: Path, name: str, make, match: str) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError, match=match) as err:
        read_video(path, 64)
    assert str(path) in str(err.value)


def test_truncated_video_raises_input_error(tmp_path: Path, media_dir: Path) -> None:
    # Index (moov) at the end, as in the media: cutting the file loses the index itself.
    data = (media_dir / "driving1.mp4").read_bytes()
    head = tmp_path / "head.mp4"
    head.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable video") as err:
        read_video(head, 64)
    assert str(head) in str(err.value)
    # Index at the start (+faststart, as write_video makes): FFmpeg would decode a few frames and stop.
    full = write_video(tmp_path / "full.mp4", _smooth_frames(20), 25)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    with pytest.raises(InputError, match="truncated") as err:
        read_video(cut, 64)
    assert str(cut) in str(err.value)


# ------------------------------------------------------------------------------------- writing video


@pytest.mark.parametrize(("fps", "n"), [(Fraction(30000, 1001), 12), (30000 / 1001, 12), (25, 1)])
def test_round_trip(tmp_path: Path, fps: float | Fraction, n: int) -> None:
    frames = _smooth_frames(n)
    path = write_video(tmp_path / "rt.mp4", frames, fps)
    assert path == tmp_path / "rt.mp4" and path.is_file()
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert v.codec_context.colorspace == 6  # tagged BT.601, matching the RGB->YUV conversion
        assert not c.streams.audio
    clip = read_video(path, 64)
    expected_rate = Fraction(30000, 1001) if fps != 25 else Fraction(25)
    assert clip.rate == expected_rate
    assert clip.frames.shape == frames.shape
    err = np.abs(clip.frames.astype(int) - frames.astype(int))
    assert err.mean() < 2.0 and err.max() < 24
    assert sorted(os.listdir(tmp_path)) == ["rt.mp4"]  # no temp file left behind


def test_generator_input_and_odd_frames_are_padded(tmp_path: Path) -> None:
    frames = _smooth_frames(4, h=45, w=61)
    path = write_video(tmp_path / "odd.mp4", (f for f in frames), 25)
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 4 and decoded[0].shape == (46, 62, 3)
    # Edge replication: the added row/column repeat the last ones, so nothing is cropped away.
    assert np.abs(decoded[2][:45, :61].astype(int) - frames[2]).mean() < 2.0
    assert np.abs(decoded[2][45].astype(int) - decoded[2][44]).mean() < 3.0


def test_audio_copied_without_reencoding(tmp_path: Path, media_dir: Path) -> None:
    frames = _smooth_frames(30)
    path = write_video(tmp_path / "a.mp4", frames, 30, audio_from=media_dir / "driving.mp4")
    with av.open(str(path)) as out, av.open(str(media_dir / "driving.mp4")) as src:
        assert len(out.streams.audio) == 1 and out.streams.audio[0].codec_context.name == "aac"
        got = [bytes(p) for p in out.demux(out.streams.audio[0]) if p.size]
        want = [bytes(p) for p in src.demux(src.streams.audio[0]) if p.size][: len(got)]
        v = out.streams.video[0]
        video_s = float(v.duration * v.time_base)
    assert got == want  # same packets: remuxed, not transcoded
    audio_s = len(got) * 1024 / 44100
    assert abs(video_s - 1.0) < 1e-6
    assert 1.0 <= audio_s <= 1.0 + 2 * 1024 / 44100  # trimmed to the video (within a packet or two)
    assert read_video(path, 64).has_audio


def test_audio_transcoded_to_aac(tmp_path: Path) -> None:
    _write_wav(tmp_path / "voice.wav", 3.0)
    path = write_video(tmp_path / "t.mp4", _smooth_frames(20), 25, audio_from=tmp_path / "voice.wav")
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac" and a.codec_context.sample_rate == 22050
        decoded = sum(f.samples for f in c.decode(a))
    assert 0.8 * 22050 <= decoded <= 0.8 * 22050 + 3 * 1024  # trimmed from 3 s to the 0.8 s video


def test_audio_source_without_audio_gives_silent_video(tmp_path: Path, media_dir: Path) -> None:
    path = write_video(tmp_path / "s.mp4", _smooth_frames(3), 25, audio_from=media_dir / "driving1.mp4")
    with av.open(str(path)) as c:
        assert not c.streams.audio and len(c.streams.video) == 1


def test_keyboard_interrupt_leaves_nothing(tmp_path: Path, media_dir: Path) -> None:
    frames = _smooth_frames(10)

    def interrupted():
        for i, frame in enumerate(frames):
            if i == 5:
                raise KeyboardInterrupt
            yield frame

    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "out.mp4", interrupted(), 25, audio_from=media_dir / "driving.mp4")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_output(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous result")
    bad = [np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1"):
        write_video(target, bad, 25)
    assert target.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_check_output_path(tmp_path: Path) -> None:
    nested = tmp_path / "new" / "dir" / "out.mp4"
    assert check_output_path(nested) == nested and nested.parent.is_dir()
    assert os.listdir(nested.parent) == []  # the writability probe is cleaned up
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "d.mp4").mkdir()
    for bad, match in [
        (tmp_path / "out.avi", r"must end in \.mp4"),
        (tmp_path / "d.mp4", "is an existing directory"),
        (tmp_path / "file.txt" / "out.mp4", "parent of it is a file"),
    ]:
        with pytest.raises(InputError, match=match) as err:
            check_output_path(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(InputError):
        write_video(tmp_path / "out.avi", _smooth_frames(1), 25)


def test_side_by_side() -> None:
    img = np.zeros((8, 5, 3), np.uint8)
    clip = np.ones((4, 8, 6, 3), np.uint8)
    assert side_by_side(img, img).shape == (8, 10, 3)
    both = side_by_side(img, clip, clip)
    assert both.shape == (4, 8, 17, 3)
    assert np.all(both[:, :, :5] == 0) and np.all(both[:, :, 5:] == 1)
    with pytest.raises(ValueError):
        side_by_side(img, np.zeros((9, 5, 3), np.uint8))
    with pytest.raises(ValueError):
        side_by_side(clip, clip[:3])


# ------------------------------------------------------------------------------------- bundled assets


def test_bundled_assets_load() -> None:
    assert (ASSETS / "LICENSE-FRVD.txt").is_file() and (ASSETS / "ASSETS.md").is_file()
    assert load_image(ASSETS / "source.png", 512).shape == (512, 512, 3)
    clip = read_video(ASSETS / "driving.mp4", 512)
    assert clip.frames.shape == (28, 512, 512, 3) and clip.rate == 25 and not clip.has_audio
    talk = read_video(ASSETS / "driving_audio.mp4", 256)
    assert len(talk) == 28 and talk.rate == 30 and talk.has_audio
