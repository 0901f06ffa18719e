"""The ``model`` and ``optim`` config blocks, validated when built (no torch import).

The lists of choices here are the only ones: the network, likelihood and variant modules check at
import that they implement exactly these names. Validation lives in ``__post_init__`` so that
every way of building a model (command line, sweep, ``BaseVAE(...)`` in Python) rejects impossible
values before any data is read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from common.checks import check_at_least, check_choice

VARIANTS_BY_NAME: dict[str, tuple[str, bool]] = {  # name -> (latent space, Lipschitz encoder)
    "gaussian": ("euclidean", False),
    "alexandroff": ("sphere", False),
    "lipschitz": ("euclidean", True),
    "alexandroff_lipschitz": ("sphere", True),
}
ACTIVATION_CHOICES = ("maxmin", "relu")
LIKELIHOOD_CHOICES = ("bernoulli", "continuous_bernoulli")
SCHEDULER_CHOICES = ("none", "cosine")
LIPSCHITZ_LAYER_CHOICES = ("spectral", "aol")


@dataclass
class ModelConfig:
    # gaussian, alexandroff (latents on a sphere), lipschitz (fixed-Lipschitz encoder), or both.
    variant: str = "alexandroff"
    # Dimension of the latent space (for the alexandroff variants: of the sphere S^d it lies on).
    # 32: round 5 of the selection rule, as amended (README, "Choosing the default").
    latent_dim: int = 32
    # Channels of the first convolution; the later ones are multiples of it (even: MaxMin pairs).
    width: int = 8
    # Units of the fully connected layer of the encoder and decoder (even: MaxMin pairs).
    hidden_dim: int = 256
    # Activation of both networks: maxmin (gradient-norm preserving) or relu.
    activation: str = "maxmin"
    # Decoder likelihood of the pixels: bernoulli or continuous_bernoulli.
    likelihood: str = "bernoulli"
    # Only for the Lipschitz variants: the fixed Lipschitz constant of the encoder's mean map
    # (inf trains the same architecture unconstrained: the end of a sweep over L).
    lipschitz: float | None = None
    # How each encoder layer is held at operator norm <= 1: "spectral" (divided by its power-iteration
    # norm) or "aol" (almost-orthogonal rescaling, Prach and Lampert 2022; no power iteration).
    lipschitz_layers: str = "spectral"
    # Power-iteration steps per training step that estimate each spectral layer's norm.
    power_iterations: int = 1
    # Power-iteration steps of the certificate of the encoder's Lipschitz constant.
    certify_iterations: int = 2000
    # Smallest concentration of the posterior on the sphere (alexandroff variants).
    kappa_floor: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS_BY_NAME:
            raise ValueError(
                f"Unknown model.variant {self.variant!r}. Valid variants: {', '.join(VARIANTS_BY_NAME)}."
            )
        problems = []
        for key, minimum in (("latent_dim", 1), ("power_iterations", 1), ("certify_iterations", 1)):
            if getattr(self, key) < minimum:
                problems.append(f"model.{key}={getattr(self, key)} must be >= {minimum}")
        for key in ("width", "hidden_dim"):
            value = getattr(self, key)
            if value < 2 or value % 2:
                problems.append(f"model.{key}={value} must be an even number >= 2 (MaxMin pairs)")
        if self.activation not in ACTIVATION_CHOICES:
            problems.append(f"model.activation={self.activation!r} is not one of {list(ACTIVATION_CHOICES)}")
        if self.likelihood not in LIKELIHOOD_CHOICES:
            problems.append(f"model.likelihood={self.likelihood!r} is not one of {list(LIKELIHOOD_CHOICES)}")
        if self.lipschitz_layers not in LIPSCHITZ_LAYER_CHOICES:
            problems.append(
                f"model.lipschitz_layers={self.lipschitz_layers!r} is not one of "
                f"{list(LIPSCHITZ_LAYER_CHOICES)}"
            )
        if not self.kappa_floor > 0:
            problems.append(f"model.kappa_floor={self.kappa_floor} must be > 0")
        if self.has_lipschitz_encoder:
            if self.lipschitz is None or not self.lipschitz > 0:
                problems.append(
                    f"model.lipschitz={self.lipschitz} must be a positive number for the variant "
                    f"{self.variant!r} (inf trains the same architecture unconstrained)"
                )
        elif self.lipschitz is not None:
            # Not an error: a config (or a sweep) may switch the variant and keep the constant.
            warnings.warn(
                f"model.lipschitz={self.lipschitz} is ignored: the variant {self.variant!r} has no "
                f"Lipschitz encoder (use model.variant=lipschitz or alexandroff_lipschitz to apply it).",
                stacklevel=2,
            )
        if problems:
            raise ValueError("Invalid model config: " + "; ".join(problems) + ".")

    @property
    def has_lipschitz_encoder(self) -> bool:
        return VARIANTS_BY_NAME[self.variant][1]


@dataclass
class OptimConfig:
    # Adam learning rate.
    lr: float = 1e-3
    # Weight decay of the optimiser (0: none).
    weight_decay: float = 0.0
    # Learning-rate schedule over trainer.max_epochs: cosine (to 0) or none.
    scheduler: str = "cosine"
    # Epochs over which the training loss's KL weight rises linearly from 0 to 1 (0: the ELBO from
    # the first step). The standard remedy for posterior collapse, which the sphere's training can
    # fall into; one epoch is round 6 of the selection rule's choice (README, "Choosing the
    # default"). The validation ELBO that selects checkpoints always weighs the KL fully.
    kl_warmup_epochs: float = 1.0

    def __post_init__(self) -> None:
        check_at_least("optim.lr", self.lr, 0, strict=True)
        check_at_least("optim.weight_decay", self.weight_decay, 0)
        check_at_least("optim.kl_warmup_epochs", self.kl_warmup_epochs, 0)
        check_choice("optim.scheduler", self.scheduler, SCHEDULER_CHOICES)
