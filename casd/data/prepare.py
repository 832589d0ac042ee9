"""The split, resize and segment stages: parallel, atomic, skipping only inputs whose content is unchanged."""

from __future__ import annotations

import csv
import filecmp
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from casd.errors import DataError
from casd.data.parallel import WorkerPool
from casd.fileio import atomic_path, remove_temp_files, sigterm_as_interrupt, write_json
from casd.data.config import DataConfig
from casd.data.images import LIP_TO_REGION
from casd.data.inputs import ErrorPolicy, InputGuard, require_written
from casd.data.layout import (IMAGE_TREE, PARSING_TREE, PHASES, PREPARED, REPORTS_DIR, annotation_file, flat_name,
                              flat_stem, list_file, pairs_file, raw_file)
from casd.data.tables import read_annotations, read_list, read_pairs_rows, write_pairs

MANIFEST = ".inputs.json"   # settings + content digest of the input of every output in the folder
SOURCES = "sources.csv"     # data/split/sources.csv: phase, flat name, the file under data.root it came from
MAX_WARNINGS = 5

# What a worker returns: (output name, input digest or None, problem (file, row, message) or None).
Result = tuple[str, "str | None", "tuple[str, int | None, str] | None"]


def _warn(message: str, names: list[str]) -> None:
    if names:
        shown = ", ".join(names[:MAX_WARNINGS]) + (f", ... ({len(names)} in all)" if len(names) > MAX_WARNINGS else "")
        print(f"warning: {message}: {shown}", file=sys.stderr)


def _remove_stale(folder: Path, keep: set[str], suffix: str) -> None:
    if folder.is_dir():
        for path in folder.glob(f"*{suffix}"):
            if path.name not in keep:
                path.unlink()


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _load_manifest(folder: Path, settings: dict) -> dict[str, str]:
    """{output name: input digest} of the outputs in ``folder`` made with ``settings``; {} otherwise."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("settings") == settings:
            return dict(manifest["inputs"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return {}


def _run_jobs(function: Callable[[tuple], Result], jobs: list[tuple], workers: int, desc: str,
              policy: ErrorPolicy, done: dict[str, str], threads: bool = False) -> None:
    """Run ``function`` over ``jobs`` in parallel; problems go to ``policy``, finished outputs' digests to ``done``.

    A failure, Ctrl-C or SIGTERM stops the pool (:class:`casd.data.parallel.WorkerPool`); the caller removes
    what the killed writers left (:func:`casd.fileio.remove_temp_files`) and records ``done`` so that a rerun
    skips it.
    """
    with tqdm(total=len(jobs), desc=desc, unit="file", disable=None) as progress, sigterm_as_interrupt(), \
            WorkerPool(workers, threads=threads) as pool:
        for name, digest, problem in pool.map(function, jobs):
            progress.update()
            if problem is not None:
                policy.handle(DataError(problem[0], problem[2], problem[1]))
            elif digest is not None:
                done[name] = digest


def _finish(folder: Path, settings: dict, done: dict[str, str], keep: set[str]) -> None:
    """Record the digests of the outputs kept in ``folder``; remove killed writers' temporary files."""
    remove_temp_files(folder)
    write_json(folder / MANIFEST, {"settings": settings, "inputs": {k: v for k, v in sorted(done.items()) if k in keep}})


# --------------------------------------------------------------------------- split

def _place_one(job: tuple[str, str, str]) -> Result:
    """Hard-link (or copy) one image to its flat name, atomically, unless the same content is there."""
    real, shown, target = job
    name = os.path.basename(target)
    try:
        if os.path.exists(target) and (os.path.samefile(real, target) or filecmp.cmp(real, target, shallow=False)):
            return name, "", None
        with atomic_path(target) as tmp:
            tmp.unlink()
            try:
                os.link(real, tmp)
            except OSError:
                shutil.copyfile(real, tmp)
    except OSError as e:
        return name, None, (shown, None, f"cannot link or copy: {e.strerror or e}")
    return name, "", None


def read_sources(split_dir: str | Path = PREPARED.split_dir) -> dict[str, str]:
    """{flat name: the file under data.root it was split from} (``data/split/sources.csv``), {} when absent."""
    path = Path(split_dir) / SOURCES
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["name"]: row["source"] for row in csv.DictReader(f)}


