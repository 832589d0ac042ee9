"""Images and parsing maps: the merged region table, LIP-20 -> regions, and the image / parsing-map readers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from casd.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

REGION_NAMES = ("background", "pants", "hair", "glove", "face", "upper_clothes", "arms", "legs")
NUM_REGIONS = len(REGION_NAMES)

# LIP-20 id -> merged region id (the style encoder's 8 regions; reference README section 2).
LIP_TO_REGION = np.array([0,   # background
                          2,   # hat -> hair
                          2,   # hair
                          3,   # glove
                          4,   # sunglasses -> face
                          5,   # upper clothes
                          5,   # dress
                          5,   # coat
                          7,   # socks -> legs
                          1,   # pants
                          5,   # jumpsuits
                          5,   # scarf
                          1,   # skirt -> pants
                          4,   # face
                          6,   # left arm
                          6,   # right arm
                          7,   # left leg
                          7,   # right leg
                          7,   # left shoe
                          7],  # right shoe
                         dtype=np.uint8)

def merge_parsing(lip: np.ndarray) -> np.ndarray:
    """LIP-20 label map (any shape, ids 0..19) -> merged region ids 0..7, one table lookup."""
    return LIP_TO_REGION[lip]


def parsing_onehot(ids: "torch.Tensor") -> "torch.Tensor":
    """Merged region ids [B, H, W] (integer) -> float one-hot [B, 8, H, W]."""
    import torch
    if ids.dtype.is_floating_point or ids.dim() != 3:
        raise ValueError(f"parsing_onehot expects integer ids [B, H, W], got {tuple(ids.shape)} {ids.dtype}")
    return torch.nn.functional.one_hot(ids.long(), NUM_REGIONS).permute(0, 3, 1, 2).float()


def _resized(img: Image.Image, path: Path, size: tuple[int, int] | None, resample: Image.Resampling | None,
             what: str) -> Image.Image:
    if size is None or img.size == (size[1], size[0]):
        return img
    if resample is None:
        raise DataError(path, f"{what} is {img.height}x{img.width}, expected {size[0]}x{size[1]} (data.image_size); "
                              "rerun the data stages")
    return img.resize((size[1], size[0]), resample)


def read_image(path: str | Path, size: tuple[int, int] | None = None,
               resample: Image.Resampling | None = None) -> np.ndarray:
    """Image file -> RGB uint8 (H, W, 3). ``size`` (H, W): the size it must have, or is resized to with the
    filter ``resample`` when given."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return np.array(_resized(img.convert("RGB"), path, size, resample, "image"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(path, f"cannot read image ({e})") from None


def read_regions(path: str | Path, size: tuple[int, int] | None = None, nearest_resize: bool = False) -> np.ndarray:
    """PNG of merged region ids -> uint8 (H, W) in 0..7. ``size``: the size it must have, or (with
    ``nearest_resize``) is resized to, nearest neighbour (ids are labels, never blended)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(path, f"parsing must be a single-channel PNG of region ids, got mode {img.mode}")
            ids = np.asarray(_resized(img, path, size, Image.Resampling.NEAREST if nearest_resize else None, "parsing map"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(path, f"cannot read parsing map ({e})") from None
    if ids.size and (int(ids.max()) >= NUM_REGIONS or int(ids.min()) < 0):
        raise DataError(path, f"region id {int(ids.max())} outside the merged ids 0..{NUM_REGIONS - 1} "
                              f"({', '.join(REGION_NAMES)}); LIP-20 maps must be merged first (the segment stage)")
    return ids.astype(np.uint8)
