"""The DeepFashion data layout: names, readers of the list / pairs / annotation files, label tables.

Lowest layer of the package (numpy and the standard library; torch only inside
:func:`parsing_onehot`). Every reader validates what it reads and reports a bad
entry as one :class:`~casd.errors.DataError` line naming file, row and problem.
With ``data.on_error: skip`` the same errors are collected by an
:class:`ErrorPolicy` instead and written to ``reports/skipped-<stage>.csv``.

``data`` section of params.yaml -> :class:`DataConfig`. Where the raw layout is
read from (:meth:`DataConfig.raw_dir`):

- ``source: synthetic``: ``data/raw``, written by the ``synth`` stage.
- ``source: deepfashion``: ``data.root`` (a real DeepFashion folder laid out as
  in the reference: ``img_highres/``, ``train.lst``, ``test.lst``, the pairs and
  annotation CSVs, ``semantic_merge3/``). The ``synth`` stage then only
  validates that folder and writes ``data/raw/SOURCE.json`` (a manifest with a
  digest of the folder listing), so ``data/raw`` is a DVC dependency of the
  later stages in both modes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from casd.errors import ConfigError, DataError
from casd.fileio import atomic_path, safe_name, write_text

if TYPE_CHECKING:  # pragma: no cover
    import torch

NUM_KEYPOINTS = 18
PHASES = ("train", "test")

# Fixed stage outputs (the interface between stages, see dvc.yaml).
SYNTH_RAW_DIR = Path("data/raw")
SPLIT_DIR = Path("data/split")
RESIZED_DIR = Path("data/resized")
POSE_DIR = Path("data/pose")
PARSING_DIR = Path("data/parsing")
REPORTS_DIR = Path("reports")
SOURCE_MANIFEST = "SOURCE.json"

# File names inside the raw layout.
IMAGE_TREE = "img_highres"
PARSING_TREE = "semantic_merge3"
GENDERS = ("MEN", "WOMEN")
VIEWS = ("front", "side", "back", "full", "additional", "flat")


def list_file(phase: str) -> str:
    return f"{phase}.lst"


def pairs_file(phase: str) -> str:
    return f"fashion-resize-pairs-{phase}.csv"


def annotation_file(phase: str) -> str:
    return f"fashion-resize-annotation-{phase}.csv"


# --------------------------------------------------------------------------- config

@dataclasses.dataclass
class DataConfig:
    """The ``data:`` section of params.yaml.

    image_size: (H, W) of the prepared images. annotation_size: (H, W) of the
    frame the annotation CSV coordinates and the LIP parsing maps are in.
    crop_border: columns cut from the left and from the right, measured in the
    annotation frame; a raw image of another width loses the same fraction of
    its width (``round(crop_border * W_raw / W_ann)`` pixels each side).
    """

    source: str = "synthetic"
    root: str = "data/deepfashion"
    image_size: tuple[int, int] = (64, 44)
    annotation_size: tuple[int, int] = (256, 176)
    crop_border: int = 0
    on_error: str = "fail"
    workers: int = 2

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "deepfashion"):
            raise ConfigError(f"params.yaml [data]: source must be synthetic or deepfashion, got {self.source!r}")
        if self.on_error not in ("fail", "skip"):
            raise ConfigError(f"params.yaml [data]: on_error must be fail or skip, got {self.on_error!r}")
        for key in ("image_size", "annotation_size"):
            value = tuple(getattr(self, key))
            if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
                raise ConfigError(f"params.yaml [data]: {key} must be [H, W] positive integers, got {value!r}")
            setattr(self, key, value)
        if not isinstance(self.crop_border, int) or not 0 <= 2 * self.crop_border < self.annotation_size[1]:
            raise ConfigError(f"params.yaml [data]: crop_border must be an integer in [0, W_ann/2), "
                              f"got {self.crop_border!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"params.yaml [data]: workers must be a positive integer, got {self.workers!r}")
        if self.source == "deepfashion":
            root = Path(self.root).resolve()
            synth = SYNTH_RAW_DIR.resolve()
            if root == synth or synth in root.parents:
                raise ConfigError("params.yaml [data]: with source: deepfashion, root must lie outside data/raw "
                                  "(data/raw is the synth stage's DVC output and is rewritten by it)")

    def raw_dir(self) -> Path:
        """Folder holding the raw DeepFashion layout for the current source."""
        return Path(self.root) if self.source == "deepfashion" else SYNTH_RAW_DIR


# --------------------------------------------------------------------------- errors

class ErrorPolicy:
    """``data.on_error``: raise each :class:`DataError` (fail) or record it and go on (skip).

    >>> policy = ErrorPolicy("skip")
    >>> policy.handle(DataError("a.csv", "bad", row=2))
    >>> policy.skipped
    [('a.csv', 2, 'bad')]
    """

    def __init__(self, on_error: str = "fail"):
        if on_error not in ("fail", "skip"):
            raise ConfigError(f"on_error must be fail or skip, got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[tuple[str, int | None, str]] = []

    def handle(self, error: DataError) -> None:
        if self.on_error == "fail":
            raise error
        self.skipped.append((error.path, error.row, error.problem))

    def write_report(self, stage: str, reports_dir: str | Path = REPORTS_DIR) -> Path | None:
        """In skip mode write ``<reports_dir>/skipped-<stage>.csv`` (file,row,problem) and warn on stderr."""
        if self.on_error != "skip":
            return None
        path = Path(reports_dir) / f"skipped-{stage}.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "row", "problem"])
            for file, row, problem in self.skipped:
                writer.writerow([file, "" if row is None else row, problem])
        if self.skipped:
            print(f"warning: {stage}: skipped {len(self.skipped)} item(s), reasons in {path}", file=sys.stderr)
        return path


# --------------------------------------------------------------------------- names

_ID_RE = re.compile(r"^id_\d{8}$")
_FILE_RE = re.compile(r"^(\d+)_([^/\\]+)\.jpg$")
_CATEGORY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def flat_name(relpath: str | Path) -> str:
    """Raw tree path -> the flat DeepFashion name used by every later stage.

    The last four components are gender / category / identity / file; leading
    ones (``img_highres/``, an absolute root) are ignored. Rule:
    ``"fashion" + gender + category + id-without-underscore + NN + "_" + rest
    without underscores``; categories keep their own underscores.

    >>> flat_name("img_highres/MEN/Denim/id_00000080/01_1_front.jpg")
    'fashionMENDenimid0000008001_1front.jpg'
    >>> flat_name("img_highres/WOMEN/Blouses_Shirts/id_00000044/01_7_additional.jpg")
    'fashionWOMENBlouses_Shirtsid0000004401_7additional.jpg'
    """
    parts = PurePosixPath(str(relpath).replace("\\", "/")).parts
    if len(parts) < 4 or ".." in parts:
        raise DataError(relpath, "expected <gender>/<category>/id_<8 digits>/<NN>_<V>_<view>.jpg")
    gender, category, identity, file = parts[-4:]
    if gender not in GENDERS:
        raise DataError(relpath, f"gender folder {gender!r} is not one of {', '.join(GENDERS)}")
    if not _CATEGORY_RE.match(category):
        raise DataError(relpath, f"category folder {category!r} has characters outside [A-Za-z0-9_-]")
    if not _ID_RE.match(identity):
        raise DataError(relpath, f"identity folder {identity!r} is not id_<8 digits>")
    match = _FILE_RE.match(file)
    if not match:
        raise DataError(relpath, f"file name {file!r} is not <NN>_<rest>.jpg")
    number, rest = match.groups()
    return f"fashion{gender}{category}{identity.replace('_', '')}{number}_{rest.replace('_', '')}.jpg"


def flat_stem(name: str) -> str:
    """``fashion...front.jpg`` -> ``fashion...front`` (the parsing PNG stem)."""
    return name[:-4] if name.endswith(".jpg") else name


# --------------------------------------------------------------------------- readers

def read_list(path: str | Path, policy: ErrorPolicy | None = None) -> list[str]:
    """``train.lst`` / ``test.lst``: flat names, one a line; only lines ending in ``.jpg`` count."""
    policy = policy or ErrorPolicy()
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "list file not found")
    names: list[str] = []
    seen: set[str] = set()
    for row, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name.endswith(".jpg"):
            continue
        try:
            safe_name(name, path, row)
            if name in seen:
                raise DataError(path, f"{name} listed twice", row)
        except DataError as e:
            policy.handle(e)
            continue
        seen.add(name)
        names.append(name)
    return names


def _open_csv(path: Path, separator: str, header: list[str]) -> tuple[list[str], list[list[str]]]:
    """Read a small CSV, checking separator and the columns named in ``header``."""
    if not path.is_file():
        raise DataError(path, "file not found")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(path, "empty file, expected a header line " + separator.join(header))
    first = lines[0]
    if separator not in first:
        other = next((s for s in (",", ":", ";", "\t") if s != separator and s in first), None)
        hint = f"wrong separator {other!r}, expected {separator!r}" if other else f"expected {separator!r}-separated"
        raise DataError(path, f"{hint}; header must be {separator.join(header)}", 1)
    reader = csv.reader(lines, delimiter=separator)
    columns = [c.strip() for c in next(reader)]
    missing = [c for c in header if c not in columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; header is {separator.join(columns)}, "
                              f"expected {separator.join(header)}", 1)
    return columns, list(reader)


def read_pairs_rows(path: str | Path, policy: ErrorPolicy | None = None) -> list[tuple[int, str, str]]:
    """Pairs CSV (header ``from,to``) -> [(row number, source name, target name)], names checked to be plain."""
    policy = policy or ErrorPolicy()
    path = Path(path)
    columns, rows = _open_csv(path, ",", ["from", "to"])
    i_from, i_to = columns.index("from"), columns.index("to")
    pairs: list[tuple[int, str, str]] = []
    for row, values in enumerate(rows, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        try:
            if len(values) != len(columns):
                raise DataError(path, f"{len(values)} fields, expected {len(columns)}", row)
            source, target = values[i_from].strip(), values[i_to].strip()
            pairs.append((row, safe_name(source, path, row), safe_name(target, path, row)))
        except DataError as e:
            policy.handle(e)
    return pairs


def read_pairs(path: str | Path, policy: ErrorPolicy | None = None) -> list[tuple[str, str]]:
    """Pairs CSV (header ``from,to``) -> [(source name, target name)]."""
    return [(a, b) for _, a, b in read_pairs_rows(path, policy)]


def write_pairs(path: str | Path, pairs: list[tuple[str, str]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["from", "to"])
        writer.writerows(pairs)


def parse_keypoint_list(text: str, path: str | Path, row: int, column: str) -> list[int]:
    """A JSON list of 18 integers (a keypoint column of the annotation CSV)."""
    try:
        values = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise DataError(path, f"{column} is not a JSON list: {text[:40]!r}", row) from None
    if not isinstance(values, list):
        raise DataError(path, f"{column} is not a JSON list: {text[:40]!r}", row)
    if len(values) != NUM_KEYPOINTS:
        raise DataError(path, f"{column} has {len(values)} values, expected {NUM_KEYPOINTS}", row)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise DataError(path, f"{column} has non-integer value {bad[0]!r}", row)
    return values


def read_annotations(path: str | Path, frame: tuple[int, int] | None = None,
                     policy: ErrorPolicy | None = None) -> dict[str, np.ndarray]:
    """Annotation CSV (``name:keypoints_y:keypoints_x``) -> {flat name: int array (18, 2) of (y, x)}.

    ``frame`` (H, W): when given, every coordinate must be -1 (missing) or
    inside ``[0, H) x [0, W)``; a joint with only one of y, x missing is
    treated as missing altogether.
    """
    policy = policy or ErrorPolicy()
    path = Path(path)
    header = ["name", "keypoints_y", "keypoints_x"]
    columns, rows = _open_csv(path, ":", header)
    index = [columns.index(c) for c in header]
    out: dict[str, np.ndarray] = {}
    for row, values in enumerate(rows, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        try:
            if len(values) != len(columns):
                raise DataError(path, f"{len(values)} fields, expected {len(columns)} (separator ':')", row)
            name, ys, xs = (values[i].strip() for i in index)
            safe_name(name, path, row)
            if name in out:
                raise DataError(path, f"{name} annotated twice", row)
            kp = np.stack([parse_keypoint_list(ys, path, row, "keypoints_y"),
                           parse_keypoint_list(xs, path, row, "keypoints_x")], axis=1).astype(np.int64)
            missing = (kp == -1).any(axis=1)
            kp[missing] = -1
            if (kp[~missing] < 0).any():
                raise DataError(path, f"{name}: negative coordinate other than -1", row)
            if frame is not None:
                outside = ~missing & ((kp[:, 0] >= frame[0]) | (kp[:, 1] >= frame[1]))
                if outside.any():
                    j = int(np.flatnonzero(outside)[0])
                    raise DataError(path, f"{name}: keypoint {j} at (y={kp[j, 0]}, x={kp[j, 1]}) is outside "
                                          f"the {frame[0]}x{frame[1]} annotation frame", row)
        except DataError as e:
            policy.handle(e)
            continue
        out[name] = kp
    return out


def rescale_keypoints(keypoints: np.ndarray, annotation_size: tuple[int, int], image_size: tuple[int, int],
                      crop_border: int = 0) -> np.ndarray:
    """(..., 18, 2) (y, x) in the annotation frame -> int16 (y, x) in the image frame.

    Crop border c is in annotation pixels, W_c = W_ann - 2c; pixel centres map onto pixel centres,
    as the image resampling does::

        y' = round((y + 0.5) * H / H_ann - 0.5)
        x' = round((x - c + 0.5) * W / W_c - 0.5)

    clipped into [0, H-1] x [0, W-1]. A joint cut away by the crop (x < c or
    x >= W_ann - c) becomes missing; -1 stays -1. Equal frames and no crop: identity.
    """
    kp = np.asarray(keypoints, dtype=np.int64)
    h_ann, w_ann = annotation_size
    h, w = image_size
    width_cropped = w_ann - 2 * crop_border
    missing = (kp < 0).any(axis=-1) | (kp[..., 1] < crop_border) | (kp[..., 1] >= w_ann - crop_border)
    y = np.rint((kp[..., 0] + 0.5) * (h / h_ann) - 0.5)
    x = np.rint((kp[..., 1] - crop_border + 0.5) * (w / width_cropped) - 0.5)
    out = np.stack([np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], axis=-1).astype(np.int16)
    out[missing] = -1
    return out


def write_annotations(path: str | Path, keypoints: dict[str, np.ndarray]) -> None:
    """Inverse of :func:`read_annotations` (rows in the dict's order)."""
    lines = ["name:keypoints_y:keypoints_x"]
    for name, kp in keypoints.items():
        kp = np.asarray(kp, dtype=np.int64)
        lines.append(f"{name}:{json.dumps(kp[:, 0].tolist())}:{json.dumps(kp[:, 1].tolist())}")
    write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- parsing labels

LIP_NAMES = ("background", "hat", "hair", "glove", "sunglasses", "upper_clothes", "dress", "coat", "socks",
             "pants", "jumpsuits", "scarf", "skirt", "face", "left_arm", "right_arm", "left_leg", "right_leg",
             "left_shoe", "right_shoe")
REGION_NAMES = ("background", "pants", "hair", "glove", "face", "upper_clothes", "arms", "legs")
NUM_REGIONS = len(REGION_NAMES)

# LIP-20 id -> merged region id (the style encoder's 8 regions; reference README section 2).
LIP_TO_REGION = np.array([0,   # background
                          2,   # hat -> hair
                          2,   # hair
                          3,   # glove
                          4,   # sunglasses -> face
                          5,   # upper clothes
                          5,   # dress
                          5,   # coat
                          7,   # socks -> legs
                          1,   # pants
                          5,   # jumpsuits
                          5,   # scarf
                          1,   # skirt -> pants
                          4,   # face
                          6,   # left arm
                          6,   # right arm
                          7,   # left leg
                          7,   # right leg
                          7,   # left shoe
                          7],  # right shoe
                         dtype=np.uint8)

# LIP id of the mirrored label under a horizontal flip (left/right arm, leg, shoe swap).
LIP_FLIP = np.arange(20, dtype=np.uint8)
LIP_FLIP[[14, 15, 16, 17, 18, 19]] = [15, 14, 17, 16, 19, 18]


def merge_parsing(lip: np.ndarray) -> np.ndarray:
    """LIP-20 label map (any shape, ids 0..19) -> merged region ids 0..7, one table lookup."""
    return LIP_TO_REGION[lip]


def parsing_onehot(ids: "torch.Tensor") -> "torch.Tensor":
    """Merged region ids [B, H, W] (integer) -> float one-hot [B, 8, H, W]."""
    import torch
    if ids.dtype.is_floating_point or ids.dim() != 3:
        raise ValueError(f"parsing_onehot expects integer ids [B, H, W], got {tuple(ids.shape)} {ids.dtype}")
    return torch.nn.functional.one_hot(ids.long(), NUM_REGIONS).permute(0, 3, 1, 2).float()
