"""Pictures for people: uint8 conversion, skeletons, strips, grids, predicted-parsing colouring.

Every function here works on uint8 ``[H, W, 3]`` arrays (what is saved), except
:func:`to_uint8`, which makes them from the generator's ``[-1, 1]`` tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from casd.data.images import NUM_REGIONS
from casd.data.pose import LIMBS
from casd.fileio import atomic_path

# One colour per limb (casd.data.pose.LIMBS order, OpenPose's rainbow); joints are drawn white on top.
LIMB_COLOURS = np.array([(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
                         (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255)],
                        dtype=np.uint8)
JOINT_COLOUR = (255, 255, 255)

# One colour per merged region (casd.data.layout.REGION_NAMES order): background, pants, hair, glove, face,
# upper_clothes, arms, legs.
REGION_COLOURS = np.array([(0, 0, 0), (0, 0, 200), (130, 60, 10), (255, 255, 0), (255, 190, 150), (220, 0, 0),
                           (0, 200, 200), (0, 160, 0)], dtype=np.uint8)

CAPTION_HEIGHT = 14  # pixels of the caption band above a labelled strip

assert len(LIMB_COLOURS) == len(LIMBS) and len(REGION_COLOURS) == NUM_REGIONS


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3] (rounded to nearest: how pictures are stored)."""
    images = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return images.movedim(-3, -1).cpu().numpy()


def draw_skeleton(keypoints: np.ndarray | torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """Keypoints [18, 2] (y, x; negative = missing) -> skeleton on black, uint8 [H, W, 3]."""
    h, w = int(size[0]), int(size[1])
    kp = np.asarray(keypoints.cpu() if isinstance(keypoints, torch.Tensor) else keypoints).astype(np.int64)
    present = (kp >= 0).all(axis=1)
    canvas = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(min(h, w) / 40))
    for (a, b), colour in zip(LIMBS, LIMB_COLOURS.tolist()):
        if present[a] and present[b]:
            draw.line([(kp[a, 1], kp[a, 0]), (kp[b, 1], kp[b, 0])], fill=tuple(colour), width=line)
    r = max(0.5, line / 2)
    for y, x in kp[present].tolist():
        draw.ellipse([x - r, y - r, x + r, y + r], fill=JOINT_COLOUR)
    return np.asarray(canvas)


def parsing_colours(region_ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """Region ids [..., H, W] in 0..7 -> uint8 [..., H, W, 3] in the fixed :data:`REGION_COLOURS`."""
    ids = np.asarray(region_ids.cpu() if isinstance(region_ids, torch.Tensor) else region_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= NUM_REGIONS):
        raise ValueError(f"region ids must lie in 0..{NUM_REGIONS - 1}, got {ids.min()}..{ids.max()}")
    return REGION_COLOURS[ids.astype(np.int64)]


def make_strip(panels: Sequence[np.ndarray], gap: int = 0, scale: int = 1,
               labels: Sequence[str] | None = None) -> np.ndarray:
    """uint8 panels [H, W, 3] side by side, ``gap`` white columns between -> uint8 [H', W', 3].

    ``scale`` > 1 enlarges every panel (nearest neighbour, for small images);
    ``labels`` (one per panel) adds a :data:`CAPTION_HEIGHT` caption band above.
    """
    pieces: list[np.ndarray] = []
    for i, panel in enumerate(panels):
        if scale > 1:
            panel = panel.repeat(scale, axis=0).repeat(scale, axis=1)
        if i and gap:
            pieces.append(np.full((panel.shape[0], gap, 3), 255, np.uint8))
        pieces.append(panel)
    strip = np.concatenate(pieces, axis=1)
    if not labels:
        return strip
    band = Image.new("RGB", (strip.shape[1], CAPTION_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    x = 0
    for panel, label in zip(panels, labels):
        draw.text((x + 2, 1), label, fill=(0, 0, 0))
        x += panel.shape[1] * scale + gap
    return np.concatenate([np.asarray(band), strip], axis=0)


def make_grid(rows: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
    """uint8 rows [h_i, w_i, 3] stacked top to bottom, narrower ones padded white on the right, ``gap``
    white rows between -> uint8 [sum h + gaps, max w, 3]."""
    width = max(r.shape[1] for r in rows)
    pieces: list[np.ndarray] = []
    for i, row in enumerate(rows):
        if i and gap:
            pieces.append(np.full((gap, width, 3), 255, np.uint8))
        pieces.append(np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255))
    return np.concatenate(pieces, axis=0)


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """uint8 [H, W, 3] (or [H, W] ids) -> PNG at ``path``, written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return Path(path)
