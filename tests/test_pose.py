"""Pose maps, limb maps (against the formula computed directly) and the pose stage."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from casd.errors import DataError
from casd.data.config import DataConfig
from casd.data.layout import annotation_file, raw_file
from casd.data.tables import read_annotations, rescale_keypoints, write_annotations
from casd.data.pose import (FLIP_PERMUTATION, KEYPOINT_NAMES, LIMBS, PoseConfig, extract_pose, limb_maps, load_keypoints,
                       pose_input, pose_maps)

SIZE = (20, 14)


def keypoints(points: dict[int, tuple[int, int]]) -> torch.Tensor:
    kp = torch.full((18, 2), -1, dtype=torch.long)
    for index, (y, x) in points.items():
        kp[index] = torch.tensor([y, x])
    return kp


def test_onehot_peaks_exactly_at_joints_and_nowhere_else():
    a = keypoints({0: (0, 0), 1: (5, 7), 2: (19, 13), 7: (10, 3), 8: (5, 7)})
    b = keypoints({0: (3, 3), 17: (12, 1)})
    maps = pose_maps(torch.stack([a, b]), SIZE, "onehot")
    assert maps.shape == (2, 18, 20, 14) and maps.dtype == torch.float32
    for batch, kp in enumerate((a, b)):
        for joint in range(18):
            channel = maps[batch, joint]
            y, x = kp[joint].tolist()
            if y < 0:
                assert channel.sum() == 0
            else:
                assert channel[y, x] == 1 and channel.sum() == 1
                assert set(channel.unique().tolist()) == {0.0, 1.0}


def test_off_map_joint_has_no_peak():
    maps = pose_maps(keypoints({0: (20, 3), 1: (3, 14)})[None], SIZE)
    assert maps.sum() == 0


def test_gaussian_mode():
    sigma = 2.0
    maps = pose_maps(keypoints({4: (6, 5)})[None], SIZE, "gaussian", sigma)
    assert maps[0, 4, 6, 5] == pytest.approx(1.0)
    assert maps[0, 4, 9, 1].item() == pytest.approx(math.exp(-(3 ** 2 + 4 ** 2) / (2 * sigma ** 2)), rel=1e-5)
    assert maps[0, 3].sum() == 0
    with pytest.raises(ValueError, match="mode"):
        pose_maps(keypoints({})[None], SIZE, "disc")


def line_distance(p, a, b):
    """Distance from pixel p=(y, x) to the infinite line through a and b, written from the textbook formula
    |(x2-x1)(y1-y0) - (x1-x0)(y2-y1)| / |a-b| (independent of the implementation's cross-product form)."""
    (y0, x0), (y1, x1), (y2, x2) = p, a, b
    return abs((x2 - x1) * (y1 - y0) - (x1 - x0) * (y2 - y1)) / math.hypot(x2 - x1, y2 - y1)


def test_limb_maps_against_formula():
    kp = keypoints({1: (4, 6), 2: (4, 2), 3: (12, 1), 4: (18, 9), 5: (5, 10), 6: (5, 10), 8: (11, 5)})
    maps = limb_maps(kp[None], SIZE)
    assert maps.shape == (1, 12, 20, 14)
    pixels = [(0, 0), (4, 6), (19, 13), (7, 3), (15, 11), (10, 0)]
    for channel, (a, b) in enumerate(LIMBS):
        pa, pb = kp[a].tolist(), kp[b].tolist()
        for p in pixels:
            value = maps[0, channel, p[0], p[1]].item()
            if pa[0] < 0 or pb[0] < 0:
                assert value == 0, (a, b)
            elif pa == pb:  # degenerate limb: distance to the point
                assert value == pytest.approx(math.exp(-0.1 * math.dist(p, pa)), rel=1e-5)
            else:
                assert value == pytest.approx(math.exp(-0.1 * line_distance(p, pa, pb)), rel=1e-5), (a, b, p)
    # every pixel on the line through neck (4, 6) and right shoulder (4, 2) has value 1, as far as the map goes
    assert torch.allclose(maps[0, 0, 4], torch.ones(14))
    # channels with a missing joint are entirely zero: limbs (8, 9), (9, 10), (1, 11), (11, 12), (12, 13)
    for channel in (7, 8, 9, 10, 11):
        assert maps[0, channel].abs().sum() == 0


def test_limb_maps_match_upstream_formula_on_whole_map():
    # upstream: A = y2 - y1, B = x1 - x2, C = (y1 - y2) x1 + (x2 - x1) y1, d = |A x + B y + C| / sqrt(A^2 + B^2)
    kp = keypoints({1: (3, 4), 2: (15, 11)})
    ys, xs = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]), indexing="ij")
    (y1, x1), (y2, x2) = (3, 4), (15, 11)
    big_a, big_b, big_c = y2 - y1, x1 - x2, (y1 - y2) * x1 + (x2 - x1) * y1
    expected = np.exp(-0.1 * np.abs(big_a * xs + big_b * ys + big_c) / np.sqrt(big_a ** 2 + big_b ** 2))
    assert np.allclose(limb_maps(kp[None], SIZE)[0, 0].numpy(), expected, atol=1e-6)


