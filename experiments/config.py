"""The run configs of the entry points, composed of the blocks each package owns, and their loader.

Why dataclasses behind OmegaConf: a typo in a YAML file or on the command line must stop the run
before any compute is spent, with the valid choices listed. OmegaConf rejects unknown keys and
wrong types against the schema; each block's ``__post_init__`` rejects impossible values that a
type cannot express (a negative Lipschitz constant, k larger than the reference set, ...). The
blocks live with the code that uses them: ``data`` in datamodules, ``model`` and ``optim`` in
lightning_modules, ``scores`` in scoring, ``plots`` in reporting; ``trainer`` and ``logger`` here.
Importing this module imports neither torch nor matplotlib.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from common.checks import check_at_least, check_choice
from datamodules.config import DataConfig
from experiments.trainer_args import trainer_argument_problem
from lightning_modules.config import VARIANTS_BY_NAME, ModelConfig, OptimConfig
from reporting.config import PlotConfig
from scoring.config import ScoreConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "fmnist_vs_mnist.yaml"


# `${now:FORMAT}` in a config gives the run's start time, so default out_dirs never collide.
def run_started_at(fmt: str) -> str:
    # The start time is kept in the environment so that processes a launcher starts later (DDP
    # ranks re-running the same command) resolve the same out_dir.
    started = float(os.environ.setdefault("OOD_RUN_STARTED", str(time.time())))
    return time.strftime(fmt, time.localtime(started))


OmegaConf.register_resolver("now", run_started_at, use_cache=True, replace=True)


def lipschitz_tag(variant: str, lipschitz: float | None) -> str:
    """`L1`, `L0.5` or `Linf`: the encoder's Lipschitz constant in default out_dir names.

    Runs that differ only in L (a sweep over L, the same variant at two constants) must not land
    in folders that look alike. A variant without a Lipschitz encoder ignores model.lipschitz, and
    L = inf trains the same architecture unconstrained: both are `Linf`.
    """
    constrained = VARIANTS_BY_NAME.get(variant, ("", False))[1]
    if not constrained or lipschitz is None or math.isinf(lipschitz):
        return "Linf"
    return f"L{lipschitz:g}"


OmegaConf.register_resolver("lipschitz_tag", lipschitz_tag, replace=True)


class ConfigError(ValueError):
    """A configuration the run cannot use; the message names the key and the fix."""


LOGGER_MODES = ("offline", "online", "disabled")


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments: the keys below, and any other pytorch_lightning.Trainer argument
    as trainer.NAME=VALUE (checked against Trainer's signature; see experiments/trainer_args.py).

    The keys here are those this framework gives its own default or checks up front. `devices` and
    `limit_*_batches` take several forms (a count, a fraction, a list of device indices), so their
    type is Any and ``__post_init__`` checks them: Lightning itself would reject a bad value only
    after the data has loaded.
    """

    # Training epochs; resume=true with a larger value trains a finished run further.
    max_epochs: int = 10
    # cpu, gpu, mps, ... or auto (the best one present).
    accelerator: str = "auto"
    # How many devices (2), -1 for all, auto, or which ones ([0,1]).
    devices: Any = 1
    # auto, ddp, ddp_spawn, ...: how several devices share the work.
    strategy: str = "auto"
    # Machines of a multi-node run.
    num_nodes: int = 1
    # Numeric precision of training, e.g. 32-true, bf16-mixed, 16-mixed.
    precision: str = "32-true"
    # Training batches per epoch: a fraction (0.25) or a count (10).
    limit_train_batches: Any = 1.0
    # Validation batches per epoch: a fraction or a count.
    limit_val_batches: Any = 1.0
    # Test batches: a fraction or a count.
    limit_test_batches: Any = 1.0
    # Clip gradients to this norm (null: no clipping).
    gradient_clip_val: float | None = None
    # Log the training metrics every n steps.
    log_every_n_steps: int = 50
    # Deterministic algorithms only (slower, reproducible on GPUs).
    deterministic: bool = False
    # Show the progress bar.
    enable_progress_bar: bool = True

    def __post_init__(self) -> None:
        for key in ("max_epochs", "num_nodes", "log_every_n_steps"):
            check_at_least(f"trainer.{key}", getattr(self, key), 1)
        check_at_least("trainer.gradient_clip_val", self.gradient_clip_val, 0)
        check_devices(self.devices)
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            check_batch_limit(f"trainer.{key}", getattr(self, key))


