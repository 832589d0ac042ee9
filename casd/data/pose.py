"""Keypoints: the ``pose`` stage (annotation CSV -> compact npz) and the batched keypoint and limb maps.

Stage output ``data/pose/{train,test}.npz``: ``names`` (N,) str and ``keypoints`` (N, 18, 2) int16,
(y, x) in the ``data.image_size`` frame (:func:`casd.data.layout.rescale_keypoints`, or as annotated with
``data.keypoint_frame: as_is``), -1 for a missing joint. Maps follow upstream's ``util/util.py``; a
limb whose two joints fall on one pixel uses the distance to that point (upstream: one scalar).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from casd.config import Checks
from casd.errors import DataError
from casd.fileio import atomic_path, remove_temp_files, sigterm_as_interrupt
from casd.data.config import DataConfig
from casd.data.inputs import ErrorPolicy, InputGuard, require_written
from casd.data.layout import PHASES, PREPARED, REPORTS_DIR, annotation_file, raw_file
from casd.data.tables import NUM_KEYPOINTS, read_annotations, rescale_keypoints

KEYPOINT_NAMES = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                  "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
                  "right_eye", "left_eye", "right_ear", "left_ear")
# Upstream labels index 14..17 as Leye, Reye, Lear, Rear; OpenPose-COCO's own order is REye, LEye, REar, LEar.
# Either way the pairs swap under a flip, which is all the project relies on.

# Limb (keypoint index pairs) of the 12 limb-distance channels, upstream LIMB_SEQ_DIS.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13))
NUM_LIMBS = len(LIMBS)

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
        checks = Checks("pose")
        checks.choice("mode", self.mode, ("onehot", "gaussian"))
        if checks.number("sigma", self.sigma, above=0):
            self.sigma = float(self.sigma)
        checks.done()


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

def _present(keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, K] bool: joint given and inside the map (an off-map joint has no pixel, as upstream)."""
    y, x = keypoints[..., 0], keypoints[..., 1]
    return (y >= 0) & (x >= 0) & (y < size[0]) & (x < size[1])


def _check(keypoints: torch.Tensor) -> None:
    if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be [B, K, 2], got {tuple(keypoints.shape)}")


def _pose_maps_into(out: torch.Tensor, keypoints: torch.Tensor, size: tuple[int, int], mode: str,
                    sigma: float) -> None:
    """Fill ``out`` [B, K, H, W] (a view of a contiguous [B, C, H, W] tensor) with the joint maps."""
    h, w = size
    present = _present(keypoints, size)
    if mode == "onehot":
        out.zero_()
        b_index, k_index = torch.nonzero(present, as_tuple=True)
        out[b_index, k_index, keypoints[b_index, k_index, 0].long(), keypoints[b_index, k_index, 1].long()] = 1.0
    elif mode == "gaussian":
        # exp(-(dy^2 + dx^2) / 2 sigma^2) = exp(-dy^2 / 2 sigma^2) * exp(-dx^2 / 2 sigma^2): one outer product.
        kp = keypoints.to(torch.float32)
        ys = torch.arange(h, device=keypoints.device, dtype=torch.float32)
        xs = torch.arange(w, device=keypoints.device, dtype=torch.float32)
        gy = torch.exp((ys - kp[..., 0, None]) ** 2 * (-0.5 / sigma ** 2)) * present[..., None]   # [B, K, H]
        gx = torch.exp((xs - kp[..., 1, None]) ** 2 * (-0.5 / sigma ** 2))                       # [B, K, W]
        torch.mul(gy[..., :, None], gx[..., None, :], out=out)
    else:
        raise ValueError(f"pose map mode must be onehot or gaussian, got {mode!r}")


