"""Structured (dataclass) configs for every entry point, and the loader that validates them.

Why dataclasses behind OmegaConf: a typo in a YAML file or on the command line must stop the run
before any compute is spent, with the valid choices listed. OmegaConf rejects unknown keys and
wrong types against the schema; `validate_*` below rejects impossible values that a type cannot
express (a negative Lipschitz constant, k larger than the reference set, ...).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from callbacks.dashboard import PlotConfig
from datamodules.config import DataConfig

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


@dataclass
class ModelConfig:
    variant: str = "gaussian"
    latent_dim: int = 16
    width: int = 8
    hidden_dim: int = 256
    activation: str = "maxmin"
    likelihood: str = "bernoulli"
    # Only for the Lipschitz variants: the fixed Lipschitz constant of the encoder's mean map.
    lipschitz: Optional[float] = None
    power_iterations: int = 1
    certify_iterations: int = 2000
    kappa_floor: float = 1.0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 50
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    mode: str = "offline"
    project: str = "compact-latent-ood"
    entity: Optional[str] = None
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class ScoreConfig:
    names: List[str] = field(
        default_factory=lambda: ["hole_knn", "hole_posterior", "neg_elbo", "iwae_nll", "recon", "latent_norm"]
    )
    iwae_samples: int = 16
    posterior_samples: int = 16
    knn_k: int = 100
    # Cap on the number of training-inlier latents used as the hole_knn reference (None = all).
    knn_reference_size: Optional[int] = None
    knn_chunk_size: Optional[int] = None
    # OOD metrics at validation end every n epochs (0 = only at test end). Reporting only.
    val_every_n_epochs: int = 1
    # likelihood_regret: Adam steps and learning rate of each input's own encoder optimisation, and
    # how many inputs of each evaluated set it scores (the first N by position, None = all; its
    # metrics use those inputs only). It costs `regret_steps` encoder updates per input.
    regret_steps: int = 50
    regret_lr: float = 1e-4
    regret_max_samples: Optional[int] = 500


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


@dataclass
class EvaluateConfig:
    """Score new outlier sets with a trained checkpoint.

    `data`, `scores`, `trainer` and `logger` start from the values stored in the checkpoint, so only
    what differs needs to be given (typically `data.outliers`).
    """

    ckpt: str = "???"
    out_dir: Optional[str] = None
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    scores: ScoreConfig = field(default_factory=ScoreConfig)
    plots: PlotConfig = field(default_factory=PlotConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


CHOICES = {
    "model.activation": ("maxmin", "relu"),
    "model.likelihood": ("bernoulli", "continuous_bernoulli"),
    "optim.scheduler": ("none", "cosine"),
    "logger.mode": ("offline", "online", "disabled"),
}


def split_cli_args(args: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """Split argv into an optional leading YAML path and `key=value` overrides.

    `--key=value` (the style `wandb agent` passes) is accepted as well as `key=value`.
    """
    config_path: Optional[str] = None
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
    valid = sorted(parent.keys()) if isinstance(parent, DictConfig) else []
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


def load_config(schema: Any, config_path: Optional[str], overrides: Sequence[str]) -> DictConfig:
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
    return _merge(schema, sources)


def check_choice(config: DictConfig, key: str, choices: Sequence[str]) -> None:
    value = OmegaConf.select(config, key)
    if value not in choices:
        raise ConfigError(
            f"Invalid value {value!r} for '{key}'. Valid choices: {', '.join(choices)}."
        )


def check_positive(config: DictConfig, key: str, minimum: float = 1, strict: bool = False) -> None:
    value = OmegaConf.select(config, key)
    if value is None:
        return
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"Invalid value {value!r} for '{key}': it must be {bound}.")


def validate_scores(config: DictConfig, known_scores: Sequence[str]) -> None:
    """Reject score settings that cannot work, before any training starts."""
    unknown = [name for name in config.scores.names if name not in known_scores]
    if unknown:
        raise ConfigError(
            f"Unknown score(s) {unknown} in 'scores.names'. Valid scores: "
            f"{', '.join(known_scores)}."
        )
    check_positive(config, "scores.iwae_samples", minimum=2)
    check_positive(config, "scores.posterior_samples", minimum=2)
    check_positive(config, "scores.knn_k", minimum=1)
    check_positive(config, "scores.val_every_n_epochs", minimum=0)
    check_positive(config, "scores.regret_steps", minimum=1)
    check_positive(config, "scores.regret_lr", minimum=0, strict=True)
    check_positive(config, "scores.regret_max_samples", minimum=1)
    check_positive(config, "plots.every_n_epochs", minimum=0)
    for key in ("max_points", "n_images", "grid_resolution", "n_prior_samples"):
        check_positive(config, f"plots.{key}", minimum=1)
    reference_size = config.scores.knn_reference_size
    if reference_size is not None and config.scores.knn_k >= reference_size:
        raise ConfigError(
            f"'scores.knn_k'={config.scores.knn_k} must be smaller than "
            f"'scores.knn_reference_size'={reference_size}: the k-th neighbour must exist."
        )


def validate_common(config: DictConfig) -> None:
    for key, choices in CHOICES.items():
        if OmegaConf.select(config, key, default="<absent>") != "<absent>":
            check_choice(config, key, choices)
