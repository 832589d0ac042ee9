"""The DeepFashion data layout: raw and prepared paths, names, readers, the region table.

Every reader validates what it reads and reports a bad entry as one
:class:`~casd.errors.DataError` naming file, row and problem; with
``data.on_error: skip`` an :class:`ErrorPolicy` collects them instead.
"""

from __future__ import annotations

import csv
import dataclasses
import filecmp
import json
import os
import re
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from casd.errors import ConfigError, DataError
from casd.fileio import atomic_path, safe_name, write_text

if TYPE_CHECKING:  # pragma: no cover
    import torch

NUM_KEYPOINTS = 18
PHASES = ("train", "test")

SYNTH_RAW_DIR = Path("data/raw")   # the synth stage's output; data.root of the synthetic source
REPORTS_DIR = Path("reports")
SOURCE_MANIFEST = "SOURCE.json"

# File names inside the raw layout.
IMAGE_TREE = "img_highres"
PARSING_TREE = "semantic_merge3"
GENDERS = ("MEN", "WOMEN")


def list_file(phase: str) -> str:
    return f"{phase}.lst"


def pairs_file(phase: str) -> str:
    return f"fashion-resize-pairs-{phase}.csv"


def annotation_file(phase: str) -> str:
    return f"fashion-resize-annotation-{phase}.csv"


def raw_file(raw_dir: str | Path, name: str) -> Path:
    """``raw_dir/name``, accepting the field's release spelling ``fasion-...`` (sic) for ``fashion-...`` files.

    Both spellings present with different contents is an error; neither is "file not found".
    """
    raw_dir = Path(raw_dir)
    path = raw_dir / name
    if not name.startswith("fashion-"):
        return path
    other = raw_dir / ("fasion-" + name[len("fashion-"):])
    if path.is_file() and other.is_file():
        if not filecmp.cmp(path, other, shallow=False):
            raise DataError(other, f"both {path.name} and {other.name} exist and differ; keep the one you mean")
        return path
    if other.is_file():
        return other
    if not path.is_file():
        raise DataError(path, f"file not found (nor {other.name}, the spelling of the PATN / ADGAN / CASD releases)")
    return path


@dataclasses.dataclass(frozen=True)
class PreparedLayout:
    """Where the prepared data lives under ``root`` (``data/``): the interface between the stages.

    >>> PreparedLayout("data").parsing_map("test", "fashionMENDenimid0000008001_1front.jpg").as_posix()
    'data/parsing/test/fashionMENDenimid0000008001_1front.png'
    """

    root: Path = Path("data")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def split_dir(self) -> Path:
        return self.root / "split"

    @property
    def resized_dir(self) -> Path:
        return self.root / "resized"

    @property
    def pose_dir(self) -> Path:
        return self.root / "pose"

    @property
    def parsing_dir(self) -> Path:
        return self.root / "parsing"

    def pairs(self, phase: str) -> Path:
        """``(from, to)`` CSV of the phase, validated by the split stage."""
        return self.split_dir / f"pairs-{phase}.csv"

    def images(self, phase: str) -> Path:
        """Folder of the resized RGB JPEGs (``data.image_size``)."""
        return self.resized_dir / phase

    def image(self, phase: str, name: str) -> Path:
        return self.images(phase) / name

    def keypoints(self, phase: str) -> Path:
        """npz of keypoints (N, 18, 2) (y, x) in the image frame, -1 missing."""
        return self.pose_dir / f"{phase}.npz"

    def parsing(self, phase: str) -> Path:
        """Folder of the merged parsing PNGs (region ids 0..7)."""
        return self.parsing_dir / phase

    def parsing_map(self, phase: str, name: str) -> Path:
        return self.parsing(phase) / parsing_file_name(name)

    def find_image(self, name: str) -> tuple[Path, str] | None:
        """(path, phase) of the prepared image called ``name`` (``.jpg`` optional) in either phase, or None."""
        file = name if name.endswith(".jpg") else f"{name}.jpg"
        if "/" in file or "\\" in file:
            return None
        for phase in PHASES:
            path = self.image(phase, file)
            if path.is_file():
                return path, phase
        return None

    def image_names(self) -> list[str]:
        """Names of the prepared images of both phases."""
        return [p.name for phase in PHASES if self.images(phase).is_dir() for p in self.images(phase).glob("*.jpg")]


