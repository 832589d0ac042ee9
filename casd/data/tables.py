"""The dataset's tables: image lists, pairs CSVs, annotation CSVs (keypoints), and their writers.

Each reader checks what it reads (UTF-8, separator, header, field count,
plain names, 18 integer keypoints in the frame) and reports a bad row as one
:class:`~casd.errors.DataError` naming file, row and problem, through the
stage's :class:`~casd.data.inputs.ErrorPolicy`.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from casd.data.inputs import ErrorPolicy
from casd.errors import DataError
from casd.fileio import atomic_path, safe_name, write_text

NUM_KEYPOINTS = 18  # OpenPose-18 joints, (y, x) each
ANNOTATION_COLUMNS = ["name", "keypoints_y", "keypoints_x"]

_WHITESPACE = "".join(filter(str.isspace, map(chr, range(0x3001))))  # what str.strip() strips (none above U+3000)
_UNSAFE_NAME = r"^\.?$|^\.\.|[/\\\x00]"  # the names safe_name may refuse: empty, ".", "..*", a separator, NUL
_JSON_SPACE = "[ \t\n\r]*"
_INT64 = "-?(?:0|[1-9][0-9]{0,17})"  # a JSON integer of at most 18 digits: fits int64
_KEYPOINT_LIST = (rf"\[{_JSON_SPACE}(?:{_INT64}{_JSON_SPACE},{_JSON_SPACE}){{{NUM_KEYPOINTS - 1}}}"
                  rf"{_INT64}{_JSON_SPACE}\]")
_BRACKETS = str.maketrans("[]", "  ")


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
    """(header columns, rows split into fields) of a small CSV; the separator and the columns named in
    ``header`` checked."""
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


def _read_table(path: Path, separator: str, header: list[str],
                field_hint: str = "") -> tuple[pd.DataFrame, list[DataError]]:
    """The rows of a small CSV: the columns named in ``header``, stripped, indexed by row number (line number,
    the header is row 1); blank rows left out. Also the problems found: a row with another number of fields
    than the header's (``field_hint`` appended to its message).

    The fields are split by :mod:`csv` (quotes honoured, one row a line): unlike ``pd.read_csv``, which pads a
    short row, it tells ``a:b`` (2 fields) from ``a:b:`` (3, the last empty), and splits as fast.
    """
    columns, rows = _open_csv(path, separator, header)
    counts = np.fromiter(map(len, rows), dtype=np.intp, count=len(rows))
    fits = counts == len(columns)
    problems = [DataError(path, f"{counts[i]} fields, expected {len(columns)}{field_hint}", int(i) + 2)
                for i in np.flatnonzero(~fits) if any(v.strip() for v in rows[i])]
    table = pd.DataFrame(list(itertools.compress(rows, fits)), index=np.flatnonzero(fits) + 2,
                         columns=range(len(columns)), dtype="string")
    table = table.apply(lambda column: column.str.strip(_WHITESPACE))
    table = table[table.ne("").any(axis=1)]
    table = table[[columns.index(c) for c in header]]
    table.columns = header
    return table, problems


def _unsafe_names(table: pd.DataFrame, columns: list[str], path: Path, problems: list[DataError]) -> pd.Series:
    """Rows with a name that :func:`~casd.fileio.safe_name` refuses (in ``columns``, checked in that order);
    their problems appended to ``problems``."""
    suspect = np.logical_or.reduce([table[c].str.contains(_UNSAFE_NAME).to_numpy(bool) for c in columns])
    unsafe = pd.Series(False, index=table.index)
    for row in table.index[suspect].tolist():
        try:
            for c in columns:
                safe_name(table.at[row, c], path, row)
        except DataError as e:
            problems.append(e)
            unsafe.loc[row] = True
    return unsafe


def _handle(policy: ErrorPolicy, problems: list[DataError]) -> None:
    """Hand ``problems`` to ``policy`` in row order (at most one a row): ``fail`` raises the first row's."""
    for problem in sorted(problems, key=lambda e: e.row):
        policy.handle(problem)


def read_pairs_rows(path: str | Path, policy: ErrorPolicy | None = None) -> list[tuple[int, str, str]]:
    """Pairs CSV (header ``from,to``) -> [(row number, source name, target name)], names checked to be plain."""
    policy = policy or ErrorPolicy()
    path = Path(path)
    table, problems = _read_table(path, ",", ["from", "to"])
    table = table[~_unsafe_names(table, ["from", "to"], path, problems)]
    _handle(policy, problems)
    return list(zip(table.index.tolist(), table["from"].tolist(), table["to"].tolist()))


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
    huge = [v for v in values if not -2 ** 63 <= v < 2 ** 63]
    if huge:
        raise DataError(path, f"{column} has out-of-range value {huge[0]}", row)
    return values