def split(data: DataConfig, raw_dir: str | Path | None = None, out_dir: str | Path = PREPARED.split_dir,
          reports_dir: str | Path = REPORTS_DIR) -> dict[str, object]:
    """Place every listed, present, annotated image under ``<out_dir>/<phase>/<flat name>``; validated pairs CSVs.

    An image listed but absent from ``img_highres/``, or without exactly one annotation row, is an error
    (skipped with its pairs under ``on_error: skip``). Links are followed, files and folders alike; one
    resolving outside the raw folder is refused unless ``data.follow_external_links``. Returns a summary.
    """
    raw_dir = Path(raw_dir) if raw_dir is not None else data.raw_dir()
    out_dir = Path(out_dir)
    policy = ErrorPolicy(data.on_error)
    guard = InputGuard(raw_dir, data.follow_external_links)
    tree = raw_dir / IMAGE_TREE
    if not tree.is_dir():
        raise DataError(tree, "image tree not found")
    guard.resolve(tree)
    list_paths = {phase: raw_dir / list_file(phase) for phase in PHASES}
    lists = _read_lists(list_paths, guard, policy)
    found = _find_images(tree, guard, policy)

    summary: dict[str, object] = {}
    placed: dict[str, set[str]] = {}
    skipped: dict[str, str] = {}   # image -> why it is not placed (named by the pairs it takes along)
    sources: list[tuple[str, str, str]] = []
    for phase in PHASES:
        names = _annotated(phase, lists[phase], found, raw_dir, data, guard, policy, skipped)
        placed[phase] = _place(phase, names, found, out_dir / phase, data.workers, policy, skipped)
        sources += [(phase, n, str(found[n][0])) for n in names if n in placed[phase]]
        summary[phase] = {"listed": len(lists[phase]), "placed": len(placed[phase])}

    listed = set(lists["train"]) | set(lists["test"]) | lists["dropped_from_test"]
    unlisted = sorted(n for n in found if n not in listed)
    _warn(f"images under {tree} in neither list", unlisted)
    summary["unlisted"] = unlisted
    for phase in PHASES:
        summary[phase]["pairs"] = _split_pairs(phase, raw_dir, out_dir, guard, policy, placed[phase], skipped)
    with atomic_path(out_dir / SOURCES) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["phase", "name", "source"])
        writer.writerows(sources)
    summary["links"] = guard.links
    summary["skipped"] = len(policy.skipped)
    write_json(Path(reports_dir) / "split.json", summary)
    policy.write_report("split", reports_dir)
    for phase in PHASES:
        require_written("split", phase, len(lists[phase]), len(placed[phase]), list_paths[phase])
    return summary


def _read_lists(list_paths: dict[str, Path], guard: InputGuard, policy: ErrorPolicy) -> dict:
    """{phase: listed names}; a test name also listed for train is dropped from test (kept under
    ``"dropped_from_test"``, a set, so that it does not count as unlisted)."""
    lists: dict = {}
    for phase, path in list_paths.items():
        guard.resolve(path)
        lists[phase] = read_list(path, policy)
    in_train = set(lists["train"])
    both = [n for n in lists["test"] if n in in_train]
    for name in both:
        policy.handle(DataError(list_paths["test"], f"{name} is listed in train.lst too (train and test must be "
                                                    "disjoint); dropped from test"))
    lists["test"] = [n for n in lists["test"] if n not in in_train]
    lists["dropped_from_test"] = set(both)
    return lists


def _find_images(tree: Path, guard: InputGuard, policy: ErrorPolicy) -> dict[str, tuple[Path, Path]]:
    """{flat name: (path under the raw folder, real path)} of every picture under ``tree``; names unique."""
    found: dict[str, tuple[Path, Path]] = {}
    for path, real in guard.walk(tree, ".jpg", policy):
        try:
            name = flat_name(path.relative_to(tree))
            if name in found:
                raise DataError(path, f"flat name {name} already taken by {found[name][0]}")
        except DataError as e:
            policy.handle(e)
            continue
        found[name] = (path, real)
    return found


def _annotated(phase: str, listed: list[str], found: dict, raw_dir: Path, data: DataConfig, guard: InputGuard,
               policy: ErrorPolicy, skipped: dict[str, str]) -> list[str]:
    """The listed names of ``phase`` with a picture and exactly one valid annotation row; the others in
    ``skipped`` (name -> why) and reported."""
    list_path = raw_dir / list_file(phase)
    names = []
    for name in listed:
        if name in found:
            names.append(name)
            continue
        skipped[name] = f"listed in {list_file(phase)} but not under {IMAGE_TREE}/"
        policy.handle(DataError(list_path, f"{name} is listed but no image under {raw_dir / IMAGE_TREE} has that "
                                           "flat name"))
    annotation_path = raw_file(raw_dir, annotation_file(phase))
    guard.resolve(annotation_path)
    annotated = read_annotations(annotation_path, data.annotation_size, policy)
    for name in [n for n in names if n not in annotated]:
        skipped[name] = f"no valid row in {annotation_path.name}"
        policy.handle(DataError(annotation_path, f"{name} (in {list_file(phase)}) has no valid row; every listed "
                                                 "image needs exactly one"))
    return [n for n in names if n in annotated]


