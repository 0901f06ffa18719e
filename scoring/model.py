"""What the scoring core needs from a model: a Protocol, so any VAE can be scored without Lightning.

``lightning_modules.BaseVAE`` implements it; a model of another code base only needs these methods
to use the score registry and the evaluation pipeline. The dataclasses are the values the
methods exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn
from torch.distributions import Distribution


@dataclass
class Encoding:
    """What the encoder says about a batch."""

    posterior: Distribution
    mean: Tensor  # raw mean output: the L-Lipschitz map (u before projection on the sphere)
    scale: Tensor  # raw spread output (log-variance or concentration head)
    location: Tensor  # the point in latent space (s(u) on the sphere)


@dataclass
class ImportanceSamples:
    """K posterior samples per input and the log-densities that every sampling score needs."""

    log_likelihood: Tensor  # [K, B] log p(x | z_k)
    log_prior: Tensor  # [K, B] log p(z_k)
    log_posterior: Tensor  # [K, B] log q(z_k | x)


class ScoringModel(Protocol):
    """A VAE as the scores see it (see docs/method.md, section 4)."""

    @property
    def encoder(self) -> nn.Module:
        """x -> (mean, scale); likelihood_regret optimises per-input copies of it (read-only here)."""
        ...

    def encode(self, x: Tensor) -> Encoding: ...

    def encoding_from_outputs(self, mean: Tensor, scale: Tensor) -> Encoding:
        """The Encoding of raw encoder outputs (what ``encode`` returns after the encoder)."""
        ...

    def decode(self, z: Tensor) -> Tensor: ...

    def prior(self, reference: Tensor) -> Distribution: ...

    def sample_posterior(self, encoding: Encoding, samples: int, seeds: Tensor | None = None) -> Tensor:
        """``[K, B, D]`` draws; with ``seeds`` each input's from its own seeded stream."""
        ...

    def importance_samples(
        self, x: Tensor, samples: int, encoding: Encoding | None = None, seeds: Tensor | None = None
    ) -> ImportanceSamples: ...

    def reconstruct(self, encoding: Encoding) -> Tensor: ...

    def distance_from_centre(self, encoding: Encoding) -> Tensor: ...
