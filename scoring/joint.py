"""The joint space of ``hole_knn_recon``: latent location and log reconstruction statistics
(docs/method.md 4.1).

Each input becomes the point ``[l(x), w_1 * log s_1(x), ..., w_E * log s_E(x)]``, where the
``s_e`` are the statistics named by ``scores.knn_recon_features`` (squared error, cross-entropy of
the reconstruction, KL of the posterior, the image's PNG length); its vacancy is the mean
Euclidean distance to the k nearest training inliers in that space. Each ``w_e`` comes from the inliers alone
(``joint_weights``), so one weight setting means the same for any model and any statistic. The
optional far-statistics guard (``FarGuard``, ``joint_score``) adds how far an input's
statistics alone lie beyond the inliers' range. Plain tensors in, plain tensors out: the score
registry and ``HoleDetector`` share these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scoring.knn import knn_distances

# Smallest statistic whose log hole_knn_recon takes (a perfect reconstruction has error 0).
STATISTIC_FLOOR = 1e-12
# The decoded pixel probabilities enter the cross-entropy clamped to [eps, 1 - eps]: a float32
# sigmoid saturates to exactly 0 or 1, whose log would make one pixel's term infinite.
CROSS_ENTROPY_EPS = 1e-6


class DegenerateReferenceError(ValueError):
    """The reference inliers give hole_knn_recon no scale: a tiny reference, or a collapsed encoder."""


def log_statistic(value: Tensor) -> Tensor:
    """log of a non-negative per-input statistic, floored so that a zero stays finite (float64)."""
    return value.double().clamp_min(STATISTIC_FLOOR).log()


def squared_error(x: Tensor, reconstruction: Tensor) -> Tensor:
    """``[B]`` squared error between x and its reconstruction, summed over the pixels in float64."""
    return (reconstruction - x).double().square().flatten(1).sum(dim=1)


def cross_entropy(x: Tensor, reconstruction: Tensor) -> Tensor:
    """``[B]`` Bernoulli cross-entropy of x under the reconstruction's pixel probabilities (nats, float64).

    Unlike the squared error it also counts the entropy of x itself: a grey pixel costs about
    log 2 however well it is reconstructed, so images of uniform grey or noise stand apart from
    mostly black-and-white inliers even when the decoder reproduces them.
    """
    probabilities = reconstruction.double().clamp(CROSS_ENTROPY_EPS, 1 - CROSS_ENTROPY_EPS)
    target = x.double()
    terms = target * probabilities.log() + (1 - target) * (-probabilities).log1p()
    return -terms.flatten(1).sum(dim=1)


def as_columns(log_statistics: Tensor) -> Tensor:
    """``[N, E]`` float64 from ``[N]`` (one statistic) or ``[N, E]``."""
    values = log_statistics.double()
    return values.unsqueeze(1) if values.dim() == 1 else values


def joint_points(latents: Tensor, log_statistics: Tensor, weights: Tensor) -> Tensor:
    """Points of hole_knn_recon's joint space: ``[latent, weights * log statistics]``, float64."""
    return torch.cat([latents.double(), as_columns(log_statistics) * weights.double()], dim=1)


def latent_spacing(latents: Tensor, k: int, chunk_size: int | None = None) -> Tensor:
    """The median over reference latents of their mean distance to their k nearest others."""
    own, _ = knn_distances(latents, latents, k, "euclidean", chunk_size, exclude_self=True)
    return own.double().mean(dim=1).median()


