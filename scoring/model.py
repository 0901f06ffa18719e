"""What the scoring core needs from a model: a Protocol, so any VAE can be scored without Lightning.

``lightning_modules.BaseVAE`` implements it; a model of another code base only needs these methods
to use the score registry and the evaluation pipeline. The dataclasses are the values the
methods exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.func import functional_call


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

    log_likelihood: Tensor  # [K, B] log p(x | z_k), summed over the pixels in float64
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
    ) -> ImportanceSamples:
        """K seeded draws and their log-densities; log p(x | z) summed in float64 (see ImportanceSamples).

        A float32 sum of hundreds of nats is rounded to a grid of ~6e-5 nats, coarser than the
        batch-shape dependent rounding of the decoder's outputs; likelihood_regret (a difference of
        two such sums) and hole_posterior (their variance) would inherit that grid, and its ties.
        """
        ...

    def reconstruct(self, encoding: Encoding) -> Tensor: ...

    def distance_from_centre(self, encoding: Encoding) -> Tensor: ...


def batch_invariant_encoding(model: ScoringModel, x: Tensor) -> Encoding:
    """``model.encode(x)`` in which no input's outputs depend on the other inputs of its batch.

    Float32 kernels choose their blocking, and so the order of their sums, by the batch's shape:
    on the CPU an input's encoder outputs differ in their last bits between batches of 1, 3, 13 or
    1000 (oneDNN convolutions and MKL matrix products alike), and GPU libraries choose algorithms
    by shape too. Scores must not depend on the batch or process (docs/method.md, section 4.4), and
    hole_knn is discontinuous in the latents where a query's k-th neighbour changes, so even those
    bits can move it by far more than their size. The encoder therefore runs in float64, whose
    batch-dependent differences (~1e-16 relative) vanish when its outputs are rounded back to the
    dtype of ``x``: an input gets the same bits in any batch unless an exact output lies within that
    distance of a rounding boundary (about one output in 10^8). It costs 4-5x the float32 encoder
    on the CPU: ~5% of a sampling score (whose decoder runs K times per input), but 5x the cost of
    encoding the hole_knn reference and of the scores that only encode (latent_norm, hole_knn).
    """
    state = {
        name: value.double() if value.is_floating_point() else value
        for name, value in chain(model.encoder.named_parameters(), model.encoder.named_buffers())
    }
    mean, scale = functional_call(model.encoder, state, (x.double(),))
    if not (torch.isfinite(mean).all() and torch.isfinite(scale).all()):
        raise FloatingPointError(
            "The encoder output has NaN or inf values while scoring: the model diverged, or an "
            "input holds NaN; check the checkpoint and the evaluated data."
        )
    return model.encoding_from_outputs(mean.to(x.dtype), scale.to(x.dtype))
