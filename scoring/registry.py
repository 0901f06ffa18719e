"""The score registry: every way of saying how outlying an input is (higher = more outlying).

Two kinds of score:
- batch scores are functions of one batch and the model (likelihood baselines, hole_posterior);
- reference scores need the whole set of training-inlier latents (hole_knn, hole_knn_posterior,
  hole_knn_recon), so the pipeline computes them after gathering every record; what they need of
  each input (its latent location, K posterior draws, its log reconstruction statistics) is
  recorded per batch (`REFERENCE_INPUTS`).
Scores that share work (one encoding, one set of K posterior samples, one decoded image, one KL)
share it through `ScoreContext`, which caches per batch.
A score too costly for whole evaluated sets (likelihood_regret) is a subset score: it is computed
only for the inputs whose position in their set is below its limit (`SUBSET_LIMITS`), is NaN for
the others, and its metrics use exactly the inputs it was computed for (`scored_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from scoring.config import SCORE_NAMES, ScoreConfig, guard_columns, recorded_recon_features
from scoring.image_moments import MASS_CENTRE_AXES, mass_centre_statistic
from scoring.input_complexity import compressed_bits, input_complexity_score
from scoring.joint import FarGuard, cross_entropy, joint_score, log_statistic, squared_error
from scoring.knn import hole_knn_score
from scoring.likelihood_regret import likelihood_regret as likelihood_regret_of
from scoring.model import Encoding, ImportanceSamples, ScoringModel, batch_invariant_encoding


@dataclass
class ScoreContext:
    """One batch being scored, with the model outputs that several scores share."""

    model: ScoringModel
    x: Tensor
    settings: ScoreConfig
    seeds: Tensor | None = None  # one sampling seed per input (see sample_seeds)
    indices: Tensor | None = None  # each input's position in its evaluated set (subset scores)
    _encoding: Encoding | None = None
    _samples: dict[int, ImportanceSamples] = field(default_factory=dict)
    _reconstruction: Tensor | None = None
    _kl: Tensor | None = None

    @property
    def encoding(self) -> Encoding:
        """The batch's encoding, each input's independent of its batch (``batch_invariant_encoding``)."""
        if self._encoding is None:
            self._encoding = batch_invariant_encoding(self.model, self.x)
        return self._encoding

    @property
    def reconstruction(self) -> Tensor:
        """The expected image decoded from each posterior location (one decoder pass per batch)."""
        if self._reconstruction is None:
            self._reconstruction = self.model.reconstruct(self.encoding)
        return self._reconstruction

    @property
    def reconstruction_error(self) -> Tensor:
        """Squared error between x and its reconstruction, summed over the pixels in float64."""
        return squared_error(self.x, self.reconstruction)

    @property
    def kl(self) -> Tensor:
        """KL(q(z|x) || p(z)) of each input, in closed form."""
        if self._kl is None:
            self._kl = torch.distributions.kl_divergence(self.encoding.posterior, self.model.prior(self.x))
        return self._kl

    def recon_statistics(self) -> Tensor:
        """``[B, E]`` log statistics of hole_knn_recon, in ``recorded_recon_features`` order: the joint
        space's (``scores.knn_recon_features``), then any only its guard uses."""
        made: dict[str, Callable[[], Tensor]] = {
            "squared_error": lambda: self.reconstruction_error,
            "cross_entropy": lambda: cross_entropy(self.x, self.reconstruction),
            "kl": lambda: self.kl,
            "compressed_length": lambda: compressed_bits(self.x),
            **{name: partial(mass_centre_statistic, self.x, axis) for name, axis in MASS_CENTRE_AXES.items()},
        }
        names = recorded_recon_features(self.settings)
        return torch.stack([log_statistic(made[name]()) for name in names], dim=1)

    def samples(self, count: int) -> ImportanceSamples:
        if count not in self._samples:
            self._samples[count] = self.model.importance_samples(self.x, count, self.encoding, self.seeds)
        return self._samples[count]


def neg_elbo(ctx: ScoreContext) -> Tensor:
    """-(E_q[log p(x|z)] - KL(q || p)), the expectation averaged over the IWAE samples."""
    samples = ctx.samples(ctx.settings.iwae_samples)
    return ctx.kl - samples.log_likelihood.mean(dim=0)


def iwae_nll(ctx: ScoreContext) -> Tensor:
    """-log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x): a tighter likelihood bound than the ELBO."""
    samples = ctx.samples(ctx.settings.iwae_samples)
    log_weights = samples.log_likelihood + samples.log_prior - samples.log_posterior
    return math.log(log_weights.shape[0]) - torch.logsumexp(log_weights, dim=0)


