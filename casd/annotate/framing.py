"""Photo of any size and aspect -> the person framed at the dataset's aspect (256x176, H x W), centred on them.

The frame is centred on the detected person's box and is tall enough for the
box plus ``margin`` of its height above and below (or wide enough for its width
plus the same margin, for a wide box); its aspect is the output's. What falls
outside the photo is filled with white, DeepFashion's studio background.
Resampling is Lanczos (antialiased when shrinking).

Coordinates: continuous, a pixel i covering [i, i + 1); keypoints are pixel
indices (the centre of pixel i is i + 0.5 in continuous terms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

FRAME_SIZE = (256, 176)  # (H, W): the annotation frame of DeepFashion's CSVs
MARGIN = 0.05            # of the box height, above and below the person
FILL = (255, 255, 255)


@dataclass(frozen=True)
class Frame:
    """The photo region [left, left + W * step) x [top, top + H * step) that becomes the (H, W) output."""

    left: float
    top: float
    step: float  # photo pixels per output pixel
    size: tuple[int, int] = FRAME_SIZE

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        """Photo pixel positions (x, y) [..., 2] -> output pixel positions (x, y), as floats."""
        xy = np.asarray(xy, dtype=np.float64)
        return (xy + 0.5 - np.array([self.left, self.top])) / self.step - 0.5

    def to_photo(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_frame`."""
        xy = np.asarray(xy, dtype=np.float64)
        return (xy + 0.5) * self.step + np.array([self.left, self.top]) - 0.5


def frame_person(box: np.ndarray, size: tuple[int, int] = FRAME_SIZE, margin: float = MARGIN) -> Frame:
    """Person box (x0, y0, x1, y1) in the photo -> the :class:`Frame` centred on it."""
    x0, y0, x1, y1 = (float(v) for v in box)
    height = max(y1 - y0, (x1 - x0) * size[0] / size[1], 1.0) * (1 + 2 * margin)
    step = height / size[0]
    return Frame(left=(x0 + x1) / 2 - size[1] * step / 2, top=(y0 + y1) / 2 - height / 2, step=step, size=size)


def crop(photo: Image.Image, frame: Frame, fill: tuple[int, int, int] = FILL) -> np.ndarray:
    """The framed photo, uint8 RGB [H, W, 3]."""
    h, w = frame.size
    right, bottom = frame.left + w * frame.step, frame.top + h * frame.step
    pad_left, pad_top = max(0, math.ceil(-frame.left)), max(0, math.ceil(-frame.top))
    pad_right, pad_bottom = max(0, math.ceil(right - photo.width)), max(0, math.ceil(bottom - photo.height))
    if pad_left or pad_top or pad_right or pad_bottom:
        canvas = Image.new("RGB", (photo.width + pad_left + pad_right, photo.height + pad_top + pad_bottom), fill)
        canvas.paste(photo, (pad_left, pad_top))
        photo = canvas
    box = (frame.left + pad_left, frame.top + pad_top, right + pad_left, bottom + pad_top)
    return np.asarray(photo.resize((w, h), Image.LANCZOS, box=box), dtype=np.uint8)
