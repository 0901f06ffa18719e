"""AOL layers: 1-Lipschitz by construction, certified exactly, and usable as the encoder's layers."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from lightning_modules.config import ModelConfig, OptimConfig
from lightning_modules.factory import build_model
from lightning_modules.jacobian import jacobian_spectral_norms
from lightning_modules.lipschitz import AOLConv2d, AOLLinear, certified_lipschitz


def dense_operator(layer: torch.nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """The layer's linear part as a matrix, column by column (bias removed)."""
    size = int(torch.tensor(shape).prod())
    basis = torch.eye(size).view(size, *shape)
    with torch.no_grad():
        return (layer(basis) - layer(torch.zeros(1, *shape))).reshape(size, -1).double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aol_linear_has_norm_at_most_one_and_certifies_it_exactly(seed: int) -> None:
    torch.manual_seed(seed)
    layer = AOLLinear(24, 10)
    layer.weight.data.mul_(5.0)  # the rescaling does not care about the weight's scale
    exact = float(torch.linalg.matrix_norm(dense_operator(layer, (24,)), ord=2))
    assert exact <= 1 + 1e-6
    assert layer.certified_norm() == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
def test_aol_conv_has_norm_at_most_one_and_the_certificate_bounds_it(padding_mode: str) -> None:
    torch.manual_seed(3)
    layer = AOLConv2d(3, 5, 3, padding_mode=padding_mode)
    layer(torch.zeros(1, 3, 6, 6))  # learns the input size
    exact = float(torch.linalg.matrix_norm(dense_operator(layer, (3, 6, 6)), ord=2))
    assert exact <= 1 + 1e-6
    assert layer.certified_norm() >= exact - 1e-6
    if padding_mode == "circular":  # stride 1, 'same' size, circular: the DFT bound is exact
        assert layer.certified_norm() == pytest.approx(exact, rel=1e-6)


def test_aol_conv_rejects_what_it_cannot_certify() -> None:
    with pytest.raises(ValueError, match="odd kernel_size"):
        AOLConv2d(1, 2, 4)
    with pytest.raises(ValueError, match="reflect"):
        AOLConv2d(1, 2, 3, padding_mode="reflect")
    with pytest.raises(RuntimeError, match="input size"):
        AOLConv2d(1, 2, 3).certified_norm()


def test_an_aol_encoder_is_certified_and_trains() -> None:
    torch.manual_seed(4)
    config = ModelConfig(
        variant="alexandroff_lipschitz",
        latent_dim=4,
        width=4,
        hidden_dim=16,
        lipschitz=2.0,
        lipschitz_layers="aol",
    )
    model = build_model(asdict(config), asdict(OptimConfig()), (1, 8, 8), max_epochs=1)
    assert any(isinstance(layer, AOLConv2d) for layer in model.encoder.modules())
    x = torch.rand(6, 1, 8, 8)
    log_likelihood, kl = model.elbo_terms(x)
    (kl - log_likelihood).mean().backward()
    assert all(p.grad is not None for p in model.encoder.mean_path.parameters())
    model.eval()
    certified = model.certified_lipschitz()
    assert certified is not None and certified <= 2.0 * (1 + 1e-6)
    assert certified_lipschitz(model.encoder.mean_path) * 2.0 == pytest.approx(certified)
    assert model.empirical_lipschitz(x) <= certified
    assert float(jacobian_spectral_norms(lambda v: model.encoder(v)[0], x).max()) > 0


def test_the_layer_choice_is_validated() -> None:
    with pytest.raises(ValueError, match="lipschitz_layers"):
        ModelConfig(lipschitz_layers="orthogonal")
