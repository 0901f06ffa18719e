"""Train a VAE variant, select it by inlier validation ELBO, test it on the outlier sets.

    python -m experiments.train [CONFIG.yaml] [key=value ...]

Without a config file the default experiment (Fashion-MNIST vs MNIST) runs. Outputs go to
`out_dir`: results.json, scores.npz, config.yaml, checkpoints/, wandb/.
"""

from __future__ import annotations

import sys
from typing import Sequence

from omegaconf import DictConfig

from experiments.cli import run_cli
from experiments.config import DEFAULT_CONFIG, TrainConfig, load_config, split_cli_args, validate_common, validate_scores


def load_train_config(arguments: Sequence[str]) -> DictConfig:
    """Parse, merge and validate everything before any data is read or any model is built."""
    from callbacks.scores import available_scores
    from lightning_modules import check_model_config
    from experiments.runner import to_dict

    config_path, overrides = split_cli_args(arguments)
    config = load_config(TrainConfig, config_path or str(DEFAULT_CONFIG), overrides)
    validate_common(config)
    validate_scores(config, available_scores())
    check_model_config(to_dict(config.model))
    return config


def main(arguments: Sequence[str]) -> None:
    from experiments.runner import train

    config = load_train_config(arguments)
    out_dir, _ = train(config)
    print(f"Results written to {out_dir / 'results.json'}")


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
