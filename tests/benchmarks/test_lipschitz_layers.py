"""The Lipschitz-layer benchmark's quick path: for every layer family, the Jacobian lower bound stays
below the certificate, so a certificate that misses a layer or reads other weights than the forward
pass uses is caught. Random images suffice: the bound must hold at every input."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from benchmarks import lipschitz_layers
from lightning_modules.config import ModelConfig
from lightning_modules.lipschitz import MaxMin

SPEC = lipschitz_layers.EncoderSpec.from_model_config(ModelConfig(), (1, 28, 28))
FAMILIES, SKIPPED = lipschitz_layers.available_families()
CERTIFIED = [name for name in lipschitz_layers.FAMILY_FACTORIES if name != "plain"]


@pytest.fixture(scope="module")
def batches() -> list[tuple[Tensor, Tensor]]:
    images = torch.rand(2 * SPEC.latent_dim, *SPEC.image_shape, generator=torch.Generator().manual_seed(0))
    target = lipschitz_layers.principal_target(images, SPEC.latent_dim)
    return [(images, target(images))]


@pytest.mark.parametrize("name", CERTIFIED)
def test_empirical_lower_bound_stays_below_the_certificate(
    name: str, batches: list[tuple[Tensor, Tensor]]
) -> None:
    if name in SKIPPED:
        pytest.skip(SKIPPED[name])
    family = FAMILIES[name]
    path = lipschitz_layers.build_mean_path(family, SPEC)
    optimiser = torch.optim.Adam(path.parameters(), lr=lipschitz_layers.LEARNING_RATE)
    lipschitz_layers.train(path, optimiser, batches, steps=2)
    images = batches[0][0][:2]
    result = lipschitz_layers.measure(
        family, path, batches, images, SPEC.image_shape, jacobian_iterations=10, certify_iterations=100
    )
    assert result.certified_lipschitz is not None
    # Relative slack for the float32 forward pass the Jacobian is taken through.
    assert 0 < result.empirical_lipschitz <= result.certified_lipschitz * (1 + 1e-4)
    # Every family is built to be 1-Lipschitz; the certificate may exceed 1 only by the slack of
    # an unconverged power iteration (own spectral) or Bjorck iteration (the libraries).
    assert result.certified_lipschitz <= 1.01


def test_layerwise_certificate_multiplies_exact_norms_and_refuses_unknown_modules() -> None:
    first, second = nn.Linear(6, 4), nn.Linear(4, 3)
    chain = nn.Sequential(nn.Flatten(), first, MaxMin(), second)
    expected = 1.0
    for layer in (first, second):
        expected *= float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
    bound = lipschitz_layers.layerwise_certificate(chain, (1, 2, 3), activations=(MaxMin,))
    assert bound == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        lipschitz_layers.layerwise_certificate(
            nn.Sequential(nn.Flatten(), nn.BatchNorm1d(6)), (1, 2, 3), activations=(MaxMin,)
        )


def test_a_family_with_another_architecture_is_refused() -> None:
    narrower = lipschitz_layers.EncoderSpec(**{**vars(SPEC), "width": SPEC.width // 2})
    with pytest.raises(ValueError, match="layout"):
        lipschitz_layers.check_layout(lipschitz_layers.own_mean_path(narrower, 1.0), SPEC)
