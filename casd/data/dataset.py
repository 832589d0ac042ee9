"""Training / test pairs over the prepared data (:class:`casd.data.layout.PreparedLayout`), as named batches.

``PairDataset[(pair_index, flip)]`` is a :class:`PairBatch` of one pair; the
DataLoader joins them with :meth:`PairBatch.collate`::

    source, target                  float [B, 3, H, W] in [-1, 1]
    source_parsing, target_parsing  float [B, 8, H, W] one-hot merged regions
    source_keypoints, target_keypoints  long [B, 18, 2] (y, x), -1 missing (after the flip, if any)
    target_pose                     float [B, 30, H, W] (18 keypoint + 12 limb maps), rendered on the
                                    training device by :meth:`PairBatch.render_target_pose`
    source_names, target_names      flat file names

Upstream's names for the same tensors (P1, P2, SP1, SP2, K1, K2, BP2) appear
only where upstream's files are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from casd.data import pose
from casd.data.images import parsing_onehot, read_image, read_regions
from casd.data.layout import PreparedLayout
from casd.data.tables import read_pairs
from casd.data.pose import PoseConfig
from casd.errors import DataError


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


class PairDataset(torch.utils.data.Dataset):
    """(source, target) pairs of one phase of the prepared data; see the module docstring.

    ``preload=True`` decodes every image and parsing map once into memory
    (uint8; H*W*4 bytes per image): the right choice for the synthetic demo
    and for machines with enough RAM; ``False`` decodes from disk per sample
    (use DataLoader workers then).
    """

    def __init__(self, data_root: str | Path, phase: str, image_size: Sequence[int], *,
                 pose_config: PoseConfig | None = None, preload: bool = True):
        self.layout = PreparedLayout(Path(data_root))
        self.phase = phase
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.pose_config = pose_config or PoseConfig()

        pairs_csv = self.layout.pairs(phase)
        if not pairs_csv.is_file():
            raise DataError(pairs_csv, "pairs file not found (run the split stage first)")
        pairs = read_pairs(pairs_csv)
        if not pairs:
            raise DataError(pairs_csv, "no pairs")
        keypoints_path = self.layout.keypoints(phase)
        if not keypoints_path.is_file():
            raise DataError(keypoints_path, "keypoints file not found (run the pose stage first)")
        keypoints = pose.load_keypoints(keypoints_path)

        # Every image is stored once, pairs refer to it by index.
        self.names: list[str] = sorted({name for pair in pairs for name in pair})
        index = {name: i for i, name in enumerate(self.names)}
        for row, (src, dst) in enumerate(pairs, start=2):  # row 1 is the header
            for name in (src, dst):
                if name not in keypoints:
                    raise DataError(pairs_csv, f"{name} has no keypoints in {keypoints_path}", row=row)
                if not self.layout.image(phase, name).is_file():
                    raise DataError(pairs_csv, f"{name}: image {self.layout.image(phase, name)} not found", row=row)
                if not self.layout.parsing_map(phase, name).is_file():
                    raise DataError(pairs_csv, f"{name}: parsing {self.layout.parsing_map(phase, name)} not found",
                                    row=row)
        self.pairs = torch.tensor([[index[s], index[d]] for s, d in pairs], dtype=torch.long)  # [N, 2]
        self.keypoints = torch.from_numpy(
            np.stack([np.asarray(keypoints[n], dtype=np.int64) for n in self.names]))  # [M, 18, 2]

        self.images: torch.Tensor | None = None   # [M, 3, H, W] uint8
        self.regions: torch.Tensor | None = None  # [M, H, W] uint8
        if preload:
            self.images = torch.from_numpy(np.stack([self._load_image(i) for i in range(len(self.names))]))
            self.regions = torch.from_numpy(np.stack([self._load_regions(i) for i in range(len(self.names))]))

    def _load_image(self, i: int) -> np.ndarray:
        return read_image(self.layout.image(self.phase, self.names[i]), self.image_size).transpose(2, 0, 1)

    def _load_regions(self, i: int) -> np.ndarray:
        return read_regions(self.layout.parsing_map(self.phase, self.names[i]), self.image_size)

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, i: int) -> torch.Tensor:
        raw = self.images[i] if self.images is not None else torch.from_numpy(self._load_image(i))
        return raw.float().div_(127.5).sub_(1.0)

    def _regions(self, i: int) -> torch.Tensor:
        return self.regions[i] if self.regions is not None else torch.from_numpy(self._load_regions(i))

    def __getitem__(self, item: int | tuple[int, bool]) -> "PairBatch":
        pair_index, flip = (item, False) if isinstance(item, (int, np.integer)) else item
        people = []
        for i in (int(i) for i in self.pairs[int(pair_index)]):
            image, regions, keypoints = self._image(i), self._regions(i), self.keypoints[i]
            if flip:
                # Merged regions have no left/right classes (both arms are one region, both legs
                # another), so mirroring the label pixels is the whole flip of the parsing.
                image, regions = image.flip(-1), regions.flip(-1)
                keypoints = flip_keypoints(keypoints, self.image_size[1])
            people.append((image[None], parsing_onehot(regions.long()[None]), keypoints[None], self.names[i]))
        (source, source_parsing, source_keypoints, source_name), (target, target_parsing, target_keypoints,
                                                                  target_name) = people
        return PairBatch(source=source, target=target, source_parsing=source_parsing, target_parsing=target_parsing,
                         source_keypoints=source_keypoints, target_keypoints=target_keypoints,
                         source_names=[source_name], target_names=[target_name])


@dataclass
class PairBatch:
    """(source, target) pairs, named by meaning: what the dataset yields and training and the test stage read."""

    source: torch.Tensor                     # [B,3,H,W] in [-1, 1]
    target: torch.Tensor                     # [B,3,H,W] in [-1, 1]
    source_parsing: torch.Tensor             # [B,8,H,W] one-hot
    target_parsing: torch.Tensor             # [B,8,H,W] one-hot
    source_keypoints: torch.Tensor           # [B,18,2] (y, x), -1 missing
    target_keypoints: torch.Tensor           # [B,18,2] (y, x), -1 missing
    source_names: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)
    target_pose: torch.Tensor | None = None  # [B,30,H,W] pose input; see :meth:`render_target_pose`

    @classmethod
    def collate(cls, items: Sequence["PairBatch"]) -> "PairBatch":
        """Batches (a DataLoader's list of dataset items) -> one batch, in order (``collate_fn``)."""
        joined = {}
        for name, first in vars(items[0]).items():
            if isinstance(first, torch.Tensor):
                joined[name] = torch.cat([getattr(item, name) for item in items])
            elif isinstance(first, list):
                joined[name] = [value for item in items for value in getattr(item, name)]
            else:
                joined[name] = first
        return cls(**joined)

    def __len__(self) -> int:
        return self.source.shape[0]

    def pin_memory(self) -> "PairBatch":
        """Every tensor in pinned memory (the DataLoader calls this with ``pin_memory=True``)."""
        return PairBatch(**{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()})

    def to(self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> "PairBatch":
        """Every tensor on ``device``; images and maps [B,C,H,W] in ``memory_format``."""
        moved = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=True)
                if value.dim() == 4:
                    value = value.contiguous(memory_format=memory_format)
            moved[name] = value
        return PairBatch(**moved)

    def split(self, parts: int) -> list["PairBatch"]:
        """``parts`` consecutive micro-batches of equal size (the batch size must divide)."""
        n = self.source.shape[0]
        if n % parts:
            raise ValueError(f"a batch of {n} does not split into {parts} equal micro-batches")
        size = n // parts
        chunks = {name: (value.split(size) if isinstance(value, torch.Tensor)
                         else [value[i * size:(i + 1) * size] for i in range(parts)] if isinstance(value, list)
                         else [value] * parts)
                  for name, value in vars(self).items()}
        return [PairBatch(**{name: chunks[name][i] for name in chunks}) for i in range(parts)]

    def render_target_pose(self, image_size: Sequence[int], pose_config: PoseConfig,
                           memory_format: torch.memory_format = torch.contiguous_format) -> "PairBatch":
        """Render ``target_pose`` from ``target_keypoints`` for the whole batch, on the batch's device."""
        rendered = pose.pose_input(self.target_keypoints, tuple(image_size), pose_config)
        self.target_pose = rendered.contiguous(memory_format=memory_format)
        return self


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
