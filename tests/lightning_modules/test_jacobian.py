"""The empirical Lipschitz lower bound: power iteration finds the exact Jacobian norm, from below."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_modules.jacobian import jacobian_spectral_norms
from lightning_modules.lipschitz import LipschitzConv2d, LipschitzLinear, MaxMin, certified_lipschitz


def exact_norm(function: nn.Module, x: Tensor) -> float:
    jacobian = torch.autograd.functional.jacobian(lambda v: function(v.unsqueeze(0))[0], x)
    return float(torch.linalg.matrix_norm(jacobian.reshape(-1, x.numel()), ord=2))


def test_power_iteration_matches_the_exact_jacobian_norm_of_every_row() -> None:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5))
    x = torch.randn(6, 1, 6, 6)
    estimates = jacobian_spectral_norms(network, x, iterations=100)
    for row in range(6):
        exact = exact_norm(network, x[row])
        assert estimates[row] <= exact * (1 + 1e-4)
        assert estimates[row] >= exact * (1 - 1e-3)


def test_lower_bound_never_exceeds_the_certificate() -> None:
    torch.manual_seed(1)
    network = nn.Sequential(
        LipschitzConv2d(1, 4, 3, padding=1, padding_mode="circular"),
        MaxMin(),
        nn.Flatten(),
        LipschitzLinear(4 * 64, 6),
    ).eval()
    x = torch.rand(8, 1, 8, 8)
    network(x)  # fixes the convolution's input size
    assert float(jacobian_spectral_norms(network, x).max()) <= certified_lipschitz(network) * (1 + 1e-5)


def test_training_flags_and_buffers_are_left_alone() -> None:
    layer = LipschitzLinear(5, 3).train()
    before = {name: buffer.clone() for name, buffer in layer.named_buffers()}
    layer.eval()
    jacobian_spectral_norms(layer, torch.randn(4, 5))
    assert all(torch.equal(before[name], buffer) for name, buffer in layer.named_buffers())
