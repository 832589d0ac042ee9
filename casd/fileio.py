"""Atomic file writes and safe names: never a half-written output.

Everything the pipeline writes goes through :func:`atomic_path`: the data is
written to a temporary file beside the target and renamed over it, so that
an interrupted stage leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from casd.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the suffix, so writers that pick a format from
    the extension (PIL, numpy) behave as for the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the final file the permissions an ordinary open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


TEMP_PATTERN = ".*.tmp*"  # what atomic_path names its temporary files


def remove_temp_files(folder: str | Path) -> int:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` (a killed writer); returns how many."""
    removed = 0
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.glob(TEMP_PATTERN):
            if path.is_file() and ".tmp" in path.name:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt, so that ``finally`` clauses (temp-file removal) run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def safe_name(name: str, source: str | Path, row: int | None = None) -> str:
    """Return ``name`` if it is a plain file name; a name that could escape its folder is an error."""
    if (not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name
            or name.startswith("..") or os.path.isabs(name)):
        raise DataError(source, f"unsafe file name {name!r} (path separators and '..' are not allowed)", row)
    return name
