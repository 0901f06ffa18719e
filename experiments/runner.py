"""Assemble the Lightning pieces (data, model, logger, callbacks, Trainer) from a config.

The entry points stay thin: they parse arguments, call one function here, and print where the
outputs went.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import string
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from callbacks.ood_evaluation import OODEvaluation
from callbacks.resume_point import ResumePoint
from common.atomic_io import atomic_open, remove_partial_writes
from datamodules.ood_datamodule import OODDataModule
from datamodules.resumable import ResumableDataModule
from experiments.checkpoint_io import AtomicCheckpointIO
from experiments.config import run_started_at
from experiments.image_shape import image_shape_before_trainer
from experiments.run_dir import check_resume_compatible, claim_run_dir, stored_run_config
from lightning_modules.base import BaseVAE
from lightning_modules.config import VARIANTS_BY_NAME
from lightning_modules.factory import build_model
from reporting.base import Reporter
from reporting.dashboard import Dashboard
from reporting.results_files import ResultsFiles
from scoring.config import ScoreConfig

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
WANDB_DIR = "wandb"
WANDB_ID_FILE = Path(WANDB_DIR) / "run_id.txt"
# Where W&B keeps files outside the run folder unless told otherwise (the user's home by default):
# the staged copies of logged tables and their images (DATA_DIR/artifacts/staging, which
# `wandb sync` uploads from) and the service's debug logs. Both go under OUT_DIR/wandb/.
WANDB_FILE_VARIABLES = {"WANDB_DATA_DIR": "data", "WANDB_CACHE_DIR": "cache"}
# Trainer arguments whose value 1.0 (all batches) is Lightning's own default: passing it anyway only
# makes Lightning print that it was configured.
BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")
# Library notices a user of this project cannot act on, hidden by their text (see quiet_library_notices).
LIGHTNING_TIPS = re.compile(r"Tip: .*\[(litlogger|litmodels)\]")
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# The data settings that decide the image shape a model sees.
SHAPE_KEYS = ("inlier", "image_size", "channels")
# The flags of one invocation, not settings of the run: config.yaml stores them switched off.
INVOCATION_FLAGS = ("resume", "retest")
# What to do instead when a new run finds its out_dir taken.
NEW_EVALUATION_HINT = " (leave out_dir unset to write to RUN_DIR/evaluations/<time>/ beside the training run)"
NEW_TRAIN_HINT = (
    ", or continue the run there with `python -m experiments.train OUT_DIR/config.yaml resume=true`"
)


def to_dict(config: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]


def build_logger(config: DictConfig, out_dir: Path, run_name: str) -> WandbLogger | bool:
    """W&B, offline by default: everything the run logs lands in out_dir/wandb, `wandb sync` uploads it.

    The run is named, grouped and tagged by experiment, variant, L and seed (run_identity), so
    the seeds of one setting share a group; ``logger.name`` and ``logger.tags`` add to that.
    """
    settings = config.logger
    if settings.mode == "disabled":
        return False
    identity = run_identity(config, run_name)
    return RunLogger(
        out_dir / WANDB_DIR,
        project=settings.project,
        entity=settings.entity,
        name=settings.name or identity.name,
        group=identity.group,
        tags=list(dict.fromkeys([*identity.tags, *settings.tags])),
        save_dir=str(out_dir),
        offline=settings.mode == "offline",
        config=chartable(to_dict(config)),
        id=wandb_run_id(out_dir),
        resume="allow",
    )


class RunLogger(WandbLogger):
    """A WandbLogger that keeps all of a run's files in its folder and logs its config once.

    - W&B stages logged tables (their rows and images) and writes its service logs under the
      user's home unless WANDB_DATA_DIR / WANDB_CACHE_DIR say otherwise (wandb reads them, not
      settings); from the creation of the W&B run until ``finish`` they point into the run's
      wandb/ folder, so a copied run folder keeps its tables.
    - The config is logged once, at ``wandb.init``: Lightning would log the model's hyperparameters
      as well, which repeat it (under ``run_config``).
    - The best validation ELBO (the checkpoint criterion) is kept in the summary as ``val/elbo.max``.
    """

    def __init__(self, wandb_dir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Lightning passes anonymous=None to wandb.init, which makes wandb warn that the setting
        # has no effect; leaving the key out is what wandb asks for.
        self._wandb_init.pop("anonymous", None)
        self._wandb_dir = wandb_dir
        self._saved_environment: dict[str, str | None] | None = None

    @property
    def experiment(self) -> Any:
        created = self._experiment is None
        if created and self._saved_environment is None:
            self._saved_environment = redirect_wandb_files(self._wandb_dir)
        run = super().experiment
        if created and self._experiment is not None:  # the W&B run was just made (rank 0 only)
            run.define_metric("val/elbo", step_metric="trainer/global_step", summary="max,last")
        return run

    def log_hyperparams(self, params: Any) -> None:
        """Nothing: the run's config was logged when the W&B run was created."""

    def finish(self) -> None:
        """Close the W&B run (its offline files are then complete) and restore the environment."""
        if self._experiment is not None:
            self._experiment.finish()
        if self._saved_environment is not None:
            restore_environment(self._saved_environment)
            self._saved_environment = None


