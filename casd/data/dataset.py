"""Training / test pairs over the prepared data: images, keypoints, merged parsing.

Reads what the earlier stages wrote (see the data layout in the README):

- ``data/split/pairs-{phase}.csv``      (source, target) pairs of flat names
- ``data/resized/{phase}/<flat>.jpg``    RGB at ``data.image_size`` (H, W)
- ``data/pose/{phase}.npz``             keypoints (N, 18, 2) (y, x), -1 = missing
- ``data/parsing/{phase}/<stem>.png``    merged region ids 0..7

One sample (``PairDataset[(pair_index, flip)]``)::

    P1, P2    float [3, H, W] in [-1, 1]        source and target image
    K1, K2    long  [18, 2] (y, x), -1 missing   keypoints (after the flip, if any)
    SP1, SP2  float [8, H, W] one-hot            merged parsing
    BP1, BP2  float [30, H, W]                   pose input (18 pose + 12 limb maps);
                                                 only with ``render_pose=True``, otherwise
                                                 :func:`add_pose_input` renders a whole batch
                                                 at once on the training device (cheaper)
    P1_name, P2_name  str                        flat file names

Which pairs an epoch sees is decided by :class:`EpochPairSampler`: like
upstream, ``pairs_per_epoch`` pairs drawn at random with replacement, but the
draw (and each pair's flip) depends only on ``(seed, epoch, rank)``, so that an
interrupted run resumed from a checkpoint sees exactly the same pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from casd.data import layout as formats, pose
from casd.errors import DataError

NUM_REGIONS = 8


def prepared_paths(data_root: str | Path, phase: str) -> dict[str, Path]:
    """Where the prepared files of ``phase`` live under ``data_root`` (the contract's layout)."""
    root = Path(data_root)
    return {
        "pairs": root / "split" / f"pairs-{phase}.csv",
        "images": root / "resized" / phase,
        "keypoints": root / "pose" / f"{phase}.npz",
        "parsing": root / "parsing" / phase,
    }


def flip_keypoints(keypoints: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror keypoints [..., 18, 2] (y, x) left-right: x -> W-1-x and swap left/right joints.

    Missing joints (-1) stay missing. After the flip, the joint called "right
    shoulder" is the one that was the left shoulder, as a pose estimator
    would label the mirrored image.
    """
    flipped = keypoints.clone()
    present = (keypoints >= 0).all(dim=-1)
    flipped[..., 1] = torch.where(present, width - 1 - keypoints[..., 1], keypoints[..., 1])
    return flipped[..., torch.as_tensor(pose.FLIP_PERMUTATION, dtype=torch.long), :]


def _read_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            array = np.array(img.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read image ({e})") from e
    if array.shape[:2] != tuple(size):
        raise DataError(path, f"image is {array.shape[0]}x{array.shape[1]}, expected {size[0]}x{size[1]} "
                              "(data.image_size); rerun the resize stage")
    return array


def _read_regions(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            array = np.array(img)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read parsing PNG ({e})") from e
    if array.ndim != 2 or array.shape != tuple(size):
        raise DataError(path, f"parsing has shape {array.shape}, expected {size[0]}x{size[1]} (data.image_size)")
    if array.size and int(array.max()) >= NUM_REGIONS:
        raise DataError(path, f"region id {int(array.max())} out of range 0..{NUM_REGIONS - 1} "
                              "(expected merged regions; rerun the segment stage)")
    return array.astype(np.uint8)


class PairDataset(torch.utils.data.Dataset):
    """(source, target) pairs of one phase of the prepared data; see the module docstring.

    ``preload=True`` decodes every image and parsing map once into memory
    (uint8; H*W*4 bytes per image): the right choice for the synthetic demo
    and for machines with enough RAM; ``False`` decodes from disk per sample
    (use DataLoader workers then).
    """

    def __init__(self, data_root: str | Path, phase: str, image_size: Sequence[int], *,
                 render_pose: bool = True, pose_mode: str = "onehot", pose_sigma: float = 6.0,
                 preload: bool = True):
        self.paths = prepared_paths(data_root, phase)
        self.phase = phase
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.render_pose = render_pose
        self.pose_mode = pose_mode
        self.pose_sigma = float(pose_sigma)

        pairs_csv = self.paths["pairs"]
        if not pairs_csv.is_file():
            raise DataError(pairs_csv, "pairs file not found (run the split stage first)")
        pairs = formats.read_pairs(pairs_csv)
        if not pairs:
            raise DataError(pairs_csv, "no pairs")
        if not self.paths["keypoints"].is_file():
            raise DataError(self.paths["keypoints"], "keypoints file not found (run the pose stage first)")
        keypoints = pose.load_keypoints(self.paths["keypoints"])

        # Every image is stored once, pairs refer to it by index.
        self.names: list[str] = sorted({name for pair in pairs for name in pair})
        index = {name: i for i, name in enumerate(self.names)}
        for row, (src, dst) in enumerate(pairs, start=2):  # row 1 is the header
            for name in (src, dst):
                if name not in keypoints:
                    raise DataError(pairs_csv, f"{name} has no keypoints in {self.paths['keypoints']}", row=row)
                if not (self.paths["images"] / name).is_file():
                    raise DataError(pairs_csv, f"{name}: image {self.paths['images'] / name} not found", row=row)
                if not self._parsing_path(name).is_file():
                    raise DataError(pairs_csv, f"{name}: parsing {self._parsing_path(name)} not found", row=row)
        self.pairs = torch.tensor([[index[s], index[d]] for s, d in pairs], dtype=torch.long)  # [N, 2]
        self.keypoints = torch.from_numpy(
            np.stack([np.asarray(keypoints[n], dtype=np.int64) for n in self.names]))  # [M, 18, 2]

        self.images: torch.Tensor | None = None   # [M, 3, H, W] uint8
        self.regions: torch.Tensor | None = None  # [M, H, W] uint8
        if preload:
            self.images = torch.from_numpy(np.stack([self._load_image(i) for i in range(len(self.names))]))
            self.regions = torch.from_numpy(np.stack([self._load_regions(i) for i in range(len(self.names))]))

    def _parsing_path(self, name: str) -> Path:
        return self.paths["parsing"] / (Path(name).stem + ".png")

    def _load_image(self, i: int) -> np.ndarray:
        return _read_rgb(self.paths["images"] / self.names[i], self.image_size).transpose(2, 0, 1)

    def _load_regions(self, i: int) -> np.ndarray:
        return _read_regions(self._parsing_path(self.names[i]), self.image_size)

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, i: int) -> torch.Tensor:
        raw = self.images[i] if self.images is not None else torch.from_numpy(self._load_image(i))
        return raw.float().div_(127.5).sub_(1.0)

    def _regions(self, i: int) -> torch.Tensor:
        return self.regions[i] if self.regions is not None else torch.from_numpy(self._load_regions(i))

    def __getitem__(self, item: int | tuple[int, bool]) -> dict:
        pair_index, flip = (item, False) if isinstance(item, (int, np.integer)) else item
        src, dst = (int(i) for i in self.pairs[int(pair_index)])
        sample = {}
        for tag, i in (("1", src), ("2", dst)):
            image, regions, keypoints = self._image(i), self._regions(i), self.keypoints[i]
            if flip:
                # Merged regions have no left/right classes (both arms are one region, both legs
                # another), so mirroring the label pixels is the whole flip of the parsing.
                image, regions = image.flip(-1), regions.flip(-1)
                keypoints = flip_keypoints(keypoints, self.image_size[1])
            sample[f"P{tag}"] = image
            sample[f"K{tag}"] = keypoints
            sample[f"SP{tag}"] = formats.parsing_onehot(regions.long()[None])[0].float()
            if self.render_pose:
                sample[f"BP{tag}"] = pose.pose_input(keypoints[None], self.image_size, self.pose_mode,
                                                     self.pose_sigma)[0]
            sample[f"P{tag}_name"] = self.names[i]
        return sample


def add_pose_input(batch: dict, image_size: Sequence[int], mode: str = "onehot", sigma: float = 6.0) -> dict:
    """Render BP1/BP2 [B, 30, H, W] from K1/K2 [B, 18, 2] for a whole batch (on the batch's device)."""
    for tag in ("1", "2"):
        batch[f"BP{tag}"] = pose.pose_input(batch[f"K{tag}"], tuple(image_size), mode, sigma)
    return batch


class EpochPairSampler(torch.utils.data.Sampler):
    """``pairs_per_epoch`` random pairs (with replacement) per epoch, split across ranks.

    Yields ``(pair_index, flip)`` for :class:`PairDataset`. The draw of rank
    ``r`` in epoch ``e`` depends only on ``(seed, e, r)``: no global RNG is
    touched, so data order is reproducible under resume and independent of
    the number of DataLoader workers. Each of ``world_size`` ranks draws
    ``pairs_per_epoch // world_size`` pairs, so an epoch is the same amount of
    data whatever the number of GPUs. ``start`` skips the first samples of the
    epoch (resuming mid-epoch).
    """

    def __init__(self, num_pairs: int, pairs_per_epoch: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, flip: bool = False):
        if pairs_per_epoch < world_size:
            raise ValueError(f"pairs_per_epoch ({pairs_per_epoch}) < number of processes ({world_size})")
        self.num_pairs, self.seed, self.rank, self.flip = num_pairs, seed, rank, flip
        self.per_rank = pairs_per_epoch // world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def draw(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(pair indices [n], flips [n] bool) of this rank in ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        indices = rng.integers(0, self.num_pairs, size=self.per_rank)
        flips = rng.random(self.per_rank) < 0.5 if self.flip else np.zeros(self.per_rank, dtype=bool)
        return indices, flips

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        indices, flips = self.draw(self.epoch)
        for i in range(self.start, self.per_rank):
            yield int(indices[i]), bool(flips[i])

    def __len__(self) -> int:
        return self.per_rank - self.start
