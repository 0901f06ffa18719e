"""The validation ELBO that selects the checkpoint is seeded per input, never by the global RNG."""

from __future__ import annotations

from dataclasses import asdict

import torch

from lightning_modules.config import ModelConfig, OptimConfig
from lightning_modules.factory import build_model


def test_seeded_elbo_ignores_the_global_rng_and_leaves_it_alone() -> None:
    torch.manual_seed(0)
    config = ModelConfig(variant="gaussian", lipschitz=None, latent_dim=3, width=4, hidden_dim=16)
    model = build_model(asdict(config), asdict(OptimConfig()), (1, 8, 8), max_epochs=1).eval()
    x, indices = torch.rand(5, 1, 8, 8), torch.arange(10, 15)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = model.elbo(x, seeds=indices)
    assert torch.equal(torch.get_rng_state(), before)  # nothing drawn from the global stream
    torch.manual_seed(2)
    torch.testing.assert_close(model.elbo(x, seeds=indices), first)
    assert not torch.equal(model.elbo(x), model.elbo(x))  # the unseeded form does draw
    # Each input's value depends on that input only, not on the batch it came in.
    torch.testing.assert_close(model.elbo(x[2:], seeds=indices[2:]), first[2:])
