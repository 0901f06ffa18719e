"""The evaluation pipeline as plain functions: per-sample records -> columns -> kNN reference ->
scores -> metrics -> bound violations, returned as one typed :class:`Evaluation`.

Nothing here knows about Lightning: the evaluation callback feeds it batches and the gathered
records, a script can feed it the latents of any encoder. The order of the steps and what each
one means are in docs/method.md (sections 4 and 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from scoring.config import ScoreConfig, guard_columns
from scoring.joint import FarGuard, as_columns, joint_points, joint_weights, latent_spacing
from scoring.knn import reference_kth_distances
from scoring.metrics import labelled_ood_metrics
from scoring.model import ScoringModel
from scoring.registry import (
    BATCH_SCORES,
    REFERENCE_INPUTS,
    REFERENCE_SCORES,
    SUBSET_LIMITS,
    ReferenceLatents,
    ScoreContext,
    sample_seeds,
    score_batch,
    scored_rows,
)

Metrics = dict[str, dict[str, dict[str, float]]]  # outlier -> score -> metric -> value
# Columns every record has besides the scores; `mean` is the raw encoder output the bound is about.
RECORD_KEYS = ("dataset", "index", "label", "latent", "mean")
REFERENCE_COLUMNS = {column for column, _ in REFERENCE_INPUTS.values()}  # kept in the model's dtype


@dataclass
class Evaluation:
    """Everything one evaluation pass produced, identical on every process."""

    set_names: list[str]  # the inlier set first, then the outlier sets
    columns: dict[str, Tensor]  # per-sample arrays on the CPU, sorted by (dataset, index)
    score_names: list[str]
    metrics: Metrics
    bound_violations: dict[str, int] | None  # per set, encodings outside the certified ball
    reference: ReferenceLatents | None  # the hole_knn reference, when that score was asked for

    def set_sizes(self) -> dict[str, int]:
        dataset = self.columns["dataset"]
        return {name: int((dataset == set_id).sum()) for set_id, name in enumerate(self.set_names)}

    def scored_sizes(self, settings: ScoreConfig) -> dict[str, dict[str, int]]:
        """Per subset score, how many inputs of each set it scored (and its metrics used)."""
        dataset, index = self.columns["dataset"], self.columns["index"]
        sizes: dict[str, dict[str, int]] = {}
        for name in (name for name in self.score_names if name in SUBSET_LIMITS):
            scored = scored_rows(name, index, settings, len(index))
            sizes[name] = {
                set_name: int((scored & (dataset == set_id)).sum())
                for set_id, set_name in enumerate(self.set_names)
            }
        return sizes


def score_record(
    model: ScoringModel,
    x: Tensor,
    labels: Tensor,
    indices: Tensor,
    set_id: int,
    settings: ScoreConfig,
    run_seed: int,
) -> dict[str, Tensor]:
    """One batch of evaluated set ``set_id`` as a per-sample record: ids, latents and batch scores.

    Sampling scores draw from per-input seeds (``sample_seeds``), so a record does not depend on
    the batch or the process the inputs landed in.
    """
    seeds = sample_seeds(indices, run_seed)
    scores, encoding = score_batch(model, x, list(settings.names), settings, seeds, indices)
    return {
        "dataset": torch.full_like(indices, set_id),
        "index": indices,
        "label": labels,
        "latent": encoding.location.detach(),
        "mean": encoding.mean.detach(),
        **{name: value if name in REFERENCE_COLUMNS else value.double() for name, value in scores.items()},
    }


def concatenate(records: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Records of many batches as one column per key (empty columns when there is no record)."""
    if not records:
        return {key: torch.empty(0) for key in RECORD_KEYS}
    return {key: torch.cat([record[key] for record in records]) for key in records[0]}


def unique_record_order(dataset_ids: Tensor, indices: Tensor) -> Tensor:
    """Positions that keep one record per (dataset id, index), sorted by that pair.

    Under DDP the distributed sampler pads every rank's share by repeating samples; keeping each
    pair once makes N-process metrics equal the single-process ones.
    """
    keys = dataset_ids.long() * (int(indices.max().item()) + 1 if indices.numel() else 1) + indices.long()
    sorted_keys, order = torch.sort(keys, stable=True)
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return order[first]


def deduplicate(columns: dict[str, Tensor]) -> dict[str, Tensor]:
    """Columns with one row per (dataset, index), sorted by that pair."""
    keep = unique_record_order(columns["dataset"], columns["index"])
    return {key: value[keep] for key, value in columns.items()}


@torch.no_grad()
def reference_record(model: ScoringModel, x: Tensor, settings: ScoreConfig) -> dict[str, Tensor]:
    """What the reference keeps of one batch of training inliers: ``latent``, and
    ``log_recon_statistics`` when hole_knn_recon is asked for. Encoded and measured as the scored
    inputs are (one ScoreContext, batch-invariant)."""
    ctx = ScoreContext(model, x, settings)
    record = {"latent": ctx.encoding.location}
    if "hole_knn_recon" in settings.names:
        record["log_recon_statistics"] = ctx.recon_statistics()
    return record


