"""Tests for the sphere distributions and the stereographic maps of the Alexandroff latent space."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import kl_divergence

from lightning_modules.distributions import (
    HypersphericalUniform,
    PowerSpherical,
    inverse_stereographic,
    log_sphere_area,
    stereographic,
)

F64 = torch.float64
CASES = [(2, 0.5), (3, 4.0), (3, 60.0), (10, 25.0), (65, 3.0), (129, 500.0)]


SAMPLERS = ["rsample", "rsample_seeded"]


def draw(q: PowerSpherical, samples: int, sampler: str) -> torch.Tensor:
    """[samples, *batch, m] from the global-RNG sampler or the per-row seeded one (1-D batch)."""
    if sampler == "rsample":
        return q.rsample((samples,))
    return q.rsample_seeded(samples, torch.arange(q.batch_shape[0]) + 1000)


def random_loc(m: int, batch: int = 1, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, m, generator=generator, dtype=dtype), dim=-1)


@pytest.mark.parametrize(("m", "kappa"), CASES)
def test_kl_to_uniform_matches_monte_carlo(m: int, kappa: float) -> None:
    torch.manual_seed(m)
    q = PowerSpherical(random_loc(m, seed=m), torch.tensor([kappa], dtype=F64))
    p = HypersphericalUniform(m, dtype=F64)
    z = q.sample((20000,))
    log_ratio = q.log_prob(z) - p.log_prob(z)
    mc, se = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(z.shape[0])
    closed = kl_divergence(q, p).item()
    assert closed >= 0
    assert abs(mc - closed) <= 4 * se + 1e-9, (mc, se, closed)


@pytest.mark.parametrize(("m", "kappa"), CASES)
def test_entropy_matches_monte_carlo(m: int, kappa: float) -> None:
    torch.manual_seed(100 + m)
    q = PowerSpherical(random_loc(m, seed=m), torch.tensor([kappa], dtype=F64))
    neg_log_q = -q.log_prob(q.sample((20000,)))
    mc, se = neg_log_q.mean().item(), neg_log_q.std().item() / math.sqrt(neg_log_q.shape[0])
    assert abs(mc - q.entropy().item()) <= 4 * se + 1e-9


def test_uniform_entropy_and_log_prob_match_sphere_area() -> None:
    # area(S^1) = 2 pi, area(S^2) = 4 pi
    assert log_sphere_area(2) == pytest.approx(math.log(2 * math.pi))
    assert log_sphere_area(3) == pytest.approx(math.log(4 * math.pi))
    p = HypersphericalUniform(3, batch_shape=(2,), dtype=F64)
    z = p.sample((7,))
    assert z.shape == (7, 2, 3)
    assert torch.allclose(z.norm(dim=-1), torch.ones((), dtype=F64))
    assert torch.allclose(p.log_prob(z), torch.tensor(-math.log(4 * math.pi), dtype=F64))
    assert torch.allclose(p.entropy(), torch.tensor(math.log(4 * math.pi), dtype=F64))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize(("m", "kappa"), [(2, 1.0), (5, 20.0), (64, 1e4)])
def test_samples_on_sphere_and_mean(dtype: torch.dtype, m: int, kappa: float, sampler: str) -> None:
    torch.manual_seed(1)
    loc = random_loc(m, batch=3, seed=2, dtype=dtype)
    q = PowerSpherical(loc, torch.full((3,), kappa, dtype=dtype))
    with torch.no_grad():
        z = draw(q, 20000, sampler)
    assert z.shape == (20000, 3, m)
    assert (z.norm(dim=-1) - 1).abs().max() < 1e-5
    se = z.double().std(dim=0) / math.sqrt(z.shape[0])
    assert ((z.double().mean(dim=0) - q.mean.double()).abs() <= 5 * se + 1e-6).all()


def test_mean_direction_and_length() -> None:
    loc = random_loc(4)
    q = PowerSpherical(loc, torch.tensor([6.0], dtype=F64))
    assert torch.allclose(q.mean, loc * 6.0 / (6.0 + 3.0))


@pytest.mark.parametrize("kappa", [1.0, 3.7, 40.0])
@pytest.mark.parametrize("angle", [0.0, 2.0, math.pi])
def test_density_integrates_to_one_on_circle(kappa: float, angle: float) -> None:
    # Periodic trapezoid rule over the angle: spectrally accurate for smooth periodic integrands.
    n = 4096
    theta = torch.arange(n, dtype=F64) * (2 * math.pi / n)
    z = torch.stack((torch.cos(theta), torch.sin(theta)), dim=-1)
    loc = torch.tensor([math.cos(angle), math.sin(angle)], dtype=F64)
    q = PowerSpherical(loc, torch.tensor(kappa, dtype=F64))
    integral = q.log_prob(z).exp().sum().item() * (2 * math.pi / n)
    assert integral == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("kappa", [1.0, 5.5, 30.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_density_integrates_to_one_on_sphere(kappa: float, seed: int) -> None:
    # Gauss-Legendre in theta (with the sin(theta) Jacobian), periodic trapezoid in phi.
    nodes, weights = np.polynomial.legendre.leggauss(160)
    theta = torch.from_numpy((nodes + 1) * math.pi / 2)
    w_theta = torch.from_numpy(weights * math.pi / 2) * torch.sin(theta)
    n_phi = 320
    phi = torch.arange(n_phi, dtype=F64) * (2 * math.pi / n_phi)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    z = torch.stack((torch.sin(t) * torch.cos(p), torch.sin(t) * torch.sin(p), torch.cos(t)), -1)
    q = PowerSpherical(random_loc(3, seed=seed)[0], torch.tensor(kappa, dtype=F64))
    density = q.log_prob(z).exp()
    integral = (density * w_theta[:, None]).sum().item() * (2 * math.pi / n_phi)
    assert integral == pytest.approx(1.0, abs=1e-9)


def test_rsample_gradients_reach_loc_and_scale() -> None:
    torch.manual_seed(3)
    raw = torch.randn(2, 6, dtype=F64, requires_grad=True)
    scale = torch.tensor([2.0, 300.0], dtype=F64, requires_grad=True)
    z = PowerSpherical(F.normalize(raw, dim=-1), scale).rsample((50,))
    (z * torch.arange(6, dtype=F64)).sum().backward()
    for grad in (raw.grad, scale.grad):
        assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("m", "kappa"), [(3, 2.0), (20, 50.0), (33, 1000.0)])
def test_rsample_kappa_gradient_is_unbiased(
    m: int, kappa: float, sampler: str, dtype: torch.dtype, device: str
) -> None:
    """Also in float32 and on CUDA, whose Beta gradient kernel computes in the input's precision;
    kappa = 1000 with m = 33 is the default latent at a trained encoder's concentration."""
    # d/dkappa E[loc . z] = d/dkappa kappa / (kappa + m - 1) = (m - 1) / (kappa + m - 1)^2.
    torch.manual_seed(4)
    torch.cuda.manual_seed_all(4)
    n = 40000
    loc = random_loc(m, seed=5, dtype=dtype).to(device).expand(n, m)
    scale = torch.full((n,), kappa, dtype=dtype, device=device, requires_grad=True)
    z = draw(PowerSpherical(loc, scale), 1, sampler)[0]
    (z * loc).sum().backward()
    per_sample = scale.grad
    assert per_sample is not None
    per_sample = per_sample.double()
    mc, se = per_sample.mean().item(), per_sample.std().item() / math.sqrt(n)
    assert abs(mc - (m - 1) / (kappa + m - 1) ** 2) <= 5 * se


