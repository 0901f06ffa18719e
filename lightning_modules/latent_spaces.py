"""The two latent spaces a VAE variant can live in: R^d and the Alexandroff sphere S^d.

A latent space turns the encoder's raw outputs into a posterior, owns the prior, and says how
distances are measured there. Variants pick one; everything else in the model is shared.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from lightning_modules.distributions import (
    HypersphericalUniform,
    PowerSpherical,
    inverse_stereographic,
    seeded_draws,
)
from scoring.knn import KnnMetric


class LatentSpace(Protocol):
    metric: KnnMetric  # "euclidean" or "geodesic": how hole_knn measures distances here
    mean_dim: int  # encoder outputs for the location
    scale_dim: int  # encoder outputs for the spread
    ambient_dim: int  # what the decoder receives

    def posterior(self, mean: Tensor, scale: Tensor) -> Distribution: ...

    def location(self, mean: Tensor) -> Tensor: ...

    def distance_from_centre(self, mean: Tensor) -> Tensor: ...

    def prior(self, reference: Tensor) -> Distribution: ...

    def rsample_seeded(self, posterior: Distribution, samples: int, seeds: Tensor) -> Tensor: ...


class EuclideanLatent:
    """R^d with a diagonal Gaussian posterior and N(0, I) prior (the classical VAE)."""

    metric: KnnMetric = "euclidean"

    def __init__(self, latent_dim: int) -> None:
        self.mean_dim = self.scale_dim = self.ambient_dim = latent_dim

    def posterior(self, mean: Tensor, scale: Tensor) -> Distribution:
        # scale is a log-variance; clamping keeps exp() finite for a diverging encoder.
        std = torch.exp(0.5 * scale.clamp(-30.0, 20.0))
        return Independent(Normal(mean, std), 1)

    def location(self, mean: Tensor) -> Tensor:
        return mean

    def distance_from_centre(self, mean: Tensor) -> Tensor:
        return mean.norm(dim=-1)

    def prior(self, reference: Tensor) -> Distribution:
        zeros = torch.zeros(self.ambient_dim, dtype=reference.dtype, device=reference.device)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def rsample_seeded(self, posterior: Distribution, samples: int, seeds: Tensor) -> Tensor:
        """[samples, B, d] draws mean + std * eps, each row's eps from its own seeded generator."""
        # `posterior` is what self.posterior returns: Independent(Normal(mean, std), 1).
        normal = cast(Normal, cast(Independent, posterior).base_dist)
        (noise,) = seeded_draws(
            seeds,
            normal.loc.device,
            lambda generator, _: (
                torch.randn(
                    samples,
                    self.ambient_dim,
                    generator=generator,
                    dtype=normal.loc.dtype,
                    device=normal.loc.device,
                ),
            ),
        )
        return normal.loc + normal.scale * noise


class SphereLatent:
    """S^d in R^(d+1): the Alexandroff (one-point) compactification of R^d.

    The encoder's mean output u in R^d is sent to the sphere by the inverse stereographic
    projection, so |u| -> infinity lands on the north pole instead of escaping to infinity.
    Posterior: Power Spherical(s(u), kappa); prior: uniform on the sphere.
    """

    metric: KnnMetric = "geodesic"

    def __init__(self, latent_dim: int, kappa_floor: float) -> None:
        self.mean_dim = latent_dim
        self.scale_dim = 1
        self.ambient_dim = latent_dim + 1
        self.kappa_floor = kappa_floor

    def posterior(self, mean: Tensor, scale: Tensor) -> Distribution:
        kappa = F.softplus(scale.squeeze(-1)) + self.kappa_floor
        return PowerSpherical(inverse_stereographic(mean), kappa)

    def location(self, mean: Tensor) -> Tensor:
        return inverse_stereographic(mean)

    def distance_from_centre(self, mean: Tensor) -> Tensor:
        """Geodesic distance from s(0), the south pole: 2 atan(|u|), monotone in |u|."""
        return 2.0 * torch.atan(mean.norm(dim=-1))

    def prior(self, reference: Tensor) -> Distribution:
        return HypersphericalUniform(self.ambient_dim, device=reference.device, dtype=reference.dtype)

    def rsample_seeded(self, posterior: Distribution, samples: int, seeds: Tensor) -> Tensor:
        # `posterior` is what self.posterior returns: a PowerSpherical.
        return cast(PowerSpherical, posterior).rsample_seeded(samples, seeds)