PREPARED = PreparedLayout()

GENERATOR_SIZE_MULTIPLE = 4  # image height and width: the generator down-samples twice


def size_problem(size: object, multiple: int = 1) -> str | None:
    """What ``size`` should be when it is not [H, W] positive integers, each divisible by ``multiple``; else None."""
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        return "[H, W] positive integers"
    if size[0] % multiple or size[1] % multiple:
        return f"[H, W] divisible by {multiple} (the generator down-samples twice)"
    return None

# --------------------------------------------------------------------------- config

RESIZE_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}


@dataclasses.dataclass
class DataConfig:
    """The ``data:`` section of params.yaml (README, "Data formats" and "Switching to real DeepFashion").

    image_size: (H, W) of the prepared images, divisible by 4 (the generator down-samples twice).
    annotation_size: (H, W) of the frame of the annotation coordinates and the LIP parsing maps.
    crop_border: columns cut left and right, in annotation pixels (raw images: the same fraction).
    resize_filter: lanczos | bicubic (PIL's default of ``Image.resize``, what upstream's resize used).
    keypoint_frame: rescale (annotation frame -> image frame) | as_is (upstream: coordinates unchanged).
    parsing_frame: annotation (maps at annotation_size, cropped and resized) | image (maps already at
    image_size, used as they are: upstream's loader).
    follow_external_links: read links under ``root`` that resolve outside it.
    """

    source: str = "synthetic"
    root: str = str(SYNTH_RAW_DIR)
    image_size: tuple[int, int] = (64, 44)
    annotation_size: tuple[int, int] = (256, 176)
    crop_border: int = 0
    resize_filter: str = "lanczos"
    jpeg_quality: int = 95
    keypoint_frame: str = "rescale"
    parsing_frame: str = "annotation"
    follow_external_links: bool = False
    on_error: str = "fail"
    workers: int = 2

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"params.yaml [data]: {key} must be {expected}, got {getattr(self, key)!r}")

        for key, choices in (("source", ("synthetic", "deepfashion")), ("on_error", ("fail", "skip")),
                             ("resize_filter", tuple(RESIZE_FILTERS)), ("keypoint_frame", ("rescale", "as_is")),
                             ("parsing_frame", ("annotation", "image"))):
            if getattr(self, key) not in choices:
                raise bad(key, " or ".join(choices))
        for key, multiple in (("image_size", GENERATOR_SIZE_MULTIPLE), ("annotation_size", 1)):
            problem = size_problem(getattr(self, key), multiple)
            if problem:
                raise bad(key, problem)
            setattr(self, key, tuple(getattr(self, key)))
        if not isinstance(self.crop_border, int) or not 0 <= 2 * self.crop_border < self.annotation_size[1]:
            raise bad("crop_border", "an integer in [0, W_ann/2)")
        if not isinstance(self.jpeg_quality, int) or not 1 <= self.jpeg_quality <= 100:
            raise bad("jpeg_quality", "an integer in 1..100")
        if not isinstance(self.follow_external_links, bool):
            raise bad("follow_external_links", "true or false")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise bad("workers", "a positive integer")
        root, synth = Path(self.root).resolve(), SYNTH_RAW_DIR.resolve()
        if self.source == "synthetic" and root != synth:
            raise ConfigError(f"params.yaml [data]: with source: synthetic, root must be {SYNTH_RAW_DIR} (where the "
                              f"synth stage writes the set), got {self.root!r}")
        if self.source == "deepfashion" and (root == synth or synth in root.parents):
            raise ConfigError(f"params.yaml [data]: with source: deepfashion, root must lie outside {SYNTH_RAW_DIR} "
                              "(the synth stage's output)")

    def raw_dir(self) -> Path:
        """Folder holding the raw DeepFashion layout (``data.root``)."""
        return Path(self.root)

    def resample(self) -> Image.Resampling:
        return RESIZE_FILTERS[self.resize_filter]