def redirect_wandb_files(wandb_dir: Path) -> dict[str, str | None]:
    """Point W&B's staging and cache folders into ``wandb_dir``; returns the values they replace."""
    saved = {variable: os.environ.get(variable) for variable in WANDB_FILE_VARIABLES}
    for variable, folder in WANDB_FILE_VARIABLES.items():
        os.environ[variable] = str((wandb_dir / folder).absolute())
    return saved


def restore_environment(saved: dict[str, str | None]) -> None:
    for variable, value in saved.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value


@dataclass(frozen=True)
class RunIdentity:
    """How W&B shows a run: its name, the group of runs it belongs to, and its tags."""

    name: str
    group: str
    tags: list[str]


def run_identity(config: DictConfig, folder_name: str) -> RunIdentity:
    """``experiment/variant[/L=..]`` is the group (one per setting, so a sweep over L groups by
    itself) and ``group/seedN`` the name. An evaluation's config names no model, so it is named
    ``evaluate/<its folder>``."""
    experiment = OmegaConf.select(config, "experiment", default=None)
    variant = OmegaConf.select(config, "model.variant", default=None)
    seed = f"seed{config.seed}"
    if experiment is None or variant is None:
        return RunIdentity(f"evaluate/{folder_name}", "evaluate", ["evaluate", seed])
    parts = [experiment, variant]
    if VARIANTS_BY_NAME[variant][1]:  # a Lipschitz encoder: L is part of the setting
        parts.append(f"L={lipschitz_label(config.model.lipschitz)}")
    group = "/".join(parts)
    return RunIdentity(f"{group}/{seed}", group, [*parts, seed])


def lipschitz_label(value: float) -> str:
    """L as written in names and tags: 1, 0.5, inf (the unconstrained end of a sweep)."""
    return "inf" if math.isinf(value) else f"{value:g}"