def test_pose_input_batches_and_concatenates():
    batch = torch.stack([keypoints({1: (4, 6), 2: (4, 2)}), keypoints({1: (9, 9), 5: (2, 2)})])
    out = pose_input(batch, SIZE)
    assert out.shape == (2, 30, 20, 14)
    assert torch.equal(out[:, :18], pose_maps(batch, SIZE)) and torch.equal(out[:, 18:], limb_maps(batch, SIZE))
    assert torch.equal(out[1:], pose_input(batch[1:], SIZE))  # no cross-talk between samples


def test_flip_permutation_is_an_involution_on_named_sides():
    perm = np.array(FLIP_PERMUTATION)
    assert np.array_equal(perm[perm], np.arange(18))
    for index, name in enumerate(KEYPOINT_NAMES):
        mirrored = KEYPOINT_NAMES[perm[index]]
        assert mirrored == name.replace("right", "#").replace("left", "right").replace("#", "left")


# --------------------------------------------------------------------------- stage

def test_pose_stage_on_tiny_set(tiny_prepared, tiny_data_config):
    raw = tiny_prepared / "raw"
    for phase in ("train", "test"):
        stored = load_keypoints(tiny_prepared / "pose" / f"{phase}.npz")
        images = sorted(p.name for p in (tiny_prepared / "split" / phase).glob("*.jpg"))
        assert sorted(stored) == images
        annotations = read_annotations(raw / f"fashion-resize-annotation-{phase}.csv")
        for name, kp in stored.items():
            assert kp.dtype == np.int16 and kp.shape == (18, 2)
            expected = rescale_keypoints(annotations[name], tiny_data_config.annotation_size,
                                         tiny_data_config.image_size)
            assert np.array_equal(kp, expected)
            present = kp[:, 0] >= 0
            assert (kp[present, 0] < 64).all() and (kp[present, 1] < 44).all()
    all_kp = np.stack(list(load_keypoints(tiny_prepared / "pose" / "train.npz").values()))
    assert (all_kp == -1).any() and (all_kp >= 0).mean() > 0.6  # some joints missing, most present


def split_of(raw: Path, split_dir: Path) -> Path:
    """The split stage's image folders for the images annotated in ``raw`` (empty files: pose reads names)."""
    for phase in ("train", "test"):
        (split_dir / phase).mkdir(parents=True, exist_ok=True)
        for name in read_annotations(raw_file(raw, annotation_file(phase))):
            (split_dir / phase / name).touch()
    return split_dir


def test_pose_stage_exports_upstream_npy(tiny_prepared, tiny_raw, tiny_data_config, tmp_path):
    counts = extract_pose(tiny_data_config, PoseConfig(export_upstream_npy=True), tiny_raw, tmp_path / "pose",
                          tmp_path / "reports", tiny_prepared / "split")
    stored = load_keypoints(tmp_path / "pose" / "test.npz")
    assert counts["test"] == len(stored) > 0
    for name, kp in stored.items():
        dense = np.load(tmp_path / "pose" / "testK" / f"{name}.npy")
        assert dense.shape == (64, 44, 18) and dense.dtype == np.uint8
        for joint in range(18):
            if kp[joint, 0] < 0:
                assert dense[..., joint].sum() == 0
            else:
                assert dense[kp[joint, 0], kp[joint, 1], joint] == 1 and dense[..., joint].sum() == 1