# --------------------------------------------------------------------------- inputs under data.root

class InputGuard:
    """Resolves input paths under a raw folder; refuses links that leave it unless allowed. Counts links."""

    def __init__(self, root: str | Path, follow_external_links: bool = False):
        self.root = Path(root)
        self.real_root = self.root.resolve()
        self.follow_external_links = follow_external_links
        self.links = 0

    def resolve(self, path: str | Path) -> Path:
        """The real path of ``path`` (a file or folder under ``root``); DataError if it resolves outside root."""
        path = Path(path)
        real = path.resolve()
        if not self.follow_external_links and real != self.real_root and self.real_root not in real.parents:
            raise DataError(path, f"resolves to {real}, outside data.root ({self.root}); not read "
                                  "(set data.follow_external_links: true to allow links out of data.root)")
        return real

    def walk(self, top: Path, suffix: str, policy: "ErrorPolicy") -> list[tuple[Path, Path]]:
        """Files ending in ``suffix`` under ``top``, links to files and folders followed: sorted [(path, real path)].

        A link is counted in :attr:`links`; one leading outside root goes to ``policy``; a folder reached twice
        (a link cycle) is read once.
        """
        found: list[tuple[Path, Path]] = []
        seen: set[Path] = set()
        stack = [top]
        while stack:
            folder = stack.pop()
            real = folder.resolve()
            if real in seen:
                continue
            seen.add(real)
            with os.scandir(folder) as entries:
                for entry in entries:
                    path = Path(entry.path)
                    real_path = path
                    if entry.is_symlink():
                        self.links += 1
                        try:
                            real_path = self.resolve(path)
                        except DataError as e:
                            policy.handle(e)
                            continue
                    if entry.is_dir():
                        stack.append(path)
                    elif entry.name.endswith(suffix) and entry.is_file():
                        found.append((path, real_path))
        return sorted(found)


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


def require_written(stage: str, phase: str, asked: int, written: int, where: str | Path) -> None:
    """A stage asked for ``asked`` items of ``phase`` that wrote none fails, whatever ``data.on_error`` says:
    an empty result must never pass as a finished stage (call after ``ErrorPolicy.write_report``)."""
    if asked and not written:
        raise DataError(where, f"{stage}: none of the {asked} {phase} item(s) it was asked for could be written "
                               f"(reasons: the warnings above, reports/skipped-{stage}.csv)")


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


def flat_category(name: str) -> str:
    """Flat name -> its gender and category ('' for other names).

    >>> flat_category("fashionWOMENBlouses_Shirtsid0000004401_7additional.jpg")
    'WOMEN Blouses_Shirts'
    """
    match = re.match(r"^fashion(MEN|WOMEN)(.+?)id\d", name)
    return f"{match.group(1)} {match.group(2)}" if match else ""


def flat_person(name: str) -> str:
    """Flat name -> the person it shows (gender, category and identity; the photo number dropped).

    >>> flat_person("fashionWOMENBlouses_Shirtsid0000004401_7additional.jpg")
    'fashionWOMENBlouses_Shirtsid00000044'
    """
    found = re.search(r"id\d{8}", name)
    return name[:found.end()] if found else name


def flat_stem(name: str) -> str:
    """``fashion...front.jpg`` -> ``fashion...front`` (the parsing PNG stem)."""
    return name[:-4] if name.endswith(".jpg") else name


def parsing_file_name(name: str) -> str:
    """``fashion...front.jpg`` -> ``fashion...front.png``: the parsing map of an image."""
    return f"{flat_stem(name)}.png"


# --------------------------------------------------------------------------- readers

