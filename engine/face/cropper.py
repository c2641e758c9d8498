"""The release's face models on onnxruntime: InsightFace's buffalo_l detector (SCRFD, ``det_10g.onnx``)
and its 106-point landmark model (``2d106det.onnx``), as the release's ``src/facecropper`` runs them.

Pre- and post-processing follow InsightFace's ``RetinaFace.detect`` and ``Landmark.get`` (the code the
release vendors) with the release's settings: detector input 512x512, score threshold 0.1, NMS 0.4.
Images here are RGB; the release hands InsightFace BGR and InsightFace swaps it back to RGB for both
networks, so feeding RGB directly gives the same tensors. Only ``engine.face.align`` uses this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import WeightsError, lazy_import

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2", "face detection")

DET_SIZE = (512, 512)  # the release: face_analysis_wrapper.prepare(det_size=(512, 512))
DET_THRESH = 0.1  # the release's CropConfig.det_thresh (InsightFace's own default is 0.5)
NMS_THRESH = 0.4


def _session(path: Path, providers: list[str] | None):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's load errors are all "not a usable model"
        kind = type(err).__name__
        raise WeightsError(
            f"face model {path} is not a usable ONNX model ({kind}): copy it again from the release's "
            "pretrained_weights/facecropper/, or remove facecropper/ to use the built-in detector"
        ) from None


class Detector:
    """SCRFD face detector: boxes ``[x0, y0, x1, y1, score]`` and 5 keypoints, in image pixels."""

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # InsightFace's router: >= 5 outputs is a detector; 6/9 -> 3 strides x 2 anchors, 10/15 -> 5 x 1
        layouts = {6: ([8, 16, 32], 2, False), 9: ([8, 16, 32], 2, True),
                   10: ([8, 16, 32, 64, 128], 1, False), 15: ([8, 16, 32, 64, 128], 1, True)}
        if len(self.output_names) not in layouts:
            raise WeightsError(
                f"face model {self.path} is not InsightFace's detector ({len(self.output_names)} outputs): "
                "use det_10g.onnx from the release's facecropper/insightface/models/buffalo_l/"
            )
        self.strides, self.num_anchors, self.use_kps = layouts[len(self.output_names)]
        fixed = inp.shape[2:4]
        self.input_size = tuple(fixed[::-1]) if all(isinstance(d, int) for d in fixed) else DET_SIZE

    def __call__(self, image_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        h, w = image_rgb.shape[:2]
        in_w, in_h = self.input_size
        # letterbox into the top-left of the input canvas, aspect kept (InsightFace's detect)
        if h / w > in_h / in_w:
            new_h, new_w = in_h, int(in_h / (h / w))
        else:
            new_w, new_h = in_w, int(in_w * (h / w))
        det_scale = new_h / h
        canvas = np.zeros((in_h, in_w, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(image_rgb, (new_w, new_h))
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = self.session.run(self.output_names, {self.input_name: blob})

        fmc = len(self.strides)
        scores, boxes, kpss = [], [], []
        for i, stride in enumerate(self.strides):
            gh, gw = in_h // stride, in_w // stride
            centers = (np.stack(list(np.mgrid[:gh, :gw][::-1]), axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            if self.num_anchors > 1:
                centers = np.repeat(centers, self.num_anchors, axis=0)
            score = np.asarray(outs[i]).reshape(-1)
            dist = np.asarray(outs[i + fmc]).reshape(-1, 4) * stride
            keep = score >= DET_THRESH
            c = centers[keep]
            d = dist[keep]
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            scores.append(score[keep])
            if self.use_kps:
                k = np.asarray(outs[i + 2 * fmc]).reshape(-1, 10)[keep] * stride
                kpss.append(k.reshape(-1, 5, 2) + c[:, None, :])
        score = np.concatenate(scores)
        order = np.argsort(-score, kind="stable")
        det = np.concatenate([np.concatenate(boxes) / det_scale, score[:, None]], axis=1)[order].astype(np.float32)
        kept = _nms(det, NMS_THRESH)
        kps = (np.concatenate(kpss) / det_scale)[order][kept] if self.use_kps else None
        return det[kept], kps


def _nms(dets: np.ndarray, thresh: float) -> list[int]:
    """Greedy NMS on score-sorted boxes, with InsightFace's +1 pixel area convention."""
    x0, y0, x1, y1 = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3]
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.arange(len(dets))
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = iw * ih
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return keep


class Landmarks106:
    """InsightFace's 2d106det: 106 (x, y) points for a face box, in image pixels."""

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, providers)
        inp = self.session.get_inputs()[0]
        outs = self.session.get_outputs()
        if len(outs) != 1 or list(inp.shape[2:4]) != [192, 192]:
            raise WeightsError(
                f"face model {self.path} is not InsightFace's 106-point landmark model: use 2d106det.onnx "
                "from the release's facecropper/insightface/models/buffalo_l/"
            )
        self.input_name, self.output_name, self.size = inp.name, outs[0].name, 192
        self.mean, self.std = _landmark_normalization(self.path)

    def __call__(self, image_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        scale = self.size / (max(x1 - x0, y1 - y0) * 1.5)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        # InsightFace's face_align.transform with rotation 0: scale about the box centre, centre the result
        m = np.array([[scale, 0, self.size / 2 - cx * scale], [0, scale, self.size / 2 - cy * scale]])
        patch = cv2.warpAffine(image_rgb, m, (self.size, self.size), borderValue=0.0)
        blob = ((patch.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)[None]
        pred = np.asarray(self.session.run([self.output_name], {self.input_name: blob})[0][0]).reshape(-1, 2)
        pred = pred[-106:].astype(np.float64)
        pred = (pred + 1) * (self.size // 2)
        inv = cv2.invertAffineTransform(m)
        return pred @ inv[:, :2].T + inv[:, 2]


def _landmark_normalization(path: Path) -> tuple[float, float]:
    """InsightFace's rule: a graph that subtracts and multiplies in its first nodes takes raw pixels."""
    import onnx

    try:
        nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    except Exception:  # noqa: BLE001 - the session already opened it; fall back to the common case
        return 127.5, 128.0
    sub = any(n.name.startswith(("Sub", "_minus")) for n in nodes)
    mul = any(n.name.startswith(("Mul", "_mul")) for n in nodes)
    if any(i < 3 and n.name == "bn_data" for i, n in enumerate(nodes)):
        sub = mul = True
    return (0.0, 1.0) if sub and mul else (127.5, 128.0)


class InsightFace:
    """Detector + 106-point landmarks from a located facecropper/ (see ``engine.models.weights.locate_facecropper``)."""

    def __init__(self, paths: dict[str, Path], providers: list[str] | None = None) -> None:
        self.detector = Detector(paths["detector"], providers)
        self.landmarks = Landmarks106(paths["landmark_106"], providers)

    def detect(self, image_rgb: np.ndarray) -> np.ndarray:
        """``[N, 5]`` boxes with scores."""
        return self.detector(image_rgb)[0]
