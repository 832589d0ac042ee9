"""``casd annotate``: any photo -> the dataset's inputs (framed image, 18 OpenPose keypoints, LIP-20 parsing).

Per photo: the largest detected person (YOLOX) is framed at the dataset's
aspect (:mod:`casd.annotate.framing`), its COCO keypoints (RTMPose, on the
full-resolution photo) are mapped into the frame and converted to OpenPose's
18 joints (:mod:`casd.annotate.pose`), and the framed image is parsed into
LIP's 20 labels by SCHP (:mod:`casd.annotate.parsing`).

Outputs of ``casd annotate PHOTO... --out DIR``::

    DIR/img/<stem>.jpg              the framed photo, 256x176
    DIR/keypoints/<stem>.json       {"size": [256, 176], "keypoints": 18 [y, x]} (casd generate --pose)
    DIR/semantic_merge3/<stem>.png  LIP-20 ids (as upstream's semantic_merge3 maps)
    DIR/parsing/<stem>.png          the 8 merged regions (casd generate --parsing)
    DIR/annotation.csv              name:keypoints_y:keypoints_x, one row per photo

``casd annotate --deepfashion SRC --out ROOT``: SRC holds ``img_highres/``
photos in DeepFashion's tree plus the lists and pairs CSVs; ROOT becomes a
complete ``data.root`` (framed images under the same paths, lists, pairs,
annotation CSVs, ``semantic_merge3/``).

Models: ``casd weights`` lists the three files (yolox-person, rtmpose-body,
schp-lip); ``casd weights fetch yolox-person rtmpose-body schp-lip`` gets them
where there is internet. Nothing is downloaded implicitly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from casd import weights
from casd.annotate.framing import FRAME_SIZE, MARGIN, Frame, crop, frame_person
from casd.annotate.parsing import INPUT_SIZE, ParserConfig, SCHPParser, load_parser, parse
from casd.annotate.pose import DEFAULT_THRESHOLD, PoseEstimator, coco_to_openpose
from casd.data.images import merge_parsing
from casd.data.layout import (IMAGE_TREE, PARSING_TREE, PHASES, annotation_file, flat_name, flat_stem, list_file,
                              pairs_file)
from casd.data.tables import read_list, read_pairs, write_annotations, write_pairs
from casd.errors import DataError, WeightsError
from casd.fileio import atomic_path, write_json, write_text

# The pretrained files annotation needs (keys of casd.weights.REGISTRY).
DETECTOR_KEY, POSE_KEY, PARSER_KEY = "yolox-person", "rtmpose-body", "schp-lip"
WEIGHT_KEYS = (DETECTOR_KEY, POSE_KEY, PARSER_KEY)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class Annotation:
    """One annotated photo, in the frame: image uint8 RGB [H, W, 3], keypoints int (y, x) [18, 2] (-1 missing),
    lip uint8 LIP-20 ids [H, W]."""

    image: np.ndarray
    keypoints: np.ndarray
    lip: np.ndarray
    frame: Frame

    @property
    def regions(self) -> np.ndarray:
        """The 8 merged style regions, uint8 [H, W]."""
        return merge_parsing(self.lip)


def locate_weights(explicit: dict[str, str] | None = None) -> dict[str, Path]:
    """{key: path} of the three files; one :class:`WeightsError` line naming every missing or bad one."""
    explicit = explicit or {}
    found, problems = {}, []
    for key in WEIGHT_KEYS:
        try:
            found[key] = weights.locate(key, explicit.get(key))
        except WeightsError as e:
            problems.append((key, e))
    if problems:
        missing = [k for k, e in problems if "not found" in str(e)]
        bad = [str(e).split(";")[0] for k, e in problems if k not in missing]
        parts = []
        if missing:
            where = sorted({str(p.parent) for k in missing for p in weights.search_paths(k, explicit.get(k))})
            parts.append(f"missing {', '.join(weights.REGISTRY[k].filename for k in missing)} "
                         f"(looked in {', '.join(where)}); get them with `casd weights fetch {' '.join(missing)}` "
                         f"where there is internet, or copy them into {weights.torch_hub_checkpoints()}")
        parts.extend(bad)
        raise WeightsError("casd annotate needs its pretrained models: " + "; ".join(parts))
    return found


class Annotator:
    """Photo -> :class:`Annotation` with a given pose estimator and parser (see :meth:`from_weights`)."""

    def __init__(self, pose: PoseEstimator, parser: SCHPParser, size: tuple[int, int] = FRAME_SIZE,
                 threshold: float = DEFAULT_THRESHOLD, margin: float = MARGIN,
                 parser_input_size: tuple[int, int] = INPUT_SIZE):
        self.pose = pose
        self.parser = parser
        self.size = (int(size[0]), int(size[1]))
        self.threshold = threshold
        self.margin = margin
        self.parser_input_size = parser_input_size

    @classmethod
    def from_weights(cls, device: str = "cpu", explicit: dict[str, str] | None = None,
                     parser_config: ParserConfig | None = None, **kwargs) -> "Annotator":
        """The released models (located and checked by :mod:`casd.weights`; never downloaded).

        ``explicit``: {weight key: file or folder} looked at before the torch hub cache.
        """
        paths = locate_weights(explicit)
        pose = PoseEstimator(paths[DETECTOR_KEY], paths[POSE_KEY], device="cuda" if device.startswith("cuda")
                             else "cpu")
        return cls(pose, load_parser(paths[PARSER_KEY], parser_config, device=device), **kwargs)

    def __call__(self, photo: Image.Image | np.ndarray, name: str = "photo") -> Annotation:
        """An RGB photo (PIL image or uint8 [H, W, 3]) -> its :class:`Annotation`; no person -> DataError."""
        if isinstance(photo, np.ndarray):
            photo = Image.fromarray(np.asarray(photo, dtype=np.uint8))
        photo = photo.convert("RGB")
        bgr = np.ascontiguousarray(np.asarray(photo)[..., ::-1])
        box = self.pose.detect(bgr)
        if box is None:
            raise DataError(name, "no person detected")
        frame = frame_person(box, self.size, self.margin)
        keypoints_xy, scores = self.pose.keypoints(bgr, box)
        keypoints = coco_to_openpose(frame.to_frame(keypoints_xy), scores, self.threshold, self.size)
        image = crop(photo, frame)
        return Annotation(image, keypoints, parse(self.parser, image, self.parser_input_size), frame)


@functools.lru_cache(maxsize=2)
def _default_annotator(device: str) -> Annotator:
    return Annotator.from_weights(device)


def annotate_image(image: Image.Image | np.ndarray, device: str = "cpu") -> Annotation:
    """One RGB photo -> its :class:`Annotation`: the framed photo (256x176), keypoints and LIP-20 map in that frame.

    The keypoints and maps fit the framed ``.image``, not the photo as given:
    use that image as the person. Missing weights -> :class:`WeightsError`
    (one line naming the files and how to get them); no person ->
    :class:`DataError`. The models load once per device.
    """
    return _default_annotator(device)(image)


# --------------------------------------------------------------------------- writing

def _read_photo(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read photo ({e})") from None


def _save_image(path: Path, array: np.ndarray, **options) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, **options)


def _write_parsing(folder: Path, stem: str, result: Annotation, regions: bool) -> None:
    _save_image(folder / PARSING_TREE / f"{stem}.png", result.lip)
    if regions:
        _save_image(folder / "parsing" / f"{stem}.png", result.regions)


def expand_photos(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders -> their photos (sorted, not recursive)."""
    photos = []
    for path in map(Path, paths):
        if path.is_dir():
            photos += sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        elif path.is_file():
            photos.append(path)
        else:
            raise DataError(path, "photo not found")
    if not photos:
        raise DataError(", ".join(map(str, paths)) or "(none)", "no photos given")
    return photos


