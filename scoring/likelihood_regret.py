"""Likelihood regret (Xiao, Yan and Amit, NeurIPS 2020): how much one input's ELBO improves when
the encoder may adapt to that input alone.

A VAE's encoder is fitted to the training distribution, so for an inlier it is already close to
the best posterior the decoder allows, while for an outlier a posterior fitted to that one input
does much better. Following the paper, the *encoder's parameters* (all of them, not only the output
heads) are optimised for each input separately, with the decoder frozen:

    regret(x) = ELBO(x; encoder optimised for x) - ELBO(x; trained encoder)     (nats; >= 0 up to noise)

Implementation:

* Each input gets its own copy of the encoder parameters. The copies of a chunk of inputs are
  stacked and run together with ``torch.func.vmap`` over ``functional_call``; the chunk's loss is
  the sum of the inputs' negative ELBOs, and since each copy only influences its own input's term,
  its gradient is exactly that input's gradient. Adam is elementwise, so one Adam over the stacked
  copies is exactly one independent Adam per input. The decoder's weights receive no gradient
  (``backward(inputs=copies)`` accumulates into the copies only), and the model's own
  parameters, buffers, ``.grad`` fields, train/eval flags and the global random state are left
  as they were.
* ELBO estimates use the ``neg_elbo`` score's estimator: the analytic KL minus the mean of
  log p(x | z_k) over posterior samples drawn from the input's own seeded stream. The before and
  after ELBOs use K = ``scores.iwae_samples`` samples from the same stream (common random numbers:
  most of the sampling noise cancels in the difference); each optimisation step draws one sample
  from a stream seeded by (input seed, step). An input's regret therefore does not depend on its
  batch or process, as for every sampling score, up to float32 rounding: the optimisation runs
  the copies of a chunk through kernels whose blocking follows the chunk's size, and the chunks
  of a process hold its own inputs, so regrets differ by up to ~4e-5 nats between process
  counts (measured on default-size trained models). The ELBOs are summed in float64, so that this noise
  is not rounded to the ~6e-5-nat float32 grid of a several-hundred-nat ELBO, on which distinct
  inputs' regrets tied.
* The encoder runs as at evaluation: a Lipschitz encoder divides by its stored operator norms,
  which the copies do not re-estimate, so an optimised copy is no longer certified. That is
  irrelevant here: the regret is a score, not a bound.
* Lightning evaluates under ``torch.inference_mode``, where nothing can be differentiated; the
  optimisation runs inside ``torch.inference_mode(False)`` + ``torch.enable_grad()`` and first
  clones the input out of inference mode (inference tensors cannot be saved for backward).

Cost: ``scores.regret_steps`` forward + backward passes of the encoder and decoder per input, plus
an Adam update of a whole encoder's parameters per input per step; hence ``scores.regret_max_samples``
and the seconds-per-image figure in ``benchmarks/results/scoring.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.distributions import kl_divergence
from torch.func import functional_call, vmap

from scoring.model import Encoding, ScoringModel, batch_invariant_encoding

# Memory for the per-input encoder copies of one chunk: each input holds its parameters, their
# gradient and Adam's two moments (4 x the encoder's size). 256 MiB gives 76 inputs per chunk for
# the default model (219k encoder parameters, 3.5 MB per input) and 36 at width 16 (465k); on the
# CPU, chunks of 32 ran faster per input than chunks of 8 or 128 (measured at width 16).
_COPY_BUDGET_BYTES = 2**28


def likelihood_regret(
    model: ScoringModel,
    x: Tensor,
    steps: int,
    lr: float,
    samples: int,
    seeds: Tensor | None = None,
    original_elbo: Tensor | None = None,
) -> Tensor:
    """Regret of every input of ``x``, ``[B]`` in nats.

    Args:
        model: the trained VAE; it is not modified.
        x: ``[B, C, H, W]`` inputs, possibly inference tensors.
        steps, lr: Adam steps and learning rate of each input's encoder optimisation.
        samples: posterior samples of the before / after ELBO estimates.
        seeds: one sampling seed per input (see ``scoring.registry.sample_seeds``); None draws from the
            global generator, so the result is then not reproducible per input.
        original_elbo: the trained encoder's ELBO with the same ``samples`` and ``seeds`` when
            already computed (``-neg_elbo``); computed here otherwise.
    """
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.encoder.parameters())
    chunk = max(1, _COPY_BUDGET_BYTES // (4 * parameter_bytes))
    parts = []
    with torch.inference_mode(False), torch.enable_grad(), _evaluation_mode(model.encoder):
        for start in range(0, x.shape[0], chunk):
            rows = slice(start, start + chunk)
            part_seeds = None if seeds is None else seeds[rows]
            inputs = x[rows].clone()
            copies = _optimised_encoder_copies(model, inputs, steps, lr, part_seeds)
            with torch.no_grad():
                after = seeded_elbo(model, inputs, _encode_with(model, copies, inputs), samples, part_seeds)
                before = (
                    original_elbo[rows].clone()
                    if original_elbo is not None
                    else seeded_elbo(
                        model, inputs, batch_invariant_encoding(model, inputs), samples, part_seeds
                    )
                )
            parts.append(after - before.to(after.dtype))
    regret = torch.cat(parts)
    if not torch.isfinite(regret).all():
        raise FloatingPointError(
            f"likelihood_regret produced non-finite values with scores.regret_lr={lr} and "
            f"scores.regret_steps={steps}: the per-input encoder optimisation diverged; lower "
            "scores.regret_lr."
        )
    return regret


def seeded_elbo(
    model: ScoringModel, x: Tensor, encoding: Encoding, samples: int, seeds: Tensor | None
) -> Tensor:
    """The ``neg_elbo`` score's estimator, negated: mean_k log p(x | z_k) - KL(q || p), ``[B]``."""
    expected = model.importance_samples(x, samples, encoding, seeds).log_likelihood.mean(dim=0)
    return expected - kl_divergence(encoding.posterior, model.prior(x))