def check_devices(devices: Any) -> None:
    """Lightning's forms: a count >= 1, -1 (all), "auto", or device indices ([0, 1] or "0,1")."""
    if isinstance(devices, str):
        text = devices.strip()
        valid = (
            text in ("auto", "-1")
            or bool(text)
            and all(part.strip().isdigit() for part in text.rstrip(",").split(","))
        )
    elif isinstance(devices, bool):
        valid = False
    elif isinstance(devices, int):
        valid = devices == -1 or devices >= 1
    else:
        valid = (
            isinstance(devices, list | ListConfig)
            and bool(devices)
            and all(
                isinstance(index, int) and not isinstance(index, bool) and index >= 0 for index in devices
            )
        )
    if not valid:
        raise ValueError(
            f"Invalid value {devices!r} for 'trainer.devices'. Give a number of devices "
            f"(trainer.devices=2), -1 for all of them, auto, or the indices of the devices to use "
            f"(trainer.devices=[0,1])."
        )


def check_batch_limit(key: str, limit: Any) -> None:
    """Lightning's forms: a fraction of the batches in (0, 1] (a float) or a number of batches (an int)."""
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        valid = False
    elif isinstance(limit, float):
        valid = 0.0 < limit <= 1.0
    else:
        valid = limit >= 1
    if not valid:
        raise ValueError(
            f"Invalid value {limit!r} for '{key}'. Give a fraction of the batches in (0, 1] as a float "
            f"({key}=0.25; 1.0 = all) or a whole number of batches >= 1 ({key}=10)."
        )


@dataclass
class LoggerConfig:
    """Weights & Biases logging of metrics, figures and the config."""

    # offline (files under OUT_DIR/wandb, `wandb sync` uploads them), online, or disabled.
    mode: str = "offline"
    # W&B project the run belongs to.
    project: str = "compact-latent-ood"
    # W&B team or user (null: the account's default).
    entity: str | None = None
    # W&B run name (null: the out_dir folder's name).
    name: str | None = None
    # W&B tags of the run.
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("logger.mode", self.mode, LOGGER_MODES)


@dataclass
class TrainConfig:
    """Train a VAE variant, select its epoch by inlier validation ELBO, test it on the outlier sets."""

    # Name of the experiment: the first folder of the default out_dir, and results.json's label.
    experiment: str = "fmnist_vs_mnist"
    # Global random seed: the initial weights, the training order and the model's sampling.
    seed: int = 0
    # Where the run writes everything; by default one new folder per run, named by variant,
    # Lipschitz constant (L1, Linf = unconstrained), seed and start time.
    out_dir: str = (
        "outputs/${experiment}/${model.variant}_${lipschitz_tag:${model.variant},${model.lipschitz}}"
        "/seed${seed}/${now:%Y%m%d-%H%M%S}"
    )
    # Continue the interrupted run in out_dir from checkpoints/last.ckpt, exactly where it stopped
    # (`python -m experiments.train OUT_DIR/config.yaml resume=true`).
    resume: bool = False
    # Resuming a finished run (results.json present) only says so; retest=true tests it again,
    # after training further if trainer.max_epochs was raised.
    retest: bool = False
    # checkpoints/last.ckpt is written every n training steps (0: only at epoch ends) and at every
    # epoch end, so a killed run loses at most n steps.
    checkpoint_every_n_steps: int = 200
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    scores: ScoreConfig = field(default_factory=ScoreConfig)
    plots: PlotConfig = field(default_factory=PlotConfig)

    def __post_init__(self) -> None:
        check_at_least("checkpoint_every_n_steps", self.checkpoint_every_n_steps, 0)


