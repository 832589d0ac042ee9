"""Person detection and 18 OpenPose keypoints: RTMPose (rtmlib, onnxruntime) and the COCO-17 -> OpenPose-18 table.

The models are rtmlib's ONNX exports (YOLOX person detector, RTMPose body
estimator with COCO-17 output). rtmlib downloads a model when given a URL; here
it only ever gets local files that :mod:`casd.weights` located and checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from casd.errors import CasdError, DataError

# COCO-17 (mmpose / rtmlib output): 0 nose, 1 left eye, 2 right eye, 3 left ear, 4 right ear, 5 left shoulder,
# 6 right shoulder, 7 left elbow, 8 right elbow, 9 left wrist, 10 right wrist, 11 left hip, 12 right hip,
# 13 left knee, 14 right knee, 15 left ankle, 16 right ankle.
# OpenPose-18 (the annotation CSV): nose, neck, Rsho, Relb, Rwri, Lsho, Lelb, Lwri, Rhip, Rkne, Rank, Lhip, Lkne,
# Lank, then the eyes and ears as the CMU OpenPose COCO model orders them: Reye, Leye, Rear, Lear (rtmlib's
# ``convert_coco_to_openpose`` agrees). Index 1 (neck) has no COCO joint: -1 here, filled from the shoulders.
COCO_FOR_OPENPOSE = np.array([0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3])
NECK = 1
SHOULDERS = (5, 6)  # COCO left, right shoulder
DEFAULT_THRESHOLD = 0.3


def coco_to_openpose(keypoints_xy: np.ndarray, scores: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                     frame: tuple[int, int] | None = None) -> np.ndarray:
    """COCO-17 ``(x, y)`` [17, 2] + confidences [17] -> int (y, x) [18, 2] in OpenPose order, -1 missing.

    A joint is missing when its confidence is below ``threshold`` or (with
    ``frame`` = (H, W)) when its rounded position falls outside the frame. The
    neck is the midpoint of the two shoulders when both are kept, else missing.
    """
    xy = np.asarray(keypoints_xy, dtype=np.float64).reshape(17, 2)
    conf = np.asarray(scores, dtype=np.float64).reshape(17)
    yx = np.rint(xy[:, ::-1]).astype(np.int64)
    keep = (conf >= threshold) & np.isfinite(xy).all(axis=1)
    if frame is not None:
        keep &= (yx[:, 0] >= 0) & (yx[:, 0] < frame[0]) & (yx[:, 1] >= 0) & (yx[:, 1] < frame[1])
    out = np.full((18, 2), -1, dtype=np.int64)
    mapped = COCO_FOR_OPENPOSE >= 0
    source = COCO_FOR_OPENPOSE[mapped]
    out[mapped] = np.where(keep[source, None], yx[source], -1)
    if keep[list(SHOULDERS)].all():
        out[NECK] = np.rint(xy[list(SHOULDERS)].mean(axis=0)[::-1]).astype(np.int64)
    return out


def _rtmlib():
    try:
        import rtmlib
    except ImportError:
        raise CasdError("casd annotate needs rtmlib and onnxruntime: pip install 'casd[annotate]'") from None
    return rtmlib


def onnx_member(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """``path`` itself for an .onnx file; for an rtmlib zip release, its ``end2end.onnx`` unpacked into ``folder``."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return path
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.namelist() if m.endswith(".onnx")]
        if len(members) != 1:
            raise DataError(path, f"expected one .onnx model in the archive, found {len(members)}")
        target = Path(folder) / Path(members[0]).name
        target.write_bytes(archive.read(members[0]))
    return target


class PoseEstimator:
    """YOLOX person detector + RTMPose keypoints (COCO-17), on BGR uint8 images, through rtmlib.

    ``detector`` / ``pose``: local .onnx files or rtmlib's .zip releases.
    Input sizes are (W, H), as rtmlib takes them.
    """

    def __init__(self, detector: str | os.PathLike, pose: str | os.PathLike, device: str = "cpu",
                 detector_input_size: tuple[int, int] = (640, 640), pose_input_size: tuple[int, int] = (192, 256),
                 detection_threshold: float = 0.5):
        rtmlib = _rtmlib()
        for path in (detector, pose):
            if not Path(path).is_file():  # rtmlib would try to download anything that is not a file
                raise DataError(path, "model file not found")
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            self.detector = rtmlib.YOLOX(str(onnx_member(detector, tmp)), model_input_size=detector_input_size,
                                         score_thr=detection_threshold, backend="onnxruntime", device=device)
            self.pose = rtmlib.RTMPose(str(onnx_member(pose, tmp)), model_input_size=pose_input_size,
                                       backend="onnxruntime", device=device)

    def detect(self, image_bgr: np.ndarray) -> np.ndarray | None:
        """The largest detected person's box (x0, y0, x1, y1) in pixels, or None."""
        boxes = np.asarray(self.detector(image_bgr), dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return None
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[int(np.argmax(areas))]

    def keypoints(self, image_bgr: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """COCO-17 keypoints (x, y) [17, 2] and confidences [17] of the person in ``box``."""
        keypoints, scores = self.pose(image_bgr, bboxes=[list(map(float, box))])
        return keypoints[0], scores[0]