def _parse_keypoints(table: pd.DataFrame, path: Path, problems: list[DataError]) -> tuple[np.ndarray, np.ndarray]:
    """(int64 (N, 18, 2) (y, x) of every row, whether its two lists parsed); the problems appended.

    Lists of 18 plain integers (the whole of a sound file) are recognised and parsed all at once; the few
    others one by one with :func:`parse_keypoint_list`, which names their problem.
    """
    ys, xs = table["keypoints_y"], table["keypoints_x"]
    fast = (ys.str.fullmatch(_KEYPOINT_LIST) & xs.str.fullmatch(_KEYPOINT_LIST)).to_numpy(bool)
    keypoints = np.zeros((len(table), NUM_KEYPOINTS, 2), dtype=np.int64)
    if fast.any():
        text = ys[fast].str.cat(sep=",") + "," + xs[fast].str.cat(sep=",")
        values = np.fromstring(text.translate(_BRACKETS), dtype=np.int64, sep=",")
        keypoints[fast] = values.reshape(2, -1, NUM_KEYPOINTS).transpose(1, 2, 0)
    parsed = fast.copy()
    for i in np.flatnonzero(~fast):
        row = int(table.index[i])
        try:
            keypoints[i] = np.stack([parse_keypoint_list(ys.iat[i], path, row, "keypoints_y"),
                                     parse_keypoint_list(xs.iat[i], path, row, "keypoints_x")], axis=1)
        except DataError as e:
            problems.append(e)
            continue
        parsed[i] = True
    return keypoints, parsed


def _check_coordinates(keypoints: np.ndarray, names: pd.Series, frame: tuple[int, int] | None, path: Path,
                       problems: list[DataError]) -> np.ndarray:
    """Mark a joint with a -1 coordinate missing altogether (in place); whether each row's coordinates are
    sound: -1 or >= 0, and inside ``frame`` when given. The problems appended."""
    missing = (keypoints == -1).any(axis=2)
    keypoints[missing] = -1
    negative = ((keypoints < 0) & ~missing[..., None]).any(axis=(1, 2))
    problems += [DataError(path, f"{names.iat[i]}: negative coordinate other than -1", int(names.index[i]))
                 for i in np.flatnonzero(negative)]
    sound = ~negative
    if frame is not None:
        outside = ~missing & ((keypoints[..., 0] >= frame[0]) | (keypoints[..., 1] >= frame[1])) & sound[:, None]
        for i in np.flatnonzero(outside.any(axis=1)):
            j = int(np.argmax(outside[i]))
            problems.append(DataError(path, f"{names.iat[i]}: keypoint {j} at (y={keypoints[i, j, 0]}, "
                                            f"x={keypoints[i, j, 1]}) is outside the {frame[0]}x{frame[1]} "
                                            "annotation frame", int(names.index[i])))
            sound[i] = False
    return sound


def read_annotations(path: str | Path, frame: tuple[int, int] | None = None,
                     policy: ErrorPolicy | None = None) -> dict[str, np.ndarray]:
    """Annotation CSV (``name:keypoints_y:keypoints_x``) -> {flat name: int array (18, 2) of (y, x)}.

    ``frame`` (H, W): when given, every coordinate must be -1 (missing) or
    inside ``[0, H) x [0, W)``; a joint with only one of y, x missing is
    treated as missing altogether. A name with two rows is an error and,
    skipped, has no keypoints. The rows are checked all at once; each bad
    row's first problem goes to ``policy``, in row order.
    """
    policy = policy or ErrorPolicy()
    path = Path(path)
    table, problems = _read_table(path, ":", ANNOTATION_COLUMNS, " (separator ':')")
    table = table[~_unsafe_names(table, ["name"], path, problems)]
    again = table["name"].duplicated()
    problems += [DataError(path, f"{name} annotated twice (each image needs exactly one row)", row)
                 for row, name in zip(table.index[again].tolist(), table["name"][again].tolist())]
    twice = table["name"].duplicated(keep=False)[~again].to_numpy(bool)
    table = table[~again]
    keypoints, parsed = _parse_keypoints(table, path, problems)
    names = table["name"][parsed]
    keypoints = keypoints[parsed]
    sound = _check_coordinates(keypoints, names, frame, path, problems)
    _handle(policy, problems)
    keep = sound & ~twice[parsed]
    return dict(zip(names[keep].tolist(), keypoints[keep]))


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