def _place(phase: str, names: list[str], found: dict, target_dir: Path, workers: int, policy: ErrorPolicy,
           skipped: dict[str, str]) -> set[str]:
    """Copy (or link) the pictures of ``names`` into ``target_dir``, in parallel; the names placed. Pictures
    of earlier runs that are no longer placed are removed."""
    done: dict[str, str] = {}
    try:
        jobs = [(str(found[n][1]), str(found[n][0]), str(target_dir / n)) for n in names]
        _run_jobs(_place_one, jobs, workers, f"split {phase}", policy, done, threads=True)
    finally:
        remove_temp_files(target_dir)
    placed = set(done)
    for name in set(names) - placed:
        skipped[name] = f"could not be placed from {found[name][0]}"
    _remove_stale(target_dir, placed, ".jpg")
    return placed


def _split_pairs(phase: str, raw_dir: Path, out_dir: Path, guard: InputGuard, policy: ErrorPolicy,
                 placed: set[str], skipped: dict[str, str]) -> int:
    """Write ``pairs-<phase>.csv`` of the raw pairs whose two pictures were placed; the number written."""
    source = raw_file(raw_dir, pairs_file(phase))
    guard.resolve(source)
    pairs = []
    for row, a, b in read_pairs_rows(source, policy):
        absent = [n for n in (a, b) if n not in placed]
        if absent:
            why = "; ".join(f"{n} {skipped.get(n, f'is not among the {phase} images')}" for n in absent)
            policy.handle(DataError(source, f"pair dropped: {why}", row))
            continue
        pairs.append((a, b))
    write_pairs(out_dir / f"pairs-{phase}.csv", pairs)
    return len(pairs)


# --------------------------------------------------------------------------- resize

def _open_input(source: str, target: str, known: str | None, shown: str,
                what: str) -> tuple[Image.Image | None, str | None, Result | None]:
    """(decoded picture, digest, result) of a job's input; ``result`` is the job's outcome when already decided
    (None: go on): the input cannot be read or decoded, or ``target`` exists and was made from these bytes
    (``known``: the recorded digest)."""
    name = os.path.basename(target)
    try:
        data = Path(source).read_bytes()
    except OSError as e:
        problem = f"{what} not found" if isinstance(e, FileNotFoundError) else f"cannot read: {e.strerror or e}"
        return None, None, (name, None, (shown, None, problem))
    digest = _digest(data)
    if digest == known and os.path.isfile(target):
        return None, digest, (name, digest, None)
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return None, None, (name, None, (shown, None, f"corrupt or truncated {what} ({e})"))
    return picture, digest, None


def _resize_one(job: tuple) -> Result:
    """Decode, crop, resample and write one image atomically, unless its input digest is the recorded one."""
    source, target, shown, known, size, crop_border, annotation_width, resample, quality = job
    picture, digest, done = _open_input(source, target, known, shown, "image")
    if done is not None:
        return done
    name = os.path.basename(target)
    image = picture.convert("RGB")
    width, height = image.size
    cut = int(round(crop_border * width / annotation_width))
    if cut:
        image = image.crop((cut, 0, width - cut, height))
    # Lanczos with a reducing gap (fast, alias-free); bicubic exactly as PIL's Image.resize default (upstream).
    gap = 3.0 if resample == Image.Resampling.LANCZOS else None
    image = image.resize((size[1], size[0]), resample, reducing_gap=gap)
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=quality)
    return name, digest, None


def resize(data: DataConfig, split_dir: str | Path = PREPARED.split_dir, out_dir: str | Path = PREPARED.resized_dir,
           reports_dir: str | Path = REPORTS_DIR) -> dict[str, int]:
    """``<split_dir>/<phase>/*.jpg`` -> ``<out_dir>/<phase>/`` at ``data.image_size``; returns {phase: images}."""
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    policy = ErrorPolicy(data.on_error)
    settings = {"image_size": list(data.image_size), "crop_border": data.crop_border,
                "annotation_size": list(data.annotation_size), "filter": data.resize_filter,
                "quality": data.jpeg_quality}
    shown = read_sources(split_dir)
    counts, asked = {}, {}
    for phase in PHASES:
        if not (split_dir / phase).is_dir():
            raise DataError(split_dir / phase, "folder not found (run the split stage first)")
        sources = sorted((split_dir / phase).glob("*.jpg"))
        target_dir = out_dir / phase
        target_dir.mkdir(parents=True, exist_ok=True)
        known = _load_manifest(target_dir, settings)
        (target_dir / MANIFEST).unlink(missing_ok=True)
        jobs = [(str(s), str(target_dir / s.name), shown.get(s.name, str(s)), known.get(s.name), data.image_size,
                 data.crop_border, data.annotation_size[1], data.resample(), data.jpeg_quality) for s in sources]
        done: dict[str, str] = {}
        try:
            _run_jobs(_resize_one, jobs, data.workers, f"resize {phase}", policy, done)
        finally:
            _finish(target_dir, settings, done, {s.name for s in sources})
        _remove_stale(target_dir, set(done), ".jpg")  # a bad input leaves no output, not an old one
        counts[phase] = len(done)
        asked[phase] = len(sources)
    policy.write_report("resize", reports_dir)
    for phase in PHASES:
        require_written("resize", phase, asked[phase], counts[phase], split_dir / phase)
    return counts