def test_seeded_draws_of_a_row_do_not_depend_on_the_other_rows() -> None:
    loc, kappa = random_loc(6, batch=4, seed=7), torch.tensor([1.0, 5.0, 80.0, 3e3], dtype=F64)
    seeds = torch.tensor([11, 12, 13, 14])
    together = PowerSpherical(loc, kappa).rsample_seeded(8, seeds)
    alone = PowerSpherical(loc[2:3], kappa[2:3]).rsample_seeded(8, seeds[2:3])
    assert torch.equal(together[:, 2:3], alone)
    assert torch.equal(together, PowerSpherical(loc, kappa).rsample_seeded(8, seeds))
    assert not torch.equal(together, PowerSpherical(loc, kappa).rsample_seeded(8, seeds + 4))


def test_seeded_sampler_needs_one_seed_per_row() -> None:
    q = PowerSpherical(random_loc(3, batch=2), torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="one seed per distribution"):
        q.rsample_seeded(4, torch.arange(3))


def test_sampler_is_stable_when_loc_is_a_pole() -> None:
    torch.manual_seed(6)
    for sign in (1.0, -1.0):
        loc = torch.zeros(5)
        loc[0] = sign
        z = PowerSpherical(loc, torch.tensor(1e4)).sample((2000,))
        assert (z.norm(dim=-1) - 1).abs().max() < 1e-5
        # t = loc . z has mean kappa / (kappa + m - 1): concentrated, on the correct side
        assert (z @ loc).mean().item() == pytest.approx(1e4 / (1e4 + 4), abs=1e-4)