def annotate(photos: Sequence[str | Path], out_dir: str | Path, annotator: Annotator | None = None,
             device: str = "cpu") -> dict[str, np.ndarray]:
    """Annotate photo files into ``out_dir`` (layout in the module docstring); returns {name: keypoints}."""
    photos = expand_photos(photos)
    stems = [p.stem for p in photos]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise DataError(photos[stems.index(clash[0])], f"two photos named {clash[0]}: outputs would collide")
    annotator = annotator or Annotator.from_weights(device)
    out = Path(out_dir)
    table: dict[str, np.ndarray] = {}
    for path in photos:
        result = annotator(_read_photo(path), str(path))
        stem = path.stem
        _save_image(out / "img" / f"{stem}.jpg", result.image, quality=95)
        write_json(out / "keypoints" / f"{stem}.json",
                   {"size": list(annotator.size), "keypoints": result.keypoints.tolist()})
        _write_parsing(out, stem, result, regions=True)
        table[f"{stem}.jpg"] = result.keypoints
    write_annotations(out / "annotation.csv", table)
    return table


def _find(root: Path, name: str) -> Path | None:
    """A file of the raw layout, also under the field's ``fasion-`` spelling."""
    for candidate in (name, name.replace("fashion-", "fasion-", 1)):
        if (root / candidate).is_file():
            return root / candidate
    return None


