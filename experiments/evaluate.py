"""Score outlier sets with a trained checkpoint.

    python -m experiments.evaluate ckpt=PATH [data.outliers=[mnist,hflip,/path/to/idx_dir]] [key=value ...]

ckpt is a checkpoint file or a run folder (RUN_DIR: its selected epoch, the one training tested,
RUN_DIR/checkpoints/epochNNN.ckpt). `data`, `scores`, `trainer` and `logger` default to the values
the checkpoint was trained with, except the data folder when DATA_DIR is set: the checkpoint
stores the training machine's path. The outputs (results.json with the checkpoint's path and
SHA-256, scores.npz) go to out_dir, by default RUN_DIR/evaluations/<time>/; an out_dir that holds
anything (a training run above all) is refused, so nothing is overwritten.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from experiments.checkpoint_io import checkpoint_sha256
from experiments.cli import report_results, run_cli
from experiments.config import ConfigError, EvaluateConfig, load_config, split_cli_args

if TYPE_CHECKING:
    from lightning_modules.base import BaseVAE

# The checkpoints ModelCheckpoint keeps in RUN_DIR/checkpoints/ (experiments.runner.checkpoint_callbacks
# names them epoch{epoch:03d}): the selected epoch, by inlier validation ELBO.
SELECTED_CHECKPOINTS = "epoch*.ckpt"


def stored_defaults(run_config: dict[str, Any]) -> dict[str, Any]:
    """The parts of the training config that evaluation inherits.

    Not the data folder when DATA_DIR is set: the checkpoint stores the absolute path of the
    machine it was trained on, and DATA_DIR says where the data is on this one (the schema's
    default data.data_dir reads it). An explicit data.data_dir=... still wins over both.
    """
    keys = ("data", "scores", "plots", "trainer", "logger", "seed")
    defaults = {key: run_config[key] for key in keys if key in run_config}
    if os.environ.get("DATA_DIR") and "data" in defaults:
        defaults["data"] = {key: value for key, value in defaults["data"].items() if key != "data_dir"}
    return defaults


def load_evaluate_config(arguments: Sequence[str], run_config: dict[str, Any]) -> DictConfig:
    config_path, overrides = split_cli_args(arguments)
    return load_config(EvaluateConfig, config_path, overrides, defaults=stored_defaults(run_config))


def load_evaluation(arguments: Sequence[str]) -> tuple[DictConfig, BaseVAE]:
    """The model and the evaluation's full config; no data is read and no folder is created."""
    from experiments.runner import default_eval_dir
    from lightning_modules.factory import load_model

    checkpoint = checkpoint_argument(arguments)
    model = load_model(checkpoint)
    config = load_evaluate_config(arguments, model.hparams.get("run_config") or {})
    record_checkpoint(config, checkpoint)
    if config.out_dir is None:
        config.out_dir = str(default_eval_dir(checkpoint))
    return config, model


def record_checkpoint(config: DictConfig, checkpoint: Path) -> None:
    """Name the exact file scored in the config (results.json and config.yaml keep it): its
    absolute path and SHA-256. A ckpt_sha256 given by the user must match the file."""
    digest = checkpoint_sha256(checkpoint)
    if config.ckpt_sha256 not in (None, digest):
        raise ConfigError(
            f"ckpt_sha256={config.ckpt_sha256} was given, but {checkpoint} has SHA-256 {digest}: it is "
            f"not the checkpoint you meant (replaced, retrained or damaged). Pass the intended file as "
            f"ckpt=PATH, or drop ckpt_sha256 to score this one."
        )
    config.ckpt = str(checkpoint.resolve())
    config.ckpt_sha256 = digest


def checkpoint_argument(arguments: Sequence[str]) -> Path:
    """The checkpoint file of ckpt=PATH: the file itself, or a run folder's selected checkpoint."""
    _, overrides = split_cli_args(arguments)
    values = [item.split("=", 1)[1] for item in overrides if item.split("=", 1)[0] == "ckpt"]
    if not values:
        raise ConfigError(
            "Missing the checkpoint: pass ckpt=PATH (a .ckpt file under OUT_DIR/checkpoints/, or the "
            "run folder OUT_DIR for the epoch that training selected)."
        )
    checkpoint = Path(values[-1])
    if checkpoint.is_dir():
        return selected_checkpoint(checkpoint)
    return checkpoint


def selected_checkpoint(folder: Path) -> Path:
    """RUN_DIR/checkpoints/epochNNN.ckpt, the epoch training selected and tested; a folder that is
    not a run folder, or a run without exactly one such file, is refused with its choices."""
    from experiments.runner import CHECKPOINT_DIR

    checkpoints = folder / CHECKPOINT_DIR
    if not checkpoints.is_dir():
        raise ConfigError(directory_message(folder))
    selected = sorted(checkpoints.glob(SELECTED_CHECKPOINTS))
    if len(selected) == 1:
        return selected[0]
    held = ", ".join(path.name for path in sorted(checkpoints.glob("*.ckpt"))) or "no checkpoint"
    problem = "no selected epoch" if not selected else f"{len(selected)} candidates for the selected epoch"
    raise ConfigError(
        f"ckpt={folder} is a run folder with {problem} in {checkpoints} (it holds {held}); a run "
        f"folder's selected checkpoint is its one epochNNN.ckpt, the best epoch by inlier validation "
        f"ELBO. Pass the checkpoint file to score, ckpt={checkpoints}/NAME.ckpt."
    )


def directory_message(folder: Path) -> str:
    """ckpt= names a folder that is not a run folder: list the checkpoint files it holds to choose from."""
    from experiments.runner import CHECKPOINT_DIR, LAST_CHECKPOINT

    found = sorted(folder.glob("*.ckpt"))
    kinds = (
        f"epochNNN.ckpt is the best epoch by inlier validation ELBO, the one training tested; "
        f"{LAST_CHECKPOINT} is the latest state"
    )
    if found:
        return (
            f"ckpt={folder} is a directory, but ckpt takes one checkpoint file or a run folder (one "
            f"with {CHECKPOINT_DIR}/); {folder} holds {', '.join(path.name for path in found)}. Pass "
            f"one of them, e.g. ckpt={found[0]} ({kinds})."
        )
    return (
        f"ckpt={folder} is a directory, but neither a run folder (one with {CHECKPOINT_DIR}/) nor a "
        f"folder of .ckpt files. Pass a checkpoint file or a run folder: experiments.train writes "
        f"them to OUT_DIR/{CHECKPOINT_DIR}/ ({kinds})."
    )


def main(arguments: Sequence[str]) -> None:
    from experiments.runner import evaluate

    config, model = load_evaluation(arguments)
    out_dir = evaluate(config, model)
    report_results(out_dir)


def cli(argv: Sequence[str] | None = None) -> int:
    """The command line: an evaluation, or --help / --print-config."""
    return run_cli(
        main,
        argv,
        usage=__doc__ or "",
        schema=EvaluateConfig,
        load_config=lambda arguments: load_evaluation(arguments)[0],
    )


def entry_point() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    entry_point()
