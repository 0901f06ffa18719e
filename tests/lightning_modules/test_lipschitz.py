"""Tests for the 1-Lipschitz layers and the certified Lipschitz bound of an encoder chain."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.lipschitz import (
    InvertibleDownsample,
    LipschitzConv2d,
    LipschitzLinear,
    MaxMin,
    certified_lipschitz,
    refresh_norms,
)

F64 = torch.float64
INPUT = (1, 2, 6, 6)
CONFIGS = [
    (stride, padding, mode) for stride in (1, 2) for padding in (0, 1) for mode in ("zeros", "circular")
]


def make_conv(
    stride: int = 1,
    padding: int = 1,
    mode: str = "circular",
    dilation: int = 1,
    kernel_size: int = 3,
    input_shape: tuple[int, ...] = INPUT,
    seed: int = 0,
) -> LipschitzConv2d:
    torch.manual_seed(seed)
    conv = LipschitzConv2d(
        input_shape[1],
        3,
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        padding_mode=mode,
        dtype=F64,
    )
    conv(torch.randn(input_shape, dtype=F64))  # fixes the input size
    return conv


def jacobian_norm(fn: object, input_shape: tuple[int, ...]) -> float:
    """Largest singular value of the explicit Jacobian of a linear map."""
    x = torch.zeros(input_shape, dtype=F64)
    jacobian = torch.autograd.functional.jacobian(fn, x)
    return float(torch.linalg.svdvals(jacobian.reshape(-1, x.numel()))[0])


def raw_conv_norm(conv: LipschitzConv2d, input_shape: tuple[int, ...] = INPUT) -> float:
    weight = conv.weight.detach().double()
    return jacobian_norm(lambda x: conv._conv_forward(x, weight, None), input_shape)


# ---------------------------------------------------------------- per-layer certificates


def test_dense_certificate_is_exact() -> None:
    torch.manual_seed(0)
    layer = LipschitzLinear(7, 5, dtype=F64)
    weight = layer.weight.detach()
    true = jacobian_norm(lambda x: F.linear(x, weight), (7,))
    assert layer.certified_norm() * float(layer.sigma) == pytest.approx(true, rel=1e-6)
    layer.refresh_norm()
    assert float(layer.sigma) == pytest.approx(true, rel=1e-6)
    assert layer.certified_norm() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(
    ("kernel_size", "padding", "dilation", "input_shape"),
    [(3, 1, 1, INPUT), (5, 2, 1, INPUT), (3, 2, 2, INPUT), (3, 1, 1, (1, 2, 5, 7))],
)
def test_circular_same_conv_certificate_is_exact(
    kernel_size: int, padding: int, dilation: int, input_shape: tuple[int, ...]
) -> None:
    conv = make_conv(1, padding, "circular", dilation, kernel_size, input_shape)
    true = raw_conv_norm(conv, input_shape)
    assert conv.certified_norm() * float(conv.sigma) == pytest.approx(true, rel=1e-6)


@pytest.mark.parametrize(
    ("stride", "padding", "mode", "dilation"),
    [
        (1, 0, "zeros", 1),
        (1, 1, "zeros", 1),
        (2, 0, "zeros", 1),
        (2, 1, "zeros", 1),
        (1, 2, "zeros", 2),
        (2, 1, "circular", 1),
        (1, 0, "circular", 1),
        (1, 2, "circular", 1),
    ],
)
def test_other_conv_certificates_are_tight_upper_bounds(
    stride: int, padding: int, mode: str, dilation: int
) -> None:
    conv = make_conv(stride, padding, mode, dilation)
    true = raw_conv_norm(conv)
    bound = conv.certified_norm() * float(conv.sigma)
    assert true * (1 - 1e-12) <= bound <= 2 * true


def test_zero_padding_bound_needs_the_unwrapped_grid() -> None:
    # Kernel row (1, 0, -1): symbol 2 |sin w|, peaking at w = pi / 2. With zero padding on 6
    # pixels the operator is tridiagonal with norm 2 cos(pi / 7) ~ 1.80; a circulant on the
    # 6-point grid (frequencies k pi / 3) would certify only 2 sin(pi / 3) ~ 1.73 < 1.80.
    conv = LipschitzConv2d(1, 1, 3, padding=1, bias=False, dtype=F64)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[0, 0, 0], [1, 0, -1], [0, 0, 0]]]]))
    conv(torch.zeros(1, 1, 6, 6, dtype=F64))
    true = raw_conv_norm(conv, (1, 1, 6, 6))
    assert true == pytest.approx(2 * math.cos(math.pi / 7), rel=1e-12)
    assert conv.certified_norm() * float(conv.sigma) >= true


@pytest.mark.parametrize(("stride", "padding", "mode"), CONFIGS)
def test_refreshed_sigma_is_the_operator_norm(stride: int, padding: int, mode: str) -> None:
    conv = make_conv(stride, padding, mode)
    # Power iteration converges like (sigma_2 / sigma_1)^(2n); convolutions have clustered top
    # singular values, so this uses more than the default 500 steps for a 1e-4 agreement.
    conv.refresh_norm(2000)
    assert float(conv.sigma) == pytest.approx(raw_conv_norm(conv), rel=1e-4)


@pytest.mark.parametrize(("stride", "padding", "mode"), [*CONFIGS, (2, 2, "circular")])
@pytest.mark.parametrize("input_shape", [INPUT, (1, 2, 7, 5)])
def test_adjoint_is_the_transpose(stride: int, padding: int, mode: str, input_shape: tuple[int, ...]) -> None:
    conv = make_conv(stride, padding, mode, dilation=2 if padding == 2 else 1, input_shape=input_shape)
    weight = conv.weight.detach()
    x, y = torch.randn(conv.v.shape, dtype=F64), torch.randn(conv.u.shape, dtype=F64)
    forward = (conv._operator(x, weight) * y).sum()
    backward = (x * conv._adjoint(y, weight)).sum()
    assert forward.item() == pytest.approx(backward.item(), rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------- forward semantics


def test_training_updates_sigma_and_eval_freezes_it() -> None:
    conv = make_conv()
    conv.train()
    with torch.no_grad():
        conv.weight.mul_(3.0)
    x = torch.randn(4, *INPUT[1:], dtype=F64)
    conv(x)
    assert float(conv.sigma) == pytest.approx(raw_conv_norm(conv), rel=1e-2)
    conv.eval()
    buffers = {name: buffer.clone() for name, buffer in conv.named_buffers()}
    with torch.no_grad():
        conv.weight.mul_(2.0)
    out = conv(x)
    for name, buffer in conv.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), conv.weight / conv.sigma, conv.bias)
    assert torch.allclose(out, expected)


def test_training_gradient_includes_the_normalisation() -> None:
    # With u, v fixed (0 iterations), sigma = u^T W v and the output is W x / sigma, so
    # dL/dW = c x^T / sigma - (c . W x) / sigma^2 u v^T for L = c . (W x / sigma).
    torch.manual_seed(1)
    layer = LipschitzLinear(4, 3, bias=False, n_power_iterations=0, dtype=F64)
    x, c = torch.randn(4, dtype=F64), torch.randn(3, dtype=F64)
    (layer(x) @ c).backward()
    weight, u, v = layer.weight.detach(), layer.u, layer.v
    sigma = u @ weight @ v
    expected = torch.outer(c, x) / sigma - (c @ weight @ x) / sigma**2 * torch.outer(u, v)
    assert layer.weight.grad is not None
    assert torch.allclose(layer.weight.grad, expected)


def test_conv_rejects_a_new_spatial_size() -> None:
    conv = make_conv()
    with pytest.raises(ValueError, match=r"spatial size \(6, 6\).*\(8, 8\)"):
        conv(torch.randn(1, 2, 8, 8, dtype=F64))


def test_conv_rejects_unsupported_configurations() -> None:
    with pytest.raises(ValueError, match="groups=2"):
        LipschitzConv2d(2, 4, 3, groups=2)
    with pytest.raises(ValueError, match="reflect"):
        LipschitzConv2d(2, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="same"):
        LipschitzConv2d(2, 4, 3, padding="same")
    with pytest.raises(RuntimeError, match="has not seen an input"):
        LipschitzConv2d(2, 4, 3).certified_norm()


def test_state_dict_round_trip_preserves_sigma_and_input_size() -> None:
    conv = make_conv(stride=2, padding=1, mode="zeros")
    conv.refresh_norm()
    fresh = LipschitzConv2d(2, 3, 3, stride=2, padding=1, dtype=F64)
    fresh.load_state_dict(conv.state_dict())
    for name, buffer in conv.named_buffers():
        assert torch.equal(getattr(fresh, name), buffer), name
    assert fresh.certified_norm() == conv.certified_norm()
    conv.eval()
    fresh.eval()
    x = torch.randn(2, *INPUT[1:], dtype=F64)
    assert torch.equal(fresh(x), conv(x))
    with pytest.raises(ValueError, match="spatial size"):
        fresh(torch.randn(1, 2, 4, 4, dtype=F64))

    dense = LipschitzLinear(5, 4)
    dense.refresh_norm()
    fresh_dense = LipschitzLinear(5, 4)
    fresh_dense.load_state_dict(dense.state_dict())
    assert torch.equal(fresh_dense.sigma, dense.sigma)


# ---------------------------------------------------------------- activations and downsampling


def test_maxmin_sorts_pairs_and_rejects_odd_channels() -> None:
    x = torch.tensor([[1.0, 5.0, 3.0, 2.0]])
    assert torch.equal(MaxMin()(x), torch.tensor([[3.0, 5.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="even number of channels.*got 3"):
        MaxMin()(torch.randn(2, 3, 4, 4))


def test_maxmin_jacobian_is_a_permutation_even_at_ties() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5, 1.0, 3.0, 0.5]], dtype=F64)  # pairs (1,1), (.5,.5) tie
    jacobian = torch.autograd.functional.jacobian(MaxMin(), x).reshape(6, 6)
    assert torch.equal(jacobian.sum(dim=0), torch.ones(6, dtype=F64))
    assert torch.equal(jacobian.sum(dim=1), torch.ones(6, dtype=F64))
    assert set(jacobian.unique().tolist()) == {0.0, 1.0}


def test_invertible_downsample_is_an_isometry() -> None:
    x = torch.randn(3, 4, 6, 8, dtype=F64)
    y = InvertibleDownsample()(x)
    assert y.shape == (3, 16, 3, 4)
    assert torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)
    with pytest.raises(ValueError, match="divisible by 2, got 5x6"):
        InvertibleDownsample()(torch.randn(1, 1, 5, 6))


# ---------------------------------------------------------------- the certified chain


def make_chain() -> nn.Sequential:
    torch.manual_seed(0)
    chain = nn.Sequential(
        LipschitzConv2d(2, 4, 3, padding=1, padding_mode="circular"),
        MaxMin(),
        InvertibleDownsample(),  # 4 x 6 x 6 -> 16 x 3 x 3
        LipschitzConv2d(16, 8, 3, padding=1, padding_mode="circular"),
        MaxMin(),
        nn.Flatten(),
        LipschitzLinear(72, 6),
    ).double()
    chain(torch.randn(INPUT, dtype=F64))
    refresh_norms(chain)
    return chain.eval()


def ratio(chain: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return (chain(x) - chain(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)


def test_chain_certificate_bounds_random_and_adversarial_pairs() -> None:
    chain = make_chain()
    certified = certified_lipschitz(chain)
    assert certified == pytest.approx(1.0, abs=1e-3)
    limit = certified * (1 + 1e-6)

    torch.manual_seed(1)
    x, y = torch.randn(2, 512, *INPUT[1:], dtype=F64)
    random_max = ratio(chain, x, y).max().item()
    assert random_max <= limit

    chain.requires_grad_(False)
    x = torch.randn(16, *INPUT[1:], dtype=F64, requires_grad=True)
    y = (x.detach() + 0.1 * torch.randn_like(x)).requires_grad_()
    optimiser = torch.optim.Adam([x, y], lr=0.02)
    for _ in range(300):
        optimiser.zero_grad()
        (-ratio(chain, x, y).sum()).backward()
        optimiser.step()
    adversarial_max = ratio(chain, x, y).max().item()
    assert adversarial_max <= limit
    assert adversarial_max > random_max  # the ascent really searched


def test_certificate_counts_a_reused_layer_every_time() -> None:
    torch.manual_seed(2)
    layer = LipschitzLinear(4, 4, dtype=F64)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # sigma is stale: certified norm ~ 2
    single = certified_lipschitz(layer)
    assert single == pytest.approx(2.0, rel=1e-6)
    assert certified_lipschitz(nn.Sequential(layer, nn.ReLU(), layer)) == pytest.approx(single**2, rel=1e-12)


@pytest.mark.parametrize(
    "intruder", [nn.BatchNorm2d(4), nn.Linear(4, 4), nn.Tanh(), nn.ModuleList([nn.ReLU()])]
)
def test_certificate_refuses_unknown_layers(intruder: nn.Module) -> None:
    chain = nn.Sequential(nn.Sequential(LipschitzLinear(4, 4), intruder), MaxMin())
    with pytest.raises(ValueError, match=type(intruder).__name__):
        certified_lipschitz(chain)


def test_certificate_accepts_types_the_caller_vouches_for() -> None:
    class Halve(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x / 2

    layer = LipschitzLinear(3, 3)
    assert certified_lipschitz(nn.Sequential(layer, Halve()), extra_allowed=(Halve,)) == (
        layer.certified_norm()
    )
