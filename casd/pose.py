"""Keypoints: the ``pose`` stage (annotation CSV -> compact npz) and the batched pose / limb maps.

Stage output ``data/pose/{train,test}.npz``: ``names`` (N,) str and
``keypoints`` (N, 18, 2) int16, (y, x) in the ``data.image_size`` frame,
-1 for a missing joint. 72 bytes of keypoints per image instead of upstream's
dense H x W x 18 ``.npy`` maps (811 KB each at 256x176); the maps are rendered
on the fly by :func:`pose_input`, batched in torch.

Coordinate rule (:func:`casd.formats.rescale_keypoints`; annotation frame
(H_ann, W_ann) -> image frame (H, W), crop border c in annotation pixels,
W_c = W_ann - 2c)::

    y' = round((y + 0.5) * H / H_ann - 0.5)
    x' = round((x - c + 0.5) * W / W_c - 0.5)

i.e. pixel centres map onto pixel centres, exactly as the image resampling
does; results are clipped into [0, H-1] x [0, W-1]. A joint that the crop
cuts away (x < c or x >= W_ann - c) becomes missing; -1 stays -1. With equal
frames and no crop the rule is the identity.

Maps (upstream ``util/util.py`` semantics, 0-based OpenPose-COCO indices):

- :func:`pose_maps` ``onehot``: a single 1 at each joint pixel (what upstream's
  uint8 Gaussian truncates to; the released weights were trained on it);
  ``gaussian``: exp(-d^2 / (2 sigma^2)) as float. Missing joint: all zeros.
- :func:`limb_maps`: per limb (a, b) in :data:`LIMBS`, exp(-0.1 * distance from
  the pixel to the infinite line through the two joints); zeros where a joint
  is missing. Degenerate limb (both joints on the same pixel): the line is
  undefined, so the distance to that point is used instead (upstream writes
  one scalar over the whole map there, an accident of its code).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from casd.config import from_dict, load_params
from casd.errors import ConfigError, DataError
from casd.fileio import atomic_path
from casd.formats import (NUM_KEYPOINTS, PHASES, POSE_DIR, REPORTS_DIR, DataConfig, ErrorPolicy, annotation_file,
                          read_annotations, rescale_keypoints)

KEYPOINT_NAMES = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                  "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
                  "right_eye", "left_eye", "right_ear", "left_ear")
# Upstream labels index 14..17 as Leye, Reye, Lear, Rear; OpenPose-COCO's own order is REye, LEye, REar, LEar.
# Either way the pairs swap under a flip, which is all the project relies on.

# Limb (keypoint index pairs) of the 12 limb-distance channels, upstream LIMB_SEQ_DIS.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13))
NUM_LIMBS = len(LIMBS)
POSE_CHANNELS = NUM_KEYPOINTS + NUM_LIMBS  # 30: the generator's pose input

# Keypoint index of the mirrored joint under a horizontal flip (right <-> left).
FLIP_PERMUTATION = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)

LIMB_DECAY = 0.1  # upstream: exp(-0.1 * distance)


@dataclasses.dataclass
class PoseConfig:
    """The ``pose:`` section: how maps are rendered (loader) and whether the stage also exports upstream .npy."""

    mode: str = "onehot"
    sigma: float = 6.0
    export_upstream_npy: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("onehot", "gaussian"):
            raise ConfigError(f"params.yaml [pose]: mode must be onehot or gaussian, got {self.mode!r}")
        if not float(self.sigma) > 0:
            raise ConfigError(f"params.yaml [pose]: sigma must be positive, got {self.sigma!r}")
        self.sigma = float(self.sigma)


# --------------------------------------------------------------------------- coordinates

def load_keypoints(npz_path: str | Path) -> dict[str, np.ndarray]:
    """``data/pose/<phase>.npz`` -> {flat name: int16 (18, 2) (y, x), -1 missing}."""
    npz_path = Path(npz_path)
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            names, keypoints = data["names"], data["keypoints"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(npz_path, f"not a keypoint file ({e})") from None
    if keypoints.shape != (len(names), NUM_KEYPOINTS, 2):
        raise DataError(npz_path, f"keypoints shape {keypoints.shape}, expected ({len(names)}, 18, 2)")
    return {str(n): k for n, k in zip(names, keypoints)}


# --------------------------------------------------------------------------- maps

def _grid(size: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    ys = torch.arange(h, device=device, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, 1, w)
    return ys, xs


def _present(keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, K] bool: joint given and inside the map (an off-map joint has no pixel, as upstream)."""
    y, x = keypoints[..., 0], keypoints[..., 1]
    return (y >= 0) & (x >= 0) & (y < size[0]) & (x < size[1])


def pose_maps(keypoints: torch.Tensor, size: tuple[int, int], mode: str = "onehot",
              sigma: float = 6.0) -> torch.Tensor:
    """Keypoints [B, 18, 2] (y, x; -1 missing) -> joint maps [B, 18, H, W] float32.

    onehot: 1.0 at the joint pixel, 0 elsewhere. gaussian: exp(-d^2 / (2 sigma^2)).
    """
    if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be [B, K, 2], got {tuple(keypoints.shape)}")
    h, w = size
    b, k, _ = keypoints.shape
    present = _present(keypoints, size)
    if mode == "onehot":
        maps = torch.zeros(b * k, h * w, dtype=torch.float32, device=keypoints.device)
        flat = (keypoints[..., 0].long() * w + keypoints[..., 1].long()).reshape(-1)
        rows = torch.nonzero(present.reshape(-1)).squeeze(1)
        maps[rows, flat[rows]] = 1.0
        return maps.view(b, k, h, w)
    if mode == "gaussian":
        ys, xs = _grid(size, keypoints.device)
        kp = keypoints.to(torch.float32)
        d2 = (ys - kp[..., 0, None, None]) ** 2 + (xs - kp[..., 1, None, None]) ** 2
        return torch.exp(d2 * (-0.5 / sigma ** 2)) * present[..., None, None]
    raise ValueError(f"pose map mode must be onehot or gaussian, got {mode!r}")