def annotate_deepfashion(src: str | Path, out_root: str | Path, annotator: Annotator | None = None,
                         device: str = "cpu") -> dict[str, int]:
    """A DeepFashion-layout folder of photos -> a complete ``data.root`` at ``out_root``.

    ``src/img_highres/<gender>/<category>/id_<8 digits>/<NN>_<V>_<view>.jpg``
    are framed and annotated. ``train.lst`` / ``test.lst`` and the pairs CSVs
    are copied when present; a missing list is made from the pairs CSV of its
    phase (every name it mentions), and with neither every photo goes to test.
    """
    src, out_root = Path(src), Path(out_root)
    tree = src / IMAGE_TREE
    if not tree.is_dir():
        raise DataError(tree, "image tree not found (expected img_highres/<gender>/<category>/id_*/...)")
    if out_root.resolve() == src.resolve():
        raise DataError(out_root, "output folder must differ from the source folder")
    photos = {flat_name(p.relative_to(src)): p for p in sorted(tree.rglob("*.jpg"))}
    if not photos:
        raise DataError(tree, "no .jpg photos in the image tree")
    lists: dict[str, list[str]] = {}
    for phase in PHASES:
        pairs_path = _find(src, pairs_file(phase))
        if pairs_path is not None:
            write_pairs(out_root / pairs_file(phase), read_pairs(pairs_path))
        list_path = src / list_file(phase)
        if list_path.is_file():
            lists[phase] = read_list(list_path)
        elif pairs_path is not None:
            lists[phase] = sorted({n for pair in read_pairs(pairs_path) for n in pair})
    if not lists:
        lists = {"train": [], "test": sorted(photos)}
    for phase, names in lists.items():
        absent = [n for n in names if n not in photos]
        if absent:
            raise DataError(src / list_file(phase), f"{len(absent)} listed image(s) not in img_highres/, "
                                                    f"first {absent[0]}")
    annotator = annotator or Annotator.from_weights(device)
    keypoints: dict[str, np.ndarray] = {}
    for name in sorted({n for names in lists.values() for n in names}):
        path = photos[name]
        result = annotator(_read_photo(path), str(path))
        _save_image(out_root / path.relative_to(src), result.image, quality=95)
        _write_parsing(out_root, flat_stem(name), result, regions=False)
        keypoints[name] = result.keypoints
    for phase in PHASES:
        names = lists.get(phase, [])
        write_text(out_root / list_file(phase), "".join(f"{n}\n" for n in names))
        write_annotations(out_root / annotation_file(phase), {n: keypoints[n] for n in names})
        if not (out_root / pairs_file(phase)).is_file():
            write_pairs(out_root / pairs_file(phase), [])
    return {f"{phase}_images": len(lists.get(phase, [])) for phase in PHASES}
