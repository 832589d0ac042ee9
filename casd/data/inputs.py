"""Reading under ``data.root``: the guard against links out of it, and ``data.on_error`` (fail or skip).

Every reader reports a bad entry as one :class:`~casd.errors.DataError` naming
file, row and problem; with ``data.on_error: skip`` an :class:`ErrorPolicy`
collects them instead, and :func:`require_written` keeps an empty result from
passing as a finished stage.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from casd.data.layout import REPORTS_DIR
from casd.errors import ConfigError, DataError
from casd.fileio import atomic_path


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