def _limb_maps_into(out: torch.Tensor, keypoints: torch.Tensor, size: tuple[int, int]) -> None:
    """Fill ``out`` [B, 12, H, W] with the limb distance maps."""
    h, w = size
    device = keypoints.device
    a_index = torch.tensor([a for a, _ in LIMBS], device=device)
    b_index = torch.tensor([b for _, b in LIMBS], device=device)
    kp = keypoints.to(torch.float32)
    present = _present(keypoints, size)
    valid = present[:, a_index] & present[:, b_index]                     # [B, 12]
    y1, x1 = kp[:, a_index, 0], kp[:, a_index, 1]                         # [B, 12]
    dy, dx = kp[:, b_index, 0] - y1, kp[:, b_index, 1] - x1
    length = torch.sqrt(dy * dy + dx * dx)
    degenerate = valid & (length == 0)
    # Signed distance to the line = ((x - x1) dy - (y - y1) dx) / |p2 - p1| = u(x) + v(y): two small vectors,
    # one broadcast add over [B, 12, H, W], then abs / neg / exp in place (no full-size temporaries).
    # A missing joint makes u infinite, so its channel comes out exp(-inf) = 0 without a masking pass.
    scale = LIMB_DECAY / torch.where(length == 0, 1.0, length)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    ys = torch.arange(h, device=device, dtype=torch.float32)
    u = (xs - x1[..., None]) * (dy * scale)[..., None]                    # [B, 12, W]
    v = (ys - y1[..., None]) * (-dx * scale)[..., None]                   # [B, 12, H]
    u = torch.where(valid[..., None], u, torch.inf)
    torch.add(u[..., None, :], v[..., :, None], out=out)
    out.abs_().neg_().exp_()
    if degenerate.any():  # both joints on one pixel: the line is undefined, use the distance to that point
        bi, li = torch.nonzero(degenerate, as_tuple=True)
        d2 = (ys[:, None] - y1[bi, li, None, None]) ** 2 + (xs[None, :] - x1[bi, li, None, None]) ** 2
        out[bi, li] = torch.exp(-LIMB_DECAY * torch.sqrt(d2))


def _output(keypoints: torch.Tensor, channels: int, size: tuple[int, int], out: torch.Tensor | None) -> torch.Tensor:
    shape = (keypoints.shape[0], channels, *size)
    if out is None:
        return torch.empty(shape, dtype=torch.float32, device=keypoints.device)
    if tuple(out.shape) != shape or out.dtype != torch.float32:
        raise ValueError(f"out must be a float32 tensor of shape {shape}, got {tuple(out.shape)} {out.dtype}")
    return out


