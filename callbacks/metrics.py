"""Outlier-detection metrics (DESIGN section 4) computed with torchmetrics.

Outliers are the positive class and a higher score means more outlying. For every (outlier set,
score) pair the project reports:

* ``auroc``: area under the ROC curve;
* ``aupr_out``: average precision with outliers as the positive class;
* ``aupr_in``: average precision with inliers as the positive class and the score negated;
* ``fpr95`` / ``fpr80``: the false-positive rate at 95% / 80% true-positive rate, taken as the
  smallest FPR among the exact ROC points whose TPR is at least the target (no interpolation).
  Ties in the score form a single ROC point, so a tie straddling the target is counted whole.

All values are exact, identical to scikit-learn's ``roc_auc_score``, ``average_precision_score``
and ``roc_curve``. Two torchmetrics behaviours would break that and are worked around here:

* scores outside [0, 1] are taken for logits and passed through a sigmoid, which saturates to
  1.0 in floating point and turns distinct large scores into false ties. Scores are therefore
  replaced by their dense rank scaled into [0, 1], which keeps the order and the ties exactly;
  every metric here depends on the order alone.
* the curve helpers divide integer counts in the default dtype (float32). The computation runs
  with float64 as the default dtype, so rates and areas are float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
)
from torchmetrics.utilities import dim_zero_cat

OOD_METRIC_NAMES: tuple[str, ...] = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr80")
_FPR_TARGETS: dict[str, float] = {"fpr95": 0.95, "fpr80": 0.80}


class OODMetrics(Metric):
    """Accumulate ``(scores, is_outlier)`` pairs and compute all OOD metrics at once.

    States are lists concatenated across processes (``dist_reduce_fx="cat"``), so the metric is
    computed on the whole inlier and outlier test sets. Deduplicating the samples that a
    distributed sampler pads in is the caller's job: this metric counts every sample it is given.
    """

    is_differentiable = False
    higher_is_better = None  # AUROC and AUPR improve upwards, the FPRs downwards.
    full_state_update = False

    scores: list[Tensor]
    is_outlier: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("is_outlier", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, is_outlier: Tensor) -> None:
        """Add a batch: ``scores [N]`` (higher = outlier) and ``is_outlier [N]`` (bool or 0/1).

        Value checks (NaN scores, missing classes) wait for ``compute`` to avoid a device sync
        per batch; shapes and dtypes are checked here.
        """
        _check_shapes(scores, is_outlier)
        self.scores.append(scores.detach().to(torch.float64))
        self.is_outlier.append(is_outlier.detach().to(torch.long))

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"auroc", "aupr_in", "aupr_out", "fpr95", "fpr80"}`` as float64 scalars."""
        if not self.scores:
            raise ValueError("OODMetrics.compute() was called before any update(); add scores.")
        return ood_metric_tensors(dim_zero_cat(self.scores), dim_zero_cat(self.is_outlier))


def ood_metrics(scores: Tensor, is_outlier: Tensor) -> dict[str, float]:
    """All OOD metrics of one score on gathered samples, as plain floats (see the module doc)."""
    return {name: float(value) for name, value in ood_metric_tensors(scores, is_outlier).items()}


def ood_metric_tensors(scores: Tensor, is_outlier: Tensor) -> dict[str, Tensor]:
    """All OOD metrics of one score on gathered samples, as float64 scalar tensors."""
    _check_shapes(scores, is_outlier)
    _check_values(scores, is_outlier)
    target = is_outlier.to(torch.long)
    outlier_rank, inlier_rank = _unit_ranks(scores)
    with _float64_default():
        results = {
            "auroc": binary_auroc(outlier_rank, target),
            "aupr_in": binary_average_precision(inlier_rank, 1 - target),
            "aupr_out": binary_average_precision(outlier_rank, target),
        }
        fpr, tpr, _ = binary_roc(outlier_rank, target)
    for name, target_tpr in _FPR_TARGETS.items():
        results[name] = fpr[tpr >= target_tpr].min()
    return {name: results[name].to(torch.float64) for name in OOD_METRIC_NAMES}


def _check_shapes(scores: Tensor, is_outlier: Tensor) -> None:
    """Reject inputs that are not matching 1-D score and label vectors."""
    if scores.ndim != 1 or is_outlier.shape != scores.shape:
        raise ValueError(
            f"scores and is_outlier must be 1-D tensors of equal length, got shapes "
            f"{tuple(scores.shape)} and {tuple(is_outlier.shape)}; flatten them per sample."
        )
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}; cast with .float().")
    if is_outlier.is_floating_point() or is_outlier.is_complex():
        raise ValueError(
            f"is_outlier must be bool or integer 0/1, got {is_outlier.dtype}; "
            "pass a bool tensor (True = outlier)."
        )


def _check_values(scores: Tensor, is_outlier: Tensor) -> None:
    """Reject NaN scores, labels other than 0/1, and inputs lacking inliers or outliers."""
    num_nan = int(torch.isnan(scores).sum())
    if num_nan:
        raise ValueError(
            f"scores contain {num_nan} NaN value(s) out of {scores.numel()}; NaN usually means a "
            "diverged model or a 0/0 inside the score. Fix the score or drop those samples "
            "explicitly (dropping changes the metric, so report it)."
        )
    num_invalid = int(((is_outlier != 0) & (is_outlier != 1)).sum())
    if num_invalid:
        raise ValueError(
            f"is_outlier must contain only 0/1 (or False/True), found {num_invalid} other value(s)."
        )
    num_outliers = int(is_outlier.sum())
    num_inliers = is_outlier.numel() - num_outliers
    if num_inliers == 0 or num_outliers == 0:
        raise ValueError(
            f"OOD metrics need both classes, got {num_inliers} inlier(s) and {num_outliers} "
            "outlier(s); score the inlier test set together with an outlier set."
        )


def _unit_ranks(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Dense ranks of ``scores`` scaled into [0, 1], ascending and descending (float64).

    Equal scores share a rank and distinct scores get distinct values (exactly, for fewer than
    2**52 distinct scores), so order-based metrics are unchanged while torchmetrics never sees a
    value outside [0, 1]. The descending ranks stand in for the negated score.
    """
    _, rank = torch.unique(scores, sorted=True, return_inverse=True)
    top = max(int(rank.max()), 1)
    rank = rank.to(torch.float64)
    return rank / top, (top - rank) / top


@contextmanager
def _float64_default() -> Iterator[None]:
    """Temporarily make float64 the default dtype (torchmetrics divides counts in it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
