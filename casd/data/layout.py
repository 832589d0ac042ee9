"""The DeepFashion data layout: where the raw and prepared files live, and the flat image names.

Raw layout (``data.root``, DeepFashion's release) and prepared layout
(``data/``, :class:`PreparedLayout`, the interface between the stages), and
the rule that turns a raw tree path into the flat name every later stage uses.
Readers of the files are in :mod:`casd.data.tables` (lists, pairs and
annotation CSVs) and :mod:`casd.data.images` (images, parsing maps).
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import re
from pathlib import Path, PurePosixPath

from casd.errors import DataError
from casd.fileio import safe_name, write_json

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

# --------------------------------------------------------------------------- the test stage's outputs

# Written by the test stage (casd.generation), read by the evaluate stage: neither needs the other's code.
GENERATED_DIR = PREPARED.root / "generated"                  # <from>___<to>.png per test pair, and the manifest
PREDICTED_PARSING_DIR = PREPARED.root / "predicted_parsing"  # the same names: predicted target region ids
STRIPS_DIR = PREPARED.root / "strips"                        # the same names: source | pose | generated | ...
GENERATED_MANIFEST = "manifest.json"
PAIR_SEPARATOR = "___"  # between the two stems of an output name; flat DeepFashion names never contain it


def output_name(source: str, target: str) -> str:
    """``<source stem>___<target stem>.png``: the generated picture (and predicted parsing) of one pair."""
    stem = lambda name: name[:-4] if name.lower().endswith((".jpg", ".png")) else name  # noqa: E731
    return safe_name(f"{stem(source)}{PAIR_SEPARATOR}{stem(target)}.png", "pairs")


def write_generated_manifest(out_dir: str | Path, manifest: dict) -> Path:
    """Write ``out_dir/manifest.json`` atomically: ``pairs`` [[from, to, file]], ``fingerprint``, ``complete``, ..."""
    path = Path(out_dir) / GENERATED_MANIFEST
    write_json(path, manifest)
    return path


def read_generated_manifest(out_dir: str | Path = GENERATED_DIR) -> dict:
    """The manifest of a finished test stage (DataError if absent or incomplete)."""
    path = Path(out_dir) / GENERATED_MANIFEST
    if not path.is_file():
        raise DataError(path, "not found: run the test stage first (dvc repro test)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not manifest.get("complete"):
        raise DataError(path, "the test stage did not finish; run it again (it resumes)")
    return manifest


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


