"""What an exact resume needs beyond Lightning's checkpoint and the resumable loader: the random state.

Lightning's checkpoint restores weights, optimiser, scheduler and loop counters, and
`datamodules.resumable.ResumableLoader` the position in the epoch's shuffle. The global random
state draws the posterior samples of every training step: `ResumePoint` stores the torch / numpy /
python RNG states in every checkpoint and puts them back right before the first training batch
after a resume, i.e. after whatever the relaunch itself consumed (model construction, sanity
checks). It also decides when `checkpoints/last.ckpt` is written: every n training steps and at
every epoch end.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.trainer.states import TrainerFn

RNG_KEY = "rng_states"


def capture_rng_states() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain numbers (loadable with weights_only=True)."""
    # legacy=True is the default; the global RandomState is an MT19937, whose legacy state is this tuple.
    legacy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    _, keys, position, has_gauss, cached_gaussian = legacy_state
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumePoint(Checkpoint):
    """Writes `last.ckpt` every n steps and at every epoch end; carries the RNG states across.

    A `Checkpoint` subclass so that Lightning runs it after the other callbacks and after the
    best-model `ModelCheckpoint` listed before it: the epoch-end `last.ckpt` then already holds
    that epoch's best-model bookkeeping.

    No step checkpoint is written on an epoch's last batch: Lightning resumes such a checkpoint
    as a finished epoch and skips that epoch's validation, whose inlier ELBO selects the best
    model. The epoch-end checkpoint, written after validation, covers that point instead.

    Under DDP every rank restores rank 0's RNG state. The ranks start from the same seed and
    draw equally shaped samples (the distributed sampler pads every rank to the same batches),
    so their states are equal and this is exact.
    """

    def __init__(self, path: Path, every_n_train_steps: int) -> None:
        self.path = Path(path)
        self.every_n_train_steps = every_n_train_steps
        self._pending_rng: dict[str, Any] | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.every_n_train_steps
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if every > 0 and trainer.global_step % every == 0 and not last_batch:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RNG_KEY] = capture_rng_states()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._pending_rng = checkpoint.get(RNG_KEY)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending_rng is not None:
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
