"""The KL warm-up ramps the training loss's KL weight over optimiser steps and then is the ELBO."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from experiments.config import ConfigError
from lightning_modules.config import ModelConfig, OptimConfig
from lightning_modules.factory import build_model


class RecordLoss(pl.Callback):
    """Each training step's KL weight and whether its loss is ``weight * KL - log-likelihood``."""

    def __init__(self) -> None:
        self.weights: list[float] = []
        self.loss_errors: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        logged = {
            name: float(trainer.callback_metrics[f"train/{name}_step"])
            for name in ("kl_weight", "kl", "log_likelihood", "loss")
        }
        self.weights.append(logged["kl_weight"])
        self.loss_errors.append(
            abs(logged["loss"] - (logged["kl_weight"] * logged["kl"] - logged["log_likelihood"]))
        )


def fit(warmup_epochs: float, accumulate: int = 1) -> list[float]:
    torch.manual_seed(0)
    config = ModelConfig(variant="alexandroff", latent_dim=3, width=4, hidden_dim=16)
    optim = asdict(OptimConfig(kl_warmup_epochs=warmup_epochs))
    model = build_model(asdict(config), optim, (1, 8, 8), max_epochs=2)
    images = torch.rand(12, 1, 8, 8)
    loader = DataLoader(TensorDataset(images, torch.zeros(12), torch.arange(12)), batch_size=2)
    recorder = RecordLoss()
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=6, limit_val_batches=0, accumulate_grad_batches=accumulate,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[recorder], log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=loader)
    assert max(recorder.loss_errors) < 1e-3  # the loss is the weighted objective, step by step
    return recorder.weights


def test_the_kl_weight_rises_linearly_over_the_warmup_steps_then_stays_one() -> None:
    # 6 optimiser steps per epoch; a warm-up of half an epoch is 3 steps.
    assert fit(0.5) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1] + [1.0] * 6)
    assert fit(0.0) == [1.0] * 12  # no warm-up: the ELBO from the first step


def test_the_warmup_counts_optimiser_steps_not_batches() -> None:
    # Two batches per optimiser step: 3 steps per epoch, so one epoch of warm-up is 3 steps of 2 batches.
    assert fit(1.0, accumulate=2) == pytest.approx([1 / 3] * 2 + [2 / 3] * 2 + [1.0] * 8)


def test_a_negative_warmup_is_refused() -> None:
    with pytest.raises((ConfigError, ValueError), match="optim.kl_warmup_epochs"):
        OptimConfig(kl_warmup_epochs=-1)
