"""Configuration schema of the OOD data module.

The dataclass doubles as an OmegaConf structured-config node (``data:`` in the run config), so its
fields use only types OmegaConf can check: str, int, float, bool, Optional[...] and List[str].
Validation lives in ``__post_init__`` so that every way of building a config (Python constructor,
``OmegaConf.to_object``, :func:`resolve_data_config`) rejects impossible values before any data is
read.
"""

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

_CHANNEL_CHOICES = (1, 3)


@dataclass
class DataConfig:
    """Which datasets to pair, where they live and how to batch them.

    ``inlier`` and each entry of ``outliers`` are source specs (see :mod:`datamodules.sources`): a
    torchvision name (``mnist``), a path (IDX directory, ``.npz`` file, image folder), an outlier
    transform of the inlier test set (``hflip``), each optionally prefixed by ``display_name=``.
    """

    # Folder that holds the named datasets (the DATA_DIR environment variable, else ./data).
    data_dir: str = "${oc.env:DATA_DIR,data}"
    # The inlier dataset, trained on: a torchvision name, a path, optionally name=source.
    inlier: str = "fashion_mnist"
    # The outlier sets, tested against the inlier test split: names, paths or transforms (hflip, ...).
    outliers: list[str] = field(default_factory=lambda: ["mnist"])
    # Share of the inlier training set held out for validation (the checkpoint criterion).
    val_fraction: float = 0.1
    # Seed of the validation split and of the max_*_samples subsets.
    split_seed: int = 0
    # Training images per batch.
    batch_size: int = 128
    # Images per batch when validating and testing.
    eval_batch_size: int = 1000
    # Loader worker processes (0: load in the main process, fast for these in-memory sets).
    num_workers: int = 0
    # Download missing named datasets (once per node, by Lightning's prepare_data).
    download: bool = False
    # Resize images to this square size (null: keep the dataset's size).
    image_size: int | None = None
    # Convert images to 1 (grey) or 3 (RGB) channels (null: keep the dataset's).
    channels: int | None = None
    # Train on a seeded subset of at most this many images (null: all).
    max_train_samples: int | None = None
    # Validate and test on seeded subsets of at most this many images per set (null: all).
    max_eval_samples: int | None = None
    # Seed of the random outlier transforms (gaussian_noise, uniform_noise, constant).
    noise_seed: int = 1234

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: DataConfig) -> None:
    """Raise ``ValueError`` for the first impossible value, saying which key to change and how.

    Checked here rather than at data-loading time so that a typo in a sweep fails in a second,
    not after the (possibly slow) dataset load.
    """
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ValueError(
            f"data.val_fraction must be strictly between 0 and 1 (got {cfg.val_fraction}); it is "
            "the share of the inlier training set held out for validation, e.g. "
            "data.val_fraction=0.1."
        )
    for key in ("batch_size", "eval_batch_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(
                f"data.{key} must be at least 1 (got {getattr(cfg, key)}); set data.{key} to a "
                "positive number of images per batch."
            )
    if cfg.num_workers < 0:
        raise ValueError(
            f"data.num_workers must be 0 or more (got {cfg.num_workers}); 0 loads batches in the "
            "main process, which is fast for these in-memory datasets."
        )
    if cfg.channels is not None and cfg.channels not in _CHANNEL_CHOICES:
        raise ValueError(
            f"data.channels must be 1 (grey), 3 (RGB) or null for no conversion (got "
            f"{cfg.channels}); set data.channels=1 or data.channels=3."
        )
    for key in ("image_size", "max_train_samples", "max_eval_samples"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ValueError(
                f"data.{key} must be a positive integer or null (got {value}); use null to switch it off."
            )
    if not cfg.inlier.strip():
        raise ValueError("data.inlier is empty; name the inlier dataset, e.g. data.inlier=fashion_mnist.")
    if any(not spec.strip() for spec in cfg.outliers):
        raise ValueError(
            f"data.outliers contains an empty entry ({list(cfg.outliers)!r}); remove it or name a "
            "dataset, path or transform such as mnist or hflip."
        )


def resolve_data_config(cfg: Any) -> DataConfig:
    """Return a validated :class:`DataConfig` with every ``${...}`` interpolation resolved.

    Accepts a :class:`DataConfig` (whose default ``data_dir`` is still the unresolved
    ``${oc.env:DATA_DIR,data}`` string when built in Python), an OmegaConf node or a plain mapping,
    so the data module can be built from ``cfg.data`` of a run config as well as in tests.
    Merging onto the schema type-checks the fields; ``to_object`` resolves and re-validates.
    """
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), cfg)
    resolved = OmegaConf.to_object(merged)
    assert isinstance(resolved, DataConfig)
    return resolved
