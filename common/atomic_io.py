"""Atomic output files: a crash or kill never leaves a truncated results file or checkpoint.

Each file is written to a hidden temporary sibling (``.<name>.<random>.tmp``), flushed to disk,
then renamed over the target, and the rename itself is made durable by syncing the directory; a
rename within one directory is atomic on POSIX, so readers see the old file or the new one. A
kill can leave only a stray temporary, which :func:`remove_partial_writes` deletes before a resume.

Files that belong together (results.json and scores.npz) are written as one :class:`AtomicFiles`
group: every file is staged (written and flushed) before any replaces its target, so a kill while
any of them is being written leaves all the previous ones; the renames then follow one another
with no writing in between. Two renames are still two steps: only a kill between them (no I/O
happens there) leaves a new file beside an old one.
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


class AtomicFiles:
    """A group of files staged to temporaries, none of which replaces its target before all are staged.

    Use through :func:`atomic_files`, which commits the group when its block ends and discards
    every temporary when the block raises.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target), in staging order

    @contextmanager
    def open(self, path: Path, mode: str = "w") -> Iterator[IO[Any]]:
        """A stream to the temporary of ``path``, flushed to disk when the block ends."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
        temporary = Path(name)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide results from others
        try:
            with os.fdopen(handle, mode) as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self._staged.append((temporary, path))

    def _commit(self) -> None:
        """Rename every staged temporary over its target, then make the renames durable."""
        try:
            for temporary, path in self._staged:
                os.replace(temporary, path)
        except BaseException:
            self._discard()
            raise
        for directory in dict.fromkeys(path.parent for _, path in self._staged):
            _fsync_directory(directory)

    def _discard(self) -> None:
        for temporary, _ in self._staged:
            temporary.unlink(missing_ok=True)


@contextmanager
def atomic_files() -> Iterator[AtomicFiles]:
    """Write several files so that a kill while writing any of them leaves every previous one."""
    files = AtomicFiles()
    try:
        yield files
    except BaseException:
        files._discard()
        raise
    files._commit()


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    with atomic_files() as files, files.open(path, mode) as stream:
        yield stream


def write_json(path: Path, payload: dict[str, Any], files: AtomicFiles | None = None) -> None:
    """``payload`` as indented JSON; staged in ``files`` when given, else written on its own."""
    with files.open(path, "w") if files is not None else atomic_open(path, "w") as stream:
        json.dump(payload, stream, indent=2, sort_keys=False)
        stream.write("\n")


def write_npz(path: Path, arrays: dict[str, np.ndarray], files: AtomicFiles | None = None) -> None:
    """``arrays`` as a compressed .npz; staged in ``files`` when given, else written on its own."""
    with files.open(path, "wb") if files is not None else atomic_open(path, "wb") as stream:
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
