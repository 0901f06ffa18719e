"""The ``scores`` config block: which scores to compute and how (no torch import).

The dataclass doubles as an OmegaConf structured-config node, so its fields use only types
OmegaConf can check. ``__post_init__`` rejects impossible values when the config is built
(``OmegaConf.to_object`` or the constructor), before any data is read or any model is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.checks import check_at_least, check_choice

# Every score the registry (scoring.registry) implements; the one list of score names.
SCORE_NAMES: tuple[str, ...] = (
    "hole_knn",
    "hole_knn_posterior",
    "hole_knn_recon",
    "hole_posterior",
    "neg_elbo",
    "iwae_nll",
    "recon",
    "latent_norm",
    "input_complexity",
    "likelihood_regret",
)
# hole_knn's statistics (scoring.knn.hole_knn_score).
KNN_STATISTICS = ("relative", "mean_distance")
# The per-input statistics hole_knn_recon can place beside the latent (scoring.joint): the squared
# error and the Bernoulli cross-entropy of the reconstruction, KL(q(z|x) || p(z)), and (round 11)
# the 8-bit image's PNG length in bits, input_complexity's L(x) (Serra et al. 2020), which needs no
# model: how much there is to explain; and (round 12) the image's centre of mass along its rows and
# its columns (scoring.image_moments), also model-free: where the mass sits.
RECON_FEATURES = (
    "squared_error",
    "cross_entropy",
    "kl",
    "compressed_length",
    "mass_centre_row",
    "mass_centre_column",
)
DEFAULT_SCORES = [
    "hole_knn_recon",
    "hole_knn",
    "hole_posterior",
    "neg_elbo",
    "iwae_nll",
    "recon",
    "latent_norm",
]


@dataclass
class ScoreConfig:
    # The outlier scores computed and reported (see scoring/registry.py for each).
    names: list[str] = field(default_factory=lambda: list(DEFAULT_SCORES))
    # Importance samples per input of iwae_nll.
    iwae_samples: int = 16
    # Posterior samples per input of hole_posterior and hole_knn_posterior.
    posterior_samples: int = 16
    # The k of hole_knn: how many nearest training-inlier latents it looks at.
    knn_k: int = 3
    # hole_knn's statistic of the k nearest training latents: "mean_distance" (their mean distance)
    # or "relative" (the k-th distance over the neighbours' own, docs/method.md 4.1). The default
    # pair (k = 3, mean_distance) is the selection rule's choice (README, "Choosing the default").
    knn_statistic: str = "mean_distance"
    # hole_knn_recon's weight of each log statistic: one interquartile range of the inliers' values
    # counts as this many typical neighbour distances in the latent space (docs/method.md 4.1).
    knn_recon_weight: float = 1.0
    # The statistics hole_knn_recon places beside the latent, each as one log coordinate
    # (RECON_FEATURES). The default (squared error, cross-entropy, the PNG length and the centre of
    # mass along rows and columns, weight 1, k = 3, guard 0.99) is the selection rule's choice
    # (README, "Choosing the default": the statistics and weight of rounds 7, 11 and 12, the
    # guard's of rounds 10 and 11); [squared_error] is round 3's.
    knn_recon_features: list[str] = field(
        default_factory=lambda: [
            "squared_error", "cross_entropy", "compressed_length", "mass_centre_row", "mass_centre_column",
        ]
    )  # fmt: skip
    # hole_knn_recon's far-statistics guard (docs/method.md 4.1): null = none; q in (0, 1) adds how
    # far an input's vacancy among the inliers' statistics alone exceeds the q-quantile of the
    # inliers' own, so inputs whose statistics lie beyond the inliers' range score higher. 0.99
    # since round 7 of the selection rule (round 6's default had none).
    knn_recon_guard: float | None = 0.99
    # The guard's own statistics (RECON_FEATURES): null = the joint space's (knn_recon_features).
    # A guard on other statistics (e.g. with the KL) sees far outliers by statistics that would
    # blur the joint space's ranking of near ones. [sq, ce, kl] since round 10, with the PNG length
    # since round 11.
    knn_recon_guard_features: list[str] | None = field(
        default_factory=lambda: ["squared_error", "cross_entropy", "kl", "compressed_length"]
    )
    # The guard's relative weight: its statistics' inlier IQR counts as this many typical latent
    # neighbour distances (null: knn_recon_weight); 2 in round 10, 4 since round 11.
    knn_recon_guard_weight: float | None = 4.0
    # Cap on the number of training-inlier latents used as the hole_knn reference (None = all).
    knn_reference_size: int | None = None
    # Queries per block of the exact kNN search (null: sized from a fixed memory budget).
    knn_chunk_size: int | None = None
    # OOD metrics (and the dashboard's figures) at validation end every n epochs (0 = only at test
    # end), so every W&B chart is a curve over epochs. Reporting only: they never select the
    # checkpoint. They score a fixed seeded subset of at most val_max_samples images of every
    # evaluated set, against a hole_knn reference of at most val_reference_size training inliers
    # (None = all; knn_reference_size caps it too): the same images every epoch, and cheap enough
    # that the defaults cost at most about 15% of the training time (benchmarks/validation_curves.py).
    val_every_n_epochs: int = 1
    # Images of each evaluated set scored at validation end (a fixed seeded subset; null: all).
    val_max_samples: int | None = 200
    # Training inliers in the validation-end hole_knn reference (a fixed seeded subset; null: all).
    val_reference_size: int | None = 2000
    # likelihood_regret: Adam steps and learning rate of each input's own encoder optimisation, and
    # how many inputs of each evaluated set it scores (the first N by position, None = all; its
    # metrics use those inputs only). It costs `regret_steps` encoder updates per input.
    regret_steps: int = 50
    # Learning rate of that per-input encoder optimisation.
    regret_lr: float = 1e-4
    # Inputs of each evaluated set that likelihood_regret scores (the first N, null: all).
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
        check_choice("scores.knn_statistic", self.knn_statistic, KNN_STATISTICS)
        check_at_least("scores.knn_recon_weight", self.knn_recon_weight, 0, strict=True)
        if self.knn_recon_guard is not None and not 0 < self.knn_recon_guard < 1:
            raise ValueError(
                f"'scores.knn_recon_guard'={self.knn_recon_guard} must be a quantile in (0, 1) "
                "(e.g. 0.99), or null for no guard."
            )
        check_features("scores.knn_recon_features", self.knn_recon_features)
        if self.knn_recon_guard_features is not None:
            check_features("scores.knn_recon_guard_features", self.knn_recon_guard_features)
        check_at_least("scores.knn_recon_guard_weight", self.knn_recon_guard_weight, 0, strict=True)
        check_at_least("scores.knn_chunk_size", self.knn_chunk_size, 1)
        check_at_least("scores.val_every_n_epochs", self.val_every_n_epochs, 0)
        check_at_least("scores.val_max_samples", self.val_max_samples, 1)
        check_at_least("scores.val_reference_size", self.val_reference_size, 1)
        check_at_least("scores.regret_steps", self.regret_steps, 1)
        check_at_least("scores.regret_lr", self.regret_lr, 0, strict=True)
        check_at_least("scores.regret_max_samples", self.regret_max_samples, 1)
        if self.knn_reference_size is not None and self.knn_k >= self.knn_reference_size:
            raise ValueError(
                f"'scores.knn_k'={self.knn_k} must be smaller than "
                f"'scores.knn_reference_size'={self.knn_reference_size}: the k-th neighbour must exist."
            )
        if (
            self.val_every_n_epochs
            and self.val_reference_size is not None
            and self.knn_k >= self.val_reference_size
        ):
            raise ValueError(
                f"'scores.knn_k'={self.knn_k} must be smaller than 'scores.val_reference_size'="
                f"{self.val_reference_size}, the hole_knn reference at validation: the k-th neighbour "
                "must exist. Raise scores.val_reference_size or set scores.val_every_n_epochs=0."
            )


def check_features(key: str, features: list[str]) -> None:
    for feature in features:
        check_choice(key, feature, RECON_FEATURES)
    if not features or len(set(features)) < len(features):
        raise ValueError(
            f"'{key}'={list(features)} must name at least one of {', '.join(RECON_FEATURES)}, each once."
        )


def guard_features(settings: ScoreConfig) -> list[str]:
    """The statistics of hole_knn_recon's far-statistics guard: its own, or the joint space's."""
    return list(settings.knn_recon_guard_features or settings.knn_recon_features)


def recorded_recon_features(settings: ScoreConfig) -> list[str]:
    """The log statistics hole_knn_recon records per input, in column order: the joint space's first,
    then those only the guard uses (``scoring.joint``: the joint space reads the first columns)."""
    joint = list(settings.knn_recon_features)
    if settings.knn_recon_guard is None:
        return joint
    return joint + [name for name in guard_features(settings) if name not in joint]


def guard_columns(settings: ScoreConfig) -> list[int]:
    """The guard's statistics as columns of the recorded ones (``recorded_recon_features``)."""
    recorded = recorded_recon_features(settings)
    return [recorded.index(name) for name in guard_features(settings)]
