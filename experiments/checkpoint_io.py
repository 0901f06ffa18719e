"""Checkpoint files that are never half-written, and named by their contents.

Resuming reads `checkpoints/last.ckpt`, so that file must be complete whenever the process dies,
even by SIGKILL or a power cut in the middle of a save. Lightning's own writer opens the target
path and streams into it; this one writes through ``common.atomic_io.atomic_open`` instead.

An evaluation records the SHA-256 of the checkpoint it scored: a path alone does not say which
weights were there when the results were made (a resumed run rewrites its checkpoints).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from common.atomic_io import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that writes through a temporary file, fsync and os.replace."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"AtomicCheckpointIO.save_checkpoint takes no storage_options (got {storage_options!r}); "
                f"it writes local files only."
            )
        with atomic_open(Path(path), "wb") as stream:
            torch.save(checkpoint, stream)


def checkpoint_sha256(path: Path) -> str:
    """The hex SHA-256 of a checkpoint file, read in 1 MiB blocks (a checkpoint can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
