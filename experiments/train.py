"""Train a VAE variant, select it by inlier validation ELBO, test it on the outlier sets.

    python -m experiments.train [CONFIG.yaml] [key=value ...]

Without a config file the default experiment (Fashion-MNIST vs MNIST) runs. Outputs go to
`out_dir`: results.json, scores.npz, config.yaml, checkpoints/, wandb/. `trainer.NAME=VALUE` passes
any pytorch_lightning.Trainer argument (e.g. trainer.accumulate_grad_batches=2).

An interrupted run (killed, preempted, out of time) continues where its last checkpoint left it,
with the same results as if it had never stopped (same data order, random state and
best-checkpoint selection):

    python -m experiments.train OUT_DIR/config.yaml resume=true

A run folder is self-contained: that command resumes into the folder holding the config.yaml, so
a copied or moved folder resumes into itself. Resuming a finished run only says so, unless
`retest=true` asks to test it again. Only some keys may change on resume (see
experiments/run_dir.py, CHANGEABLE_ON_RESUME); the others decide what the run trains.

Multi-GPU (or multi-process CPU) training is Lightning DDP, e.g. `trainer.devices=4
trainer.strategy=ddp`; Lightning re-runs this same command for every further process.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from experiments.cli import report_results, run_cli
from experiments.config import DEFAULT_CONFIG, TrainConfig, load_config, split_cli_args
from experiments.run_dir import finished_results


def load_train_config(arguments: Sequence[str]) -> DictConfig:
    """Parse, merge and validate everything before any data is read or any model is built.

    On resume the run folder is the one that holds the given config.yaml, whatever out_dir that
    file stores (the folder may have been copied or moved); an explicit out_dir=... still wins.
    """
    config_path, overrides = split_cli_args(arguments)
    config = load_config(TrainConfig, config_path or str(DEFAULT_CONFIG), overrides)
    given_out_dir = any(item.split("=", 1)[0] == "out_dir" for item in overrides)
    if config.resume and config_path is not None and not given_out_dir:
        config.out_dir = str(Path(config_path).absolute().parent)
    return config


def main(arguments: Sequence[str]) -> None:
    config = load_train_config(arguments)
    results = finished_results(Path(config.out_dir)) if config.resume and not config.retest else None
    if results is not None:
        print(
            f"{config.out_dir} holds a finished run: its results are in {results}. Nothing was run "
            f"again; add retest=true to test it again (with a larger trainer.max_epochs to train it "
            f"further first)."
        )
        return
    from experiments.runner import train

    out_dir = train(config)
    report_results(out_dir)


def cli(argv: Sequence[str] | None = None) -> int:
    """The command line: a training run, or --help / --print-config."""
    return run_cli(main, argv, usage=__doc__ or "", schema=TrainConfig, load_config=load_train_config)


def entry_point() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    entry_point()
