"""The dataset's tables: image lists, pairs CSVs, annotation CSVs (keypoints), and their writers.

Each reader checks what it reads (UTF-8, separator, header, field count,
plain names, 18 integer keypoints in the frame) and reports a bad row as one
:class:`~casd.errors.DataError` naming file, row and problem, through the
stage's :class:`~casd.data.inputs.ErrorPolicy`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from casd.data.inputs import ErrorPolicy
from casd.errors import DataError
from casd.fileio import atomic_path, safe_name, write_text

NUM_KEYPOINTS = 18  # OpenPose-18 joints, (y, x) each


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
