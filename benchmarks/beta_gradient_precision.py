"""How precise torch's Beta reparameterisation gradient is in float32, as CUDA computes it.

    python -m benchmarks.beta_gradient_precision                      # the precision table
    python -m benchmarks.beta_gradient_precision --train key=value ...  # experiments.train with it

The Power Spherical sampler learns kappa through torch's implicit Beta gradient
(``torch._dirichlet_grad``). The CPU kernel evaluates it in float64; the CUDA kernel in the input's
precision. For the Beta of the default latent (m = 33: Beta((m - 1) / 2, (m - 1) / 2 + kappa)) both
concentrations exceed 6, where the kernel uses its large-alpha-and-beta branch
(``_beta_grad_alpha_mid`` in ATen's Distributions.h). This script evaluates that branch, written
out here in torch, in float32 and in float64. It first checks that the float64 replica equals the
CPU kernel, and then reports the float32 errors at several kappa in ``benchmarks/results/``.

``--train`` runs ``experiments.train`` with that float32 gradient patched into torch's Dirichlet
backward: a CPU test of whether the precision alone changes training (README, "On a GPU").
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import torch.distributions.dirichlet as dirichlet
from torch import Tensor

from benchmarks.common import write_result

KAPPAS = [10.0, 100.0, 1000.0, 10000.0]
LATENT_AMBIENT_DIM = 33  # S^32, the default latent when this was measured (2026-11-29)
SAMPLES = 20000


def grad_alpha_mid(x: Tensor, alpha: Tensor, beta: Tensor, dtype: torch.dtype) -> Tensor:
    """ATen's ``_beta_grad_alpha_mid`` (Rice saddle-point expansion), elementwise, in ``dtype``."""
    x, alpha, beta = x.to(dtype), alpha.to(dtype), beta.to(dtype)
    total = alpha + beta
    mean = alpha / total
    std = torch.sqrt(alpha * beta / (total + 1)) / total
    near_mean = (mean - 0.1 * std <= x) & (x <= mean + 0.1 * std)
    beta2 = beta * beta
    poly = 47 * x * beta2 * beta2 + alpha * (
        (43 + 20 * (16 + 27 * beta) * x) * beta2 * beta
        + alpha
        * (
            3 * (59 + 180 * beta - 90 * x) * beta2
            + alpha
            * ((453 + 1620 * beta * (1 - x) - 455 * x) * beta + alpha * (8 * (1 - x) * (135 * beta - 11)))
        )
    )
    prefactor_num = (1 + 12 * alpha) * (1 + 12 * beta) / (total * total)
    prefactor_den = 12960 * alpha * alpha * alpha * beta * beta * (1 + 12 * total)
    at_mean = prefactor_num / (1 - x) * poly / prefactor_den
    prefactor = -x / torch.sqrt(2 * alpha * beta / total)
    stirling = (
        (1 + 1 / (12 * alpha) + 1 / (288 * alpha * alpha))
        * (1 + 1 / (12 * beta) + 1 / (288 * beta * beta))
        / (1 + 1 / (12 * total) + 1 / (288 * total * total))
    )
    term1_num = 2 * (alpha * alpha) * (x - 1) + alpha * beta * (x - 1) - x * (beta * beta)
    axbx = alpha * (x - 1) + beta * x
    term1 = term1_num / (torch.sqrt(2 * alpha / beta) * torch.pow(total, 1.5) * axbx * axbx)
    term2 = 0.5 * torch.log(alpha / (total * x))
    term3 = torch.sqrt(8 * alpha * beta / total) / (beta * x + alpha * (x - 1))
    term4 = torch.pow(
        beta * torch.log(beta / (total * (1 - x))) + alpha * torch.log(alpha / (total * x)), -1.5
    )
    away = stirling * prefactor * (term1 + term2 * (term3 + torch.where(x < mean, term4, -term4)))
    return torch.where(near_mean, at_mean, away)


def uses_mid_branch(x: Tensor, concentration: Tensor, total: Tensor) -> Tensor:
    """Where ``dirichlet_grad_one`` takes the large-alpha-and-beta branch."""
    boundary = total * x * (1 - x)
    small = ((x <= 0.5) & (boundary < 2.5)) | ((x >= 0.5) & (boundary < 0.75))
    return ~small & (concentration > 6) & (total - concentration > 6)


def float32_dirichlet_grad(x: Tensor, concentration: Tensor, total: Tensor) -> Tensor:
    """torch._dirichlet_grad with its large-alpha-and-beta branch in float32, as on CUDA."""
    exact = torch._dirichlet_grad(x, concentration, total)
    replica = grad_alpha_mid(x, concentration, total - concentration, torch.float32).to(exact.dtype)
    return torch.where(uses_mid_branch(x, concentration, total), replica, exact)


def precision(kappa: float, generator: torch.Generator) -> dict[str, Any]:
    half = 0.5 * (LATENT_AMBIENT_DIM - 1)
    concentration = torch.tensor([half, half + kappa], dtype=torch.float64).expand(SAMPLES, 2).contiguous()
    x = torch._sample_dirichlet(concentration, generator=generator)
    total = concentration.sum(-1, keepdim=True).expand_as(concentration)
    exact = torch._dirichlet_grad(x, concentration, total)
    mid = uses_mid_branch(x, concentration, total)
    replica64 = grad_alpha_mid(x, concentration, total - concentration, torch.float64)
    relative = ((float32_dirichlet_grad(x, concentration, total) - exact).abs() / exact.abs())[mid]
    finite = torch.isfinite(relative)
    quantiles = torch.quantile(relative[finite], torch.tensor([0.5, 0.99], dtype=torch.float64))
    return {
        "kappa": kappa,
        "mid_branch_fraction": float(mid.double().mean()),
        "float64_replica_max_relative_error": float(((replica64 - exact).abs() / exact.abs())[mid].max()),
        "float32_relative_error_median": float(quantiles[0]),
        "float32_relative_error_p99": float(quantiles[1]),
        "float32_relative_error_max": float(relative[finite].max()),
        "float32_non_finite": int((~finite).sum()),
    }


def train_with_float32_gradient(overrides: list[str]) -> int:
    def backward(x: Tensor, concentration: Tensor, grad_output: Tensor) -> Tensor:
        total = concentration.sum(-1, True).expand_as(concentration)
        grad = float32_dirichlet_grad(x, concentration, total)
        return grad * (grad_output - (x * grad_output).sum(-1, True))

    dirichlet._Dirichlet_backward = backward
    from experiments import train

    return train.cli(overrides)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", nargs=argparse.REMAINDER, help="experiments.train arguments")
    args = parser.parse_args()
    if args.train is not None:
        sys.exit(train_with_float32_gradient(args.train))
    generator = torch.Generator().manual_seed(0)
    rows = [precision(kappa, generator) for kappa in KAPPAS]
    for row in rows:
        if row["float64_replica_max_relative_error"] > 1e-9:
            sys.exit(f"The float64 replica differs from torch's CPU kernel at kappa {row['kappa']}: {row}")
    path = write_result(
        "beta_gradient_precision",
        {"latent_ambient_dim": LATENT_AMBIENT_DIM, "samples": SAMPLES, "rows": rows},
    )
    for row in rows:
        errors = ", ".join(
            f"{name} {row[f'float32_relative_error_{name}']:.2e}" for name in ("median", "p99", "max")
        )
        print(
            f"kappa {row['kappa']:g}: float32 relative error {errors}; non-finite {row['float32_non_finite']}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
