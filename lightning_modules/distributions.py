"""Distributions on the unit sphere for the Alexandroff (one-point compactified) latent space.

The encoder of an ``alexandroff`` model produces an unconstrained vector ``u`` in R^d. The inverse
stereographic projection sends it to the sphere S^d in R^(d+1), with ``|u| -> infinity`` landing on
the north pole: that is the one-point compactification of R^d. The posterior on the sphere is a
Power Spherical distribution (De Cao and Aziz, 2020) and the prior is the uniform distribution;
their KL divergence is available in closed form through ``torch.distributions.kl_divergence``.

Notation used throughout: ``m`` is the *ambient* dimension, the sphere is S^(m-1) in R^m.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeAlias

import torch
from torch import Tensor
from torch.distributions import Beta, Distribution, constraints
from torch.distributions.kl import register_kl

__all__ = [
    "HypersphericalUniform",
    "PowerSpherical",
    "inverse_stereographic",
    "log_sphere_area",
    "seeded_draws",
    "stereographic",
    "unit_sphere",
]

# What torch.distributions accepts as a shape (the argument type of Distribution.expand/sample).
_ShapeLike: TypeAlias = "torch.Size | list[int] | tuple[int, ...]"


def _stable_norm(x: Tensor) -> Tensor:
    """Euclidean norm over the last dimension that does not overflow or underflow.

    ``torch.linalg.vector_norm`` squares the entries, so a float32 vector with entries of 1e20
    already has an infinite norm. Dividing by the largest magnitude first keeps every square in
    [0, 1]; the zero vector is handled by dividing by 1 instead of 0.
    """
    largest = x.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(largest > 0, largest, torch.ones_like(largest))
    return (safe * torch.linalg.vector_norm(x / safe, dim=-1, keepdim=True)).squeeze(-1)


def inverse_stereographic(u: Tensor) -> Tensor:
    """Map ``u`` of shape (..., d) to the unit sphere S^d in R^(d+1) (shape (..., d+1)).

    s(u) = (2u, |u|^2 - 1) / (|u|^2 + 1), so ``u = 0`` goes to the south pole (0, ..., 0, -1) and
    ``|u| -> infinity`` to the north pole (0, ..., 0, 1), the added point at infinity.

    The textbook formula overflows as soon as |u|^2 does (|u| ~ 1e19 in float32) and then returns
    NaN = inf / inf. With r = |u| (computed without squaring large entries, see ``_stable_norm``)
    and q = 1 / r the same map reads, for r > 1,

        2u / (r^2 + 1) = 2 (u / r) / (r + q),    (r^2 - 1) / (r^2 + 1) = (1 - q^2) / (1 + q^2),

    where every intermediate is bounded, so the result is finite and correct to rounding for any
    finite ``u`` (1e300 in float64 gives the north pole plus a 2e-300 tangential part). For r <= 1
    the textbook form is used. An infinite coordinate is the point at infinity itself and maps to
    the north pole. Each branch is evaluated on masked inputs so that ``torch.where`` never
    back-propagates a NaN from a branch it discards.
    """
    at_infinity = torch.isinf(u).any(dim=-1, keepdim=True)
    u = torch.where(at_infinity, torch.zeros_like(u), u)
    radius = _stable_norm(u.detach()).unsqueeze(-1)
    is_small = radius <= 1.0

    u_small = torch.where(is_small, u, torch.zeros_like(u))
    r2 = (u_small * u_small).sum(dim=-1, keepdim=True)
    head_small = 2.0 * u_small / (r2 + 1.0)
    tail_small = (r2 - 1.0) / (r2 + 1.0)

    u_large = torch.where(is_small, torch.ones_like(u), u)  # the all-ones vector has norm >= 1
    r = _stable_norm(u_large).unsqueeze(-1)
    q = 1.0 / r
    head_large = 2.0 * (u_large / r) / (r + q)
    tail_large = (1.0 - q * q) / (1.0 + q * q)

    head = torch.where(is_small, head_small, head_large)
    tail = torch.where(is_small, tail_small, tail_large)
    head = torch.where(at_infinity, torch.zeros_like(head), head)
    tail = torch.where(at_infinity, torch.ones_like(tail), tail)
    return torch.cat((head, tail), dim=-1)


def stereographic(z: Tensor) -> Tensor:
    """Stereographic projection from the north pole: S^d in R^(d+1) -> R^d, inverse of
    :func:`inverse_stereographic`.

    s^-1(x, h) = x / (1 - h). Near the north pole (h -> 1) the denominator 1 - h cancels
    catastrophically, so for h > 0 the identity 1 - h = |x|^2 / (1 + h) (valid on the unit
    sphere) is used instead: u = (x / |x|) * (1 + h) / |x|, which is accurate even when |x| is
    1e-20. The north pole itself has no finite preimage and is mapped to +inf in every coordinate.
    """
    x, h = z[..., :-1], z[..., -1:]
    x_norm = _stable_norm(x).unsqueeze(-1)
    upper = h > 0
    safe_norm = torch.where(x_norm > 0, x_norm, torch.ones_like(x_norm))
    u_upper = (x / safe_norm) * ((1.0 + h) / safe_norm)
    u_lower = x / (1.0 - torch.where(upper, torch.zeros_like(h), h))
    u = torch.where(upper, u_upper, u_lower)
    at_pole = upper & (x_norm == 0)
    return torch.where(at_pole, torch.full_like(u, math.inf), u)


def seeded_draws(
    seeds: Tensor,
    device: torch.device,
    draw: Callable[[torch.Generator, int], tuple[Tensor, ...]],
) -> tuple[Tensor, ...]:
    """``draw(generator, row)`` for every row, its generator seeded with ``seeds[row]``; each part
    stacked along dimension 1 (after the sample dimension).

    Only the random draws are made row by row — a few small kernels each, microseconds — so that
    a row's noise depends on its seed alone; everything computed from the noise stays batched.
    """
    generator = torch.Generator(device=device)
    rows = [draw(generator.manual_seed(int(seed)), row) for row, seed in enumerate(seeds.tolist())]
    return tuple(torch.stack(parts, dim=1) for parts in zip(*rows))


class _UnitSphere(constraints.Constraint):
    """Vectors of unit Euclidean norm (last dimension), up to a dtype-dependent tolerance.

    The tolerance 10 * sqrt(eps) (3e-3 in float32, 1.5e-7 in float64) accepts values produced by
    normalisation or by the sampler while rejecting vectors that were never normalised.
    """

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        tolerance = 10.0 * math.sqrt(torch.finfo(value.dtype).eps)
        return (_stable_norm(value) - 1.0).abs() <= tolerance

    def __repr__(self) -> str:
        return "UnitSphere()"


unit_sphere = _UnitSphere()


def log_sphere_area(dim: int) -> float:
    """log of the surface area of S^(dim-1) in R^dim: log 2 + (dim/2) log pi - lgamma(dim/2)."""
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


def _check_dim(dim: int) -> None:
    if dim < 2:
        raise ValueError(
            f"the ambient dimension must be at least 2 (the circle S^1 in R^2), got {dim}; "
            "pass vectors with at least two coordinates in the last dimension"
        )


def _log1p_dot(loc: Tensor, value: Tensor) -> Tensor:
    """log(1 + loc . value) for unit vectors, accurate over the whole sphere.

    The dot product is only accurate to ~eps in absolute terms, which is ruinous in two places:

    * near the antipode (loc . value -> -1), where 1 + loc . value -> 0: we use
      1 + loc . value = |loc + value|^2 / 2, whose relative error is ~eps / |loc + value|;
    * near loc (loc . value -> 1), where the Power Spherical mass sits for large kappa and the
      log is multiplied by kappa (up to 1e5): we use 1 + loc . value = 2 - |loc - value|^2 / 2, so
      log(1 + loc . value) = log 2 + log1p(-|loc - value|^2 / 4), accurate relative to the tiny
      |loc - value|^2 instead of to 1.

    The discarded branch is fed clamped inputs so that ``torch.where`` never meets log(0) there.
    """
    upper = (loc * value).sum(dim=-1) >= 0
    half_chord2 = ((loc - value) ** 2).sum(dim=-1) / 4.0
    near = math.log(2.0) + torch.log1p(-half_chord2.clamp(max=0.5))
    far_sum2 = ((loc + value) ** 2).sum(dim=-1)
    far = torch.log(torch.where(upper, torch.full_like(far_sum2, 2.0), far_sum2)) - math.log(2.0)
    return torch.where(upper, near, far)


class PowerSpherical(Distribution):
    """Power Spherical distribution on S^(m-1) in R^m (De Cao and Aziz, 2020).

    Density with respect to the surface measure of the sphere:

        q(z) = C(kappa, m) (1 + loc . z)^kappa,
        log C = -[(alpha + beta) log 2 + beta log pi + lgamma(alpha) - lgamma(alpha + beta)],
        alpha = (m - 1) / 2 + kappa,  beta = (m - 1) / 2.

    Unlike von Mises-Fisher, its reparameterised sampler needs no rejection step: t = loc . z
    satisfies (1 + t) / 2 ~ Beta(alpha, beta), the tangential direction is uniform, and a
    reflection moves e1 onto ``loc``. Entropy and KL to the uniform distribution are closed form.

    The normaliser and the entropy involve differences of lgamma/digamma at arguments up to 1e5,
    which lose all precision in float32; they are computed in float64 and cast back.

    Args:
        loc: mean direction, unit vectors of shape (..., m) with m >= 2.
        scale: concentration kappa > 0, shape broadcastable with ``loc.shape[:-1]``.
    """

    arg_constraints = {"loc": unit_sphere, "scale": constraints.positive}
    support = unit_sphere
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor | float, validate_args: bool | None = None) -> None:
        if loc.dim() < 1:
            raise ValueError(
                "loc must have a last (event) dimension holding the coordinates, got a scalar; "
                "pass a tensor of shape (..., m)"
            )
        _check_dim(loc.shape[-1])
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], scale.shape)
        self.loc = loc.expand(batch_shape + loc.shape[-1:])
        self.scale = scale.expand(batch_shape)
        super().__init__(batch_shape, loc.shape[-1:], validate_args=validate_args)

    @property
    def dim(self) -> int:
        """Ambient dimension m."""
        return self.event_shape[0]

    def expand(self, batch_shape: _ShapeLike, _instance: PowerSpherical | None = None) -> PowerSpherical:
        new = self._get_checked_instance(PowerSpherical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.scale = self.scale.expand(batch_shape)
        super(PowerSpherical, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _alpha_beta(self, dtype: torch.dtype | None = None) -> tuple[Tensor, float]:
        """alpha = (m - 1) / 2 + kappa and beta = (m - 1) / 2, alpha in ``dtype``.

        The float64 paths must convert kappa *before* adding beta: in float32, 32 + 1e-3 already
        carries an error of 2e-6, which would dominate a KL of order kappa^2.
        """
        beta = 0.5 * (self.dim - 1)
        return self.scale.to(dtype or self.scale.dtype) + beta, beta

    def _log_normalizer(self) -> Tensor:
        """log C(kappa, m), computed in float64 (cancellation between lgamma terms)."""
        alpha, beta = self._alpha_beta(torch.float64)
        log_c = -(
            (alpha + beta) * math.log(2.0)
            + beta * math.log(math.pi)
            + torch.lgamma(alpha)
            - torch.lgamma(alpha + beta)
        )
        return log_c.to(self.loc.dtype)

    @property
    def mean(self) -> Tensor:
        """E[z] = loc E[t] with E[t] = 2 alpha / (alpha + beta) - 1 = kappa / (kappa + m - 1)."""
        return self.loc * (self.scale / (self.scale + (self.dim - 1))).unsqueeze(-1)

    def rsample(self, sample_shape: _ShapeLike = torch.Size()) -> Tensor:
        """Reparameterised sample of shape sample_shape + batch_shape + (m,).

        t = loc . z = 2B - 1 with B ~ Beta(alpha, beta). For large kappa, B is within 1e-5 of 1
        and 1 - B would be lost to rounding, so the complement C = 1 - B ~ Beta(beta, alpha) is
        drawn directly (see ``_place``). Gradients with respect to kappa flow through torch's
        implicit Beta reparameterisation.
        """
        shape = self._extended_shape(sample_shape)
        # torch computes that implicit gradient (torch._dirichlet_grad) in float64 on the CPU but in
        # the input's precision on CUDA, where in float32 its error reaches tens of percent at the
        # concentrations a trained encoder reaches (kappa ~ 1e2-1e3; PyTorch issue 57447): CUDA
        # draws in float64, which gives it the CPU's precision for a few operations per input.
        alpha, beta = self._alpha_beta(torch.float64 if self.scale.is_cuda else None)
        complement = Beta(torch.full_like(alpha, beta), alpha, validate_args=False).rsample(sample_shape)
        complement = complement.to(self.loc.dtype)
        direction = torch.randn(shape[:-1] + (self.dim - 1,), dtype=self.loc.dtype, device=self.loc.device)
        return self._place(complement, direction)

    def rsample_seeded(self, samples: int, seeds: Tensor) -> Tensor:
        """``samples`` reparameterised draws per distribution, [samples, B, m], for batch shape (B,).

        Row i draws only from a generator seeded with ``seeds[i]``, so its sample does not depend
        on the other rows — which batch or process it was scored in. The distribution is that of
        ``rsample``, with the Beta draw written through Gammas (torch's Beta takes no generator):
        C = G_beta / (G_beta + G_alpha) ~ Beta(beta, alpha), G_alpha carrying the implicit
        reparameterisation gradient d G / d alpha of torch's own Gamma sampler, so gradients
        reach kappa here too.
        """
        if len(self.batch_shape) != 1 or seeds.shape != self.batch_shape:
            raise ValueError(
                f"rsample_seeded needs one seed per distribution of a 1-D batch; got batch shape "
                f"{tuple(self.batch_shape)} and seeds of shape {tuple(seeds.shape)}"
            )
        alpha, beta = self._alpha_beta()
        fixed_alpha = alpha.detach()
        beta_shape = torch.full((samples,), beta, dtype=self.loc.dtype, device=self.loc.device)

        def draw(generator: torch.Generator, row: int) -> tuple[Tensor, ...]:
            # torch's Gamma distribution takes no generator; its sampler kernel does.
            gamma_alpha = torch._standard_gamma(fixed_alpha[row].expand(samples), generator=generator)
            gamma_beta = torch._standard_gamma(beta_shape, generator=generator)
            direction = torch.randn(
                samples, self.dim - 1, generator=generator, dtype=self.loc.dtype, device=self.loc.device
            )
            return gamma_alpha, gamma_beta, direction

        gamma_alpha, gamma_beta, direction = seeded_draws(seeds, self.loc.device, draw)
        if alpha.requires_grad:
            slope = torch._standard_gamma_grad(fixed_alpha.expand_as(gamma_alpha), gamma_alpha)
            gamma_alpha = gamma_alpha + (alpha - fixed_alpha) * slope
        return self._place(gamma_beta / (gamma_beta + gamma_alpha), direction)

    def _place(self, complement: Tensor, direction: Tensor) -> Tensor:
        """The sample with 1 - loc . z = 2 ``complement`` and tangential part along ``direction``.

        t = 1 - 2C and sqrt(1 - t^2) = 2 sqrt(C (1 - C)) keep full relative precision for tiny C.
        The point y = (t, sqrt(1 - t^2) v), v = direction / |direction| uniform on S^(m-2), is then
        moved by a Householder reflection H = I - 2 w w^T / |w|^2. Reflecting e1 onto loc
        (w = e1 - loc) is ill conditioned when loc ~ e1 (w ~ 0, and |w|^2 = 2 w_1 only holds for
        exactly unit loc). When loc_1 >= 0 we instead reflect -e1 onto loc (w = e1 + loc) and flip
        the sign of t; either way |w|^2 >= 2. The result is the image of y under an orthogonal map
        sending the pole to loc, which is all the rotational symmetry of the density requires.
        """
        complement = complement.clamp(min=torch.finfo(complement.dtype).tiny).unsqueeze(-1)
        t = 1.0 - 2.0 * complement
        radial = 2.0 * torch.sqrt(complement * (1.0 - complement))
        direction = direction / _stable_norm(direction).unsqueeze(-1)

        first = self.loc[..., :1]
        sign = torch.where(first >= 0, 1.0, -1.0).to(self.loc.dtype)
        y = torch.cat((-sign * t, radial * direction), dim=-1)
        w = torch.cat((first + sign, self.loc[..., 1:]), dim=-1)
        coefficient = 2.0 * (w * y).sum(dim=-1, keepdim=True) / (w * w).sum(dim=-1, keepdim=True)
        return y - coefficient * w

    def log_prob(self, value: Tensor) -> Tensor:
        """log C + kappa log(1 + loc . z), the log term evaluated by :func:`_log1p_dot`."""
        if self._validate_args:
            self._validate_sample(value)
        return self._log_normalizer() + self.scale * _log1p_dot(self.loc, value)

    def _entropy_float64(self) -> Tensor:
        """H = -log C - kappa E[log(1 + t)], E[log(1 + t)] = log 2 + psi(alpha) - psi(alpha + beta).

        The (alpha + beta) log 2 of -log C and the kappa log 2 cancel exactly to (m - 1) log 2,
        which is used directly; lgamma and digamma differences at alpha ~ 1e5 need float64.
        """
        alpha, beta = self._alpha_beta(torch.float64)
        kappa = self.scale.double()
        return (
            (self.dim - 1) * math.log(2.0)
            + beta * math.log(math.pi)
            + torch.lgamma(alpha)
            - torch.lgamma(alpha + beta)
            - kappa * (torch.digamma(alpha) - torch.digamma(alpha + beta))
        )

    def entropy(self) -> Tensor:
        """Closed-form entropy (see ``_entropy_float64``), in the dtype of ``loc``."""
        return self._entropy_float64().to(self.loc.dtype)


class HypersphericalUniform(Distribution):
    """Uniform distribution on S^(dim-1) in R^dim, the prior of the Alexandroff latent space.

    Samples are normalised standard normal vectors (rotation invariance of the Gaussian); the
    density is the constant 1 / area(S^(dim-1)).

    Args:
        dim: ambient dimension m >= 2.
        batch_shape: batch shape of the (identical) distributions.
        device, dtype: where samples and densities live.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = unit_sphere

    def __init__(
        self,
        dim: int,
        *,
        batch_shape: _ShapeLike = torch.Size(),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        validate_args: bool | None = None,
    ) -> None:
        _check_dim(dim)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._dtype = dtype if dtype is not None else torch.get_default_dtype()
        super().__init__(torch.Size(batch_shape), torch.Size((dim,)), validate_args=validate_args)

    @property
    def dim(self) -> int:
        """Ambient dimension m."""
        return self.event_shape[0]

    def expand(
        self, batch_shape: _ShapeLike, _instance: HypersphericalUniform | None = None
    ) -> HypersphericalUniform:
        return HypersphericalUniform(
            self.dim,
            batch_shape=batch_shape,
            device=self._device,
            dtype=self._dtype,
            validate_args=self._validate_args,
        )

    def sample(self, sample_shape: _ShapeLike = torch.Size()) -> Tensor:
        x = torch.randn(self._extended_shape(sample_shape), device=self._device, dtype=self._dtype)
        return x / _stable_norm(x).unsqueeze(-1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return torch.full(shape, -log_sphere_area(self.dim), dtype=value.dtype, device=value.device)

    def entropy(self) -> Tensor:
        return torch.full(self.batch_shape, log_sphere_area(self.dim), dtype=self._dtype, device=self._device)


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_powerspherical_uniform(q: PowerSpherical, p: HypersphericalUniform) -> Tensor:
    """KL(q || uniform) = E_q[log q] + log area = -H(q) + log area(S^(m-1)).

    Both terms are O(m log kappa) at large kappa while the KL of a diffuse q is O(kappa^2): the
    difference is taken in float64 before casting, so it does not drown in float32 rounding.
    """
    if q.dim != p.dim:
        raise ValueError(
            f"KL between spheres of different dimension: PowerSpherical on R^{q.dim} and "
            f"HypersphericalUniform on R^{p.dim}; build the prior with dim={q.dim}"
        )
    kl = (log_sphere_area(q.dim) - q._entropy_float64()).to(q.loc.dtype)
    return kl.expand(torch.broadcast_shapes(q.batch_shape, p.batch_shape))