# --------------------------------------------------------------------------- segment

def _segment_one(job: tuple) -> Result:
    """Validate one LIP-20 map, merge it to 8 regions, fit it to the image frame and write it atomically."""
    source, target, known, size, expected, crop_border, frame_key = job
    picture, digest, done = _open_input(source, target, known, source, "parsing map")
    if done is not None:
        return done
    name = os.path.basename(target)
    mode, labels = picture.mode, np.asarray(picture)
    if labels.ndim != 2 or mode not in ("L", "P", "I", "I;16"):
        return name, None, (source, None, f"parsing map has mode {mode}, expected one channel of label ids (L or P)")
    if labels.shape != tuple(expected):
        return name, None, (source, None, f"parsing map is {labels.shape[0]}x{labels.shape[1]} (HxW), expected "
                                          f"{expected[0]}x{expected[1]} ({frame_key})")
    top = int(labels.max()) if labels.size else 0
    if top > 19 or int(labels.min()) < 0:
        return name, None, (source, None, f"label {top} outside the LIP ids 0..19")
    regions = LIP_TO_REGION[labels.astype(np.intp)]
    if crop_border:
        regions = regions[:, crop_border:expected[1] - crop_border]
    result = Image.fromarray(np.ascontiguousarray(regions), "L")
    if result.size != (size[1], size[0]):
        result = result.resize((size[1], size[0]), Image.Resampling.NEAREST)
    with atomic_path(target) as tmp:
        result.save(tmp, format="PNG")
    return name, digest, None


def segment(data: DataConfig, raw_dir: str | Path | None = None, split_dir: str | Path = PREPARED.split_dir,
            out_dir: str | Path = PREPARED.parsing_dir, reports_dir: str | Path = REPORTS_DIR) -> dict[str, int]:
    """Merged parsing maps for every split image -> ``<out_dir>/<phase>/<stem>.png``; returns {phase: maps}.

    ``data.parsing_frame: annotation``: maps at ``annotation_size``, border-cropped, nearest-resized;
    ``image``: maps already at ``image_size``, merged only (upstream's loader).
    """
    raw_dir = Path(raw_dir) if raw_dir is not None else data.raw_dir()
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    policy = ErrorPolicy(data.on_error)
    guard = InputGuard(raw_dir, data.follow_external_links)
    as_image = data.parsing_frame == "image"
    expected = data.image_size if as_image else data.annotation_size
    frame_key = "data.image_size, data.parsing_frame: image" if as_image else "data.annotation_size"
    crop_border = 0 if as_image else data.crop_border
    settings = {"image_size": list(data.image_size), "crop_border": crop_border, "frame": list(expected)}
    counts, asked = {}, {}
    for phase in PHASES:
        if not (split_dir / phase).is_dir():
            raise DataError(split_dir / phase, "folder not found (run the split stage first)")
        stems = sorted(flat_stem(p.name) for p in (split_dir / phase).glob("*.jpg"))
        target_dir = out_dir / phase
        target_dir.mkdir(parents=True, exist_ok=True)
        known = _load_manifest(target_dir, settings)
        (target_dir / MANIFEST).unlink(missing_ok=True)
        jobs = []
        for stem in stems:
            source = raw_dir / PARSING_TREE / f"{stem}.png"
            try:
                if source.is_symlink():
                    guard.links += 1
                guard.resolve(source)
            except DataError as e:
                policy.handle(e)
                continue
            jobs.append((str(source), str(target_dir / f"{stem}.png"), known.get(f"{stem}.png"), data.image_size,
                         expected, crop_border, frame_key))
        done: dict[str, str] = {}
        try:
            _run_jobs(_segment_one, jobs, data.workers, f"segment {phase}", policy, done)
        finally:
            _finish(target_dir, settings, done, {f"{s}.png" for s in stems})
        _remove_stale(target_dir, set(done), ".png")
        counts[phase] = len(done)
        asked[phase] = len(stems)
    counts["links"] = guard.links
    policy.write_report("segment", reports_dir)
    for phase in PHASES:
        require_written("segment", phase, asked[phase], counts[phase], raw_dir / PARSING_TREE)
    return counts
