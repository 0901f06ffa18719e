"""A training loader that Lightning can stop and continue mid-epoch, for bit-identical resumes.

A plain DataLoader re-shuffles from the global RNG and Lightning restarts its iteration from the
first batch; Lightning 2.x continues a loader mid-epoch only when the loader has `state_dict` /
`load_state_dict`. `ResumableLoader` draws each epoch's order from (seed, epoch) alone and records
how many batches it has served, so a resumed epoch serves exactly the batches that were left.
The random state of the training steps is carried across by `callbacks.resume_point.ResumePoint`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.ood_datamodule import OODDataModule


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

    # Narrower than DataLoader's: this loader needs an EpochSampler and a batch_size (no batch_sampler).
    sampler: EpochSampler
    batch_size: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator, not a _BaseDataLoaderIter
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
        assert self.trainer is not None  # Lightning asks for loaders only once the trainer is attached
        sampler = EpochSampler(plain.dataset, self.trainer.world_size, self.trainer.global_rank, self.seed)
        return ResumableLoader(
            plain.dataset,
            batch_size=plain.batch_size,
            sampler=sampler,
            num_workers=plain.num_workers,
            collate_fn=plain.collate_fn,
            generator=torch.Generator().manual_seed(self.seed),
        )
