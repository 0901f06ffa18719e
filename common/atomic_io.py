"""Atomic output files: a crash or kill never leaves a truncated results file or checkpoint.

Each file is written to a hidden temporary sibling (``.<name>.<random>.tmp``), flushed to disk,
then renamed over the target, and the rename itself is made durable by syncing the directory; a
rename within one directory is atomic on POSIX, so readers see the old file or the new one. A
kill can leave only a stray temporary, which :func:`remove_partial_writes` deletes before a resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide results from others
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_open(path, "w") as stream:
        json.dump(payload, stream, indent=2, sort_keys=False)
        stream.write("\n")


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as stream:
        np.savez_compressed(stream, **arrays)  # type: ignore[arg-type]


def remove_partial_writes(*directories: Path) -> None:
    """Delete temporaries that a killed process left behind (they are never valid files)."""
    for directory in directories:
        for stray in directory.glob(f".*{TEMPORARY_SUFFIX}"):
            stray.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable: without this a power cut may forget it."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