def joint_weights(
    latents: Tensor,
    log_statistics: Tensor,
    k: int,
    relative_weight: float,
    chunk_size: int | None = None,
    spacing: Tensor | None = None,
) -> Tensor:
    """``[E]`` scales of hole_knn_recon: ``relative_weight`` (scores.knn_recon_weight) x (median
    mean distance of a reference latent to its k nearest others, ``latent_spacing``; pass it as
    ``spacing`` when already known) / (interquartile range of the reference's values of each log
    statistic), docs/method.md 4.1.

    Both scales come from the inliers alone, so the weight means the same for any model: one
    inlier IQR of a log statistic counts as ``relative_weight`` typical neighbour distances.
    """
    spacing = latent_spacing(latents, k, chunk_size) if spacing is None else spacing
    columns = as_columns(log_statistics)
    levels = torch.tensor([0.25, 0.75], dtype=torch.float64, device=columns.device)
    quartiles = torch.quantile(columns, levels, dim=0)
    spread = quartiles[1] - quartiles[0]
    if not bool((spread > 0).all()) or not spacing > 0:
        raise DegenerateReferenceError(
            "hole_knn_recon cannot scale its joint space: the reference inliers' log statistics have "
            f"interquartile ranges {[round(float(value), 6) for value in spread]} and their latents a "
            f"median neighbour distance of {float(spacing):.3g}. Either the reference is too small "
            "(use more training inliers: scores.knn_reference_size) or the encoder gives nearly every "
            "input the same posterior (posterior collapse: the training KL near its floor for every "
            "input; that model needs retraining). Another score avoids this check."
        )
    return relative_weight * spacing / spread


def joint_vacancy(
    latents: Tensor,
    log_statistics: Tensor,
    joint_reference: Tensor,
    weights: Tensor,
    k: int,
    chunk_size: int | None = None,
) -> Tensor:
    """``[N]`` mean Euclidean distance of each input's joint point to its k nearest reference points."""
    queries = joint_points(latents, log_statistics, weights)
    distances, _ = knn_distances(queries, joint_reference, k, "euclidean", chunk_size)
    return distances.mean(dim=1)


def statistics_block(log_statistics: Tensor, weights: Tensor) -> Tensor:
    """The statistics coordinates of the joint space alone, ``weights * log statistics`` (float64)."""
    return as_columns(log_statistics) * weights.double()


@dataclass
class FarGuard:
    """hole_knn_recon's far-statistics guard (docs/method.md 4.1): where the reference inliers' range
    of log statistics ends, in a space of those statistics alone, each scaled as in the joint space.

    Its statistics are the joint space's own by default; ``scores.knn_recon_guard_features`` can
    name others (the posterior's KL, say), so that the guard sees far outliers by statistics that
    would blur the joint space's ranking of near ones.
    """

    weights: Tensor  # [G] scale of each statistic (joint_weights)
    block: Tensor  # [N, G] the reference inliers' scaled statistics
    threshold: Tensor  # the quantile of their own (leave-one-out) mean distance to their k nearest

    @classmethod
    def fit(
        cls,
        latents: Tensor,
        log_statistics: Tensor,
        k: int,
        relative_weight: float,
        quantile: float,
        chunk_size: int | None = None,
        spacing: Tensor | None = None,
    ) -> FarGuard:
        """The guard of reference inliers with these latents (for the scales; or their
        ``latent_spacing`` as ``spacing``, computed once for the joint space) and log statistics."""
        weights = joint_weights(latents, log_statistics, k, relative_weight, chunk_size, spacing)
        block = statistics_block(log_statistics, weights)
        own, _ = knn_distances(block, block, k, "euclidean", chunk_size, exclude_self=True)
        return cls(weights, block, torch.quantile(own.double().mean(dim=1), quantile))

    def excess(self, log_statistics: Tensor, k: int, chunk_size: int | None = None) -> Tensor:
        """``[N]`` how far each input's mean distance to its k nearest reference inliers in the
        guard's space exceeds the threshold (0 within the inliers' range)."""
        block = statistics_block(log_statistics, self.weights)
        distances, _ = knn_distances(block, self.block, k, "euclidean", chunk_size)
        return (distances.double().mean(dim=1) - self.threshold).clamp_min(0)


def joint_score(
    latents: Tensor,
    log_statistics: Tensor,
    joint_reference: Tensor,
    weights: Tensor,
    k: int,
    chunk_size: int | None = None,
    guard: FarGuard | None = None,
    guard_statistics: Tensor | None = None,
) -> Tensor:
    """``[N]`` hole_knn_recon: the joint vacancy, plus with a ``guard`` how far each input's
    ``guard_statistics`` (by default its joint statistics) lie beyond the inliers' range, in the
    joint space's units (docs/method.md 4.1, the far-statistics guard)."""
    vacancy = joint_vacancy(latents, log_statistics, joint_reference, weights, k, chunk_size)
    if guard is None:
        return vacancy
    guarded = log_statistics if guard_statistics is None else guard_statistics
    return vacancy + guard.excess(guarded, k, chunk_size)
