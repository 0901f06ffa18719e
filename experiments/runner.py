"""Assemble the Lightning pieces (data, model, logger, callbacks, Trainer) from a config.

The entry points stay thin: they parse arguments, call one function here, and print where the
outputs went.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Union

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, Timer
from pytorch_lightning.loggers import WandbLogger

from callbacks.ood_evaluation import OODEvaluation
from datamodules import OODDataModule

CHECKPOINT_DIR = "checkpoints"


def to_dict(config: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]


def build_logger(config: DictConfig, out_dir: Path, run_name: str) -> Union[WandbLogger, bool]:
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


def build_trainer(config: DictConfig, out_dir: Path, callbacks: list[Callback], logger: Union[WandbLogger, bool], **overrides: Any) -> pl.Trainer:
    trainer_settings = {**to_dict(config.trainer), **overrides}
    return pl.Trainer(
        default_root_dir=str(out_dir),
        logger=logger,
        callbacks=callbacks,
        **trainer_settings,
    )


def finish_logger(logger: Union[WandbLogger, bool]) -> None:
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


def train(config: DictConfig) -> tuple[Path, OODEvaluation]:
    """Fit, select the checkpoint by inlier validation ELBO, test it, write the outputs."""
    from lightning_modules import build_model

    out_dir = Path(config.out_dir)
    check_out_dir_is_new(out_dir)
    pl.seed_everything(config.seed, workers=True)
    datamodule = OODDataModule(config.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(
        to_dict(config.model), to_dict(config.optim), datamodule.image_shape,
        config.trainer.max_epochs, run_config=to_dict(config),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, out_dir / "config.yaml", resolve=True)
    evaluation = OODEvaluation(config.scores, out_dir, run_info(config))
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / CHECKPOINT_DIR,
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/elbo",  # inlier-only: outlier labels never select the model
        mode="max",
        save_last=True,
    )
    logger = build_logger(config, out_dir, run_name=out_dir.name)
    trainer = build_trainer(config, out_dir, [checkpoint, Timer(), evaluation], logger)
    try:
        trainer.fit(model, datamodule=datamodule)
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if checkpoint.best_model_path else None)
    finally:
        finish_logger(logger)
    return out_dir, evaluation


def evaluate(config: DictConfig, model: pl.LightningModule) -> tuple[Path, OODEvaluation]:
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
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, out_dir / "config.yaml", resolve=True)
    evaluation = OODEvaluation(config.scores, out_dir, run_info(config))
    logger = build_logger(config, out_dir, run_name=out_dir.name)
    trainer = build_trainer(config, out_dir, [evaluation], logger)
    try:
        trainer.test(model, datamodule=datamodule)
    finally:
        finish_logger(logger)
    return out_dir, evaluation


def run_info(config: DictConfig) -> dict[str, Any]:
    return {
        "experiment": OmegaConf.select(config, "experiment", default="evaluate"),
        "seed": config.seed,
        "config": to_dict(config),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def default_eval_dir(checkpoint: Path, stamp: Optional[str] = None) -> Path:
    """OUT_DIR/evaluate/<time> beside the run that wrote OUT_DIR/checkpoints/x.ckpt."""
    run_dir = checkpoint.resolve().parent.parent
    return run_dir / "evaluate" / (stamp or timestamp())
