"""Errors a user can act on: each names the file (and row) and the problem."""

from __future__ import annotations

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