def recon(ctx: ScoreContext) -> Tensor:
    """Squared error between x and the expected image decoded from the posterior location."""
    return ctx.reconstruction_error


def latent_norm(ctx: ScoreContext) -> Tensor:
    """Distance of the encoding from the latent centre (a baseline: outliers are not just far)."""
    return ctx.model.distance_from_centre(ctx.encoding)


def hole_posterior(ctx: ScoreContext) -> Tensor:
    """Variance over K posterior samples of log p(x | z_k) (this project's definition).

    Inside a vacant hole the decoder never saw training data, so nearby latents decode to very
    different images and the likelihood of x swings from sample to sample.
    """
    samples = ctx.samples(ctx.settings.posterior_samples)
    return samples.log_likelihood.var(dim=0)


def input_complexity(ctx: ScoreContext) -> Tensor:
    """Serrà et al. (2020): neg_elbo in bits minus the PNG size of x in bits (scoring.input_complexity)."""
    return input_complexity_score(neg_elbo(ctx), ctx.x)


def likelihood_regret(ctx: ScoreContext) -> Tensor:
    """Xiao et al. (2020): ELBO gain of an encoder fitted to each input alone (scoring.likelihood_regret).

    A subset score: NaN for the inputs outside `scored_rows`.
    """
    rows = scored_rows("likelihood_regret", ctx.indices, ctx.settings, ctx.x.shape[0]).to(ctx.x.device)
    regret = torch.full((ctx.x.shape[0],), float("nan"), dtype=torch.float64, device=ctx.x.device)
    if rows.any():
        regret[rows] = likelihood_regret_of(
            ctx.model,
            ctx.x[rows],
            steps=ctx.settings.regret_steps,
            lr=ctx.settings.regret_lr,
            samples=ctx.settings.iwae_samples,
            seeds=None if ctx.seeds is None else ctx.seeds[rows.cpu()],
            original_elbo=-neg_elbo(ctx)[rows],
        ).double()
    return regret


BATCH_SCORES: dict[str, Callable[[ScoreContext], Tensor]] = {
    "neg_elbo": neg_elbo,
    "iwae_nll": iwae_nll,
    "recon": recon,
    "latent_norm": latent_norm,
    "hole_posterior": hole_posterior,
    "input_complexity": input_complexity,
    "likelihood_regret": likelihood_regret,
}

# Subset scores: name -> the number of leading inputs (by position) of each evaluated set to score,
# read from the `scores` settings; None scores every input.
SUBSET_LIMITS: dict[str, Callable[[ScoreConfig], int | None]] = {
    "likelihood_regret": lambda settings: settings.regret_max_samples,
}


def scored_rows(name: str, indices: Tensor | None, settings: ScoreConfig, count: int) -> Tensor:
    """Bool mask ``[count]`` of the inputs that score ``name`` is computed for.

    Every input for ordinary scores; for a subset score, those whose position in their evaluated
    set (``indices``) is below its limit. Without ``indices`` (scoring a bare batch outside the
    evaluation callback) positions are unknown and every input is scored.
    """
    limit = SUBSET_LIMITS[name](settings) if name in SUBSET_LIMITS else None
    if limit is None or indices is None:
        return torch.ones(count, dtype=torch.bool)
    return indices.cpu() < limit


@dataclass
class ReferenceLatents:
    """Training-inlier latents that define where the occupied (non-hole) regions are.

    ``joint`` holds the same inliers as points of the joint space of ``hole_knn_recon`` (latent
    location, weighted log reconstruction statistics), and ``recon_weights`` those weights; both are None
    unless that score was asked for (``scoring.evaluation.build_reference``). ``guard`` is the
    far-statistics guard (``scores.knn_recon_guard``), None without it.
    """

    latents: Tensor
    metric: str
    kth_distances: Tensor | None = None
    joint: Tensor | None = None
    recon_weights: Tensor | None = None
    guard: FarGuard | None = None


def hole_knn(queries: Tensor, reference: ReferenceLatents, settings: ScoreConfig) -> Tensor:
    """k-th-neighbour distance relative to the neighbours' own (this project's definition)."""
    return hole_knn_score(
        queries,
        reference.latents,
        k=settings.knn_k,
        metric=reference.metric,  # type: ignore[arg-type]
        chunk_size=settings.knn_chunk_size,
        reference_kth=reference.kth_distances,
        statistic=settings.knn_statistic,  # type: ignore[arg-type]
    )


