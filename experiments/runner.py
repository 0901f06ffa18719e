"""Assemble the Lightning pieces (data, model, logger, callbacks, Trainer) from a config.

The entry points stay thin: they parse arguments, call one function here, and print where the
outputs went.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from callbacks.ood_evaluation import OODEvaluation
from callbacks.resume_point import ResumePoint
from common.atomic_io import atomic_open, remove_partial_writes
from datamodules.ood_datamodule import OODDataModule
from datamodules.resumable import ResumableDataModule
from experiments.checkpoint_io import AtomicCheckpointIO
from experiments.config import run_started_at
from lightning_modules.base import BaseVAE
from lightning_modules.factory import build_model
from reporting.base import Reporter
from reporting.dashboard import Dashboard
from reporting.results_files import ResultsFiles
from scoring.config import ScoreConfig

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


def to_dict(config: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]


def build_logger(config: DictConfig, out_dir: Path, run_name: str) -> WandbLogger | bool:
    """W&B, offline by default: the run directory lands in out_dir/wandb, `wandb sync` uploads it."""
    settings = config.logger
    if settings.mode == "disabled":
        return False
    return WandbLogger(
        project=settings.project,
        entity=settings.entity,
        name=settings.name or run_name,
        tags=list(settings.tags),
        save_dir=str(out_dir),
        offline=settings.mode == "offline",
        config=to_dict(config),
    )


def build_trainer(
    config: DictConfig,
    out_dir: Path,
    callbacks: list[Callback],
    logger: WandbLogger | bool,
    **overrides: Any,
) -> pl.Trainer:
    trainer_settings = {**to_dict(config.trainer), **overrides}
    return pl.Trainer(
        default_root_dir=str(out_dir),
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        **trainer_settings,
    )


def finish_logger(logger: WandbLogger | bool) -> None:
    """Close the W&B run so its offline files are complete when the process moves on."""
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()


def check_out_dir_is_new(out_dir: Path) -> None:
    checkpoints = out_dir / CHECKPOINT_DIR
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise FileExistsError(
            f"{out_dir} already holds a run (checkpoints in {checkpoints}). Nothing there is "
            f"overwritten: choose another out_dir=PATH."
        )


def resume_checkpoint(out_dir: Path) -> Path:
    """OUT_DIR/checkpoints/last.ckpt of an interrupted run, after clearing its partial writes."""
    last = out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not last.is_file():
        raise FileNotFoundError(
            f"resume=true but {last} does not exist, so there is nothing to resume in "
            f"out_dir={out_dir}. Check out_dir (resume with `python -m experiments.train "
            f"OUT_DIR/config.yaml resume=true` from the directory the run started in), or start "
            f"a new run without resume=true."
        )
    rank_zero_only(remove_partial_writes)(out_dir, last.parent)
    return last


@rank_zero_only
def save_run_config(config: DictConfig, out_dir: Path) -> None:
    """config.yaml, written by one process, atomically: the resume command reads it back."""
    with atomic_open(out_dir / "config.yaml") as stream:
        stream.write(OmegaConf.to_yaml(config, resolve=True))


def checkpoint_callbacks(config: DictConfig, out_dir: Path) -> tuple[ModelCheckpoint, ResumePoint]:
    """The best model by inlier validation ELBO, and last.ckpt to resume from."""
    best = ModelCheckpoint(
        dirpath=out_dir / CHECKPOINT_DIR,
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/elbo",  # inlier-only: outlier labels never select the model
        mode="max",
    )
    return best, ResumePoint(out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, config.checkpoint_every_n_steps)


def evaluation_callback(config: DictConfig, out_dir: Path) -> OODEvaluation:
    """The OOD evaluation with its reporters: results files and the dashboard."""
    scores: ScoreConfig = OmegaConf.to_object(config.scores)  # type: ignore[assignment]
    reporters: list[Reporter] = [ResultsFiles(out_dir), Dashboard(OmegaConf.to_object(config.plots), out_dir)]  # type: ignore[arg-type]
    return OODEvaluation(scores, reporters, run_info(config))


def train(config: DictConfig) -> Path:
    """Fit (or resume fitting), select the checkpoint by inlier validation ELBO, test it, write outputs."""
    out_dir = Path(config.out_dir)
    resume_from = resume_checkpoint(out_dir) if config.resume else None
    if resume_from is None:
        check_out_dir_is_new(out_dir)
    pl.seed_everything(config.seed, workers=True)
    datamodule = ResumableDataModule(config.data, config.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(
        to_dict(config.model),
        to_dict(config.optim),
        datamodule.image_shape,
        config.trainer.max_epochs,
        run_config=to_dict(config),
    )
    save_run_config(config, out_dir)
    best, resume_point = checkpoint_callbacks(config, out_dir)
    logger = build_logger(config, out_dir, run_name=out_dir.name)
    # A resumed run skips the sanity check: its certificate refresh would move the restored
    # power-iteration state and the run would no longer follow the uninterrupted one.
    resume_settings = {"num_sanity_val_steps": 0} if resume_from else {}
    callbacks = [best, resume_point, evaluation_callback(config, out_dir)]
    trainer = build_trainer(config, out_dir, callbacks, logger, **resume_settings)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
        trainer.test(model, datamodule=datamodule, ckpt_path=best.best_model_path or None)
    finally:
        finish_logger(logger)
    return out_dir


def evaluate(config: DictConfig, model: BaseVAE) -> Path:
    """Score the configured outlier sets with a trained model; write the outputs."""
    out_dir = Path(config.out_dir)
    pl.seed_everything(config.seed, workers=True)
    datamodule = OODDataModule(config.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    if tuple(datamodule.image_shape) != tuple(model.image_shape):
        raise ValueError(
            f"The checkpoint was trained on images of shape {tuple(model.image_shape)} but "
            f"data.inlier={config.data.inlier!r} gives {tuple(datamodule.image_shape)}. Evaluate "
            f"with the training inlier set, or set data.image_size / data.channels to convert."
        )
    save_run_config(config, out_dir)
    logger = build_logger(config, out_dir, run_name=out_dir.name)
    trainer = build_trainer(config, out_dir, [evaluation_callback(config, out_dir)], logger)
    try:
        trainer.test(model, datamodule=datamodule)
    finally:
        finish_logger(logger)
    return out_dir


def run_info(config: DictConfig) -> dict[str, Any]:
    return {
        "experiment": OmegaConf.select(config, "experiment", default="evaluate"),
        "seed": config.seed,
        "config": to_dict(config),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def timestamp() -> str:
    """The run's start time: DDP ranks launched later must name the same default out_dir."""
    return run_started_at("%Y%m%d-%H%M%S")


def default_eval_dir(checkpoint: Path, stamp: str | None = None) -> Path:
    """OUT_DIR/evaluate/<time> beside the run that wrote OUT_DIR/checkpoints/x.ckpt."""
    run_dir = checkpoint.resolve().parent.parent
    return run_dir / "evaluate" / (stamp or timestamp())
