"""Score outlier sets with a trained checkpoint.

    python -m experiments.evaluate ckpt=PATH [data.outliers=[mnist,hflip,/path/to/idx_dir]] [key=value ...]

`data`, `scores`, `trainer` and `logger` default to the values the checkpoint was trained with;
the outputs (results.json, scores.npz) go to out_dir, by default RUN_DIR/evaluations/<time>/; an
out_dir that holds anything (a training run above all) is refused, so nothing is overwritten.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.cli import report_results, run_cli
from experiments.config import ConfigError, EvaluateConfig, load_config, split_cli_args


def stored_defaults(run_config: dict) -> dict:
    """The parts of the training config that evaluation inherits."""
    keys = ("data", "scores", "plots", "trainer", "logger", "seed")
    return {key: run_config[key] for key in keys if key in run_config}


def load_evaluate_config(arguments: Sequence[str], run_config: dict) -> DictConfig:
    config_path, overrides = split_cli_args(arguments)
    base = OmegaConf.merge(OmegaConf.structured(EvaluateConfig), stored_defaults(run_config))
    return load_config(base, config_path, overrides)


def checkpoint_argument(arguments: Sequence[str]) -> Path:
    _, overrides = split_cli_args(arguments)
    values = [item.split("=", 1)[1] for item in overrides if item.split("=", 1)[0] == "ckpt"]
    if not values:
        raise ConfigError("Missing the checkpoint: pass ckpt=PATH (a .ckpt file under OUT_DIR/checkpoints/).")
    checkpoint = Path(values[-1])
    if checkpoint.is_dir():
        raise ConfigError(directory_message(checkpoint))
    return checkpoint


def directory_message(folder: Path) -> str:
    """ckpt= names a folder (a run folder, typically): list the checkpoint files it holds to choose from."""
    from experiments.runner import CHECKPOINT_DIR, LAST_CHECKPOINT

    checkpoints = folder / CHECKPOINT_DIR if (folder / CHECKPOINT_DIR).is_dir() else folder
    found = sorted(checkpoints.glob("*.ckpt"))
    kinds = (
        f"epochNNN.ckpt is the best epoch by inlier validation ELBO, the one training tested; "
        f"{LAST_CHECKPOINT} is the latest state"
    )
    if found:
        return (
            f"ckpt={folder} is a directory, but ckpt takes one checkpoint file; {checkpoints} holds "
            f"{', '.join(path.name for path in found)}. Pass one of them, e.g. ckpt={found[0]} ({kinds})."
        )
    return (
        f"ckpt={folder} is a directory, and neither it nor its {CHECKPOINT_DIR}/ holds a .ckpt file. Pass a "
        f"checkpoint file: experiments.train writes them to OUT_DIR/{CHECKPOINT_DIR}/ ({kinds})."
    )


def main(arguments: Sequence[str]) -> None:
    from experiments.runner import default_eval_dir, evaluate
    from lightning_modules.factory import load_model

    checkpoint = checkpoint_argument(arguments)
    model = load_model(checkpoint)
    config = load_evaluate_config(arguments, model.hparams.get("run_config") or {})
    if config.out_dir is None:
        config.out_dir = str(default_eval_dir(checkpoint))
    out_dir = evaluate(config, model)
    report_results(out_dir)


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
