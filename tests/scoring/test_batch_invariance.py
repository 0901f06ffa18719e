"""An input's encoding and scores do not depend on the batch it is scored in (docs/method.md, 4.4).

Fresh tiny models and random images: what is under test is arithmetic, not what a model learnt.
The batch sizes 1, 3 and 13 against 29 are among those for which this machine's float32 kernels
(oneDNN convolutions, MKL matrix products) give an input other last bits than in the whole batch.
tests/experiments/test_score_batch_independence.py checks the same end to end, across processes.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from lightning_modules.base import BaseVAE
from lightning_modules.config import ModelConfig, OptimConfig
from lightning_modules.factory import build_model
from scoring.config import ScoreConfig
from scoring.model import batch_invariant_encoding
from scoring.registry import sample_seeds, score_batch

VARIANTS = ["gaussian", "alexandroff_lipschitz"]
SPLITS = (1, 3, 13)


def fresh_model(variant: str) -> BaseVAE:
    torch.manual_seed(0)
    settings = ModelConfig(
        variant=variant,
        lipschitz=1.0 if "lipschitz" in variant else None,
        latent_dim=4,
        width=4,
        hidden_dim=32,
    )
    model = build_model(asdict(settings), asdict(OptimConfig()), (1, 28, 28), max_epochs=1)
    model.refresh_certificate()
    return model.eval()


def images(count: int = 29) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_encoding_of_an_input_is_the_same_in_every_batch(variant: str) -> None:
    model, x = fresh_model(variant), images()
    with torch.no_grad():
        whole = batch_invariant_encoding(model, x)
        for size in SPLITS:
            parts = [batch_invariant_encoding(model, chunk) for chunk in x.split(size)]
            for field in ("mean", "scale", "location"):
                split = torch.cat([getattr(part, field) for part in parts])
                assert torch.equal(split, getattr(whole, field)), (size, field)
        # The float32 encoder's map, to its rounding, and in its dtype.
        plain = model.encode(x)
    assert whole.mean.dtype == whole.location.dtype == torch.float32
    torch.testing.assert_close(whole.mean, plain.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.scale, plain.scale, rtol=1e-5, atol=1e-6)


def test_a_diverged_encoder_is_reported_not_scored() -> None:
    model = fresh_model("gaussian")
    with torch.no_grad():
        model.encoder.scale_head.bias.fill_(float("nan"))
        with pytest.raises(FloatingPointError, match="NaN or inf"):
            batch_invariant_encoding(model, images(2))


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_scores_of_an_input_are_the_same_in_every_batch(variant: str) -> None:
    """Scores of the latents alone bit for bit; through the decoder, to its float32 rounding.

    The log-likelihoods are summed in float64: a float32 sum of ~550 nats is rounded to a grid of
    6e-5 nats, and their float32 variances differed by 1e-5 between these batchings.
    """
    model, x = fresh_model(variant), images()
    names = ["latent_norm", "neg_elbo", "iwae_nll", "hole_posterior", "recon"]
    settings = ScoreConfig(names=names, iwae_samples=4, posterior_samples=4)
    indices = torch.arange(len(x))
    seeds = sample_seeds(indices, 0)
    whole, _ = score_batch(model, x, names, settings, seeds, indices)
    assert whole["neg_elbo"].dtype == whole["hole_posterior"].dtype == torch.float64
    for size in SPLITS:
        parts = [
            score_batch(model, chunk, names, settings, chunk_seeds, chunk_indices)[0]
            for chunk, chunk_seeds, chunk_indices in zip(
                x.split(size), seeds.split(size), indices.split(size)
            )
        ]
        split = {name: torch.cat([part[name] for part in parts]) for name in names}
        assert torch.equal(split["latent_norm"], whole["latent_norm"]), size
        for name in ("neg_elbo", "iwae_nll"):
            torch.testing.assert_close(split[name], whole[name], rtol=1e-8, atol=0.0, msg=f"{name}, {size}")
        torch.testing.assert_close(split["hole_posterior"], whole["hole_posterior"], rtol=0.0, atol=1e-6)
        # A float32 sum of squares of the decoder's outputs: batch-shape dependent float32 rounding.
        torch.testing.assert_close(split["recon"], whole["recon"], rtol=1e-6, atol=0.0)
