"""What the fixed Lipschitz constant costs: a training step with and without the constraint.

    python -m benchmarks.lipschitz_overhead [--steps 20] [--repeats 7] [--lipschitz 1.0]

Two `alexandroff_lipschitz` models of the default experiment's architecture, identical but for
the constraint: `model.lipschitz=L` (every encoder layer divided by its
power-iteration operator norm) and `model.lipschitz=inf` (the same layers, plain). Each contender
runs `--steps` training steps (ELBO forward, backward, Adam) on the same real Fashion-MNIST
batches of 128, taking turns round by round; the result is the median of the per-round ratios,
for the whole VAE step and for the encoder alone (forward + backward of its outputs). Target
(issue 10): the constrained step costs at most 1.3x the plain one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

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


def model_with(config: Any, lipschitz: float, image_shape: tuple[int, int, int]) -> BaseVAE:
    pl.seed_everything(SEED, verbose=False)
    model = build_model(
        {**to_dict(config.model), "lipschitz": lipschitz}, to_dict(config.optim), image_shape, 1
    )
    return model.train()


def vae_steps(model: BaseVAE, batches: list[torch.Tensor]) -> Callable[[], None]:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run() -> None:
        for x in batches:
            vae_training_step(model, optimiser, x)

    return run


def encoder_steps(model: BaseVAE, batches: list[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        for x in batches:
            mean, scale = model.encoder(x)
            (mean.square().sum() + scale.square().sum()).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lipschitz", type=float, default=1.0)
    args = parser.parse_args()
    config = default_config(f"data.max_train_samples={args.steps * 128}", "data.batch_size=128")
    datamodule = OODDataModule(config.data)
    datamodule.setup("fit")
    batches = [x for x, _, _ in datamodule.train_dataloader()][: args.steps]
    shape = datamodule.image_shape
    constrained, plain = model_with(config, args.lipschitz, shape), model_with(config, float("inf"), shape)
    contenders = {
        "vae_constrained": vae_steps(constrained, batches),
        "vae_plain": vae_steps(plain, batches),
        "encoder_constrained": encoder_steps(constrained, batches),
        "encoder_plain": encoder_steps(plain, batches),
    }
    for run in contenders.values():  # warm-up: first-use costs of every kernel
        run()
    times = interleaved_times(contenders, args.repeats)
    result = {
        "model": {**to_dict(config.model), "lipschitz": args.lipschitz},
        "steps": len(batches),
        "batch_size": 128,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "times": {name: summary(values) for name, values in times.items()},
        "ratio_vae_step": median_ratio(times["vae_constrained"], times["vae_plain"]),
        "ratio_encoder_step": median_ratio(times["encoder_constrained"], times["encoder_plain"]),
        "target_ratio": 1.3,
    }
    path = write_result("lipschitz_overhead", result)
    print(
        f"constrained / plain: VAE step {result['ratio_vae_step']:.2f}x, encoder step "
        f"{result['ratio_encoder_step']:.2f}x (target <= 1.3x); wrote {path}"
    )


if __name__ == "__main__":
    main()
