"""The joint space of ``hole_knn_recon``: latent location and log reconstruction error (docs/method.md 4.1).

Each input becomes the point ``[l(x), w * log |x - x_hat|^2]``; its vacancy is the mean Euclidean
distance to the k nearest training inliers in that space. ``w`` comes from the inliers alone
(``recon_weight``), so one weight setting means the same for any model. Plain tensors in, plain
tensors out: the score registry and ``HoleDetector`` share these functions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoring.knn import knn_distances

# Smallest reconstruction error whose log hole_knn_recon takes (a perfect reconstruction has 0).
RECON_ERROR_FLOOR = 1e-12


def log_reconstruction_error(error: Tensor) -> Tensor:
    """log of ``reconstruction_error``, floored so that a perfect reconstruction stays finite."""
    return error.clamp_min(RECON_ERROR_FLOOR).log()


def joint_points(latents: Tensor, log_error: Tensor, weight: float) -> Tensor:
    """Points of hole_knn_recon's joint space: ``[latent, weight * log reconstruction error]``, float64."""
    return torch.cat([latents.double(), weight * log_error.double().unsqueeze(1)], dim=1)


def recon_weight(
    latents: Tensor, log_recon_error: Tensor, k: int, relative_weight: float, chunk_size: int | None = None
) -> float:
    """hole_knn_recon's scale: ``relative_weight`` (scores.knn_recon_weight) x (median mean distance
    of a reference latent to its k nearest others) / (interquartile range of the reference's log
    errors), docs/method.md 4.1.

    Both scales come from the inliers alone, so the weight means the same for any model: one
    inlier IQR of log error counts as ``relative_weight`` typical neighbour distances.
    """
    own, _ = knn_distances(latents, latents, k, "euclidean", chunk_size, exclude_self=True)
    spacing = own.double().mean(dim=1).median()
    quartiles = torch.quantile(log_recon_error.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    spread = quartiles[1] - quartiles[0]
    if not spread > 0 or not spacing > 0:
        raise ValueError(
            "hole_knn_recon cannot scale its joint space: the reference inliers' log reconstruction "
            f"errors have interquartile range {float(spread):.3g} and their latents a median neighbour "
            f"distance of {float(spacing):.3g}. Use more training inliers (scores.knn_reference_size) "
            "or another score."
        )
    return float(relative_weight * spacing / spread)


def joint_vacancy(
    latents: Tensor,
    log_recon_error: Tensor,
    joint_reference: Tensor,
    weight: float,
    k: int,
    chunk_size: int | None = None,
) -> Tensor:
    """``[N]`` mean Euclidean distance of each input's joint point to its k nearest reference points."""
    queries = joint_points(latents, log_recon_error, weight)
    distances, _ = knn_distances(queries, joint_reference, k, "euclidean", chunk_size)
    return distances.mean(dim=1)
