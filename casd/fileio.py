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
    tmp_path = None
    try:   # from the temporary file's creation on: an interrupt at any point removes it
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        tmp_path = Path(tmp)
        os.close(fd)
        # mkstemp creates 0600; give the final file the permissions an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise


TEMP_PATTERN = ".*.tmp*"  # what atomic_path names its temporary files


def remove_temp_files(folder: str | Path, recursive: bool = False) -> int:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` (a killed writer), in its sub-folders
    too with ``recursive``; returns how many."""
    removed = 0
    folder = Path(folder)
    if folder.is_dir():
        for path in (folder.rglob if recursive else folder.glob)(TEMP_PATTERN):
            if path.is_file() and ".tmp" in path.name:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def remove_output_temp_files(outputs: list[str | Path]) -> int:
    """Delete what :func:`atomic_path` left for ``outputs`` (a writer killed, even by SIGKILL): in a folder and
    all its sub-folders, or beside a file (that file's temporary names only); returns how many."""
    removed = 0
    for output in map(Path, outputs):
        if output.is_dir():
            removed += remove_temp_files(output, recursive=True)
        elif output.parent.is_dir():
            for path in output.parent.glob(f".{output.name}.*.tmp*"):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


_received: list[int] = []   # stop signals received inside stop_signals_as_interrupt blocks


def _interrupt(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a stop signal came that the code it landed in swallowed.

    Python raises a signal handler's exception wherever the main thread is, also inside a weakref callback or
    a fork handler, which print "Exception ignored" and carry on; long loops call this between items so that
    such a signal still stops them.
    """
    if _received:
        raise KeyboardInterrupt(f"signal {_received[-1]}")


@contextlib.contextmanager
def stop_signals_as_interrupt(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise KeyboardInterrupt, so that ``finally`` clauses (temp-file
    removal) run; :func:`raise_if_interrupted` catches one that landed where exceptions are swallowed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = all(signal.getsignal(s) is not _interrupt for s in signals)
    if outermost:
        _received.clear()
    previous = [signal.signal(s, _interrupt) for s in signals]
    try:
        yield
        if outermost:
            raise_if_interrupted()
    finally:
        for s, handler in zip(signals, previous):
            signal.signal(s, handler)


def sigterm_as_interrupt() -> contextlib.AbstractContextManager[None]:
    """Within the block SIGTERM raises KeyboardInterrupt, so that ``finally`` clauses (temp-file removal) run."""
    return stop_signals_as_interrupt((signal.SIGTERM,))


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
