"""Gather per-sample rows from every process (ranks may hold different row counts).

Deduplicating the samples a distributed sampler pads in is the scoring core's job
(``scoring.evaluation.deduplicate``); this module only moves rows between processes.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor


def gather_rows(trainer: pl.Trainer, tensor: Tensor) -> Tensor:
    """Concatenate a tensor's rows from every rank, in rank order."""
    if trainer.world_size == 1:
        return tensor
    device = trainer.strategy.root_device
    counts = trainer.strategy.all_gather(torch.tensor([tensor.shape[0]], device=device)).flatten().tolist()
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = trainer.strategy.all_gather(padded.to(device))
    return torch.cat([gathered[rank, :n] for rank, n in enumerate(counts)]).to(tensor.device)
