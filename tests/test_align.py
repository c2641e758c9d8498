"""Face alignment and paste-back (``engine.face.align``): the release's crop maths, the OpenCV fallback on the
bundled portraits, the paste-back round trip, clear errors, and the release-model loader's wiring."""

from __future__ import annotations

from math import acos, cos, sin
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from engine.errors import FaceError, WeightsError
from engine.face import align
from engine.models.weights import FACECROPPER_FILES


def _sources(media: Path) -> list[Path]:
    return sorted(p for p in media.glob("source*") if p.suffix in (".png", ".jpg"))


def _rgb(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def portraits(media_dir: Path) -> dict[str, np.ndarray]:
    found = {p.name: _rgb(p) for p in _sources(media_dir)}
    assert len([n for n in found if n.endswith(".png")]) == 5
    return found


def test_opencv_finds_exactly_one_face_in_each_portrait(portraits: dict[str, np.ndarray]) -> None:
    for name, image in portraits.items():
        boxes = align.detect_faces(image, method="opencv")
        assert len(boxes) == 1, (name, boxes)
        # the face is a real part of the picture, not a speck
        assert boxes[0].width >= 0.25 * image.shape[1], (name, boxes[0])


def test_transform_and_inverse_round_trip_points(portraits: dict[str, np.ndarray]) -> None:
    pts = np.random.default_rng(0).uniform(-100, 612, size=(200, 2))
    for name, image in portraits.items():
        t = align.crop_transform(image, method="opencv")
        for size in (512, 256, 64):
            ts = t.scaled(size)
            err = np.abs(ts.to_source(ts.to_crop(pts)) - pts).max()
            assert err < 0.5, (name, size, err)
            assert err < 1e-6  # it is exact up to float rounding
        # the detected face lands where the release puts it: centred across, below the middle
        cx, cy = t.to_crop([[(t.box.x0 + t.box.x1) / 2, (t.box.y0 + t.box.y1) / 2]])[0]
        assert abs(cx - 256) < 1 and 256 < cy < 360, (name, cx, cy)


def test_paste_back_of_an_unchanged_crop_reproduces_the_source(portraits: dict[str, np.ndarray]) -> None:
    for name, image in portraits.items():
        t = align.crop_transform(image, method="opencv")
        crop = align.crop(image, t)
        assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
        out = align.paste_back(image, crop, t)
        assert out.shape == image.shape and out.dtype == np.uint8
        weight = align.PasteBack(image, t).mask(512)[..., 0]
        inside, outside = weight >= 0.999, weight <= 0.0
        diff = out.astype(np.float64) - image
        # two resamplings (bilinear in, cubic back) blur only the sharpest edges
        assert np.abs(diff[inside]).mean() < 1.5, name
        psnr = 10 * np.log10(255**2 / (diff[inside] ** 2).mean())
        assert psnr > 36, (name, psnr)
        assert np.array_equal(out[outside], image[outside]), name


def test_paste_back_keeps_the_source_size_and_takes_any_crop_size(portraits: dict[str, np.ndarray]) -> None:
    face = portraits["source5.png"]
    wide = np.full((600, 900, 3), 90, np.uint8)  # a non-square source with the face off-centre
    wide[60:572, 300:812] = face
    t = align.crop_transform(wide, method="opencv")
    frames = np.stack([align.crop(wide, t, size=s) for s in (128,) * 3])
    out = align.paste_back(wide, frames, t, feather_px=10)
    assert out.shape == (3, 600, 900, 3)
    # far from the face the source is untouched; on the face the 128-px crop is a blurred copy
    assert np.array_equal(out[:, :, :40], np.broadcast_to(wide[:, :40], out[:, :, :40].shape))
    y0, x0 = int(t.box.y0), int(t.box.x0)
    patch = out[0, y0:y0 + int(t.box.height), x0:x0 + int(t.box.width)].astype(float)
    assert np.abs(patch - wide[y0:y0 + int(t.box.height), x0:x0 + int(t.box.width)]).mean() < 8


def test_no_face_is_a_clear_error() -> None:
    gray = np.full((384, 512, 3), 128, np.uint8)
    assert align.detect_faces(gray) == []
    with pytest.raises(FaceError, match="no face found in the source image") as info:
        align.crop_transform(gray, method="opencv")
    assert "--align none" in str(info.value)


def test_several_faces_need_a_face_index(portraits: dict[str, np.ndarray]) -> None:
    pair = np.concatenate([portraits["source1.png"], portraits["source4.png"]], axis=1)
    boxes = align.detect_faces(pair)
    # Haar may add a small false hit on the seam; it is background, the two portraits compete
    faces = [b for b in boxes if b.area >= align.COMPETING_AREA * boxes[0].area]
    assert len(faces) == 2
    with pytest.raises(FaceError, match="2 faces of similar size.*--face-index"):
        align.crop_transform(pair, method="opencv")
    right = align.crop_transform(pair, method="opencv", face_index=boxes.index(faces[1]))
    assert right.box == faces[1] and (right.box.x0 > 512) != (faces[0].x0 > 512)
    with pytest.raises(FaceError, match="out of range"):
        align.crop_transform(pair, method="opencv", face_index=len(boxes))


def test_a_much_smaller_second_face_is_background(portraits: dict[str, np.ndarray]) -> None:
    big = portraits["source4.png"]
    canvas = np.concatenate([big, np.full_like(big, 128)], axis=1)
    canvas[300:428, 700:828] = cv2.resize(portraits["source1.png"], (128, 128), interpolation=cv2.INTER_AREA)
    boxes = align.detect_faces(canvas)
    assert len(boxes) == 2 and boxes[1].area < align.COMPETING_AREA * boxes[0].area
    assert align.crop_transform(canvas, method="opencv").box == boxes[0]


def _release_matrix(pts: np.ndarray, dsize: int, scale: float, vy_ratio: float) -> np.ndarray:
    """The release's parse_rect_from_landmark + _estimate_similar_transform_from_pts, transcribed."""
    eye = (pts[[33, 35, 40, 39]].mean(0) + pts[[87, 89, 94, 93]].mean(0)) / 2
    uy = (pts[52] + pts[61]) / 2 - eye
    uy /= np.linalg.norm(uy)
    ux = np.array((uy[1], -uy[0]))
    angle = acos(ux[0]) * (-1 if ux[1] < 0 else 1)
    c0 = pts.mean(0)
    rpts = (pts - c0) @ np.array([ux, uy]).T
    lt, rb = rpts.min(0), rpts.max(0)
    c1 = (lt + rb) / 2
    size = np.full(2, max(rb - lt)) * scale
    center = c0 + ux * c1[0] + uy * c1[1] + uy * (vy_ratio * size)
    s = dsize / size[0]
    ct, st = cos(angle), sin(angle)
    cx, cy = center
    return np.array([[s * ct, s * st, dsize / 2 - s * (ct * cx + st * cy)],
                     [-s * st, s * ct, dsize / 2 - s * (-st * cx + ct * cy)]])


def test_landmark_maths_is_the_releases() -> None:
    rng = np.random.default_rng(3)
    for roll in (-40, -5, 0, 12, 70):
        pts = rng.normal(0, 1, (106, 2)) * [60, 80]
        pts[[33, 35, 40, 39]] = [-40, -30]
        pts[[87, 89, 94, 93]] = [40, -30]
        pts[[52, 61]] = [0, 50]
        r = np.deg2rad(roll)
        rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
        pts = pts @ rot.T + [300, 220]
        ours = align.matrix_from_landmarks(pts, 512, 2.3, 0.0, -0.125)
        np.testing.assert_allclose(ours, _release_matrix(pts, 512, 2.3, -0.125), atol=1e-9)


# ----------------------------------------------------------------------------- the release's models


def test_auto_without_facecropper_falls_back_with_one_note(tmp_path: Path) -> None:
    image = np.full((64, 64, 3), 128, np.uint8)
    used, models, note = align._resolve("auto", None)
    assert (used, models) == ("opencv", None) and "OpenCV" in note
    used, _, note = align._resolve("auto", tmp_path)
    assert used == "opencv" and str(tmp_path / "facecropper") in note and "does not exist" in note
    (tmp_path / FACECROPPER_FILES["detector"]).parent.mkdir(parents=True)
    (tmp_path / FACECROPPER_FILES["detector"]).write_bytes(b"x")
    used, _, note = align._resolve("auto", tmp_path)
    assert used == "opencv" and "2d106det.onnx" in note and "det_10g" not in note
    assert align._resolve("opencv", tmp_path)[2] == ""
    with pytest.raises(FaceError):  # the fallback still runs (and finds no face in flat gray)
        align.crop_transform(image, method="auto", weights_dir=tmp_path)


def test_insightface_without_its_files_says_what_to_do(tmp_path: Path) -> None:
    image = np.full((64, 64, 3), 128, np.uint8)
    with pytest.raises(WeightsError, match="facecropper") as info:
        align.crop_transform(image, method="insightface", weights_dir=tmp_path)
    assert "--align opencv" in str(info.value)


def _write(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _const_model(inputs: list, outputs: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(a.astype(np.float32)))
             for n, a in outputs.items()]
    graph = helper.make_graph(
        nodes, "fake", inputs,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in outputs.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fake_facecropper(root: Path, det_outputs: dict[str, np.ndarray], lmk: np.ndarray) -> None:
    det_in = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])]
    _write(_const_model(det_in, det_outputs), root / FACECROPPER_FILES["detector"])
    lmk_in = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])]
    _write(_const_model(lmk_in, {"fc1": lmk.reshape(1, -1)}), root / FACECROPPER_FILES["landmark_106"])


