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

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from common.checks import check_at_least, check_choice
from datamodules.config import DataConfig
from lightning_modules.config import ModelConfig, OptimConfig
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


class ConfigError(ValueError):
    """A configuration the run cannot use; the message names the key and the fix."""


LOGGER_MODES = ("offline", "online", "disabled")


@dataclass
class TrainerConfig:
    max_epochs: int = 3
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 50
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    mode: str = "offline"
    project: str = "compact-latent-ood"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("logger.mode", self.mode, LOGGER_MODES)


@dataclass
class TrainConfig:
    experiment: str = "fmnist_vs_mnist"
    seed: int = 0
    out_dir: str = "outputs/${experiment}/${model.variant}/seed${seed}/${now:%Y%m%d-%H%M%S}"
    # Continue the interrupted run in out_dir from checkpoints/last.ckpt, exactly where it stopped:
    #   python -m experiments.train OUT_DIR/config.yaml resume=true
    resume: bool = False
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

    ckpt: str = "???"
    out_dir: str | None = None
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
    """Merge sources into a structured schema, turning OmegaConf's errors into ConfigErrors."""
    merged = OmegaConf.structured(schema)
    for source in sources:
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
    return merged


def _unknown_key_message(config: DictConfig, error: OmegaConfBaseException) -> str:
    full_key = str(getattr(error, "full_key", "") or getattr(error, "key", ""))
    parent_path, _, leaf = full_key.rpartition(".")
    parent = OmegaConf.select(config, parent_path) if parent_path else config
    # Unknown-key errors come from structured configs, whose keys are dataclass field names.
    valid = sorted(cast("list[str]", list(parent.keys()))) if isinstance(parent, DictConfig) else []
    where = f"under '{parent_path}'" if parent_path else "at the top level"
    return (
        f"Unknown config key '{full_key}'. Valid keys {where}: {', '.join(map(str, valid))}. "
        f"Fix the spelling of '{leaf}' in the YAML file or the command-line override."
    )


def _overrides_to_config(overrides: Sequence[str]) -> DictConfig:
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as error:
        raise ConfigError(f"Cannot parse overrides {list(overrides)}: {error}") from None


def load_config(schema: Any, config_path: str | None, overrides: Sequence[str]) -> DictConfig:
    """Build a validated config from a schema, an optional YAML file and dotlist overrides."""
    sources: list[Any] = []
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(
                f"Config file {path} does not exist. Available configs in {CONFIG_DIR}: "
                f"{', '.join(sorted(p.name for p in CONFIG_DIR.glob('*.yaml')))}."
            )
        sources.append(OmegaConf.load(path))
    sources.append(_overrides_to_config(overrides))
    config = _merge(schema, sources)
    validate(config)
    return config


def validate(config: DictConfig) -> None:
    """Build every block's dataclass, so that each ``__post_init__`` checks its values."""
    try:
        OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        raise ConfigError(f"Invalid config: {error.msg if hasattr(error, 'msg') else error}") from None
    except ValueError as error:
        raise ConfigError(str(error)) from None
