"""What an exact resume needs beyond Lightning's checkpoint: the data order and the random state.

Lightning's checkpoint restores weights, optimiser, scheduler and loop counters. Two more things
decide whether a resumed run reproduces the uninterrupted one bit for bit:

1. Where in the epoch's shuffle training stopped. A plain DataLoader re-shuffles from the global
   RNG and Lightning restarts its iteration from the first batch; Lightning 2.x continues a
   loader mid-epoch only when the loader has `state_dict` / `load_state_dict`. `ResumableLoader`
   draws each epoch's order from (seed, epoch) alone and records how many batches it has served,
   so a resumed epoch serves exactly the batches that were left.
2. The global random state, which draws the posterior samples of every training step.
   `ResumePoint` stores the torch / numpy / python RNG states in every checkpoint and puts them
   back right before the first training batch after a resume, i.e. after whatever the relaunch
   itself consumed (model construction, sanity checks).

`ResumePoint` also decides when `checkpoints/last.ckpt` is written: every n training steps and at
every epoch end.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules import OODDataModule

RNG_KEY = "rng_states"


class EpochSampler(DistributedSampler):
    """Each epoch's shuffle from (seed, epoch), sharded over processes, optionally starting late.

    A DistributedSampler already orders an epoch by (seed, epoch) and never touches the global
    RNG; Lightning calls `set_epoch` every epoch and leaves samplers of this type in place under
    DDP. `skip` drops the first samples of the next iteration only (the part of a resumed epoch
    that was trained on before the interruption).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        start, self.skip = self.skip, 0
        return iter(order[start:])


class ResumableLoader(DataLoader):
    """A training DataLoader that Lightning can stop and continue mid-epoch.

    Give it an `EpochSampler` and its own `generator`, so that iterating never draws from the
    global RNG (the worker base seed would otherwise come from it and shift every later draw).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        self._served, self._resume_at = self._resume_at, 0
        self.sampler.skip = self._served * self.batch_size
        return self._count(super().__iter__())

    def _count(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._resume_at = state["batches"]


class ResumableDataModule(OODDataModule):
    """OODDataModule whose training loader is a `ResumableLoader` shuffled by the run seed."""

    def __init__(self, cfg: Any, seed: int) -> None:
        super().__init__(cfg)
        self.seed = seed

    def train_dataloader(self) -> ResumableLoader:
        plain = super().train_dataloader()
        sampler = EpochSampler(plain.dataset, self.trainer.world_size, self.trainer.global_rank, self.seed)
        return ResumableLoader(
            plain.dataset,
            batch_size=plain.batch_size,
            sampler=sampler,
            num_workers=plain.num_workers,
            collate_fn=plain.collate_fn,
            generator=torch.Generator().manual_seed(self.seed),
        )


def capture_rng_states() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain numbers (loadable with weights_only=True)."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
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
        self._pending_rng: Optional[dict[str, Any]] = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.every_n_train_steps
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if every > 0 and trainer.global_step % every == 0 and not last_batch:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = capture_rng_states()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._pending_rng = checkpoint.get(RNG_KEY)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
