"""Atomic output files: a crash or kill never leaves a truncated results.json or scores.npz.

Each file is written to a temporary sibling, flushed to disk, then renamed over the target; a
rename within one directory is atomic on POSIX, so readers see the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_open(path, "w") as stream:
        json.dump(payload, stream, indent=2, sort_keys=False)
        stream.write("\n")


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as stream:
        np.savez_compressed(stream, **arrays)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