def test_log_prob_is_accurate_near_the_antipode() -> None:
    loc = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float32)
    eps = 1e-3
    z = torch.tensor([-math.cos(eps), math.sin(eps), 0.0], dtype=torch.float32)
    q = PowerSpherical(loc, torch.tensor(3.0))
    # 1 + loc . z = 1 - cos(eps) = 2 sin^2(eps/2); float32 dot products lose it almost entirely
    expected = q._log_normalizer().double() + 3.0 * math.log(2 * math.sin(eps / 2) ** 2)
    assert q.log_prob(z).item() == pytest.approx(expected.item(), rel=1e-5)


def test_batch_shapes_broadcast_and_expand() -> None:
    loc = random_loc(4, batch=3)
    q = PowerSpherical(loc[:, None, :], torch.tensor([1.0, 2.0], dtype=F64))
    assert q.batch_shape == (3, 2) and q.event_shape == (4,)
    assert q.rsample((5,)).shape == (5, 3, 2, 4)
    assert q.entropy().shape == (3, 2)
    assert kl_divergence(q, HypersphericalUniform(4, dtype=F64)).shape == (3, 2)
    expanded = q.expand(torch.Size((7, 3, 2)))
    assert expanded.sample().shape == (7, 3, 2, 4)
    assert torch.equal(expanded.entropy()[0], q.entropy())


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        PowerSpherical(torch.tensor([[1.0, 1.0]]), torch.tensor([1.0]))  # not unit
    with pytest.raises(ValueError):
        PowerSpherical(torch.tensor([[1.0, 0.0]]), torch.tensor([0.0]))  # kappa = 0
    with pytest.raises(ValueError, match="at least 2"):
        PowerSpherical(torch.tensor([[1.0]]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="dim=3"):
        kl_divergence(
            PowerSpherical(torch.tensor([1.0, 0.0, 0.0]), torch.tensor(1.0)),
            HypersphericalUniform(4),
        )


# ---------------------------------------------------------------- stereographic projection


def test_stereographic_round_trips() -> None:
    torch.manual_seed(7)
    u = torch.randn(100, 5, dtype=F64) * torch.logspace(-3, 3, 100, dtype=F64)[:, None]
    assert torch.allclose(stereographic(inverse_stereographic(u)), u, rtol=1e-12, atol=1e-15)
    z = F.normalize(torch.randn(100, 6, dtype=F64), dim=-1)
    assert torch.allclose(inverse_stereographic(stereographic(z)), z, atol=1e-14)


def test_inverse_stereographic_matches_textbook_formula_and_poles() -> None:
    u = torch.tensor([[0.3, -0.2], [1.5, 2.0], [0.0, 0.0]], dtype=F64)
    r2 = (u * u).sum(-1, keepdim=True)
    expected = torch.cat((2 * u, r2 - 1), dim=-1) / (r2 + 1)
    assert torch.allclose(inverse_stereographic(u), expected, atol=1e-15)
    assert torch.equal(inverse_stereographic(torch.zeros(1, 3))[0, -1], torch.tensor(-1.0))
    assert torch.isinf(stereographic(torch.tensor([0.0, 0.0, 1.0]))).all()


@pytest.mark.parametrize(
    ("dtype", "magnitude"),
    [(torch.float32, 1e20), (torch.float32, 1e30), (torch.float32, 1e38), (F64, 1e300)],
)
def test_inverse_stereographic_huge_inputs(dtype: torch.dtype, magnitude: float) -> None:
    u = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, 0.0]], dtype=dtype) * magnitude
    z = inverse_stereographic(u)
    assert torch.isfinite(z).all()
    assert torch.allclose(z.norm(dim=-1), torch.ones((), dtype=dtype), atol=1e-6)
    assert (z[:, -1] == 1).all()  # the north pole, up to rounding
    # tangential part 2u / (|u|^2 + 1) ~ 2 u / |u|^2 keeps its direction and size (below 1e38,
    # where it would be a float32 subnormal)
    if magnitude < 1e38:
        radius = u.double().norm(dim=-1, keepdim=True)
        expected = 2 * (u.double() / radius) / radius
        assert torch.allclose(z[:, :-1].double(), expected, rtol=1e-5, atol=0)
    # approaching the pole monotonically: bigger |u| is closer (1e38 * 4 is inf: the pole itself)
    closer = inverse_stereographic(u * 4)
    assert (closer[:, :-1].abs() <= z[:, :-1].abs()).all()