def pose_maps(keypoints: torch.Tensor, size: tuple[int, int], mode: str = "onehot",
              sigma: float = 6.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """Keypoints [B, 18, 2] (y, x; -1 missing) -> joint maps [B, 18, H, W] float32.

    onehot: 1.0 at the joint pixel, 0 elsewhere. gaussian: exp(-d^2 / (2 sigma^2)). Missing or
    off-map joint: zeros. ``out``: optional preallocated result (reusing one buffer avoids the
    page faults of a fresh allocation, which cost more than the rendering on CPU).
    """
    _check(keypoints)
    out = _output(keypoints, keypoints.shape[1], size, out)
    _pose_maps_into(out, keypoints, size, mode, sigma)
    return out


def limb_maps(keypoints: torch.Tensor, size: tuple[int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """Keypoints [B, 18, 2] (y, x; -1 missing) -> limb distance maps [B, 12, H, W] float32.

    value = exp(-0.1 * distance from the pixel to the infinite line through the limb's two joints).
    """
    _check(keypoints)
    out = _output(keypoints, NUM_LIMBS, size, out)
    _limb_maps_into(out, keypoints, size)
    return out


def pose_input(keypoints: torch.Tensor, size: tuple[int, int], config: PoseConfig | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """The generator's pose input: cat(pose_maps, limb_maps) [B, 30, H, W], written in place (no concatenation).

    ``config``: the keypoint maps' rendering (``pose.mode``, ``pose.sigma``; default one-hot).
    ``out``: optional preallocated [B, 30, H, W] float32 result.
    """
    mode, sigma = (config.mode, config.sigma) if config is not None else ("onehot", 6.0)
    _check(keypoints)
    out = _output(keypoints, NUM_KEYPOINTS + NUM_LIMBS, size, out)
    _pose_maps_into(out[:, :NUM_KEYPOINTS], keypoints, size, mode, sigma)
    _limb_maps_into(out[:, NUM_KEYPOINTS:], keypoints, size)
    return out


# --------------------------------------------------------------------------- stage

def extract_pose(data: DataConfig, pose: PoseConfig, raw_dir: str | Path | None = None,
                 out_dir: str | Path = PREPARED.pose_dir, reports_dir: str | Path = REPORTS_DIR,
                 split_dir: str | Path = PREPARED.split_dir) -> dict[str, int]:
    """Keypoints of every split image (``<split_dir>/<phase>/*.jpg``) from the annotation CSVs of ``raw_dir``
    -> ``<out_dir>/{train,test}.npz``; returns {phase: images written}.

    A split image without a valid row, or a bad row, raises a :class:`DataError`, or is skipped and listed
    in ``reports/skipped-pose.csv`` with ``data.on_error: skip``; a phase with split images and no keypoints
    written is an error either way. With ``pose.export_upstream_npy`` each image also gets
    ``<out_dir>/<phase>K/<name>.npy`` (H x W x 18 uint8 one-hot), the dense format upstream's loader reads.
    """
    raw_dir = Path(raw_dir) if raw_dir is not None else data.raw_dir()
    out_dir, split_dir = Path(out_dir), Path(split_dir)
    policy = ErrorPolicy(data.on_error)
    guard = InputGuard(raw_dir, data.follow_external_links)
    counts: dict[str, int] = {}
    asked: dict[str, list[str]] = {}
    for phase in PHASES:
        if not (split_dir / phase).is_dir():
            raise DataError(split_dir / phase, "folder not found (run the split stage first)")
        asked[phase] = sorted(p.name for p in (split_dir / phase).glob("*.jpg"))
        path = raw_file(raw_dir, annotation_file(phase))
        guard.resolve(path)
        annotations = read_annotations(path, frame=data.annotation_size, policy=policy)
        for name in [n for n in asked[phase] if n not in annotations]:
            policy.handle(DataError(path, f"{name} (in {split_dir / phase}) has no valid keypoint row; every split "
                                          "image needs one (run the split stage again after editing the CSV)"))
        names = [n for n in asked[phase] if n in annotations]
        stacked = np.stack([annotations[n] for n in names]) if names else np.zeros((0, NUM_KEYPOINTS, 2), np.int64)
        if data.keypoint_frame == "as_is":  # upstream: annotation coordinates drawn into the image frame unchanged
            keypoints = stacked.astype(np.int16)
        else:
            keypoints = rescale_keypoints(stacked, data.annotation_size, data.image_size, data.crop_border)
        with atomic_path(out_dir / f"{phase}.npz") as tmp:
            np.savez_compressed(tmp, names=np.array(names, dtype=str), keypoints=keypoints)
        if pose.export_upstream_npy:
            export_upstream_npy(names, keypoints, data.image_size, out_dir / f"{phase}K")
        counts[phase] = len(names)
    policy.write_report("pose", reports_dir)
    for phase in PHASES:
        require_written("pose", phase, len(asked[phase]), counts[phase], raw_file(raw_dir, annotation_file(phase)))
    return counts


def export_upstream_npy(names: list[str], keypoints: np.ndarray, size: tuple[int, int], out_dir: Path,
                        batch: int = 64) -> None:
    """Write upstream's ``<name>.npy`` dense one-hot maps (H x W x 18 uint8), batched."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with sigterm_as_interrupt():
            for start in tqdm(range(0, len(names), batch), desc=f"upstream npy {out_dir.name}", unit="batch",
                              disable=None):
                maps = pose_maps(torch.from_numpy(keypoints[start:start + batch].astype(np.int64)), size, "onehot")
                dense = maps.permute(0, 2, 3, 1).to(torch.uint8).numpy()
                for name, array in zip(names[start:start + batch], dense):
                    with atomic_path(out_dir / f"{name}.npy") as tmp:
                        np.save(tmp, array)
    finally:
        remove_temp_files(out_dir)
