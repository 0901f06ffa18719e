"""The ``scores`` config block: which scores to compute and how (no torch import).

The dataclass doubles as an OmegaConf structured-config node, so its fields use only types
OmegaConf can check. ``__post_init__`` rejects impossible values when the config is built
(``OmegaConf.to_object`` or the constructor), before any data is read or any model is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.checks import check_at_least

# Every score the registry (scoring.registry) implements; the one list of score names.
SCORE_NAMES: tuple[str, ...] = (
    "hole_knn",
    "hole_knn_posterior",
    "hole_posterior",
    "neg_elbo",
    "iwae_nll",
    "recon",
    "latent_norm",
    "input_complexity",
    "likelihood_regret",
)
DEFAULT_SCORES = ["hole_knn", "hole_posterior", "neg_elbo", "iwae_nll", "recon", "latent_norm"]


@dataclass
class ScoreConfig:
    names: list[str] = field(default_factory=lambda: list(DEFAULT_SCORES))
    iwae_samples: int = 16
    posterior_samples: int = 16
    knn_k: int = 10
    # Cap on the number of training-inlier latents used as the hole_knn reference (None = all).
    knn_reference_size: int | None = None
    knn_chunk_size: int | None = None
    # OOD metrics at validation end every n epochs (0 = only at test end). Reporting only: they
    # cost about as much as the test pass and never select the checkpoint.
    val_every_n_epochs: int = 0
    # likelihood_regret: Adam steps and learning rate of each input's own encoder optimisation, and
    # how many inputs of each evaluated set it scores (the first N by position, None = all; its
    # metrics use those inputs only). It costs `regret_steps` encoder updates per input.
    regret_steps: int = 50
    regret_lr: float = 1e-4
    regret_max_samples: int | None = 500

    def __post_init__(self) -> None:
        unknown = [name for name in self.names if name not in SCORE_NAMES]
        if unknown:
            raise ValueError(
                f"Unknown score(s) {unknown} in 'scores.names'. Valid scores: {', '.join(SCORE_NAMES)}."
            )
        check_at_least("scores.iwae_samples", self.iwae_samples, 2)
        check_at_least("scores.posterior_samples", self.posterior_samples, 2)
        check_at_least("scores.knn_k", self.knn_k, 1)
        check_at_least("scores.knn_chunk_size", self.knn_chunk_size, 1)
        check_at_least("scores.val_every_n_epochs", self.val_every_n_epochs, 0)
        check_at_least("scores.regret_steps", self.regret_steps, 1)
        check_at_least("scores.regret_lr", self.regret_lr, 0, strict=True)
        check_at_least("scores.regret_max_samples", self.regret_max_samples, 1)
        if self.knn_reference_size is not None and self.knn_k >= self.knn_reference_size:
            raise ValueError(
                f"'scores.knn_k'={self.knn_k} must be smaller than "
                f"'scores.knn_reference_size'={self.knn_reference_size}: the k-th neighbour must exist."
            )
