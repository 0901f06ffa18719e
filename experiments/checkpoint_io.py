"""Checkpoint files that are never half-written: a kill during a save leaves the previous file.

Resuming reads `checkpoints/last.ckpt`, so that file must be complete whenever the process dies,
even by SIGKILL or a power cut in the middle of a save. Lightning's own writer opens the target
path and streams into it; here the bytes go to a temporary sibling, are flushed to disk, and the
sibling is renamed over the target (a rename within one directory is atomic on POSIX). A kill
can leave only a stray temporary, which `remove_partial_writes` deletes before a resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

# Temporaries are hidden siblings named `.<target>.<pid>.tmp`: unique per writer, easy to sweep.
TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that writes through a temporary file, fsync and os.replace."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"AtomicCheckpointIO.save_checkpoint takes no storage_options (got {storage_options!r}); "
                f"it writes local files only."
            )
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_path(target)
        try:
            with open(temporary, "wb") as stream:
                torch.save(checkpoint, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable: without this a power cut may forget it."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_partial_writes(*directories: Path) -> None:
    """Delete temporaries that a killed process left behind (they are never valid files)."""
    for directory in directories:
        for stray in directory.glob(f".*{TEMPORARY_SUFFIX}"):
            stray.unlink(missing_ok=True)