def hole_knn_at_location(
    columns: dict[str, Tensor], reference: ReferenceLatents, settings: ScoreConfig
) -> Tensor:
    """``hole_knn`` of each input's posterior location (its mean / mode)."""
    return hole_knn(columns["latent"], reference, settings)


def hole_knn_posterior(
    columns: dict[str, Tensor], reference: ReferenceLatents, settings: ScoreConfig
) -> Tensor:
    """``hole_knn`` averaged over K posterior draws: the vacancy of the whole posterior q(z|x).

    An input whose posterior is broad spreads its draws into vacant regions even when its location
    sits among inliers; a concentrated posterior inside the inlier cloud keeps every draw there.
    The draws come from each input's own seeded stream (recorded per batch), so the score does
    not depend on the batch or process. docs/method.md, section 4.1.
    """
    draws = columns["posterior_draws"]  # [N, K, D]
    count, samples, dim = draws.shape
    return hole_knn(draws.reshape(count * samples, dim), reference, settings).view(count, samples).mean(dim=1)


def hole_knn_recon(columns: dict[str, Tensor], reference: ReferenceLatents, settings: ScoreConfig) -> Tensor:
    """Vacancy in the joint space of latent location and log reconstruction statistics
    (``scores.knn_recon_features``; docs/method.md 4.1).

    The latent alone cannot see an input the encoder maps among the inliers although the decoder
    cannot explain it (noise, constant images): its reconstruction error is far from that of the
    inliers whose latents surround it. Appending each weighted log statistic as one more
    coordinate makes such an input land in a hole of the joint space, while an inlier with a large
    error (a detailed garment) has neighbours with large errors too, so it stays in occupied
    space. The score is the mean Euclidean distance to the k nearest joint reference points, plus,
    with ``scores.knn_recon_guard``, how far the input's statistics alone lie beyond the inliers'.
    """
    if reference.joint is None or reference.recon_weights is None:
        raise ValueError(
            "hole_knn_recon needs a reference built with the inliers' reconstruction statistics."
        )
    statistics = columns["log_recon_statistics"]
    return joint_score(
        columns["latent"],
        statistics[:, : len(settings.knn_recon_features)],
        reference.joint,
        reference.recon_weights,
        settings.knn_k,
        settings.knn_chunk_size,
        reference.guard,
        None if reference.guard is None else statistics[:, guard_columns(settings)],
    )


REFERENCE_SCORES: dict[str, Callable[[dict[str, Tensor], ReferenceLatents, ScoreConfig], Tensor]] = {
    "hole_knn": hole_knn_at_location,
    "hole_knn_posterior": hole_knn_posterior,
    "hole_knn_recon": hole_knn_recon,
}


def posterior_draws(ctx: ScoreContext) -> Tensor:
    """``[B, K, D]`` posterior draws of every input, K = ``scores.posterior_samples``."""
    return ctx.model.sample_posterior(ctx.encoding, ctx.settings.posterior_samples, ctx.seeds).transpose(0, 1)


# Per-input columns that reference scores read, recorded per batch: name -> (column, how to make it).
REFERENCE_INPUTS: dict[str, tuple[str, Callable[[ScoreContext], Tensor]]] = {
    "hole_knn_posterior": ("posterior_draws", posterior_draws),
    "hole_knn_recon": ("log_recon_statistics", ScoreContext.recon_statistics),
}


if set(BATCH_SCORES) | set(REFERENCE_SCORES) != set(SCORE_NAMES):  # the config's list is the source
    raise ImportError("scoring.config.SCORE_NAMES and the score registry disagree; update both together.")


@torch.no_grad()
def score_batch(
    model: ScoringModel,
    x: Tensor,
    names: list[str],
    settings: ScoreConfig,
    seeds: Tensor | None = None,
    indices: Tensor | None = None,
) -> tuple[dict[str, Tensor], Encoding]:
    """All requested batch scores for one batch (and the columns reference scores need), plus the encoding."""
    ctx = ScoreContext(model, x, settings, seeds, indices)
    scores = {name: BATCH_SCORES[name](ctx).detach() for name in names if name in BATCH_SCORES}
    for name in names:
        if name in REFERENCE_INPUTS:
            column, make = REFERENCE_INPUTS[name]
            scores[column] = make(ctx).detach()
    return scores, ctx.encoding


def sample_seeds(indices: Tensor, run_seed: int) -> Tensor:
    """Per-input sampling seeds from the sample's index and the run seed.

    Using the index (not the dataset) gives common random numbers across datasets: the i-th
    inlier and the i-th outlier see the same noise, which lowers the variance of comparisons.
    """
    return indices.long().cpu() + int(run_seed) * 1_000_003
