"""Synthesis with a trained generator: the :class:`Synthesizer` API and ``casd generate``.

Python::

    from casd.inference import Synthesizer
    synthesizer = Synthesizer.from_checkpoint("models/generator.pt", params="params.yaml")
    image = synthesizer.transfer(source, pose)                        # [3, H, W] in [-1, 1]
    tryon = synthesizer.swap(source, pose, {"upper_clothes": donor})  # try-on; {"head": donor}: hair + face
    mixed = synthesizer.mix(source, pose, other, alpha=0.5, regions="hair,face")
    image, regions = synthesizer.transfer_with_parsing(source, pose)  # + predicted target parsing [H, W], ids 0..7

A *person* is a prepared image name (``data/resized/{train,test}/``, parsing
from ``data/parsing/``), an image path with an explicit parsing PNG (merged
ids 0..7), a :class:`Person`, or ``(image [3, H, W] in [-1, 1], parsing ids
[H, W] or one-hot [8, H, W])``. A *pose* is an annotated image name
(``data/pose/*.npz``), a JSON file of 18 ``[y, x]`` (-1 = missing) in the
image frame, or ``{"size": [H, W], "keypoints": [...]}`` in another frame
(rescaled), or keypoints ``[18, 2]``.

The generator runs with ``modulated_norm="sample"``: a batch gives
upstream's batch-of-one pictures. The test stage is :mod:`casd.generation`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from casd import control, visuals
from casd.checkpoints import load_generator
from casd.config import DEFAULT_PARAMS, from_dict, load_params, resolve_device
from casd.data.config import DataConfig
from casd.data.images import NUM_REGIONS, parsing_onehot, read_image, read_regions
from casd.data.layout import PAIR_SEPARATOR, PHASES, PREPARED, PreparedLayout, flat_stem
from casd.data.tables import NUM_KEYPOINTS, rescale_keypoints
from casd.data.pose import PoseConfig, load_keypoints, pose_input
from casd.errors import CasdError, ConfigError, DataError
from casd.models.generator import predicted_parsing

DATA_ROOT = PREPARED.root
_MAX_FRAME = 1 << 16  # largest side accepted in a pose JSON's "size"

PersonLike = Any  # str | Path | Person | tuple[Tensor, Tensor]
PoseLike = Any    # str | Path | Tensor | np.ndarray


# --------------------------------------------------------------------------- inputs

@dataclasses.dataclass
class Person:
    """A person the style encoder can read: image float [3, H, W] in [-1, 1], parsing float one-hot [8, H, W]."""

    image: torch.Tensor
    parsing: torch.Tensor
    name: str = "person"


def _image_tensor(picture: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 127.5 - 1.0  # a writable copy


def _onehot(ids: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Region ids [H, W] -> float one-hot [8, H, W]."""
    return parsing_onehot(torch.as_tensor(np.asarray(ids), dtype=torch.long)[None])[0]