def _detector_outputs(faces: list[tuple[int, int, float, tuple[float, float, float, float]]]) -> dict:
    """SCRFD's 9 outputs for a 512x512 input: (stride, anchor index, score, (l, t, r, b) px) per face."""
    outs = {}
    for stride in (8, 16, 32):
        n = (512 // stride) ** 2 * 2
        outs[f"score_{stride}"] = np.zeros((n, 1))
        outs[f"bbox_{stride}"] = np.ones((n, 4))
        outs[f"kps_{stride}"] = np.zeros((n, 10))
    for stride, index, score, ltrb in faces:
        outs[f"score_{stride}"][index, 0] = score
        outs[f"bbox_{stride}"][index] = np.array(ltrb) / stride
    order = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    return {k: outs[k] for k in order}


def test_release_models_are_decoded_like_insightface(tmp_path: Path) -> None:
    # Stand-in ONNX files with InsightFace's input/output layout and constant outputs: no real weights
    # here, but the letterbox, anchor decode, NMS, landmark crop and release maths all run for real.
    grid = 512 // 32
    center_anchor = ((8 * grid) + 8) * 2  # cell (8, 8) of stride 32 = (256, 256) in the 512 canvas
    faces = [
        (32, center_anchor, 0.9, (100, 120, 100, 110)),      # the face
        (32, center_anchor + 1, 0.5, (96, 118, 104, 112)),   # same face, weaker: NMS drops it
        (8, ((10 * 64) + 50) * 2, 0.3, (10, 10, 10, 10)),    # a small far one: background
        (16, 5, 0.05, (50, 50, 50, 50)),                      # under the release's 0.1 threshold
    ]
    rng = np.random.default_rng(1)
    lmk = rng.uniform(-0.6, 0.6, (106, 2))
    _fake_facecropper(tmp_path, _detector_outputs(faces), lmk)
    image = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)  # detector sees it at 0.5 scale

    boxes = align.detect_faces(image, method="insightface", weights_dir=tmp_path)
    assert len(boxes) == 2
    np.testing.assert_allclose([boxes[0].x0, boxes[0].y0, boxes[0].x1, boxes[0].y1],
                               np.array([156, 136, 356, 366]) * 2, atol=1e-3)
    assert boxes[0].score == pytest.approx(0.9)
    t = align.crop_transform(image, method="auto", weights_dir=tmp_path)
    assert t.method == "insightface" and t.note == ""
    # the landmark model sees the box's centre, scaled so 1.5x the box's larger side fills 192 px
    side = 1.5 * max(boxes[0].width, boxes[0].height)
    center = np.array([(boxes[0].x0 + boxes[0].x1) / 2, (boxes[0].y0 + boxes[0].y1) / 2])
    expected_pts = (lmk + 1) * 96 / 192 * side + center - side / 2
    np.testing.assert_allclose(t.matrix, align.matrix_from_landmarks(expected_pts), atol=1e-6)


def test_a_damaged_release_model_is_named(tmp_path: Path) -> None:
    _fake_facecropper(tmp_path, _detector_outputs([]), np.zeros((106, 2)))
    (tmp_path / FACECROPPER_FILES["detector"]).write_bytes(b"not an onnx file")
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(WeightsError, match="det_10g.onnx is not a usable ONNX model"):
        align.crop_transform(image, method="insightface", weights_dir=tmp_path)
    # a landmark model where the detector belongs is not mistaken for one
    lmk_path = tmp_path / FACECROPPER_FILES["landmark_106"]
    (tmp_path / FACECROPPER_FILES["detector"]).write_bytes(lmk_path.read_bytes())
    with pytest.raises(WeightsError, match="not InsightFace's detector"):
        align.crop_transform(image, method="insightface", weights_dir=tmp_path)