def build_reference(
    latents: Tensor, metric: str, settings: ScoreConfig, log_recon_statistics: Tensor | None = None
) -> ReferenceLatents:
    """The reference of the reference scores: training-inlier latents, their own k-th-neighbour
    distances (for the relative hole_knn) and, given their log reconstruction statistics
    (``reference_record``), their joint-space points (for hole_knn_recon)."""
    if latents.shape[0] <= settings.knn_k:
        raise ValueError(
            f"hole_knn needs more than scores.knn_k={settings.knn_k} reference latents but "
            f"the training inliers gave {latents.shape[0]}: lower scores.knn_k or use more "
            f"training data (data.max_train_samples, scores.knn_reference_size)."
        )
    reference = ReferenceLatents(latents, metric)
    if settings.knn_statistic == "relative":  # only the relative statistic reads the reference's own spacing
        reference.kth_distances = reference_kth_distances(
            latents,
            settings.knn_k,
            metric,  # type: ignore[arg-type]
            settings.knn_chunk_size,
        )
    if log_recon_statistics is not None:  # latents alone serve every score but hole_knn_recon
        statistics = as_columns(log_recon_statistics)
        joint_statistics = statistics[:, : len(settings.knn_recon_features)]
        spacing = latent_spacing(latents, settings.knn_k, settings.knn_chunk_size)
        reference.recon_weights = joint_weights(
            latents, joint_statistics, settings.knn_k, settings.knn_recon_weight, spacing=spacing
        )
        reference.joint = joint_points(latents, joint_statistics, reference.recon_weights)
        if settings.knn_recon_guard is not None:
            guard_weight = settings.knn_recon_guard_weight
            reference.guard = FarGuard.fit(
                latents,
                statistics[:, guard_columns(settings)],
                settings.knn_k,
                settings.knn_recon_weight if guard_weight is None else guard_weight,
                settings.knn_recon_guard,
                spacing=spacing,
            )
    return reference


def reference_rows(size: int, cap: int | None, seed: int) -> Tensor:
    """The training inliers (positions, ascending) that form the reference: a seeded subset of ``cap``."""
    if cap is not None and cap < size:
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randperm(size, generator=generator)[:cap].sort().values
    return torch.arange(size)


def evaluate(
    columns: dict[str, Tensor],
    set_names: list[str],
    settings: ScoreConfig,
    reference: ReferenceLatents | None = None,
    latent_bound: tuple[Tensor, float] | None = None,
) -> Evaluation:
    """Reference scores, metrics and bound violations of deduplicated, sorted ``columns``.

    ``reference`` is required when a reference score (hole_knn) is asked for; ``latent_bound`` is
    the model's certified (centre, radius) ball for the raw means, when it has one.
    """
    columns = dict(columns)
    reference_names = [name for name in settings.names if name in REFERENCE_SCORES]
    if reference_names and reference is None:
        raise ValueError(f"The scores {reference_names} need the reference latents of the training inliers.")
    for name in reference_names:
        assert reference is not None
        columns[name] = REFERENCE_SCORES[name](columns, reference, settings).double()
    violations = None if latent_bound is None else bound_violations(columns, set_names, *latent_bound)
    columns = {key: value.cpu() for key, value in columns.items()}
    score_names = [name for name in settings.names if name in BATCH_SCORES or name in REFERENCE_SCORES]
    metrics = set_metrics(columns, set_names, score_names, settings)
    return Evaluation(
        set_names, columns, score_names, metrics, violations, reference if reference_names else None
    )


def set_metrics(
    columns: dict[str, Tensor], set_names: list[str], score_names: list[str], settings: ScoreConfig
) -> Metrics:
    """Metrics of every score on the whole inlier and outlier sets (a subset score: on what it scored)."""
    dataset = columns["dataset"]
    inliers = dataset == 0
    scored = {name: scored_rows(name, columns["index"], settings, len(dataset)) for name in score_names}
    metrics: Metrics = {}
    for set_id, outlier in enumerate(set_names[1:], start=1):
        outliers = dataset == set_id
        if not outliers.any():
            continue
        metrics[outlier] = {}
        for name in score_names:
            selected = (inliers | outliers) & scored[name]
            metrics[outlier][name] = labelled_ood_metrics(columns[name][selected], outliers[selected])
    return metrics


def bound_violations(
    columns: dict[str, Tensor], set_names: list[str], centre: Tensor, radius: float
) -> dict[str, int]:
    """Per set, how many raw means lie outside the certified ball (should be 0: a check of the proof)."""
    outside = (columns["mean"] - centre).norm(dim=1) > radius
    return {name: int(outside[columns["dataset"] == set_id].sum()) for set_id, name in enumerate(set_names)}