def _parsing_tensor(parsing: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ids [H, W] or one-hot [8, H, W] -> float one-hot [8, H, W]."""
    parsing = torch.as_tensor(parsing)
    if parsing.dim() == 2 and not parsing.dtype.is_floating_point:
        parsing = _onehot(parsing)
    if parsing.dim() != 3 or parsing.shape[0] != NUM_REGIONS or tuple(parsing.shape[1:]) != tuple(size):
        raise CasdError(f"parsing must be ids [H, W] or one-hot [8, H, W] at {size[0]}x{size[1]}, "
                        f"got {tuple(parsing.shape)}")
    return parsing.float()


def _explicit_parsing(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """A parsing PNG given with an image -> one-hot [8, H, W]; nearest-resized to ``size`` only if of the same
    aspect ratio (another shape means the parsing of another picture)."""
    ids = read_regions(path)
    height, width = ids.shape
    if (height, width) != tuple(size):
        if abs(height * size[1] - width * size[0]) > 0.02 * size[0] * width:
            raise DataError(path, f"parsing map is {height}x{width}, another shape than the {size[0]}x{size[1]} "
                                  f"images; give the parsing of the image itself (merged region ids 0..7)")
        ids = read_regions(path, size, nearest_resize=True)
    return _onehot(ids)


def read_pose_json(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """JSON keypoints file -> long [18, 2] (y, x) in the ``size`` frame, -1 missing.

    Accepted: a list of 18 ``[y, x]`` pairs in the ``size`` frame, or
    ``{"keypoints": [...], "size": [H, W]}`` rescaled from that frame. Every
    coordinate is -1 (missing) or inside the frame it is given in.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(path, f"cannot read keypoints JSON ({e})") from None
    frame = tuple(size)
    if isinstance(data, dict):
        if "keypoints" not in data:
            raise DataError(path, 'expected a list of 18 [y, x] pairs or {"keypoints": [...], "size": [H, W]}')
        frame = tuple(data.get("size", size)) if isinstance(data.get("size", size), (list, tuple)) else (None,)
        data = data["keypoints"]
        if len(frame) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _MAX_FRAME
                                      for v in frame):
            raise DataError(path, f"size must be [H, W] positive integers up to {_MAX_FRAME}, got {list(frame)}")
    if not isinstance(data, list) or len(data) != NUM_KEYPOINTS:
        count = len(data) if isinstance(data, list) else type(data).__name__
        raise DataError(path, f"expected {NUM_KEYPOINTS} [y, x] keypoints (OpenPose COCO order), got {count}")
    for i, point in enumerate(data):
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in point)):
            raise DataError(path, f"keypoint {i} must be [y, x] integers (-1 for missing), got {point!r}")
        if any(v < -1 for v in point):
            raise DataError(path, f"keypoint {i} is {point}: coordinates are >= 0, or -1 for a missing joint")
        if min(point) >= 0 and (point[0] >= frame[0] or point[1] >= frame[1]):
            hint = "" if frame != tuple(size) else '; give {"size": [H, W], "keypoints": ...} for another frame'
            raise DataError(path, f"keypoint {i} (y={point[0]}, x={point[1]}) is outside the {frame[0]}x{frame[1]} "
                                  f"frame{hint}")
    kp = np.asarray(data, dtype=np.int64)
    missing = (kp < 0).any(axis=1)
    if frame != tuple(size):
        kp = rescale_keypoints(kp, frame, tuple(size)).astype(np.int64)
    kp[missing] = -1
    return torch.from_numpy(kp)


# --------------------------------------------------------------------------- the Synthesizer

