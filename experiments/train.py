"""Train a VAE variant, select it by inlier validation ELBO, test it on the outlier sets.

    python -m experiments.train [CONFIG.yaml] [key=value ...]

Without a config file the default experiment (Fashion-MNIST vs MNIST) runs. Outputs go to
`out_dir`: results.json, scores.npz, config.yaml, checkpoints/, wandb/.

An interrupted run (killed, preempted, out of time) continues where its last checkpoint left it,
with the same results as if it had never stopped (same data order, random state and
best-checkpoint selection), from the directory the run was started in:

    python -m experiments.train OUT_DIR/config.yaml resume=true

Multi-GPU (or multi-process CPU) training is Lightning DDP, e.g. `trainer.devices=4
trainer.strategy=ddp`; Lightning re-runs this same command for every further process.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omegaconf import DictConfig

from experiments.cli import report_results, run_cli
from experiments.config import DEFAULT_CONFIG, TrainConfig, load_config, split_cli_args


def load_train_config(arguments: Sequence[str]) -> DictConfig:
    """Parse, merge and validate everything before any data is read or any model is built."""
    config_path, overrides = split_cli_args(arguments)
    return load_config(TrainConfig, config_path or str(DEFAULT_CONFIG), overrides)


def main(arguments: Sequence[str]) -> None:
    from experiments.runner import train

    config = load_train_config(arguments)
    out_dir = train(config)
    report_results(out_dir)


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
