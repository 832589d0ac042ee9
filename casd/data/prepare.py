"""File-level data preparation stages: split, resize, segment (parallel, atomic, idempotent).

- :func:`split`: ``img_highres`` + ``train.lst`` / ``test.lst`` ->
  ``data/split/{train,test}/<flat name>.jpg`` (hard links where the file
  system allows, copies otherwise) and validated pairs copies
  ``data/split/pairs-{train,test}.csv``. Listed names missing from the tree
  and images in neither list are warnings, written to ``reports/split.json``.
- :func:`resize`: ``data/split`` -> ``data/resized/{train,test}`` at
  ``data.image_size``, after cutting ``data.crop_border`` columns left and
  right (annotation-frame pixels, scaled to the raw width), Lanczos resampling.
- :func:`segment`: ``semantic_merge3/<stem>.png`` (LIP-20 ids, annotation frame)
  of every split image -> ``data/parsing/{train,test}/<stem>.png`` with the
  8 merged region ids (:data:`casd.data.layout.LIP_TO_REGION`), same crop,
  nearest-neighbour resize.

Every output file is written atomically; an output already newer than its
input (and made with the same settings, recorded in a hidden stamp file) is
skipped, and outputs without an input any more are removed. Bad input raises
a :class:`~casd.errors.DataError` naming file / row / problem, or with
``data.on_error: skip`` is listed in ``reports/skipped-<stage>.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from multiprocessing import get_context
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from casd.config import from_dict, load_params
from casd.errors import DataError
from casd.fileio import atomic_path, write_json
from casd.data.layout import (IMAGE_TREE, PARSING_DIR, PARSING_TREE, PHASES, POSE_DIR, REPORTS_DIR, RESIZED_DIR,
                          SPLIT_DIR, DataConfig, ErrorPolicy, LIP_TO_REGION, flat_name, flat_stem, list_file,
                          pairs_file, read_list, read_pairs_rows, write_pairs)

JPEG_QUALITY = 95
STAMP = ".settings.json"
MAX_WARNINGS = 5

# An error found in a worker travels back as (file, row, problem).
Problem = tuple[str, "int | None", str]


# --------------------------------------------------------------------------- helpers

def _warn(message: str, names: list[str]) -> None:
    if names:
        shown = ", ".join(names[:MAX_WARNINGS]) + (f", ... ({len(names)} in all)" if len(names) > MAX_WARNINGS else "")
        print(f"warning: {message}: {shown}", file=sys.stderr)


def _up_to_date(source: Path, target: Path) -> bool:
    try:
        return target.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def _remove_stale(folder: Path, keep: set[str], suffix: str) -> int:
    removed = 0
    if folder.is_dir():
        for path in folder.glob(f"*{suffix}"):
            if path.name not in keep:
                path.unlink()
                removed += 1
    return removed


def _check_stamp(folder: Path, settings: dict) -> bool:
    """True when ``folder`` was last completed with ``settings``; otherwise forget the stamp (redo everything)."""
    stamp = folder / STAMP
    try:
        if json.loads(stamp.read_text(encoding="utf-8")) == settings:
            return True
    except (OSError, ValueError):
        pass
    stamp.unlink(missing_ok=True)
    return False


def _run_jobs(function: Callable[[tuple], Problem | None], jobs: list[tuple], workers: int, desc: str,
              policy: ErrorPolicy, threads: bool = False) -> int:
    """Run ``function`` over ``jobs`` in parallel; each returned problem goes to ``policy``. Returns problems seen."""
    problems = 0
    progress = tqdm(total=len(jobs), desc=desc, unit="file", disable=None)

    def consume(results: Iterable[Problem | None]) -> None:
        nonlocal problems
        for problem in results:
            progress.update()
            if problem is not None:
                problems += 1
                file, row, message = problem
                policy.handle(DataError(file, message, row))

    try:
        if workers <= 1 or len(jobs) < 2:
            consume(map(function, jobs))
        else:
            pool_class = ThreadPool if threads else get_context("fork").Pool
            with pool_class(min(workers, len(jobs))) as pool:
                consume(pool.imap_unordered(function, jobs, chunksize=max(1, min(64, len(jobs) // (8 * workers)))))
    finally:
        progress.close()
    return problems


def _crop_columns(width: int, data: DataConfig) -> int:
    """Columns to cut on each side of an image ``width`` wide (crop_border is in annotation pixels)."""
    return int(round(data.crop_border * width / data.annotation_size[1]))


# --------------------------------------------------------------------------- split

def _place(job: tuple[str, str]) -> Problem | None:
    """Hard-link (or copy) one image to its flat name, atomically; skip it if already in place."""
    source, target = Path(job[0]), Path(job[1])
    try:
        if target.exists() and (os.path.samefile(source, target) or (
                target.stat().st_size == source.stat().st_size and _up_to_date(source, target))):
            return None
        with atomic_path(target) as tmp:
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copy2(source, tmp)
    except OSError as e:
        return str(source), None, f"cannot link or copy: {e.strerror or e}"
    return None


def split(data: DataConfig, raw_dir: str | Path | None = None, out_dir: str | Path = SPLIT_DIR,
          reports_dir: str | Path = REPORTS_DIR) -> dict[str, object]:
    """Place every listed image under ``<out_dir>/<phase>/<flat name>`` and write validated pairs CSVs.

    Returns a summary: per phase, images listed / placed and pairs kept; names
    listed but absent from the tree; images in neither list.
    """
    raw_dir = Path(raw_dir) if raw_dir is not None else data.raw_dir()
    out_dir = Path(out_dir)
    policy = ErrorPolicy(data.on_error)
    tree = raw_dir / IMAGE_TREE
    if not tree.is_dir():
        raise DataError(tree, "image tree not found")

    lists = {phase: read_list(raw_dir / list_file(phase), policy) for phase in PHASES}
    in_train = set(lists["train"])
    for name in [n for n in lists["test"] if n in in_train]:
        policy.handle(DataError(raw_dir / list_file("test"), f"{name} is listed in train.lst too (train and test "
                                                              "must be disjoint); dropped from test"))
    lists["test"] = [n for n in lists["test"] if n not in in_train]

    found: dict[str, Path] = {}
    for path in sorted(tree.rglob("*.jpg")):
        try:
            name = flat_name(path.relative_to(tree))
            if name in found:
                raise DataError(path, f"flat name {name} already taken by {found[name]}")
        except DataError as e:
            policy.handle(e)
            continue
        found[name] = path

    summary: dict[str, object] = {}
    placed: dict[str, set[str]] = {}
    for phase in PHASES:
        names = [n for n in lists[phase] if n in found]
        missing = [n for n in lists[phase] if n not in found]
        _warn(f"{phase}.lst names missing from {tree}", missing)
        jobs = [(str(found[n]), str(out_dir / phase / n)) for n in names]
        problems = _run_jobs(_place, jobs, data.workers, f"split {phase}", policy, threads=True)
        placed[phase] = {n for n in names if (out_dir / phase / n).is_file()}
        _remove_stale(out_dir / phase, placed[phase], ".jpg")
        summary[phase] = {"listed": len(lists[phase]), "placed": len(placed[phase]), "missing_from_tree": missing,
                          "failed": problems}

    listed = set(lists["train"]) | set(lists["test"]) | in_train
    unlisted = sorted(n for n in found if n not in listed)
    _warn(f"images under {tree} in neither list", unlisted)
    summary["unlisted"] = unlisted

    for phase in PHASES:
        source = raw_dir / pairs_file(phase)
        pairs = []
        for row, a, b in read_pairs_rows(source, policy):
            absent = [n for n in (a, b) if n not in placed[phase]]
            if absent:
                policy.handle(DataError(source, f"{' and '.join(absent)} not among the {phase} images", row))
                continue
            pairs.append((a, b))
        write_pairs(out_dir / f"pairs-{phase}.csv", pairs)
        summary[phase]["pairs"] = len(pairs)  # type: ignore[index]
    write_json(Path(reports_dir) / "split.json", summary)
    policy.write_report("split", reports_dir)
    return summary


# --------------------------------------------------------------------------- resize

def _resize_one(job: tuple[str, str, tuple[int, int], int, int]) -> Problem | None:
    """Decode, crop, resample (Lanczos) and write one image atomically."""
    source, target, size, crop_border, annotation_width = job
    try:
        with Image.open(source) as image:
            image.load()
            image = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return source, None, f"corrupt or truncated image ({e})"
    width, height = image.size
    cut = int(round(crop_border * width / annotation_width))
    if cut:
        image = image.crop((cut, 0, width - cut, height))
    image = image.resize((size[1], size[0]), Image.LANCZOS, reducing_gap=3.0)
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return None


def resize(data: DataConfig, split_dir: str | Path = SPLIT_DIR, out_dir: str | Path = RESIZED_DIR,
           reports_dir: str | Path = REPORTS_DIR) -> dict[str, int]:
    """``<split_dir>/<phase>/*.jpg`` -> ``<out_dir>/<phase>/`` at ``data.image_size``; returns {phase: images}."""
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    policy = ErrorPolicy(data.on_error)
    settings = {"image_size": list(data.image_size), "crop_border": data.crop_border,
                "annotation_size": list(data.annotation_size), "quality": JPEG_QUALITY}
    counts = {}
    for phase in PHASES:
        sources = sorted((split_dir / phase).glob("*.jpg"))
        if not (split_dir / phase).is_dir():
            raise DataError(split_dir / phase, "folder not found (run the split stage first)")
        target_dir = out_dir / phase
        current = _check_stamp(target_dir, settings)
        jobs = [(str(s), str(target_dir / s.name), data.image_size, data.crop_border, data.annotation_size[1])
                for s in sources if not (current and _up_to_date(s, target_dir / s.name))]
        target_dir.mkdir(parents=True, exist_ok=True)
        _run_jobs(_resize_one, jobs, data.workers, f"resize {phase}", policy)
        _remove_stale(target_dir, {s.name for s in sources if (target_dir / s.name).is_file()}, ".jpg")
        bad = {Path(p[0]).name for p in policy.skipped}
        for name in bad:  # a skipped (bad) input leaves no output, not an old one
            (target_dir / name).unlink(missing_ok=True)
        write_json(target_dir / STAMP, settings)
        counts[phase] = sum(1 for s in sources if (target_dir / s.name).is_file())
    policy.write_report("resize", reports_dir)
    return counts


# --------------------------------------------------------------------------- segment

def _segment_one(job: tuple[str, str, tuple[int, int], tuple[int, int], int]) -> Problem | None:
    """Validate one LIP-20 map, merge it to 8 regions, crop, resize (nearest) and write it atomically."""
    source, target, size, annotation_size, crop_border = job
    if not os.path.isfile(source):
        return source, None, "parsing map not found"
    try:
        with Image.open(source) as image:
            image.load()
            mode = image.mode
            labels = np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return source, None, f"corrupt or truncated parsing map ({e})"
    if labels.ndim != 2 or mode not in ("L", "P", "I", "I;16"):
        return source, None, f"parsing map has mode {mode}, expected one channel of label ids (L or P)"
    if labels.shape != tuple(annotation_size):
        return (source, None, f"parsing map is {labels.shape[0]}x{labels.shape[1]} (HxW), expected "
                              f"{annotation_size[0]}x{annotation_size[1]} (data.annotation_size)")
    top = int(labels.max()) if labels.size else 0
    if top > 19 or int(labels.min()) < 0:
        return source, None, f"label {top} outside the LIP ids 0..19"
    regions = LIP_TO_REGION[labels.astype(np.intp)]
    if crop_border:
        regions = regions[:, crop_border:annotation_size[1] - crop_border]
    resized = Image.fromarray(np.ascontiguousarray(regions), "L").resize((size[1], size[0]), Image.NEAREST)
    with atomic_path(target) as tmp:
        resized.save(tmp, format="PNG")
    return None


def segment(data: DataConfig, raw_dir: str | Path | None = None, split_dir: str | Path = SPLIT_DIR,
            out_dir: str | Path = PARSING_DIR, reports_dir: str | Path = REPORTS_DIR) -> dict[str, int]:
    """Merged parsing maps for every split image -> ``<out_dir>/<phase>/<stem>.png``; returns {phase: maps}."""
    raw_dir = Path(raw_dir) if raw_dir is not None else data.raw_dir()
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    policy = ErrorPolicy(data.on_error)
    settings = {"image_size": list(data.image_size), "crop_border": data.crop_border,
                "annotation_size": list(data.annotation_size)}
    counts = {}
    for phase in PHASES:
        if not (split_dir / phase).is_dir():
            raise DataError(split_dir / phase, "folder not found (run the split stage first)")
        stems = sorted(flat_stem(p.name) for p in (split_dir / phase).glob("*.jpg"))
        target_dir = out_dir / phase
        current = _check_stamp(target_dir, settings)
        jobs = []
        for stem in stems:
            source, target = raw_dir / PARSING_TREE / f"{stem}.png", target_dir / f"{stem}.png"
            if not (current and _up_to_date(source, target)):
                jobs.append((str(source), str(target), data.image_size, data.annotation_size, data.crop_border))
        target_dir.mkdir(parents=True, exist_ok=True)
        _run_jobs(_segment_one, jobs, data.workers, f"segment {phase}", policy)
        bad = {Path(p[0]).stem for p in policy.skipped}
        for stem in bad:
            (target_dir / f"{stem}.png").unlink(missing_ok=True)
        _remove_stale(target_dir, {f"{s}.png" for s in stems if s not in bad}, ".png")
        write_json(target_dir / STAMP, settings)
        counts[phase] = sum(1 for s in stems if (target_dir / f"{s}.png").is_file())
    policy.write_report("segment", reports_dir)
    return counts


# --------------------------------------------------------------------------- consumers

def available_pairs(phase: str, split_dir: str | Path = SPLIT_DIR, resized_dir: str | Path = RESIZED_DIR,
                    pose_dir: str | Path = POSE_DIR, parsing_dir: str | Path = PARSING_DIR,
                    keypoint_names: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """Pairs of ``pairs-<phase>.csv`` whose two images have a resized image, keypoints and a parsing map.

    With ``data.on_error: skip`` a stage may have dropped an image; the dataset
    uses this to drop the pairs that name it (a warning says how many).
    """
    from casd.data.layout import read_pairs
    pairs = read_pairs(Path(split_dir) / f"pairs-{phase}.csv")
    if keypoint_names is None:
        from casd.data.pose import load_keypoints
        keypoint_names = load_keypoints(Path(pose_dir) / f"{phase}.npz")
    have_keypoints = set(keypoint_names)
    images = {p.name for p in (Path(resized_dir) / phase).glob("*.jpg")}
    parsing = {p.stem for p in (Path(parsing_dir) / phase).glob("*.png")}
    ok = {n for n in images if n in have_keypoints and flat_stem(n) in parsing}
    kept = [(a, b) for a, b in pairs if a in ok and b in ok]
    if len(kept) < len(pairs):
        print(f"warning: {phase}: {len(pairs) - len(kept)} of {len(pairs)} pairs dropped (an image lacks its "
              "resized file, keypoints or parsing map)", file=sys.stderr)
    return kept


# --------------------------------------------------------------------------- stage entry points

def _data_config(params_path: str | Path) -> DataConfig:
    return from_dict(DataConfig, load_params(params_path).get("data"), "data")


def split_from_params(params_path: str | Path = "params.yaml") -> dict[str, object]:
    summary = split(_data_config(params_path))
    print("split: " + ", ".join(f"{p} {summary[p]['placed']} images / {summary[p]['pairs']} pairs"  # type: ignore
                                for p in PHASES) + f" -> {SPLIT_DIR}")
    return summary


def resize_from_params(params_path: str | Path = "params.yaml") -> dict[str, int]:
    data = _data_config(params_path)
    counts = resize(data)
    print(f"resize: {counts} at {data.image_size[0]}x{data.image_size[1]} -> {RESIZED_DIR}")
    return counts


def segment_from_params(params_path: str | Path = "params.yaml") -> dict[str, int]:
    counts = segment(_data_config(params_path))
    print(f"segment: {counts} -> {PARSING_DIR}")
    return counts


def _cli(prog: str, function: Callable[[str], object], argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"casd {prog}", description=f"the {prog} stage (see casd.data.prepare)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    function(parser.parse_args(argv).params)


def split_cli(argv: list[str]) -> None:
    _cli("split", split_from_params, argv)


def resize_cli(argv: list[str]) -> None:
    _cli("resize", resize_from_params, argv)


def segment_cli(argv: list[str]) -> None:
    _cli("segment", segment_from_params, argv)
