"""PairDataset over prepared data: sample contents, flips, per-epoch pair draws, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from casd.data import pose
from casd.data.images import LIP_TO_REGION
from casd.data.tables import read_pairs
from casd.data.dataset import EpochPairSampler, PairBatch, PairDataset, flip_keypoints
from casd.errors import DataError
from helpers import write_prepared

# left/right joint pairs by name, to check the flip permutation independently of its table
MIRRORED = [(f"right_{part}", f"left_{part}") for part in
            ("shoulder", "elbow", "wrist", "hip", "knee", "ankle", "eye", "ear")]




@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_prepared(root)
    return root


def test_an_item_is_a_named_batch_of_one_pair(prepared):
    ds = PairDataset(prepared, "train", (32, 24))
    assert len(ds) == 3 * 3 * 2
    s = ds[0]
    assert isinstance(s, PairBatch) and len(s) == 1
    for image in (s.source, s.target):
        assert image.shape == (1, 3, 32, 24) and image.dtype == torch.float32
        assert -1.0 <= image.min() and image.max() <= 1.0
    for parsing in (s.source_parsing, s.target_parsing):
        assert parsing.shape == (1, 8, 32, 24)
        assert torch.equal(parsing.sum(1), torch.ones(1, 32, 24))  # one-hot
    assert s.source_keypoints.shape == (1, 18, 2) and s.target_pose is None
    src, dst = read_pairs(prepared / "split" / "pairs-train.csv")[0]
    assert (s.source_names, s.target_names) == ([src], [dst])
    keypoints = pose.load_keypoints(prepared / "pose" / "train.npz")
    assert torch.equal(s.target_keypoints[0], torch.from_numpy(keypoints[dst].astype(np.int64)))
    # image pixels come from the file (JPEG, so approximately)
    raw = np.asarray(Image.open(prepared / "resized" / "train" / src), dtype=np.float32) / 127.5 - 1
    assert torch.allclose(s.source[0].permute(1, 2, 0), torch.from_numpy(raw), atol=1e-6)
    lazy = PairDataset(prepared, "train", (32, 24), preload=False)[0]
    assert torch.equal(lazy.source, s.source) and torch.equal(lazy.target_parsing, s.target_parsing)
    # a DataLoader joins items in order; the target pose is exactly casd.data.pose's rendering, batched
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=PairBatch.collate)
    batch = next(iter(loader)).render_target_pose((32, 24), pose.PoseConfig())
    assert len(batch) == 3 and batch.source_names[0] == src and torch.equal(batch.source[:1], s.source)
    assert torch.equal(batch.target_pose, pose.pose_input(batch.target_keypoints, (32, 24)))
    assert torch.equal(batch.target[2], ds[2].target[0])


def test_flip_permutation_swaps_named_left_right_joints():
    names = pose.KEYPOINT_NAMES
    perm = pose.FLIP_PERMUTATION
    for right, left in MIRRORED:
        assert perm[names.index(right)] == names.index(left) and perm[names.index(left)] == names.index(right)
    for centre in ("nose", "neck"):
        assert perm[names.index(centre)] == names.index(centre)
    kp = torch.full((18, 2), -1, dtype=torch.long)
    kp[names.index("right_shoulder")] = torch.tensor([5, 2])
    kp[names.index("nose")] = torch.tensor([1, 10])
    flipped = flip_keypoints(kp, width=24)
    assert flipped[names.index("left_shoulder")].tolist() == [5, 21]   # x -> W-1-x, now called left
    assert flipped[names.index("right_shoulder")].tolist() == [-1, -1]  # the missing left one moved over
    assert flipped[names.index("nose")].tolist() == [1, 13]
    assert torch.equal(flip_keypoints(flipped, 24), kp)  # an involution


def test_merged_regions_have_no_left_right():
    # mirroring swaps LIP's left/right labels; after the merge they must be the same region,
    # which is why the dataset flips parsing maps by pixels only
    lip_flip = np.arange(20)
    lip_flip[[14, 15, 16, 17, 18, 19]] = [15, 14, 17, 16, 19, 18]   # left/right arm, leg, shoe
    assert np.array_equal(LIP_TO_REGION[lip_flip], LIP_TO_REGION)


def test_flipped_sample_is_consistent(prepared):
    ds = PairDataset(prepared, "train", (32, 24))
    plain, flipped = ds[(4, False)], ds[(4, True)]
    for side in ("source", "target"):
        assert torch.equal(getattr(flipped, side), getattr(plain, side).flip(-1))
        assert torch.equal(getattr(flipped, f"{side}_parsing"), getattr(plain, f"{side}_parsing").flip(-1))
        k, kf = getattr(plain, f"{side}_keypoints")[0], getattr(flipped, f"{side}_keypoints")[0]
        names = pose.KEYPOINT_NAMES
        for right, left in MIRRORED:
            r, l_ = names.index(right), names.index(left)
            if (k[r] >= 0).all():
                assert kf[l_].tolist() == [k[r, 0].item(), 23 - k[r, 1].item()]
        # the arm region (drawn on the person's left side only) moved with the wrist, which is now
        # called the right wrist: labels and joints still agree after the flip
        wrist = kf[names.index("right_wrist")]
        assert getattr(flipped, f"{side}_parsing")[0, 6, wrist[0], wrist[1]] == 1
        # pose maps rendered from the flipped keypoints are the mirrored maps, channels swapped
        bp, bpf = pose.pose_input(k[None], (32, 24))[0], pose.pose_input(kf[None], (32, 24))[0]
        perm = torch.as_tensor(pose.FLIP_PERMUTATION)
        assert torch.equal(bpf[:18], bp[:18].flip(-1)[perm])


def test_epoch_pairs_are_seeded_per_epoch_and_rank():
    a = EpochPairSampler(100, 40, seed=3, flip=True)
    b = EpochPairSampler(100, 40, seed=3, flip=True)
    a.set_epoch(2)
    b.set_epoch(2)
    first = list(a)
    assert first == list(b) and len(first) == 40
    assert any(f for _, f in first) and not all(f for _, f in first)
    b.set_epoch(3)
    assert list(b) != first
    b.set_epoch(2, start=15)
    assert list(b) == first[15:] and len(b) == 25
    # two ranks split the epoch and draw different pairs
    r0, r1 = (EpochPairSampler(100, 40, seed=3, rank=r, world_size=2) for r in (0, 1))
    assert len(list(r0)) == 20 and list(r0) != list(r1)
    # with replacement: 4000 draws of 10 pairs repeat
    draws = [i for i, _ in EpochPairSampler(10, 4000)]
    assert len(draws) == 4000 and set(draws) == set(range(10))
    assert not any(f for _, f in EpochPairSampler(10, 50, flip=False))


def test_bad_inputs_name_the_file(prepared, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(prepared, root)
    name = sorted((root / "resized" / "train").iterdir())[0]
    name.unlink()
    with pytest.raises(DataError, match=r"pairs-train.csv, row \d+: .*not found"):
        PairDataset(root, "train", (32, 24))
    with pytest.raises(DataError, match="image is 32x24, expected 64x44"):
        PairDataset(prepared, "train", (64, 44))
    with pytest.raises(DataError, match="pairs file not found"):
        PairDataset(tmp_path / "nothing", "train", (32, 24))
