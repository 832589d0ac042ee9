"""Reading the dataset's tables at DeepFashion scale: the pandas readers against the previous csv ones.

    python benchmarks/bench_tables.py [--rows 52712] [--pairs 101966] [--repeats 7] [--out reports/bench-tables.json]

Writes a synthetic annotation CSV (``name:[18 y]:[18 x]``, by ``write_annotations`` as the synthetic
data does, 15 % of the joints missing) and a pairs CSV of DeepFashion's sizes in a temporary folder,
then times :func:`casd.data.tables.read_annotations` (with the 256x176 frame check) and
``read_pairs_rows`` against the previous implementation kept below, alternating old and new in one
process, ``--repeats`` times each. Both must return the same tables. Reported: both medians and the
ratio (old / new), the figure of merit on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from casd.data import tables  # noqa: E402
from casd.data.inputs import ErrorPolicy  # noqa: E402
from casd.errors import DataError  # noqa: E402
from casd.fileio import safe_name, write_json  # noqa: E402

FRAME = (256, 176)


# --------------------------------------------------------------------------- previous implementation
# casd/data/tables.py before the pandas readers: csv rows checked one at a time, json.loads per list. The header
# check (tables._open_csv) is the same in both, so the old readers call it.

def previous_read_pairs_rows(path: str | Path, policy: ErrorPolicy | None = None) -> list[tuple[int, str, str]]:
    policy = policy or ErrorPolicy()
    path = Path(path)
    columns, rows = tables._open_csv(path, ",", ["from", "to"])
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


def previous_parse_keypoint_list(text: str, path: str | Path, row: int, column: str) -> list[int]:
    try:
        values = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise DataError(path, f"{column} is not a JSON list: {text[:40]!r}", row) from None
    if not isinstance(values, list):
        raise DataError(path, f"{column} is not a JSON list: {text[:40]!r}", row)
    if len(values) != tables.NUM_KEYPOINTS:
        raise DataError(path, f"{column} has {len(values)} values, expected {tables.NUM_KEYPOINTS}", row)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise DataError(path, f"{column} has non-integer value {bad[0]!r}", row)
    return values


def previous_read_annotations(path: str | Path, frame: tuple[int, int] | None = None,
                              policy: ErrorPolicy | None = None) -> dict[str, np.ndarray]:
    policy = policy or ErrorPolicy()
    path = Path(path)
    header = ["name", "keypoints_y", "keypoints_x"]
    columns, rows = tables._open_csv(path, ":", header)
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
            kp = np.stack([previous_parse_keypoint_list(ys, path, row, "keypoints_y"),
                           previous_parse_keypoint_list(xs, path, row, "keypoints_x")], axis=1).astype(np.int64)
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


# --------------------------------------------------------------------------- the measurement

def write_tables(folder: Path, rows: int, pairs: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    names = [f"fashionWOMENBlouses_Shirtsid{i // 6:08d}{i % 6 + 1:02d}_1front.jpg" for i in range(rows)]
    keypoints = np.stack([rng.integers(0, FRAME[0], (rows, 18)), rng.integers(0, FRAME[1], (rows, 18))], axis=-1)
    keypoints[rng.random((rows, 18)) < 0.15] = -1
    annotations = folder / "fasion-resize-annotation-train.csv"
    tables.write_annotations(annotations, dict(zip(names, keypoints)))
    picks = rng.integers(0, rows, (pairs, 2))
    pairs_csv = folder / "fasion-resize-pairs-train.csv"
    tables.write_pairs(pairs_csv, [(names[a], names[b]) for a, b in picks])
    return annotations, pairs_csv


def interleaved(old, new, repeats: int) -> dict[str, float]:
    """Median seconds of ``old()`` and ``new()``, called alternately (first call of each not counted)."""
    old(), new()
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats):
        for kind, function in (("old", old), ("new", new)):
            start = time.perf_counter()
            function()
            times[kind].append(time.perf_counter() - start)
    old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
    return {"old_median_s": round(old_s, 4), "new_median_s": round(new_s, 4), "ratio": round(old_s / new_s, 2),
            "old_s": [round(t, 4) for t in times["old"]], "new_s": [round(t, 4) for t in times["new"]]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=52712, help="annotation rows (DeepFashion: 52,712 images)")
    parser.add_argument("--pairs", type=int, default=101966, help="pairs rows (DeepFashion train: 101,966)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        annotations, pairs_csv = write_tables(Path(tmp), args.rows, args.pairs)
        old, new = previous_read_annotations(annotations, FRAME), tables.read_annotations(annotations, FRAME)
        assert list(old) == list(new) and all(np.array_equal(old[k], new[k]) for k in old), "tables differ"
        assert previous_read_pairs_rows(pairs_csv) == tables.read_pairs_rows(pairs_csv), "pairs differ"
        results = {
            "machine": f"{os.cpu_count()} CPU cores (shared: the ratio is the figure of merit)",
            "annotations": {"rows": args.rows, "bytes": annotations.stat().st_size,
                            **interleaved(lambda: previous_read_annotations(annotations, FRAME),
                                          lambda: tables.read_annotations(annotations, FRAME), args.repeats)},
            "pairs": {"rows": args.pairs, "bytes": pairs_csv.stat().st_size,
                      **interleaved(lambda: previous_read_pairs_rows(pairs_csv),
                                    lambda: tables.read_pairs_rows(pairs_csv), args.repeats)},
        }
    print(json.dumps(results, indent=2))
    if args.out:
        write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
