"""Pixel likelihoods p(x | z) on [0, 1] images.

Both are evaluated from decoder logits with numerically stable closed forms. The Bernoulli
likelihood on non-binary pixels is the classical (improper) choice that likelihood-based OOD
papers use; the continuous Bernoulli adds the normaliser that makes it a proper density on
[0, 1] (Loaiza-Ganem and Cunningham, 2019). The choice is recorded in every results file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.config import LIKELIHOOD_CHOICES


def log_likelihood(logits: Tensor, x: Tensor, kind: str, dtype: torch.dtype | None = None) -> Tensor:
    """Per-sample log p(x | z), summed over every pixel: shape logits.shape[:-3].

    The sum is taken in ``dtype`` (default: the logits' dtype); scores take it in float64.
    """
    target = x.expand_as(logits)
    if kind == "bernoulli":
        log_p = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif kind == "continuous_bernoulli":
        distribution = torch.distributions.ContinuousBernoulli(logits=logits, validate_args=False)
        log_p = distribution.log_prob(target)
    else:
        raise ValueError(f"Unknown likelihood {kind!r}; valid choices: {', '.join(LIKELIHOOD_CHOICES)}.")
    return log_p.flatten(start_dim=-3).sum(dim=-1, dtype=dtype)


def mean_image(logits: Tensor, kind: str) -> Tensor:
    """The decoder's expected image, used for reconstruction errors and plots."""
    if kind == "continuous_bernoulli":
        return torch.distributions.ContinuousBernoulli(logits=logits, validate_args=False).mean
    return torch.sigmoid(logits)
