"""casd.visuals: uint8 conversion, skeletons, strips, grids, parsing colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from casd import visuals
from casd.data.pose import LIMBS


def test_to_uint8_rounds_and_keeps_leading_dims():
    images = torch.tensor([-1.0, -0.999, 0.0, 1.0, 2.0]).view(1, 1, 1, 5).expand(2, 3, 1, 5)
    out = visuals.to_uint8(images)
    assert out.shape == (2, 1, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds to even, clamped above 1
    assert visuals.to_uint8(images[0]).shape == (1, 5, 3)


def test_skeleton_draws_limbs_in_the_palette_and_skips_missing_joints():
    keypoints = np.full((18, 2), -1)
    a, b = LIMBS[0]
    keypoints[a], keypoints[b] = (10, 5), (10, 35)  # a horizontal limb
    picture = visuals.draw_skeleton(keypoints, (64, 44))
    assert picture.shape == (64, 44, 3)
    assert tuple(picture[10, 20]) == tuple(visuals.LIMB_COLOURS[0])
    assert tuple(picture[10, 5]) == visuals.JOINT_COLOUR
    assert picture[30:].max() == 0  # nothing else drawn
    assert visuals.draw_skeleton(np.full((18, 2), -1), (8, 8)).max() == 0


def test_parsing_colours_one_fixed_colour_per_region():
    ids = np.arange(8).reshape(2, 4)
    colours = visuals.parsing_colours(torch.from_numpy(ids))
    assert colours.shape == (2, 4, 3)
    assert len({tuple(c) for c in colours.reshape(-1, 3)}) == 8
    np.testing.assert_array_equal(colours[1, 1], visuals.REGION_COLOURS[5])
    with pytest.raises(ValueError, match="0..7"):
        visuals.parsing_colours(np.array([[8]]))


def test_grid_pads_narrow_rows_white():
    grid = visuals.make_grid([np.zeros((2, 3, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], gap=1)
    assert grid.shape == (7, 5, 3)
    assert (grid[:2, 3:] == 255).all() and (grid[2] == 255).all() and (grid[3:] == 0).all()
