"""Several faces in one photo: two bundled portraits side by side, both found by the OpenCV fallback,
reenacted one after the other and pasted back into one output; the background stays untouched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.api import EngineOptions, Reenactor, RunOptions
from engine.cli.reenact import DEFAULT_DRIVING
from engine.errors import FaceError
from engine.face.align import crop_transform
from engine.face.several import MultiPaste, parse_faces
from engine.io import read_rgb, read_video


@pytest.fixture(scope="module")
def photo(media_dir) -> np.ndarray:
    """source1 | grey strip | source2 at 256 px high."""
    a, b = (cv2.resize(read_rgb(media_dir / n), (256, 256), interpolation=cv2.INTER_AREA)
            for n in ("source1.png", "source2.png"))
    return np.concatenate([a, np.full((256, 32, 3), 200, np.uint8), b], axis=1)


def test_two_faces_reenacted_into_one_output_background_untouched(photo) -> None:
    engine = Reenactor.from_preset("tiny", EngineOptions(size=64))
    stages: list[str] = []
    from engine.runtime import RunControl

    control = RunControl(progress=lambda stage, done, total: stages.append(stage))
    driving = read_video(DEFAULT_DRIVING, 64).frames[:14]
    result = engine.render_faces(photo, driving, faces="all", align="opencv", options=RunOptions(steps=1),
                                 control=control)
    assert result.faces == [0, 1] and result.num_frames == 14
    frames = result.frames
    assert frames is not None and frames.shape == (14, *photo.shape)
    assert {s.split(":")[0] for s in stages if s.startswith("face")} == {"face 1/2", "face 2/2"}  # per face
    crops = [crop_transform(photo, "opencv", i) for i in (0, 1)]
    paste = MultiPaste(photo, crops)
    for k, t in enumerate(crops):  # each face's own region changed
        box = t.box
        region = (slice(int(box.y0), int(box.y1)), slice(int(box.x0), int(box.x1)))
        assert (paste.mask(k, 64)[region][..., 0] > 0.99).mean() > 0.5
        assert np.abs(frames[:, region[0], region[1]].astype(int) - photo[region].astype(int)).mean() > 5
    outside = (paste.mask(0, 64)[..., 0] == 0) & (paste.mask(1, 64)[..., 0] == 0)
    assert outside.mean() > 0.05
    assert all(np.array_equal(f[outside], photo[outside]) for f in frames)  # background bit for bit
    assert np.array_equal(paste.owner[:, :128], np.zeros((256, 128), int))  # left half: face 0's only


def test_face_selection_errors(photo) -> None:
    engine = Reenactor.from_preset("tiny", EngineOptions(size=64))
    with pytest.raises(FaceError, match="face index 2 is beyond the 2 face"):
        engine.render_faces(photo, np.zeros((2, 64, 64, 3), np.uint8), faces=[0, 2], align="opencv")
    with pytest.raises(FaceError, match="no face found"):
        engine.render_faces(np.full((128, 128, 3), 90, np.uint8), np.zeros((2, 64, 64, 3), np.uint8),
                            align="opencv")
    assert parse_faces("all") == "all" and parse_faces("1") == 1 and parse_faces("0,1") == (0, 1)
    for bad in ("-1", "x", "0,0"):
        with pytest.raises(ValueError):
            parse_faces(bad)