class Synthesizer:
    """Pose transfer and style control with one generator (see the module docstring for the inputs).

    Every method takes one input (returns ``[3, H, W]``) or, in the ``*_batch``
    forms, lists (returns ``[B, 3, H, W]``); images are in [-1, 1]. The
    generator is switched to per-sample norm statistics
    (:meth:`casd.models.generator.Generator.set_modulated_norm`).
    """

    def __init__(self, generator, image_size: Sequence[int], pose: PoseConfig | None = None,
                 data_root: str | Path = DATA_ROOT, device: str | torch.device = "cpu",
                 parsing: Mapping[str, str | Path] | None = None):
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.device = resolve_device(str(device))
        self.generator = generator.to(self.device).eval().set_modulated_norm("sample")
        self.pose = pose or PoseConfig()
        self.layout = PreparedLayout(data_root)
        self._keypoints: dict[str, np.ndarray] | None = None
        self._frame: tuple[tuple[int, int], Path] | None = None
        # explicit parsing files for image paths: {image path or name: parsing png}
        self.parsing_files = {str(k): Path(v) for k, v in (parsing or {}).items()}

    @classmethod
    def from_checkpoint(cls, path: str | Path, params: str | Path | Mapping[str, Any] | None = None,
                        data_root: str | Path = DATA_ROOT, device: str | torch.device = "cpu",
                        check: bool = True, **kwargs: Any) -> "Synthesizer":
        """Any generator file :func:`casd.checkpoints.load_generator` reads.

        Image size and pose rendering come from the file; ``params`` (a path or
        dict) fills what it does not record (upstream files) and, with
        ``check``, must agree with it (ConfigError naming each difference).
        """
        source = params if isinstance(params, (str, Path)) else DEFAULT_PARAMS
        if isinstance(params, (str, Path)):
            params = load_params(params)
        params = params or {}
        section, pose = dict(params.get("data") or {}), dict(params.get("pose") or {})
        data = from_dict(DataConfig, section, "data", source)
        params_size = data.image_size if "image_size" in section else None
        loaded = load_generator(path, device=resolve_device(str(device)))
        if check:
            loaded.check_settings(model=params.get("model"), image_size=params_size,
                                  pose_mode=pose.get("mode"), pose_sigma=pose.get("sigma"),
                                  hint=", or leave out --params to take its own")
        image_size = loaded.image_size or params_size
        if image_size is None:
            raise ConfigError(f"{path}: the checkpoint does not record its image size; pass params with "
                              f"data.image_size")
        pose_config = PoseConfig(mode=loaded.pose_mode or pose.get("mode", "onehot"),
                                 sigma=loaded.pose_sigma or pose.get("sigma", 6.0))
        return cls(loaded.generator, image_size, pose_config, data_root=data_root, device=device, **kwargs)

    # ---- inputs

    def keypoint_table(self) -> dict[str, np.ndarray]:
        """{prepared image name: keypoints (18, 2) (y, x)} of both phases, read once."""
        if self._keypoints is None:
            self._keypoints = {}
            for phase in PHASES:
                if self.layout.keypoints(phase).is_file():
                    self._keypoints.update(load_keypoints(self.layout.keypoints(phase)))
        return self._keypoints

    def _prepared_frame(self) -> tuple[tuple[int, int], Path] | None:
        """(H, W) of the prepared images (the frame of their keypoints) and one image of that size; None if none."""
        if self._frame is None:
            for phase in PHASES:
                folder = self.layout.images(phase)
                first = next(folder.glob("*.jpg"), None) if folder.is_dir() else None
                if first is not None:
                    with Image.open(first) as img:
                        self._frame = ((img.height, img.width), first)
                    break
        return self._frame

    def _unknown(self, name: str, what: str, candidates: Iterable[str]) -> DataError:
        close = difflib.get_close_matches(name, list(candidates), n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        places = [self.layout.images(p) if what == "image" else self.layout.keypoints(p) for p in PHASES]
        return DataError(name, f"no prepared {what} of that name (looked in {', '.join(map(str, places))}){hint}")

    def _check_prepared_frame(self, what: str) -> None:
        """ConfigError when the prepared data (the frame of its images and keypoints) is not the generator's."""
        found = self._prepared_frame()
        if found is not None and found[0] != self.image_size:
            (h, w), example = found
            raise ConfigError(f"the generator works at {self.image_size[0]}x{self.image_size[1]} but the prepared "
                              f"data is {h}x{w} ({example}), so {what} would not fit; prepare the data at "
                              f"data.image_size {list(self.image_size)} or use a checkpoint trained at {h}x{w}")

    def person(self, source: PersonLike, parsing: str | Path | torch.Tensor | None = None) -> Person:
        """Resolve a person (name, image path, :class:`Person` or (image, parsing) tensors)."""
        if isinstance(source, Person):
            return source
        if isinstance(source, tuple):
            image, parsing = source
            image = torch.as_tensor(image, dtype=torch.float32)
            if image.dim() != 3 or image.shape[0] != 3 or tuple(image.shape[1:]) != self.image_size:
                raise CasdError(f"image must be [3, {self.image_size[0]}, {self.image_size[1]}] in [-1, 1], "
                                f"got {tuple(image.shape)}")
            return Person(image, _parsing_tensor(parsing, self.image_size), "tensor")
        if isinstance(source, torch.Tensor):
            raise CasdError("a person given as tensors needs its parsing: pass (image, parsing)")
        name = str(source)
        found = self.layout.find_image(name)
        explicit = parsing if parsing is not None else self.parsing_files.get(name)
        if found is not None and not Path(name).is_file():
            path, phase = found
            parsing_path = Path(explicit) if explicit is not None else self.layout.parsing_map(phase, path.name)
            if not parsing_path.is_file():
                raise DataError(parsing_path, f"parsing of {path.name} not found (run the segment stage)")
            with Image.open(path) as img:
                if (img.height, img.width) != self.image_size:
                    self._check_prepared_frame(f"the image {path.name}")
            return Person(_image_tensor(read_image(path, self.image_size)),
                          _onehot(read_regions(parsing_path, self.image_size)), flat_stem(path.name))
        path = Path(name)
        if path.is_file():
            if explicit is None:
                raise DataError(path, "not a prepared image, so its parsing is needed: pass --parsing "
                                      f"{name}=PARSING.png (merged region ids 0..7)")
            if isinstance(explicit, torch.Tensor):
                parsing_onehot = _parsing_tensor(explicit, self.image_size)
            else:
                parsing_onehot = _explicit_parsing(Path(explicit), self.image_size)
            picture = read_image(path, self.image_size, resample=Image.Resampling.BICUBIC)
            return Person(_image_tensor(picture), parsing_onehot, path.stem)
        raise self._unknown(name, "image", self.layout.image_names())

    def keypoints(self, pose: PoseLike) -> torch.Tensor:
        """Resolve a pose (annotated image name, JSON file, or [18, 2]) -> long [18, 2] (y, x), -1 missing."""
        if isinstance(pose, (torch.Tensor, np.ndarray)):
            kp = torch.as_tensor(np.asarray(pose) if isinstance(pose, np.ndarray) else pose).long()
            if tuple(kp.shape) != (NUM_KEYPOINTS, 2):
                raise CasdError(f"keypoints must be [{NUM_KEYPOINTS}, 2] (y, x), got {tuple(kp.shape)}")
            return kp
        name = str(pose)
        if name.lower().endswith(".json"):
            if not Path(name).is_file():
                raise DataError(name, "keypoints JSON file not found")
            return read_pose_json(name, self.image_size)
        table = self.keypoint_table()
        key = name if name.endswith(".jpg") else f"{name}.jpg"
        if key not in table:
            raise self._unknown(name, "pose (annotated image)", table)
        self._check_prepared_frame(f"the keypoints of {key}")
        return torch.from_numpy(np.asarray(table[key], dtype=np.int64))

    # ---- model calls (batched)

    @torch.no_grad()
    def encode(self, people: Sequence[PersonLike]) -> torch.Tensor:
        """People -> style tokens [B, 8, C]."""
        resolved = [self.person(p) for p in people]
        images = torch.stack([p.image for p in resolved]).to(self.device)
        parsing = torch.stack([p.parsing for p in resolved]).to(self.device)
        return self.generator.encode_style(images, parsing)

    def pose_input(self, poses: Sequence[PoseLike]) -> torch.Tensor:
        """Poses -> the generator's pose input [B, 30, H, W]."""
        keypoints = torch.stack([self.keypoints(p) for p in poses]).to(self.device)
        return pose_input(keypoints, self.image_size, self.pose)

    @torch.no_grad()
    def render(self, poses: Sequence[PoseLike], tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Style tokens [B, 8, C] in poses -> (images [B, 3, H, W] in [-1, 1], predicted parsing [B, H, W] uint8)."""
        images, attention = self.generator.decode(self.pose_input(poses), tokens)
        return images, predicted_parsing(attention, self.image_size)

    def decode(self, poses: Sequence[PoseLike], tokens: torch.Tensor) -> torch.Tensor:
        """Style tokens [B, 8, C] rendered in poses -> images [B, 3, H, W] in [-1, 1] (each sample independent)."""
        return self.render(poses, tokens)[0]

    def transfer_batch(self, sources: Sequence[PersonLike], poses: Sequence[PoseLike]) -> torch.Tensor:
        return self.decode(poses, self.encode(sources))

    def swap_tokens(self, tokens: torch.Tensor, donors: Mapping[str, PersonLike]) -> torch.Tensor:
        """Each region named in ``donors`` takes the donor's style token (the same donor for the whole batch)."""
        return control.swap_tokens(tokens, {region: self.encode([donor]) for region, donor in donors.items()})

    def swap_batch(self, sources: Sequence[PersonLike], poses: Sequence[PoseLike],
                   donors: Mapping[str, PersonLike]) -> torch.Tensor:
        for region in donors:
            control.region_indices(region)  # unknown region: fail before any image is read
        return self.decode(poses, self.swap_tokens(self.encode(sources), donors))

    def mix_batch(self, sources: Sequence[PersonLike], poses: Sequence[PoseLike], other: PersonLike,
                  alpha: float, regions: str | Iterable[str] | None = None) -> torch.Tensor:
        if regions is not None:
            control.region_indices(regions)
        tokens = self.encode(sources)
        return self.decode(poses, control.mix_tokens(tokens, self.encode([other]), alpha, regions))

    # ---- one at a time

    def transfer(self, source: PersonLike, pose: PoseLike) -> torch.Tensor:
        """``source`` in ``pose`` -> [3, H, W] in [-1, 1]."""
        return self.transfer_batch([source], [pose])[0]

    def transfer_with_parsing(self, source: PersonLike, pose: PoseLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``source`` in ``pose`` -> (image [3, H, W] in [-1, 1], predicted target parsing [H, W] uint8 ids 0..7)."""
        images, parsing = self.render([pose], self.encode([source]))
        return images[0], parsing[0]

    def swap(self, source: PersonLike, pose: PoseLike, donors: Mapping[str, PersonLike]) -> torch.Tensor:
        """Try-on / head swap: ``{"upper_clothes": donor}``, ``{"pants": d}``, ``{"head": d}`` (hair + face)."""
        return self.swap_batch([source], [pose], donors)[0]

    def mix(self, source: PersonLike, pose: PoseLike, other: PersonLike, alpha: float,
            regions: str | Iterable[str] | None = None) -> torch.Tensor:
        """Interpolate all (or the chosen) regions' style tokens: alpha 0 = source, 1 = other."""
        return self.mix_batch([source], [pose], other, alpha, regions)[0]

    def pose_picture(self, pose: PoseLike) -> np.ndarray:
        """The skeleton of ``pose`` on black, uint8 [H, W, 3]."""
        return visuals.draw_skeleton(self.keypoints(pose), self.image_size)


# --------------------------------------------------------------------------- casd generate

def _stem(value: Any) -> str:
    name = Path(str(value)).name
    for suffix in (".jpg", ".png", ".jpeg", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _output_stem(source: str, pose: str, swaps: Mapping[str, str], mix: str | None, alpha: float,
                 regions: str | None) -> str:
    stem = f"{_stem(source)}{PAIR_SEPARATOR}{_stem(pose)}"  # as the test stage names a pair: casd evaluate reads both
    for region, donor in swaps.items():
        stem += f"_swap-{region}-{_stem(donor)}"
    if mix is not None:
        stem += f"_mix-{_stem(mix)}-{alpha:g}" + (f"-{regions.replace(',', '+')}" if regions else "")
    return stem


def generate_pairs(synthesizer: Synthesizer, pairs: Sequence[tuple[str, str]], out_dir: str | Path, *,
                   swaps: Mapping[str, PersonLike] | None = None, mix: PersonLike | None = None,
                   alpha: float = 0.5, regions: str | None = None, batch_size: int = 8,
                   strips: bool = True, strip_scale: int = 1, labels: bool = False) -> list[Path]:
    """Generate (source, target pose) pairs in batches; write ``<stem>.png`` and ``<stem>_strip.png``.

    Strip: source | target pose | [swap donors | mix partner] | result | predicted parsing
    (``labels``: captioned, ``strip_scale``: enlarged).
    """
    if batch_size < 1:
        raise CasdError(f"batch size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    swaps = dict(swaps or {})
    donors = [synthesizer.person(d) for d in swaps.values()]
    partner = synthesizer.person(mix) if mix is not None else None
    partner_tokens = synthesizer.encode([partner]) if partner is not None else None
    written: list[Path] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="generate", unit="batch", disable=len(pairs) <= 1):
        chunk = pairs[start:start + batch_size]
        sources = [synthesizer.person(s) for s, _ in chunk]
        poses = [p for _, p in chunk]
        tokens = synthesizer.swap_tokens(synthesizer.encode(sources), dict(zip(swaps, donors)))
        if partner_tokens is not None:
            tokens = control.mix_tokens(tokens, partner_tokens, alpha, regions)
        images, parsing = synthesizer.render(poses, tokens)
        for (source_name, pose_name), person, image, regions_map in zip(chunk, sources, images, parsing):
            stem = _output_stem(source_name, pose_name, {r: str(d) for r, d in swaps.items()},
                                None if mix is None else str(mix), alpha, regions)
            picture = visuals.to_uint8(image)
            written.append(visuals.save_png(picture, out_dir / f"{stem}.png"))
            if strips:
                strip = result_strip(visuals.to_uint8(person.image), synthesizer.pose_picture(pose_name),
                                     donor_panels(zip(swaps, donors), partner, alpha), picture,
                                     visuals.parsing_colours(regions_map), scale=strip_scale, labels=labels)
                written.append(visuals.save_png(strip, out_dir / f"{stem}_strip.png"))
    return written


def donor_panels(donors: Iterable[tuple[str, Person]], partner: Person | None = None,
                 alpha: float = 0.5) -> list[tuple[str, np.ndarray]]:
    """(caption, uint8 picture) of each region's donor ('<region> from') and the mix partner ('mix <alpha>')."""
    panels = [(f"{region} from", visuals.to_uint8(donor.image)) for region, donor in donors]
    if partner is not None:
        panels.append((f"mix {alpha:g}", visuals.to_uint8(partner.image)))
    return panels


def result_strip(source: np.ndarray, pose: np.ndarray, donors: Sequence[tuple[str, np.ndarray]],
                 result: np.ndarray, parsing: np.ndarray, *, scale: int = 1, labels: bool = True) -> np.ndarray:
    """uint8 pictures [H, W, 3] -> source | target pose | donors (:func:`donor_panels`) | result | predicted
    parsing (coloured), side by side with 2-pixel gaps, ``labels``: captioned, ``scale``: enlarged."""
    panels = [source, pose, *[p for _, p in donors], result, parsing]
    names = ["source", "target pose", *[c for c, _ in donors], "result", "parsing"]
    return visuals.make_strip(panels, gap=2, scale=scale, labels=names if labels else None)