@dataclass
class EvaluateConfig:
    """Score new outlier sets with a trained checkpoint.

    `data`, `scores`, `trainer` and `logger` start from the values stored in the checkpoint, so only
    what differs needs to be given (typically `data.outliers`).
    """

    # The checkpoint to score: a .ckpt file, or a run folder (its selected epoch,
    # RUN_DIR/checkpoints/epochNNN.ckpt).
    ckpt: str = "???"
    # SHA-256 of the ckpt file, recorded in results.json and config.yaml; given, the evaluation
    # refuses a checkpoint whose contents differ.
    ckpt_sha256: str | None = None
    # Where the outputs go (null: RUN_DIR/evaluations/<time>/); it must be empty or new.
    out_dir: str | None = None
    # Global random seed of the evaluation (by default the training run's).
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    scores: ScoreConfig = field(default_factory=ScoreConfig)
    plots: PlotConfig = field(default_factory=PlotConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def split_cli_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split argv into an optional leading YAML path and `key=value` overrides.

    `--key=value` (the style `wandb agent` passes) is accepted as well as `key=value`.
    """
    config_path: str | None = None
    overrides: list[str] = []
    for index, arg in enumerate(args):
        if index == 0 and "=" not in arg and arg.endswith((".yaml", ".yml")):
            config_path = arg
            continue
        stripped = arg[2:] if arg.startswith("--") else arg
        if "=" not in stripped:
            raise ConfigError(
                f"Cannot read the argument {arg!r}: arguments are `key=value` overrides "
                f"(for example `trainer.max_epochs=3`), optionally after one YAML config path."
            )
        overrides.append(stripped)
    return config_path, overrides


def _merge(schema: Any, sources: Sequence[Any]) -> DictConfig:
    """Merge sources into a structured schema, turning OmegaConf's errors into ConfigErrors.

    The trainer block is open: keys beyond TrainerConfig's are any other Trainer argument, checked
    against Lightning's signature by :func:`_check_trainer_arguments`.
    """
    merged = OmegaConf.structured(schema)
    OmegaConf.set_struct(merged.trainer, False)
    for source in sources:
        _check_blocks(merged, source)
        try:
            merged = OmegaConf.merge(merged, source)
        except (ConfigKeyError, ConfigAttributeError) as error:
            raise ConfigError(_unknown_key_message(merged, error)) from None
        except OmegaConfBaseException as error:
            raise ConfigError(
                f"Invalid config value: {error.msg if hasattr(error, 'msg') else error}. "
                f"Check the type of key '{getattr(error, 'full_key', '?')}' against "
                f"experiments/config.py."
            ) from None
    _check_trainer_arguments(merged.trainer)
    return merged


def _check_trainer_arguments(trainer: DictConfig) -> None:
    """Refuse a trainer key that Lightning's Trainer does not take, or that the framework sets."""
    own = {entry.name for entry in fields(TrainerConfig)}
    for key in trainer.keys():
        problem = None if key in own else trainer_argument_problem(str(key))
        if problem is not None:
            raise ConfigError(problem)


def _check_blocks(schema: DictConfig, source: DictConfig, prefix: str = "") -> None:
    """Reject a value given where the schema has a block of keys (`model: 5`).

    OmegaConf's own error for this names no key ("key 'None'"), so it is caught here first.
    """
    blocks = {key: node for key, node in schema.items_ex(resolve=False) if isinstance(node, DictConfig)}
    for key, given in source.items_ex(resolve=False):
        name = f"{prefix}{key!s}"
        expected = blocks.get(key)
        if expected is None:
            continue
        if not isinstance(given, DictConfig):
            raise ConfigError(
                f"'{name}' is a block of keys ({', '.join(map(str, expected.keys()))}), but it is set to "
                f"{given!r}. Write it as `{name}:` followed by indented `key: value` lines in the YAML "
                f"file, or override one key at a time, e.g. {name}.{next(iter(expected.keys()))!s}=..."
            )
        _check_blocks(expected, given, name + ".")


def _unknown_key_message(config: DictConfig, error: OmegaConfBaseException) -> str:
    full_key = str(getattr(error, "full_key", "") or getattr(error, "key", ""))
    parent_path, _, leaf = full_key.rpartition(".")
    parent = OmegaConf.select(config, parent_path) if parent_path else config
    # Unknown-key errors come from structured configs, whose keys are dataclass field names.
    valid = sorted(cast("list[str]", list(parent.keys()))) if isinstance(parent, DictConfig) else []
    where = f"under '{parent_path}'" if parent_path else "at the top level"
    if not parent_path and (other := _other_command_message(leaf)):
        return f"{other} Valid keys {where}: {', '.join(map(str, valid))}."
    return (
        f"Unknown config key '{full_key}'. Valid keys {where}: {', '.join(map(str, valid))}. "
        f"Fix the spelling of '{leaf}' in the YAML file or the command-line override."
    )


def _other_command_message(key: str) -> str | None:
    """Why a top-level key of the other entry point is not a setting here; None for a real typo.

    "Fix the spelling" would mislead: `model.latent_dim=8` is spelled right, but an evaluation
    scores the model stored in its checkpoint, so its model settings cannot change.
    """
    train_keys = {entry.name for entry in fields(TrainConfig)}
    evaluate_keys = {entry.name for entry in fields(EvaluateConfig)}
    if key in ("model", "optim"):
        return (
            f"'{key}' cannot be set when evaluating: the model and optimiser settings (model.*, optim.*) "
            f"come from the checkpoint, which was trained with them. Drop the {key} override (or the "
            f"{key}: block of the YAML file); to evaluate another model, pass its checkpoint, "
            f"ckpt=RUN_DIR/checkpoints/last.ckpt."
        )
    if key in train_keys - evaluate_keys:
        return f"'{key}' is a setting of training (experiments.train), not of an evaluation: drop it."
    if key in evaluate_keys - train_keys:
        return (
            f"'{key}' is a setting of an evaluation, not of training: to score a trained checkpoint, run "
            f"`python -m experiments.evaluate ckpt=RUN_DIR/checkpoints/last.ckpt`."
        )
    return None


def _overrides_to_config(overrides: Sequence[str]) -> DictConfig:
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as error:
        raise ConfigError(f"Cannot parse overrides {list(overrides)}: {error}") from None


def load_config(
    schema: Any, config_path: str | None, overrides: Sequence[str], defaults: Any = None
) -> DictConfig:
    """Build a validated config from a schema, an optional YAML file and dotlist overrides.

    `defaults` (a mapping) replaces schema defaults before the file and the overrides apply: an
    evaluation starts from the settings stored in its checkpoint.
    """
    sources: list[Any] = [] if defaults is None else [OmegaConf.create(defaults)]
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(
                f"Config file {path} does not exist. Available configs in {CONFIG_DIR}: "
                f"{', '.join(sorted(p.name for p in CONFIG_DIR.glob('*.yaml')))}."
            )
        sources.append(_load_yaml(path))
    sources.append(_overrides_to_config(overrides))
    config = _merge(schema, sources)
    validate(config)
    return config


def _load_yaml(path: Path) -> DictConfig:
    """A config file's contents, which must be YAML with a mapping of keys at the top level."""
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"Config file {path} is not valid YAML: {' '.join(str(error).split())}. Fix the syntax "
            f"there (a list is written [a, b], a block as `key:` with indented `name: value` lines)."
        ) from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(
            f"Config file {path} holds a {type(loaded).__name__.removesuffix('Config').lower()} at "
            f"the top level, but a run config is a mapping of keys (experiment:, model:, trainer:, "
            f"...). See {DEFAULT_CONFIG} for the layout."
        )
    return loaded


def validate(config: DictConfig) -> None:
    """Build every block's dataclass, so that each ``__post_init__`` checks its values."""
    try:
        OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        raise ConfigError(f"Invalid config: {error.msg if hasattr(error, 'msg') else error}") from None
    except ValueError as error:
        raise ConfigError(str(error)) from None
