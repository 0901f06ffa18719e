"""Outlier-detection metrics (docs/method.md, section 5) computed with torchmetrics.

Outliers are the positive class and a higher score means more outlying. For every (outlier set,
score) pair the project reports:

* ``auroc``: area under the ROC curve;
* ``aupr_out``: average precision with outliers as the positive class;
* ``aupr_in``: average precision with inliers as the positive class and the score negated;
* ``fpr95`` / ``fpr80``: the false-positive rate at 95% / 80% true-positive rate with outliers
  positive: the share of *inliers* flagged when 95% (80%) of the outliers are caught. Taken as
  the smallest FPR among the exact ROC points whose TPR is at least the target (no
  interpolation); ties in the score form a single ROC point, so a tie straddling the target is
  counted whole.
* ``fpr95_in``: the literature's FPR95 convention (Liang et al. 2018; Hendrycks et al. 2019),
  inliers positive: the share of *outliers* accepted as inliers when 95% of the inliers are
  accepted. The same ROC machinery on the negated score with inliers as the positive class.

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
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
)

OOD_METRIC_NAMES: tuple[str, ...] = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr80", "fpr95_in")
FPR_TARGETS: dict[str, float] = {"fpr95": 0.95, "fpr80": 0.80}


def ood_metrics(inlier_scores: Tensor, outlier_scores: Tensor) -> dict[str, float]:
    """All OOD metrics of one score given its values on inliers and on outliers (the public API)."""
    scores = torch.cat([inlier_scores, outlier_scores]).to(torch.float64)
    is_outlier = torch.cat(
        [
            torch.zeros(len(inlier_scores), dtype=torch.bool, device=scores.device),
            torch.ones(len(outlier_scores), dtype=torch.bool, device=scores.device),
        ]
    )
    return labelled_ood_metrics(scores, is_outlier)


def labelled_ood_metrics(scores: Tensor, is_outlier: Tensor) -> dict[str, float]:
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
    curve = roc_curve(scores, is_outlier)
    for name, target_tpr in FPR_TARGETS.items():
        results[name] = torch.tensor(curve.operating_point(target_tpr)[1], dtype=torch.float64)
    accepted_outliers = roc_curve(-scores, ~is_outlier.bool()).operating_point(0.95)[1]
    results["fpr95_in"] = torch.tensor(accepted_outliers, dtype=torch.float64)
    return {name: results[name].to(torch.float64) for name in OOD_METRIC_NAMES}


@dataclass
class RocCurve:
    """The exact ROC curve of one score, outliers positive, from (0, 0) to (1, 1).

    ``thresholds[i]`` is the score at or above which an input is flagged at point i, in the
    score's own units (``inf`` at the first point, where nothing is flagged); tied scores form one
    point. The dashboard draws these very points, so a figure can never disagree with a metric.
    """

    fpr: Tensor
    tpr: Tensor
    thresholds: Tensor

    def operating_point(self, tpr_level: float) -> tuple[float, float]:
        """``(threshold, fpr)`` of the first point whose TPR reaches ``tpr_level`` (FPR95: 0.95)."""
        reached = torch.nonzero(self.tpr >= tpr_level)[0, 0]
        return float(self.thresholds[reached]), float(self.fpr[reached])


def roc_curve(scores: Tensor, is_outlier: Tensor) -> RocCurve:
    """The ROC curve of ``scores`` (higher = outlier) computed by torchmetrics, as float64."""
    _check_shapes(scores, is_outlier)
    _check_values(scores, is_outlier)
    distinct, rank = torch.unique(scores, sorted=True, return_inverse=True)
    top = max(len(distinct) - 1, 1)
    with _float64_default():
        fpr, tpr, unit_thresholds = binary_roc(rank.to(torch.float64) / top, is_outlier.to(torch.long))
    # torchmetrics puts a threshold above every score first; the others are unit ranks.
    positions = (unit_thresholds * top).round().long().clamp(0, len(distinct) - 1)
    thresholds = distinct.to(torch.float64)[positions]
    thresholds[0] = float("inf")
    return RocCurve(fpr.to(torch.float64), tpr.to(torch.float64), thresholds)


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