def step_seeds(seeds: Tensor, step: int, steps: int) -> Tensor:
    """One seed per (input, optimisation step), all distinct for distinct (input, step) pairs."""
    return seeds * steps + step


def _optimised_encoder_copies(
    model: ScoringModel, x: Tensor, steps: int, lr: float, seeds: Tensor | None
) -> dict[str, Tensor]:
    """One encoder parameter set per input, each after ``steps`` Adam steps on its input's ELBO."""
    copies = {
        name: parameter.detach().expand(x.shape[0], *parameter.shape).clone().requires_grad_(True)
        for name, parameter in model.encoder.named_parameters()
    }
    stacked = list(copies.values())
    # Fused Adam does the whole update in one kernel: several times faster than the loop over
    # tensors for these large stacked copies. On CUDA it needs each gradient in its parameter's
    # memory layout; backward() gives that (autograd.grad through vmap returns transposed strides),
    # and `inputs=` keeps the model's own parameters free of gradients.
    optimiser = torch.optim.Adam(stacked, lr=lr, fused=x.device.type in ("cpu", "cuda"))
    for step in range(steps):
        draw_seeds = None if seeds is None else step_seeds(seeds, step, steps)
        loss = -seeded_elbo(model, x, _encode_with(model, copies, x), 1, draw_seeds).sum()
        optimiser.zero_grad()
        loss.backward(inputs=stacked)
        optimiser.step()
    return {name: copy.detach() for name, copy in copies.items()}


def _encode_with(model: ScoringModel, copies: dict[str, Tensor], x: Tensor) -> Encoding:
    """Encode input i with the i-th parameter copy: the vmapped equivalent of ``model.encode``."""
    buffers = dict(model.encoder.named_buffers())

    def encode_one(parameters: dict[str, Tensor], image: Tensor) -> tuple[Tensor, Tensor]:
        return functional_call(model.encoder, (parameters, buffers), (image.unsqueeze(0),))

    mean, scale = vmap(encode_one)(copies, x)
    return model.encoding_from_outputs(mean.squeeze(1), scale.squeeze(1))


@contextmanager
def _evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode (no power-iteration buffer updates), then restore every flag."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training