def limb_maps(keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Keypoints [B, 18, 2] (y, x; -1 missing) -> limb distance maps [B, 12, H, W] float32.

    value = exp(-0.1 * distance from the pixel to the line through the limb's two joints).
    """
    ys, xs = _grid(size, keypoints.device)
    a_index = torch.tensor([a for a, _ in LIMBS], device=keypoints.device)
    b_index = torch.tensor([b for _, b in LIMBS], device=keypoints.device)
    kp = keypoints.to(torch.float32)
    present = _present(keypoints, size)
    y1, x1 = kp[:, a_index, 0, None, None], kp[:, a_index, 1, None, None]  # [B, 12, 1, 1]
    y2, x2 = kp[:, b_index, 0, None, None], kp[:, b_index, 1, None, None]
    dy, dx = y2 - y1, x2 - x1
    length = torch.sqrt(dy * dy + dx * dx)
    degenerate = length == 0
    # |cross((p - p1), (p2 - p1))| / |p2 - p1| is the distance to the infinite line.
    line_distance = torch.abs((xs - x1) * dy - (ys - y1) * dx) / torch.where(degenerate, 1.0, length)
    point_distance = torch.sqrt((ys - y1) ** 2 + (xs - x1) ** 2)
    distance = torch.where(degenerate, point_distance, line_distance)
    valid = (present[:, a_index] & present[:, b_index])[..., None, None]
    return torch.exp(-LIMB_DECAY * distance) * valid


def pose_input(keypoints: torch.Tensor, size: tuple[int, int], mode: str = "onehot",
               sigma: float = 6.0) -> torch.Tensor:
    """The generator's pose input: cat(pose_maps, limb_maps) [B, 30, H, W]."""
    return torch.cat([pose_maps(keypoints, size, mode, sigma), limb_maps(keypoints, size)], dim=1)


# --------------------------------------------------------------------------- stage

def extract_pose(data: DataConfig, pose: PoseConfig, raw_dir: str | Path | None = None,
                 out_dir: str | Path = POSE_DIR, reports_dir: str | Path = REPORTS_DIR) -> dict[str, int]:
    """Annotation CSVs of ``raw_dir`` -> ``<out_dir>/{train,test}.npz``; returns {phase: images written}.

    Bad rows (wrong separator or columns, lists of the wrong length, non-integer
    values, coordinates outside the annotation frame, unsafe names) raise a
    :class:`DataError`, or are skipped and listed in ``reports/skipped-pose.csv``
    with ``data.on_error: skip``. With ``pose.export_upstream_npy`` each image
    also gets ``<out_dir>/<phase>K/<name>.npy`` (H x W x 18 uint8 one-hot), the
    dense format upstream's loader reads.
    """
    raw_dir = Path(raw_dir) if raw_dir is not None else data.raw_dir()
    out_dir = Path(out_dir)
    policy = ErrorPolicy(data.on_error)
    counts: dict[str, int] = {}
    for phase in PHASES:
        annotations = read_annotations(raw_dir / annotation_file(phase), frame=data.annotation_size, policy=policy)
        names = sorted(annotations)
        stacked = np.stack([annotations[n] for n in names]) if names else np.zeros((0, NUM_KEYPOINTS, 2), np.int64)
        keypoints = rescale_keypoints(stacked, data.annotation_size, data.image_size, data.crop_border)
        with atomic_path(out_dir / f"{phase}.npz") as tmp:
            np.savez_compressed(tmp, names=np.array(names, dtype=str), keypoints=keypoints)
        if pose.export_upstream_npy:
            export_upstream_npy(names, keypoints, data.image_size, out_dir / f"{phase}K")
        counts[phase] = len(names)
    policy.write_report("pose", reports_dir)
    return counts


def export_upstream_npy(names: list[str], keypoints: np.ndarray, size: tuple[int, int], out_dir: Path,
                        batch: int = 64) -> None:
    """Write upstream's ``<name>.npy`` dense one-hot maps (H x W x 18 uint8), batched."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for start in tqdm(range(0, len(names), batch), desc=f"upstream npy {out_dir.name}", unit="batch",
                      disable=None):
        maps = pose_maps(torch.from_numpy(keypoints[start:start + batch].astype(np.int64)), size, "onehot")
        dense = maps.permute(0, 2, 3, 1).to(torch.uint8).numpy()
        for name, array in zip(names[start:start + batch], dense):
            with atomic_path(out_dir / f"{name}.npy") as tmp:
                np.save(tmp, array)


def run_from_params(params_path: str | Path = "params.yaml") -> dict[str, int]:
    """The ``pose`` stage: params.yaml -> :func:`extract_pose`."""
    params = load_params(params_path)
    data = from_dict(DataConfig, params.get("data"), "data")
    pose = from_dict(PoseConfig, params.get("pose"), "pose")
    counts = extract_pose(data, pose)
    print(f"pose: {counts.get('train', 0)} train, {counts.get('test', 0)} test keypoint sets -> {POSE_DIR}")
    return counts


def cli_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="casd pose", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    run_from_params(args.params)
