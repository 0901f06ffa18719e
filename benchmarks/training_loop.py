"""One Lightning training epoch against a bare PyTorch loop of the same model, data and optimiser.

    python -m benchmarks.training_loop [--batches N] [--repeats R]

Both contenders train the default experiment's model (``experiments/configs/fmnist_vs_mnist.yaml``,
built with ``lightning_modules.build_model``) from the same seed, on the same batches of the real
Fashion-MNIST train split (``OODDataModule`` reading ``DATA_DIR``), with the module's own Adam
(``configure_optimizers``):

* ``lightning``: ``Trainer.fit`` for one epoch on the CPU, no validation, no logger, no
  checkpointing, no progress bar or model summary; timed from ``fit`` to its return;
* ``bare``: ``for x in loader: loss = (KL - log p(x|z)).mean(); zero_grad; backward; step``, the
  same loss ``BaseVAE.training_step`` computes.

The slice: ``--batches`` batches of the default batch size, a seeded subset of the train split
(``data.max_train_samples``); ``--batches 0`` uses the whole split. Contenders alternate over
``--repeats`` rounds; the result is the median of the per-round ratios lightning / bare. Both
start from the same seed, so they must end with the same parameters: ``max_parameter_difference``
checks that the comparison times the same computation.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sized
from typing import Any, cast

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from benchmarks.common import (
    default_config,
    interleaved_times,
    median_ratio,
    summary,
    vae_training_step,
    write_result,
)
from datamodules.ood_datamodule import OODDataModule
from experiments.runner import to_dict
from lightning_modules.base import BaseVAE
from lightning_modules.factory import build_model

SEED = 0


def sliced_config(batches: int) -> DictConfig:
    """The default experiment's config, its training set cut to ``batches`` batches (0 = all)."""
    config = default_config()
    return default_config(f"data.max_train_samples={batches * config.data.batch_size}") if batches else config


def fresh_model(config: DictConfig, image_shape: tuple[int, int, int]) -> BaseVAE:
    pl.seed_everything(SEED, verbose=False)
    return build_model(to_dict(config.model), to_dict(config.optim), image_shape, max_epochs=1)


def lightning_epoch(config: DictConfig, datamodule: OODDataModule) -> BaseVAE:
    model = fresh_model(config, datamodule.image_shape)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=tempfile.mkdtemp(prefix="bench-"),
    )
    trainer.fit(model, train_dataloaders=datamodule.train_dataloader())
    return model


def bare_epoch(config: DictConfig, datamodule: OODDataModule) -> BaseVAE:
    model = fresh_model(config, datamodule.image_shape)
    model.train()
    optimiser = _optimiser(model.configure_optimizers())
    loader = datamodule.train_dataloader()
    for step, (x, _, _) in enumerate(loader):
        vae_training_step(model, optimiser, x, model.kl_weight_at(step, len(loader)))
    return model


def _optimiser(configured: Any) -> torch.optim.Optimizer:
    """The optimiser of ``configure_optimizers``'s answer (its epoch-level scheduler plays no part)."""
    return configured["optimizer"] if isinstance(configured, dict) else configured


def max_parameter_difference(first: BaseVAE, second: BaseVAE) -> float:
    return max(float((a - b).detach().abs().max()) for a, b in zip(first.parameters(), second.parameters()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batches", type=int, default=60, help="training batches per epoch (0 = the whole split)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = sliced_config(args.batches)
    datamodule = OODDataModule(config.data)
    datamodule.setup("fit")
    models: dict[str, BaseVAE] = {}
    contenders = {
        "lightning": lambda: models.__setitem__("lightning", lightning_epoch(config, datamodule)),
        "bare": lambda: models.__setitem__("bare", bare_epoch(config, datamodule)),
    }
    lightning_epoch(config, datamodule)  # warm-up: first-use costs of both paths' kernels
    times = interleaved_times(contenders, args.repeats)
    batches = len(datamodule.train_dataloader())
    result = {
        "model": to_dict(config.model),
        "batch_size": config.data.batch_size,
        "batches_per_epoch": batches,
        "images_per_epoch": len(cast(Sized, datamodule.train_dataloader().dataset)),
        "data": "seeded slice of the Fashion-MNIST train split"
        if args.batches
        else "whole Fashion-MNIST train split",
        "repeats": args.repeats,
        "times": {name: summary(values) for name, values in times.items()},
        "ratio_lightning_to_bare": median_ratio(times["lightning"], times["bare"]),
        "seconds_per_batch": {
            name: summary([t / batches for t in values])["median_s"] for name, values in times.items()
        },
        "max_parameter_difference": max_parameter_difference(models["lightning"], models["bare"]),
    }
    path = write_result("training_loop", result)
    print(f"ratio lightning/bare = {result['ratio_lightning_to_bare']:.3f}; wrote {path}")


if __name__ == "__main__":
    main()