def test_inverse_stereographic_sends_infinity_to_the_north_pole() -> None:
    u = torch.tensor([[math.inf, 1.0], [-math.inf, math.inf], [2.0, 0.0]], requires_grad=True)
    z = inverse_stereographic(u)
    assert torch.equal(z[:2], torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    assert torch.allclose(z[2], torch.tensor([0.8, 0.0, 0.6]))
    z.sum().backward()
    assert u.grad is not None
    assert torch.isfinite(u.grad).all()


def test_inverse_stereographic_gradient_is_finite_everywhere() -> None:
    u = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1e30, -1e30]], requires_grad=True)
    inverse_stereographic(u).sum().backward()
    assert u.grad is not None
    assert torch.isfinite(u.grad).all()


# ---------------------------------------------------------------- property-based stability

loc_seeds = st.integers(min_value=0, max_value=2**31 - 1)


@settings(max_examples=50, deadline=None)
@given(
    m=st.integers(min_value=2, max_value=129),
    log_kappa=st.floats(min_value=-3.0, max_value=5.0),
    seed=loc_seeds,
    pole=st.sampled_from([None, 1.0, -1.0]),
    dtype=st.sampled_from([torch.float32, F64]),
)
def test_everything_is_finite(
    m: int, log_kappa: float, seed: int, pole: float | None, dtype: torch.dtype
) -> None:
    torch.manual_seed(seed)
    raw = torch.randn(m, dtype=dtype)
    if pole is not None:  # exactly at +-e1: the Householder reflection's critical case
        raw = torch.zeros(m, dtype=dtype)
        raw[0] = pole
    raw.requires_grad_()
    scale = torch.tensor(10.0**log_kappa, dtype=dtype, requires_grad=True)
    q = PowerSpherical(F.normalize(raw, dim=-1), scale)
    z = q.rsample((64,))
    log_q = q.log_prob(z)
    entropy = q.entropy()
    kl = kl_divergence(q, HypersphericalUniform(m, dtype=dtype))
    for value in (z, log_q, entropy, kl):
        assert torch.isfinite(value).all()
    assert (z.norm(dim=-1) - 1).abs().max() < 1e-5
    assert kl.item() >= -1e-6
    (log_q.mean() + entropy + kl + z.sum()).backward()
    assert raw.grad is not None and scale.grad is not None
    assert torch.isfinite(raw.grad).all() and torch.isfinite(scale.grad).all()
