"""Exact evaluation across processes: gather per-sample records and drop sampler padding.

Under DDP the distributed sampler pads every rank's share to the same length by repeating
samples, so naive metrics would count some samples twice. Every record carries (dataset id,
sample index); after gathering, each pair is kept once and records are sorted by it, so every
rank — and a single process — sees exactly the same arrays in the same order.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor


def gather_rows(pl_module: pl.LightningModule, tensor: Tensor) -> Tensor:
    """Concatenate a tensor's rows from every rank (ranks may hold different row counts)."""
    world_size = pl_module.trainer.world_size if pl_module._trainer is not None else 1
    if world_size == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=pl_module.device)
    counts = pl_module.all_gather(count).flatten().tolist()
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = pl_module.all_gather(padded.to(pl_module.device))
    return torch.cat([gathered[rank, :n] for rank, n in enumerate(counts)]).to(tensor.device)


def unique_record_order(dataset_ids: Tensor, indices: Tensor) -> Tensor:
    """Positions that keep one record per (dataset id, index), sorted by that pair."""
    keys = dataset_ids.long() * (int(indices.max().item()) + 1 if indices.numel() else 1) + indices.long()
    sorted_keys, order = torch.sort(keys, stable=True)
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return order[first]
