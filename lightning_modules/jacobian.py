"""An empirical *lower* bound on a map's Lipschitz constant: the largest Jacobian spectral norm found.

The certificate (``lightning_modules.lipschitz.certified_lipschitz``) bounds the constant from
above; this bounds it from below, so together they bracket the true constant and show how loose
the certificate is (docs/method.md, section 3). For every input x, power iteration on J(x)^T J(x)
with forward- and reverse-mode products (``torch.func.jvp`` / ``vjp``, never the full Jacobian)
converges to the largest singular value of J(x) from below; any such value is a lower bound on
the Lipschitz constant of a map that is differentiable at x.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, vjp


def jacobian_spectral_norms(
    function: Callable[[Tensor], Tensor], x: Tensor, iterations: int = 30, seed: int = 0
) -> Tensor:
    """``[B]`` estimates (from below) of |J(x_i)|_2 for a map applied row-wise to a batch ``x``.

    The map must treat batch rows independently (no batch statistics): then the Jacobian of the
    batched map is block-diagonal and one batched product serves every row at once.
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        direction = _unit_rows(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
        _, pullback = vjp(function, x)  # type: ignore[misc]  # torch types it as a 2- or 3-tuple
        norms = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(iterations):
            _, pushed = jvp(function, (x,), (direction,))  # type: ignore[misc]  # as above
            norms = pushed.flatten(1).norm(dim=1)
            (pulled,) = pullback(pushed)
            direction = _unit_rows(pulled)
    return norms.detach()


def _unit_rows(values: Tensor) -> Tensor:
    flat = values.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)).view_as(values)