def _read_text(path: Path, what: str) -> str:
    """A whole text file, UTF-8 with or without a byte-order mark; whole-file problems name the fix."""
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(path, "the file is UTF-16; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_list(path: str | Path, policy: ErrorPolicy | None = None) -> list[str]:
    """``train.lst`` / ``test.lst``: flat names, one a line; only lines ending in ``.jpg`` count."""
    policy = policy or ErrorPolicy()
    path = Path(path)
    names: list[str] = []
    seen: set[str] = set()
    for row, line in enumerate(_read_text(path, "list file").splitlines(), start=1):
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
    if not names:
        raise DataError(path, "no names ending in .jpg (expected one flat image name a line)")
    return names


def _open_csv(path: Path, separator: str, header: list[str]) -> tuple[list[str], list[list[str]]]:
    """Read a small CSV, checking separator and the columns named in ``header``."""
    lines = _read_text(path, "file").splitlines()
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
    treated as missing altogether. A name with two rows is an error and,
    skipped, has no keypoints.
    """
    policy = policy or ErrorPolicy()
    path = Path(path)
    header = ["name", "keypoints_y", "keypoints_x"]
    columns, rows = _open_csv(path, ":", header)
    index = [columns.index(c) for c in header]
    out: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for row, values in enumerate(rows, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        try:
            if len(values) != len(columns):
                raise DataError(path, f"{len(values)} fields, expected {len(columns)} (separator ':')", row)
            name, ys, xs = (values[i].strip() for i in index)
            safe_name(name, path, row)
            if name in seen:
                out.pop(name, None)
                raise DataError(path, f"{name} annotated twice (each image needs exactly one row)", row)
            seen.add(name)
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

def merge_parsing(lip: np.ndarray) -> np.ndarray:
    """LIP-20 label map (any shape, ids 0..19) -> merged region ids 0..7, one table lookup."""
    return LIP_TO_REGION[lip]


def parsing_onehot(ids: "torch.Tensor") -> "torch.Tensor":
    """Merged region ids [B, H, W] (integer) -> float one-hot [B, 8, H, W]."""
    import torch
    if ids.dtype.is_floating_point or ids.dim() != 3:
        raise ValueError(f"parsing_onehot expects integer ids [B, H, W], got {tuple(ids.shape)} {ids.dtype}")
    return torch.nn.functional.one_hot(ids.long(), NUM_REGIONS).permute(0, 3, 1, 2).float()


# --------------------------------------------------------------------------- prepared files

def _resized(img: Image.Image, path: Path, size: tuple[int, int] | None, resize: Image.Resampling | None,
             what: str) -> Image.Image:
    if size is None or img.size == (size[1], size[0]):
        return img
    if resize is None:
        raise DataError(path, f"{what} is {img.height}x{img.width}, expected {size[0]}x{size[1]} (data.image_size); "
                              "rerun the data stages")
    return img.resize((size[1], size[0]), resize)


def read_image(path: str | Path, size: tuple[int, int] | None = None,
               resize: Image.Resampling | None = None) -> np.ndarray:
    """Image file -> RGB uint8 (H, W, 3). ``size`` (H, W): required size, or resampled with ``resize``."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return np.array(_resized(img.convert("RGB"), path, size, resize, "image"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(path, f"cannot read image ({e})") from None


def read_regions(path: str | Path, size: tuple[int, int] | None = None, resize: bool = False) -> np.ndarray:
    """PNG of merged region ids -> uint8 (H, W) in 0..7. ``size``: required size, or nearest-resized to it."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(path, f"parsing must be a single-channel PNG of region ids, got mode {img.mode}")
            ids = np.asarray(_resized(img, path, size, Image.Resampling.NEAREST if resize else None, "parsing map"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(path, f"cannot read parsing map ({e})") from None
    if ids.size and (int(ids.max()) >= NUM_REGIONS or int(ids.min()) < 0):
        raise DataError(path, f"region id {int(ids.max())} outside the merged ids 0..{NUM_REGIONS - 1} "
                              f"({', '.join(REGION_NAMES)}); LIP-20 maps must be merged first (the segment stage)")
    return ids.astype(np.uint8)
