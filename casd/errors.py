"""Errors a user can act on: each names the file (and row) and the problem."""

from __future__ import annotations

import errno
from pathlib import Path


class CasdError(Exception):
    """Base class for errors shown to the user as one line, without a traceback."""


class DataError(CasdError):
    """Bad input data: a corrupt image, malformed CSV row, missing file, wrong shape...

    >>> str(DataError("a.csv", "keypoints_y has 17 values, expected 18", row=3))
    'a.csv, row 3: keypoints_y has 17 values, expected 18'
    """

    def __init__(self, path: str | Path, problem: str, row: int | None = None):
        self.path = str(path)
        self.problem = problem
        self.row = row
        where = self.path if row is None else f"{self.path}, row {row}"
        super().__init__(f"{where}: {problem}")


class ConfigError(CasdError):
    """A missing, unknown or ill-typed entry in params.yaml."""


class WeightsError(CasdError):
    """A pretrained weight file that is missing or does not match its checksum."""


# OS errors a user causes and can fix, by errno: what to say after the file name.
_OS_PROBLEMS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
}


def user_error_message(error: BaseException) -> str | None:
    """One line for an error the user caused (a ``CasdError`` or an OS error such as a full disk or a
    read-only folder); None for anything else, which is a bug and keeps its traceback.

    >>> user_error_message(OSError(28, "No space left on device", "out/a.png"))
    'out/a.png: no space left on the device'
    """
    if isinstance(error, CasdError):
        return str(error)
    if isinstance(error, OSError) and error.errno in _OS_PROBLEMS:
        where = error.filename if error.filename is not None else "output"
        other = f" (-> {error.filename2})" if error.filename2 is not None else ""
        return f"{where}{other}: {_OS_PROBLEMS[error.errno]}"
    return None
