"""Build a VAE variant by name, or load any variant from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_modules.base import BaseVAE
from lightning_modules.variants import VARIANTS


def variant_class(name: str) -> type[BaseVAE]:
    if name not in VARIANTS:
        raise ValueError(f"Unknown model.variant {name!r}. Valid variants: {', '.join(VARIANTS)}.")
    return VARIANTS[name]


def build_model(
    model: dict[str, Any],
    optim: dict[str, Any],
    image_shape: tuple[int, int, int],
    max_epochs: int,
    run_config: dict[str, Any] | None = None,
) -> BaseVAE:
    return variant_class(model["variant"])(model, optim, image_shape, max_epochs, run_config)


def load_model(checkpoint: str | Path, map_location: Any = "cpu") -> BaseVAE:
    """Load any variant from a Lightning checkpoint; the variant is read from the checkpoint."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist. Pass ckpt=PATH to a file written by "
            f"experiments.train (it saves them under OUT_DIR/checkpoints/)."
        )
    try:
        hparams = torch.load(path, map_location="cpu", weights_only=False)["hyper_parameters"]
        variant = hparams["model"]["variant"]
    except Exception as error:  # any unreadable file gets the same actionable message
        raise ValueError(
            f"{path} is not a checkpoint written by this framework ({type(error).__name__}: "
            f"{error}). Pass a .ckpt file from OUT_DIR/checkpoints/."
        ) from None
    return variant_class(variant).load_from_checkpoint(path, map_location=map_location)