def test_pose_stage_bad_rows_fail_or_skip(tiny_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    split_dir = split_of(raw, tmp_path / "split")
    path = raw / "fashion-resize-annotation-test.csv"
    lines = path.read_text().splitlines()
    name, ys, xs = lines[1].split(":")
    lines[1] = f"{name}:{ys}:[1, 2, 3]"
    path.write_text("\n".join(lines) + "\n")
    config = DataConfig(image_size=(64, 44), annotation_size=(128, 88), workers=1)
    with pytest.raises(DataError, match=r"annotation-test.csv, row 2: keypoints_x has 3 values, expected 18"):
        extract_pose(config, PoseConfig(), raw, tmp_path / "pose", tmp_path / "reports", split_dir)
    assert not (tmp_path / "pose" / "test.npz").exists()  # never a half-written output
    config.on_error = "skip"
    counts = extract_pose(config, PoseConfig(), raw, tmp_path / "pose", tmp_path / "reports", split_dir)
    assert name not in load_keypoints(tmp_path / "pose" / "test.npz") and counts["test"] == len(lines) - 2
    assert "keypoints_x has 3 values" in (tmp_path / "reports" / "skipped-pose.csv").read_text()


def test_pose_stage_wrong_separator(tiny_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    split_dir = split_of(raw, tmp_path / "split")
    path = raw / "fashion-resize-annotation-train.csv"
    path.write_text(path.read_text().replace(":", ";"))
    config = DataConfig(image_size=(64, 44), annotation_size=(128, 88), workers=1, on_error="skip")
    with pytest.raises(DataError, match=r"annotation-train.csv, row 1: wrong separator ';', expected ':'"):
        extract_pose(config, PoseConfig(), raw, tmp_path / "pose", tmp_path / "reports", split_dir)


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_pose_stage_fails_when_split_images_have_no_rows(tiny_prepared, tiny_raw, tmp_path, on_error):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    path = raw_file(raw, annotation_file("train"))
    path.write_text(path.read_text().splitlines()[0] + "\n")   # header only: no keypoints for any train image
    config = DataConfig(image_size=(64, 44), annotation_size=(128, 88), workers=1, on_error=on_error)
    problem = "has no valid keypoint row" if on_error == "fail" else "pose: none of the 12 train item"
    with pytest.raises(DataError, match=rf"annotation-train.csv: .*{problem}"):
        extract_pose(config, PoseConfig(), raw, tmp_path / "pose", tmp_path / "reports", tiny_prepared / "split")


def test_load_keypoints_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", names=np.array(["a.jpg"]), keypoints=np.zeros((1, 17, 2), np.int16))
    with pytest.raises(DataError, match="shape"):
        load_keypoints(tmp_path / "x.npz")
    (tmp_path / "y.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a keypoint file"):
        load_keypoints(tmp_path / "y.npz")


def test_pose_input_into_preallocated_buffer():
    batch = torch.stack([keypoints({1: (4, 6), 2: (4, 2), 3: (4, 2)}), keypoints({0: (1, 1)})])
    buffer = torch.full((2, 30, 20, 14), 7.0)  # stale values must all be overwritten
    out = pose_input(batch, SIZE, out=buffer)
    assert out.data_ptr() == buffer.data_ptr() and torch.equal(out, pose_input(batch, SIZE))
    gaussian = pose_input(batch, SIZE, PoseConfig("gaussian", 3.0), out=buffer)
    assert torch.allclose(gaussian[:, :18], pose_maps(batch, SIZE, "gaussian", 3.0))
    with pytest.raises(ValueError, match="out must be"):
        pose_input(batch, SIZE, out=torch.empty(2, 29, 20, 14))


def upstream_cords_to_map(cords: np.ndarray, size: tuple[int, int], sigma: float = 6.0) -> np.ndarray:
    """Upstream's tool/generate_pose_map_fashion.py rule: H x W x 18 uint8 Gaussians (truncated to one-hot)."""
    result = np.zeros(size + (len(cords),), dtype="uint8")
    yy, xx = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    for i, (y, x) in enumerate(cords):
        if y == -1 or x == -1:
            continue
        result[..., i] = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma ** 2))
    return result


def test_upstream_geometry_keypoints_as_is_give_upstream_256x256_maps(tmp_path):
    # annotation frame 256x176 (the release CSVs), upstream draws them unchanged on 256x256 maps
    rng = np.random.default_rng(0)
    keypoints = {f"fashionMENDenimid0000000{i}01_1front.jpg": np.stack(
        [rng.integers(0, 256, 18), rng.integers(0, 176, 18)], axis=1) for i in range(3)}
    for kp in keypoints.values():
        kp[rng.integers(0, 18, 3)] = -1
    keypoints["fashionMENDenimid0000000901_1front.jpg"] = np.array([[0, 0], [255, 175]] + [[-1, -1]] * 16)
    raw = tmp_path / "raw"
    raw.mkdir()
    for phase in ("train", "test"):
        write_annotations(raw / f"fasion-resize-annotation-{phase}.csv", keypoints)
    split_dir = split_of(raw, tmp_path / "split")
    config = DataConfig(image_size=(256, 256), annotation_size=(256, 176), keypoint_frame="as_is", workers=1)
    extract_pose(config, PoseConfig(mode="onehot", export_upstream_npy=True), raw, tmp_path / "pose",
                 tmp_path / "reports", split_dir)
    stored = load_keypoints(tmp_path / "pose" / "train.npz")
    for name, kp in keypoints.items():
        expected = upstream_cords_to_map(kp, (256, 256))
        assert np.array_equal(stored[name], kp)
        rendered = pose_maps(torch.from_numpy(stored[name][None].astype(np.int64)), (256, 256), "onehot")[0]
        assert np.array_equal(rendered.permute(1, 2, 0).to(torch.uint8).numpy(), expected)
        assert np.array_equal(np.load(tmp_path / "pose" / "trainK" / f"{name}.npy"), expected)
    rescaled = DataConfig(image_size=(256, 256), annotation_size=(256, 176), workers=1)
    extract_pose(rescaled, PoseConfig(), raw, tmp_path / "pose2", tmp_path / "reports", split_dir)
    other = load_keypoints(tmp_path / "pose2" / "train.npz")["fashionMENDenimid0000000901_1front.jpg"]
    assert other[1].tolist() == [255, 255]   # the default rescales to the image frame instead