def chartable(value: Any) -> Any:
    """A config with every non-finite number as its name ("inf", "nan"): W&B stores float inf as
    JSON's invalid Infinity, which its charts and filters cannot use."""
    if isinstance(value, dict):
        return {key: chartable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [chartable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def wandb_run_id(out_dir: Path) -> str:
    """The folder's W&B run id, kept in OUT_DIR/wandb/run_id.txt so a resume continues the same run."""
    path = out_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    # W&B's own id form (8 lowercase letters and digits), made here: wandb has no public generator.
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    rank_zero_only(write_text)(path, run_id + "\n")
    return run_id


def write_text(path: Path, text: str) -> None:
    with atomic_open(path) as stream:
        stream.write(text)


def build_trainer(
    config: DictConfig,
    out_dir: Path,
    callbacks: list[Callback],
    logger: WandbLogger | bool,
    **overrides: Any,
) -> pl.Trainer:
    quiet_library_notices()
    trainer_settings = {**trainer_arguments(config), **overrides}
    return pl.Trainer(
        default_root_dir=str(out_dir),
        logger=logger,
        callbacks=[*callbacks, *logging_callbacks(logger)],
        plugins=[AtomicCheckpointIO()],
        **trainer_settings,
    )


def finish_logger(logger: WandbLogger | bool) -> None:
    """Close the W&B run so its offline files are complete when the process moves on."""
    if isinstance(logger, RunLogger):
        logger.finish()
    elif isinstance(logger, WandbLogger):
        logger.experiment.finish()


def logging_callbacks(logger: WandbLogger | bool) -> list[Callback]:
    """The callbacks a logged run adds: the learning rate per epoch (the cosine schedule's curve)."""
    return [LearningRateMonitor(logging_interval="epoch")] if isinstance(logger, WandbLogger) else []


def trainer_arguments(config: DictConfig) -> dict[str, Any]:
    """``config.trainer`` as Trainer arguments, without the batch limits left at Lightning's default
    (1.0 = all batches), for which Lightning would print that they were configured."""
    settings = to_dict(config.trainer)
    return {
        key: value
        for key, value in settings.items()
        if not (key in BATCH_LIMITS and isinstance(value, float) and value == 1.0)
    }


def quiet_library_notices() -> None:
    """Hide, by their exact text, the library notices a user cannot act on; everything else shows.

    Lightning advertises its litlogger/litmodels services at every Trainer (whatever the loggers),
    and its own pytree helper builds torch's deprecated LeafSpec at every step.
    """
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(not_a_lightning_tip)


def not_a_lightning_tip(record: logging.LogRecord) -> bool:
    return LIGHTNING_TIPS.search(record.getMessage()) is None


def resume_checkpoint(out_dir: Path) -> Path:
    """OUT_DIR/checkpoints/last.ckpt of an interrupted run, after clearing its partial writes."""
    last = out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not last.is_file():
        raise FileNotFoundError(
            f"resume=true but {last} does not exist, so there is nothing to resume in "
            f"out_dir={out_dir}. Check the path (resume with `python -m experiments.train "
            f"OUT_DIR/config.yaml resume=true`, which resumes into the folder holding that "
            f"config.yaml), or start a new run without resume=true."
        )
    rank_zero_only(remove_partial_writes)(out_dir, last.parent)
    return last


@rank_zero_only
def save_run_config(config: DictConfig, out_dir: Path) -> None:
    """config.yaml, written by one process, atomically: the resume command reads it back.

    `resume` and `retest` are saved switched off: they ask one invocation to do something, so a
    later `train OUT_DIR/config.yaml resume=true` must not inherit a re-test it did not ask for.
    """
    stored = config.copy()
    for flag in INVOCATION_FLAGS:
        if flag in stored:
            stored[flag] = False
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(stored, resolve=True))


class RelocatableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose restored bookkeeping follows the run folder when it was moved or copied.

    A checkpoint stores the absolute paths of the best models. Lightning keeps only
    `best_model_path` (still pointing into the old folder) when the folder changed, and forgets
    the scores of earlier epochs, so a copied run would test the original's file and could select
    another best epoch than the uninterrupted run. Paths inside the stored folder are mapped into
    this one, which holds the same files, and the whole state is restored.
    """

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's own key: Lightning files callback state under the class name, and a
        checkpoint written under another name (by plain ModelCheckpoint, or by an earlier version of
        this class) would silently not restore the best-epoch bookkeeping on resume, leaving the
        previous best file behind and forgetting its score."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Read the state of a checkpoint written before ``state_key`` existed, filed under this
        class's name: Lightning calls this hook before it restores each callback's state by key."""
        states = checkpoint.get("callbacks") or {}
        legacy = super().state_key
        if self.state_key not in states and legacy in states:
            states[self.state_key] = states.pop(legacy)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stored = state_dict.get("dirpath")
        if stored is None or self.dirpath is None or stored == self.dirpath:
            super().load_state_dict(state_dict)
            return
        old, new = Path(stored), Path(self.dirpath)

        def moved(path: str) -> str:
            return str(new / Path(path).name) if path and Path(path).parent == old else path

        relocated = {**state_dict, "dirpath": self.dirpath}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in relocated:
                relocated[key] = moved(relocated[key])
        if "best_k_models" in relocated:
            relocated["best_k_models"] = {
                moved(path): score for path, score in relocated["best_k_models"].items()
            }
        super().load_state_dict(relocated)


def checkpoint_callbacks(config: DictConfig, out_dir: Path) -> tuple[ModelCheckpoint, ResumePoint]:
    """The best model by inlier validation ELBO, and last.ckpt to resume from."""
    best = RelocatableCheckpoint(
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
    """Fit (or resume fitting), select the checkpoint by inlier validation ELBO, test it, write outputs.

    The folder is claimed for the whole run. Before any data is loaded, a new run checks that the
    folder is empty, and a resume that last.ckpt reads and the overrides leave the run the same.
    """
    out_dir = Path(config.out_dir)
    with claim_run_dir(out_dir, new_run_hint=None if config.resume else NEW_TRAIN_HINT):
        resume_from = None
        if config.resume:
            resume_from = resume_checkpoint(out_dir)
            check_resume_compatible(stored_run_config(resume_from), to_dict(config), out_dir)
        fit_and_test(config, out_dir, resume_from)
    return out_dir


def fit_and_test(config: DictConfig, out_dir: Path, resume_from: Path | None) -> None:
    pl.seed_everything(config.seed, workers=True)
    # The Trainer runs prepare_data (the downloads) on one process per node, never this runner.
    datamodule = ResumableDataModule(config.data, config.seed)
    model = build_model(
        to_dict(config.model),
        to_dict(config.optim),
        image_shape_before_trainer(datamodule),
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


def evaluate(config: DictConfig, model: BaseVAE) -> Path:
    """Score the configured outlier sets with a trained model; write the outputs into a new folder.

    The folder must be empty (claimed first): an evaluation never writes over a training run.
    """
    out_dir = Path(config.out_dir)
    with claim_run_dir(out_dir, new_run_hint=NEW_EVALUATION_HINT):
        evaluate_into(config, model, out_dir)
    return out_dir


def evaluate_into(config: DictConfig, model: BaseVAE, out_dir: Path) -> None:
    pl.seed_everything(config.seed, workers=True)
    # The Trainer runs prepare_data (the downloads) on one process per node, never this runner.
    datamodule = OODDataModule(config.data)
    given = tuple(image_shape_before_trainer(datamodule))
    if given != tuple(model.image_shape):
        trained_data = (model.hparams.get("run_config") or {}).get("data") or {}
        raise ValueError(shape_mismatch_message(config, tuple(model.image_shape), given, trained_data))
    save_run_config(config, out_dir)
    logger = build_logger(config, out_dir, run_name=out_dir.name)
    trainer = build_trainer(config, out_dir, [evaluation_callback(config, out_dir)], logger)
    try:
        trainer.test(model, datamodule=datamodule)
    finally:
        finish_logger(logger)


def shape_mismatch_message(
    config: DictConfig, trained: tuple[int, ...], given: tuple[int, ...], trained_data: dict[str, Any]
) -> str:
    """Name the data setting that moved the image shape away from the checkpoint's, and its fix.

    An evaluation inherits the training data settings, so a mismatch comes from an override: the
    advice must be to drop that override, not to set data.image_size when that caused it.
    """
    channels, height, width = trained

    def setting(key: str, value: Any) -> str:
        return f"data.{key}={'null' if value is None else value}"

    changed = [key for key in SHAPE_KEYS if key in trained_data and config.data[key] != trained_data[key]]
    convert = (
        f"convert to the trained shape with {setting('image_size', height)} {setting('channels', channels)}"
        if height == width
        else f"use images of {height}x{width} pixels (data.image_size resizes to squares only)"
    )
    intro = (
        f"The checkpoint was trained on images of shape (C, H, W) = {trained}, but this evaluation's "
        f"data gives {given}"
    )
    if not changed:
        return f"{intro}. Evaluate with the training inlier set and data settings, or {convert}."
    overrides = ", ".join(
        f"{setting(key, config.data[key])} (trained with {setting(key, trained_data[key])})"
        for key in changed
    )
    which = "that override" if len(changed) == 1 else "those overrides"
    advice = f"Drop {which}: an evaluation inherits the training data settings"
    if "inlier" in changed:
        advice += f"; to score another inlier set, {convert}"
    return f"{intro}, because of {overrides}. {advice}."


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
    """OUT_DIR/evaluations/<time> in the run that wrote OUT_DIR/checkpoints/x.ckpt, beside its files."""
    run_dir = checkpoint.resolve().parent.parent
    return run_dir / "evaluations" / (stamp or timestamp())
