"""Controllable synthesis with a trained generator: pose transfer, try-on, head swap, style interpolation.

One entry point for Python::

    from casd.generate import Synthesizer
    synth = Synthesizer.from_checkpoint("models/generator.pt", params="params.yaml")
    image = synth.transfer("fashionWOMEN...front.jpg", "fashionWOMEN...back.jpg")     # [3, H, W] in [-1, 1]
    tryon = synth.swap(source, pose, {"upper_clothes": donor})                      # try-on
    heads = synth.swap(source, pose, {"head": donor})                                # hair + face
    mixed = synth.mix(source, pose, other, alpha=0.5, regions="hair,face")

and the ``casd generate`` command over it. How it works: the generator's style
encoder turns a person (image + merged parsing) into one style token per
region, ``[B, 8, C]`` (:meth:`Generator.encode_style`); :mod:`casd.control`
edits those tokens (a donor's token replaces a region's, or two people's
tokens are interpolated); :meth:`Generator.decode` renders them in the target
pose.

Inputs:

- a *person* (source, donor, other) is the name of a prepared image
  (``data/resized/{train,test}/<name>``, parsing from
  ``data/parsing/{train,test}/<stem>.png``), the path of an image file with an
  explicit parsing (merged region ids 0..7, PNG), a :class:`Person`, or a
  tuple ``(image [3, H, W] in [-1, 1], parsing [H, W] ids or [8, H, W] one-hot)``;
- a *pose* is the name of an annotated image (``data/pose/{train,test}.npz``),
  a JSON file of 18 ``[y, x]`` keypoints in the prepared image frame
  (``-1`` = missing joint; or ``{"size": [H, W], "keypoints": [...]}`` in
  another frame, which is rescaled), or keypoints ``[18, 2]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from casd import control, visuals
from casd.checkpoints import load_generator
from casd.errors import CasdError, ConfigError, DataError
from casd.data.layout import NUM_KEYPOINTS, NUM_REGIONS, PHASES, REGION_NAMES, flat_stem

DATA_ROOT = Path("data")

PersonLike = Any  # str | Path | Person | tuple[Tensor, Tensor]
PoseLike = Any    # str | Path | Tensor | np.ndarray


@dataclasses.dataclass
class Person:
    """A person the style encoder can read.

    image: float [3, H, W] in [-1, 1]; parsing: float one-hot [8, H, W]
    (merged regions, :data:`casd.data.layout.REGION_NAMES`); name: for file names and strips.
    """

    image: torch.Tensor
    parsing: torch.Tensor
    name: str = "person"


# --------------------------------------------------------------------------- reading inputs

def _read_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """RGB file -> [3, H, W] in [-1, 1], resized (bicubic) to ``size`` when it differs."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BICUBIC)
            array = np.asarray(img, dtype=np.float32)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read image ({e})") from None
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def _read_parsing(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """PNG of merged region ids 0..7 -> one-hot [8, H, W] (nearest resize when the size differs)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(path, f"parsing must be a single-channel PNG of region ids, got mode {img.mode}")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.NEAREST)
            ids = np.asarray(img).astype(np.int64)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read parsing ({e})") from None
    if ids.max(initial=0) >= NUM_REGIONS or ids.min(initial=0) < 0:
        raise DataError(path, f"parsing has region id {int(ids.max())}, expected merged ids 0..{NUM_REGIONS - 1} "
                              f"({', '.join(REGION_NAMES)}); LIP-20 labels must be merged first (casd segment)")
    return torch.nn.functional.one_hot(torch.from_numpy(ids), NUM_REGIONS).permute(2, 0, 1).float()


def _parsing_tensor(parsing: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ids [H, W] or one-hot [8, H, W] -> float one-hot [8, H, W]."""
    parsing = torch.as_tensor(parsing)
    if parsing.dim() == 2 and not parsing.dtype.is_floating_point:
        parsing = torch.nn.functional.one_hot(parsing.long(), NUM_REGIONS).permute(2, 0, 1)
    if parsing.dim() != 3 or parsing.shape[0] != NUM_REGIONS or tuple(parsing.shape[1:]) != tuple(size):
        raise CasdError(f"parsing must be ids [H, W] or one-hot [8, H, W] at {size[0]}x{size[1]}, "
                        f"got {tuple(parsing.shape)}")
    return parsing.float()


def read_pose_json(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """JSON keypoints file -> long [18, 2] (y, x) in the ``size`` frame, -1 missing.

    Accepted: a list of 18 ``[y, x]`` pairs in the prepared image frame, or
    ``{"keypoints": [...], "size": [H, W]}`` whose coordinates are rescaled
    from that frame (the annotation CSV's 256x176, say).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot read keypoints JSON ({e})") from None
    frame = tuple(size)
    if isinstance(data, dict):
        if "keypoints" not in data:
            raise DataError(path, 'expected a list of 18 [y, x] pairs or {"keypoints": [...], "size": [H, W]}')
        frame = tuple(data.get("size", size))
        data = data["keypoints"]
        if len(frame) != 2 or not all(isinstance(v, int) and v > 0 for v in frame):
            raise DataError(path, f"size must be [H, W] positive integers, got {list(frame)}")
    if not isinstance(data, list) or len(data) != NUM_KEYPOINTS:
        count = len(data) if isinstance(data, list) else type(data).__name__
        raise DataError(path, f"expected {NUM_KEYPOINTS} [y, x] keypoints (OpenPose COCO order), got {count}")
    for i, point in enumerate(data):
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in point)):
            raise DataError(path, f"keypoint {i} must be [y, x] integers (-1 for missing), got {point!r}")
    kp = np.asarray(data, dtype=np.int64)
    missing = (kp < 0).any(axis=1)
    if frame != tuple(size):
        from casd.data.pose import rescale_keypoints

        kp = rescale_keypoints(kp, frame, tuple(size)).astype(np.int64)
    else:
        outside = ~missing & ((kp[:, 0] >= size[0]) | (kp[:, 1] >= size[1]))
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            raise DataError(path, f"keypoint {j} (y={kp[j, 0]}, x={kp[j, 1]}) is outside the {size[0]}x{size[1]} "
                                  f'image; give {{"size": [H, W], "keypoints": ...}} for another frame')
    kp[missing] = -1
    return torch.from_numpy(kp)


class PreparedData:
    """Lookup of prepared images, parsing and keypoints by flat name (both phases)."""

    def __init__(self, root: str | Path = DATA_ROOT):
        self.root = Path(root)
        self._keypoints: dict[str, np.ndarray] | None = None

    def _image_dirs(self) -> list[Path]:
        return [self.root / "resized" / phase for phase in PHASES]

    def find_image(self, name: str) -> tuple[Path, str] | None:
        """(image path, phase) of a prepared image called ``name`` (``.jpg`` optional), or None."""
        file = name if name.endswith(".jpg") else f"{name}.jpg"
        if "/" in file or "\\" in file:
            return None
        for phase in PHASES:
            path = self.root / "resized" / phase / file
            if path.is_file():
                return path, phase
        return None

    def parsing_path(self, name: str, phase: str) -> Path:
        return self.root / "parsing" / phase / f"{flat_stem(name if name.endswith('.jpg') else name + '.jpg')}.png"

    def keypoints(self) -> dict[str, np.ndarray]:
        if self._keypoints is None:
            from casd.data.pose import load_keypoints

            self._keypoints = {}
            for phase in PHASES:
                path = self.root / "pose" / f"{phase}.npz"
                if path.is_file():
                    self._keypoints.update(load_keypoints(path))
        return self._keypoints

    def unknown(self, name: str, what: str, candidates: Iterable[str]) -> DataError:
        close = difflib.get_close_matches(name, list(candidates), n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        where = ", ".join(str(p) for p in self._image_dirs()) if what == "image" else \
            ", ".join(str(self.root / "pose" / f"{phase}.npz") for phase in PHASES)
        return DataError(name, f"no prepared {what} of that name (looked in {where}){hint}")

    def image_names(self) -> list[str]:
        return [p.name for d in self._image_dirs() if d.is_dir() for p in d.glob("*.jpg")]


# --------------------------------------------------------------------------- synthesis

class Synthesizer:
    """Pose transfer and style control with one generator (see the module docstring for the inputs).

    Every method accepts one input (returns ``[3, H, W]``) or, in the
    ``*_batch`` forms, lists (returns ``[B, 3, H, W]``); images are in [-1, 1].
    """

    def __init__(self, generator: torch.nn.Module, image_size: Sequence[int], pose_mode: str = "onehot",
                 sigma: float = 6.0, data_root: str | Path = DATA_ROOT, device: str | torch.device = "cpu",
                 parsing: Mapping[str, str | Path] | None = None):
        # each sample rendered as if alone in its batch (upstream tests with batches of one)
        self.generator = generator.to(device).eval().set_modulated_norm("sample")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.pose_mode = pose_mode
        self.sigma = float(sigma)
        self.device = torch.device(device)
        self.data = PreparedData(data_root)
        # explicit parsing files for image paths: {image path or name: parsing png}
        self.parsing_files = {str(k): Path(v) for k, v in (parsing or {}).items()}

    @classmethod
    def from_checkpoint(cls, path: str | Path, params: str | Path | Mapping[str, Any] | None = None,
                        data_root: str | Path = DATA_ROOT, device: str | torch.device = "cpu",
                        check: bool = True, **kwargs: Any) -> "Synthesizer":
        """Load a project checkpoint (``models/generator.pt``, a training state, or an imported one).

        Image size and pose rendering come from the checkpoint. ``params`` (a
        params.yaml path or dict) fills what an older checkpoint does not record
        and, with ``check`` (default), must agree with the checkpoint: its
        ``model:`` section, ``data.image_size`` and ``pose.mode``/``sigma``;
        otherwise a ConfigError names each difference (a checkpoint of another
        configuration would silently produce garbage).
        """
        from casd.config import load_params

        if isinstance(params, (str, Path)):
            params = load_params(params)
        loaded = load_generator(path, device=device, modulated_norm="sample")
        params = params or {}
        data = dict(params.get("data") or {})
        pose = dict(params.get("pose") or {})
        if check:
            loaded.check_settings(model=params.get("model"), image_size=data.get("image_size"),
                                  pose_mode=pose.get("mode"), pose_sigma=pose.get("sigma"),
                                  hint=", or leave out --params to take its own")
        image_size = loaded.image_size or data.get("image_size")
        if image_size is None:
            raise ConfigError(f"{path}: the checkpoint does not record its image size; pass params with "
                              f"data.image_size")
        return cls(loaded.generator, image_size, pose_mode=loaded.pose_mode or pose.get("mode", "onehot"),
                   sigma=loaded.pose_sigma or pose.get("sigma", 6.0), data_root=data_root, device=device, **kwargs)

    # ---- inputs

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
        found = self.data.find_image(name)
        explicit = parsing if parsing is not None else self.parsing_files.get(name)
        if found is not None and not Path(name).is_file():
            path, phase = found
            parsing_path = Path(explicit) if explicit is not None else self.data.parsing_path(name, phase)
            if not parsing_path.is_file():
                raise DataError(parsing_path, f"parsing of {path.name} not found (run the segment stage)")
            return Person(_read_image(path, self.image_size), _read_parsing(parsing_path, self.image_size),
                          flat_stem(path.name))
        path = Path(name)
        if path.is_file():
            if explicit is None:
                raise DataError(path, "not a prepared image, so its parsing is needed: pass --parsing "
                                      f"{name}=PARSING.png (merged region ids 0..7)")
            if isinstance(explicit, torch.Tensor):
                parsing_onehot = _parsing_tensor(explicit, self.image_size)
            else:
                parsing_onehot = _read_parsing(Path(explicit), self.image_size)
            return Person(_read_image(path, self.image_size), parsing_onehot, path.stem)
        raise self.data.unknown(name, "image", self.data.image_names())

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
        table = self.data.keypoints()
        key = name if name.endswith(".jpg") else f"{name}.jpg"
        if key not in table:
            raise self.data.unknown(name, "pose (annotated image)", table)
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
        from casd.data.pose import pose_input

        keypoints = torch.stack([self.keypoints(p) for p in poses]).to(self.device)
        return pose_input(keypoints, self.image_size, self.pose_mode, self.sigma)

    @torch.no_grad()
    def decode(self, poses: Sequence[PoseLike], tokens: torch.Tensor) -> torch.Tensor:
        """Style tokens [B, 8, C] rendered in poses -> images [B, 3, H, W] in [-1, 1] (each sample independent)."""
        return self.generator.decode(self.pose_input(poses), tokens)[0]

    def transfer_batch(self, sources: Sequence[PersonLike], poses: Sequence[PoseLike]) -> torch.Tensor:
        return self.decode(poses, self.encode(sources))

    def swap_batch(self, sources: Sequence[PersonLike], poses: Sequence[PoseLike],
                   donors: Mapping[str, PersonLike]) -> torch.Tensor:
        """Each region named in ``donors`` takes the donor's style token (the same donor for the whole batch)."""
        for region in donors:
            control.region_indices(region)  # unknown region: fail before any image is read
        tokens = self.encode(sources)
        donor_tokens = {region: self.encode([donor]) for region, donor in donors.items()}
        return self.decode(poses, control.swap_tokens(tokens, donor_tokens))

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

    def swap(self, source: PersonLike, pose: PoseLike, donors: Mapping[str, PersonLike]) -> torch.Tensor:
        """Try-on / head swap: ``{"upper_clothes": donor}``, ``{"pants": d}``, ``{"head": d}`` (hair + face)."""
        return self.swap_batch([source], [pose], donors)[0]

    def mix(self, source: PersonLike, pose: PoseLike, other: PersonLike, alpha: float,
            regions: str | Iterable[str] | None = None) -> torch.Tensor:
        """Interpolate all (or the chosen) regions' style tokens: alpha 0 = source, 1 = other."""
        return self.mix_batch([source], [pose], other, alpha, regions)[0]

    # ---- pictures

    def pose_picture(self, pose: PoseLike) -> np.ndarray:
        """The skeleton of ``pose`` drawn on black, uint8 [H, W, 3] (for strips)."""
        return visuals.draw_skeleton(self.keypoints(pose), self.image_size)


# --------------------------------------------------------------------------- CLI

def _parse_swaps(values: Sequence[str]) -> dict[str, str]:
    swaps: dict[str, str] = {}
    for value in values:
        region, sep, donor = value.partition("=")
        if not sep or not region or not donor:
            raise CasdError(f"--swap expects REGION=IMAGE (e.g. upper_clothes=NAME.jpg), got {value!r}")
        control.region_indices(region)
        swaps[region.strip()] = donor.strip()
    return swaps


def _parse_parsing(values: Sequence[str], source: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        image, sep, png = value.partition("=")
        if sep:
            out[image] = png
        elif source is None:
            raise CasdError(f"--parsing {value}: give IMAGE=PNG (no --source to attach it to)")
        else:
            out[source] = value
    return out


def _stem(value: Any) -> str:
    name = Path(str(value)).name
    for suffix in (".jpg", ".png", ".jpeg", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _output_stem(source: str, pose: str, swaps: Mapping[str, str], mix: str | None, alpha: float,
                 regions: str | None) -> str:
    stem = f"{_stem(source)}_to_{_stem(pose)}"
    for region, donor in swaps.items():
        stem += f"_swap-{region}-{_stem(donor)}"
    if mix is not None:
        stem += f"_mix-{_stem(mix)}-{alpha:g}" + (f"-{regions.replace(',', '+')}" if regions else "")
    return stem


def generate_pairs(synth: Synthesizer, pairs: Sequence[tuple[str, str]], out_dir: str | Path, *,
                   swaps: Mapping[str, PersonLike] | None = None, mix: PersonLike | None = None,
                   alpha: float = 0.5, regions: str | None = None, batch_size: int = 8,
                   strips: bool = True, strip_scale: int = 1, labels: bool = False) -> list[Path]:
    """Generate (source, target pose) pairs in batches; write ``<stem>.png`` and ``<stem>_strip.png``.

    Strip: source | target pose | [swap donors | mix partner] | result (``labels``: captioned,
    ``strip_scale``: enlarged).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    swaps = dict(swaps or {})
    donors = [synth.person(d) for d in swaps.values()]
    partner = synth.person(mix) if mix is not None else None
    donor_tokens = {region: synth.encode([p]) for region, p in zip(swaps, donors)}
    partner_tokens = synth.encode([partner]) if partner is not None else None
    written: list[Path] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="generate", unit="batch", disable=len(pairs) <= 1):
        chunk = pairs[start:start + batch_size]
        sources = [synth.person(s) for s, _ in chunk]
        poses = [p for _, p in chunk]
        tokens = synth.encode(sources)
        if donor_tokens:
            tokens = control.swap_tokens(tokens, donor_tokens)
        if partner_tokens is not None:
            tokens = control.mix_tokens(tokens, partner_tokens, alpha, regions)
        images = synth.decode(poses, tokens)
        for (source_name, pose_name), person, image in zip(chunk, sources, images):
            stem = _output_stem(source_name, pose_name, {r: str(d) for r, d in swaps.items()},
                                None if mix is None else str(mix), alpha, regions)
            picture = visuals.to_uint8(image)
            written.append(visuals.save_png(picture, out_dir / f"{stem}.png"))
            if strips:
                panels = [person.image, synth.pose_picture(pose_name), *[d.image for d in donors]]
                names = ["source", "target pose", *[f"{region} from" for region in swaps]]
                if partner is not None:
                    panels.append(partner.image)
                    names.append(f"mix {alpha:g}")
                panels = [visuals.to_uint8(p) if isinstance(p, torch.Tensor) else p for p in panels]
                strip = visuals.make_strip([*panels, picture], gap=2, scale=strip_scale,
                                           labels=[*names, "result"] if labels else None)
                written.append(visuals.save_png(strip, out_dir / f"{stem}_strip.png"))
    return written


def cli_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="casd generate",
        description="Pose transfer, try-on (--swap upper_clothes=IMAGE), head swap (--swap head=IMAGE) and style "
                    "interpolation (--mix IMAGE --alpha T [--regions hair,face]) with a trained checkpoint. "
                    f"Regions: {', '.join(REGION_NAMES)}; groups: {', '.join(control.REGION_GROUPS)}.")
    parser.add_argument("--checkpoint", required=True, help="project checkpoint (casd train / casd import-checkpoint)")
    parser.add_argument("--source", help="person: prepared image name, or an image path with --parsing")
    parser.add_argument("--pose", help="target pose: name of an annotated image, or a JSON file of 18 [y, x]")
    parser.add_argument("--pairs", help="pairs CSV (from,to) of prepared names: a batch instead of --source/--pose")
    parser.add_argument("--swap", action="append", default=[], metavar="REGION=IMAGE",
                        help="take REGION's style from IMAGE (repeatable)")
    parser.add_argument("--mix", metavar="IMAGE", help="interpolate style tokens towards this person")
    parser.add_argument("--alpha", type=float, default=0.5, help="--mix amount: 0 = source, 1 = the other person")
    parser.add_argument("--regions", help="--mix only these regions (comma-separated), default all")
    parser.add_argument("--parsing", action="append", default=[], metavar="[IMAGE=]PNG",
                        help="parsing (merged ids 0..7) of an image given by path; plain PNG = the source's")
    parser.add_argument("--out", default="reports/generate", help="output folder (default: %(default)s)")
    parser.add_argument("--params", help="params file the checkpoint was trained with: its model, data.image_size "
                                         "and pose sections must match the checkpoint (default: params.yaml, "
                                         "used only for what the checkpoint does not record)")
    parser.add_argument("--data-root", default=str(DATA_ROOT), help="prepared data (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-strip", action="store_true", help="write only the generated images")
    parser.add_argument("--strip-scale", type=int, default=1, metavar="N",
                        help="enlarge the strip N times (nearest neighbour) and caption its panels when N > 1")
    args = parser.parse_args(argv)

    if args.pairs and (args.source or args.pose):
        raise CasdError("give either --pairs or --source with --pose, not both")
    if not args.pairs and not (args.source and args.pose):
        raise CasdError("give --source and --pose (or --pairs CSV)")
    if args.regions and not args.mix:
        raise CasdError("--regions applies to --mix; for a swap name the region in --swap REGION=IMAGE")
    if args.regions:
        control.region_indices(args.regions)
    swaps = _parse_swaps(args.swap)
    if args.mix is not None and not 0.0 <= args.alpha <= 1.0:
        raise CasdError(f"--alpha must lie in [0, 1], got {args.alpha}")

    from casd.config import load_params

    # An explicit --params must match the checkpoint; the implicit params.yaml only fills gaps.
    params_file = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
    params = load_params(params_file) if params_file else None
    synth = Synthesizer.from_checkpoint(args.checkpoint, params=params, data_root=args.data_root,
                                        device=args.device, check=bool(args.params),
                                        parsing=_parse_parsing(args.parsing, args.source))
    if args.pairs:
        from casd.data.layout import read_pairs

        pairs = read_pairs(args.pairs)
        if not pairs:
            raise DataError(args.pairs, "no pairs")
    else:
        pairs = [(args.source, args.pose)]
    written = generate_pairs(synth, pairs, args.out, swaps=swaps, mix=args.mix, alpha=args.alpha,
                             regions=args.regions, batch_size=args.batch_size, strips=not args.no_strip,
                             strip_scale=max(1, args.strip_scale), labels=args.strip_scale > 1)
    for path in written[:4]:
        print(path)
    if len(written) > 4:
        print(f"... {len(written)} files in {args.out}")
