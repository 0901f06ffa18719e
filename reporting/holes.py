"""Where the vacant holes of the latent space are: uniform latent samples scored by hole_knn.

A plane can be shaded by vacancy only where every plane point is a latent point (R^2, S^2). In
higher dimension nothing else shows where the holes are, so the dashboard samples the latent space
itself: points drawn uniformly (on S^d for the sphere variants; in a ball holding every
training-inlier latent on R^d), each scored with ``hole_knn`` against the evaluation's own
reference and settings. The most vacant samples are where the holes are; they are projected like
the data, and decoded for the gallery (in R^2 and S^2 too, where the map agrees with the shading).
Samples are seeded by the run seed, so every epoch of a run scores the very same points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from scoring.config import ScoreConfig
from scoring.registry import ReferenceLatents, hole_knn


@dataclass(frozen=True)
class HoleSamples:
    """Uniform latent points and their vacancy (hole_knn), with how they were drawn."""

    points: np.ndarray  # [S, D] float64 latent points
    vacancy: np.ndarray  # [S] hole_knn of each point
    region: str  # where they were drawn uniformly, for captions
    metric: str  # the latent distance hole_knn used: "euclidean" or "geodesic"

    def most_vacant(self, count: int) -> np.ndarray:
        """Rows of the ``count`` most vacant samples, most vacant first."""
        return np.argsort(-self.vacancy, kind="stable")[:count]


def uniform_latents(latent_kind: str, reference: Tensor, count: int, seed: int) -> tuple[Tensor, str]:
    """``count`` seeded uniform points of the latent space (float64, CPU) and a caption of where.

    S^d: normalised Gaussian vectors. R^d has no uniform distribution, so the points fill the
    smallest ball around the training-inlier mean that holds every training-inlier latent
    (uniform by volume, so in high dimension most lie near its rim, beyond the inliers).
    """
    generator = torch.Generator().manual_seed(seed)
    latents = reference.detach().to(device="cpu", dtype=torch.float64)
    dim = latents.shape[1]
    directions = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    if latent_kind == "sphere":
        return directions, f"uniformly on the latent sphere S^{dim - 1}"
    centre = latents.mean(dim=0)
    radius = float((latents - centre).norm(dim=1).max())
    radii = radius * torch.rand(count, 1, generator=generator, dtype=torch.float64) ** (1 / dim)
    region = (
        f"uniformly in the ball of R^{dim} around the training-inlier mean that holds every "
        f"training-inlier latent (radius {radius:.3g})"
    )
    return centre + radii * directions, region


def sample_holes(
    latent_kind: str, reference: ReferenceLatents, settings: ScoreConfig, count: int, seed: int
) -> HoleSamples:
    """Uniform latent points scored by hole_knn exactly as the evaluation scored its inputs."""
    points, region = uniform_latents(latent_kind, reference.latents, count, seed)
    queries = points.to(device=reference.latents.device, dtype=reference.latents.dtype)
    vacancy = hole_knn(queries, reference, settings).double().cpu().numpy()
    return HoleSamples(points.numpy(), vacancy, region, reference.metric)


def latent_distances(queries: np.ndarray, points: np.ndarray, metric: str) -> np.ndarray:
    """``[Q, P]`` distances in the latent metric: Euclidean, or geodesic on the sphere."""
    chord = np.linalg.norm(queries[:, None, :] - points[None, :, :], axis=2)
    return 2 * np.arcsin(np.clip(chord / 2, 0, 1)) if metric == "geodesic" else chord


def distinct_holes(samples: HoleSamples, count: int, reference: np.ndarray) -> np.ndarray:
    """The most vacant samples, skipping any inside the empty ball of one already taken.

    A taken sample's empty ball reaches to its nearest reference latent, so everything inside it
    lies in the same hole; without this the gallery would show one large hole many times over,
    since its most vacant samples crowd together. The most vacant sample is always taken.
    """
    chosen: list[int] = []
    radii: list[float] = []
    for row in samples.most_vacant(len(samples.vacancy)):
        if len(chosen) == count:
            break
        point = samples.points[[row]]
        if chosen and np.any(latent_distances(point, samples.points[chosen], samples.metric)[0] < radii):
            continue
        chosen.append(int(row))
        radii.append(float(latent_distances(point, reference, samples.metric).min()))
    return np.array(chosen, dtype=np.int64)


def nearest_points(queries: np.ndarray, points: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the row of its nearest point and the distance to it (latent metric)."""
    distances = latent_distances(queries, points, metric)
    rows = distances.argmin(axis=1)
    return rows, distances[np.arange(len(queries)), rows]
