"""OOD metrics against scikit-learn, accumulation over batches, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve
from torch import Tensor

from scoring.metrics import OOD_METRIC_NAMES, labelled_ood_metrics, ood_metrics, roc_curve


def _sklearn_metrics(scores: Tensor, is_outlier: Tensor) -> dict[str, float]:
    """The reference values, outliers positive, FPR at the first ROC point reaching the TPR."""
    s, y = scores.double().numpy(), is_outlier.numpy().astype(bool)
    fpr, tpr, _ = sklearn_roc_curve(y, s, drop_intermediate=False)
    # Inliers positive, lower score = more inlying: the outliers accepted at 95% inlier recall.
    accepted_outliers, accepted_inliers, _ = sklearn_roc_curve(~y, -s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_in": average_precision_score(~y, -s),
        "aupr_out": average_precision_score(y, s),
        "fpr95": fpr[tpr >= 0.95].min(),
        "fpr80": fpr[tpr >= 0.80].min(),
        "fpr95_in": accepted_outliers[accepted_inliers >= 0.95].min(),
    }


def _sample(size: int, outlier_fraction: float, ties: bool, seed: int) -> tuple[Tensor, Tensor]:
    """Scores where outliers are shifted upwards; rounding creates many ties across classes."""
    generator = torch.Generator().manual_seed(seed)
    is_outlier = torch.rand(size, generator=generator) < outlier_fraction
    is_outlier[:2] = torch.tensor([True, False])  # both classes always present
    scores = torch.randn(size, generator=generator) + 0.8 * is_outlier
    return (scores.mul(4).round() if ties else scores), is_outlier


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize(
    ("size", "outlier_fraction", "seed"),
    [(10, 0.5, 0), (200, 0.5, 1), (1000, 0.05, 2), (3000, 0.9, 3), (20000, 0.3, 4)],
)
def test_matches_sklearn(size: int, outlier_fraction: float, seed: int, ties: bool) -> None:
    scores, is_outlier = _sample(size, outlier_fraction, ties, seed)
    result = labelled_ood_metrics(scores, is_outlier)
    assert list(result) == list(OOD_METRIC_NAMES)
    expected = _sklearn_metrics(scores, is_outlier)
    for name in OOD_METRIC_NAMES:
        assert result[name] == pytest.approx(expected[name], abs=1e-9), name


def test_large_scores_are_not_squashed_into_ties() -> None:
    """torchmetrics would take scores outside [0, 1] for logits; a sigmoid saturates them."""
    scores, is_outlier = _sample(2000, 0.4, False, 5)
    for shifted in (scores * 10 + 100, scores - 1000, scores * 1e-12):
        result = labelled_ood_metrics(shifted, is_outlier)
        expected = _sklearn_metrics(shifted, is_outlier)
        for name in OOD_METRIC_NAMES:
            assert result[name] == pytest.approx(expected[name], abs=1e-9), name


def test_infinite_scores_are_ranked() -> None:
    scores = torch.tensor([float("inf"), float("inf"), 3.0, -float("inf"), 1.0, 2.0])
    is_outlier = torch.tensor([1, 0, 1, 0, 0, 1])
    finite = torch.tensor([9.0, 9.0, 3.0, -9.0, 1.0, 2.0])
    assert labelled_ood_metrics(scores, is_outlier) == labelled_ood_metrics(finite, is_outlier)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=-3, max_value=3), st.booleans()), min_size=2, max_size=40
    ).filter(lambda pairs: len({label for _, label in pairs}) == 2)
)
def test_small_tied_inputs_match_sklearn(pairs: list[tuple[int, bool]]) -> None:
    scores = torch.tensor([float(score) for score, _ in pairs])
    is_outlier = torch.tensor([label for _, label in pairs])
    result = labelled_ood_metrics(scores, is_outlier)
    expected = _sklearn_metrics(scores, is_outlier)
    for name in OOD_METRIC_NAMES:
        assert result[name] == pytest.approx(expected[name], abs=1e-9), name


def test_public_api_takes_inlier_and_outlier_scores() -> None:
    scores, is_outlier = _sample(1500, 0.3, True, 6)
    split = ood_metrics(scores[~is_outlier], scores[is_outlier])
    assert split == labelled_ood_metrics(scores, is_outlier)
    assert list(split) == list(OOD_METRIC_NAMES)


def test_roc_curve_matches_sklearn_with_thresholds_in_score_units() -> None:
    scores, is_outlier = _sample(800, 0.4, True, 9)
    curve = roc_curve(scores, is_outlier)
    fpr, tpr, thresholds = sklearn_roc_curve(is_outlier.numpy(), scores.numpy(), drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr.numpy(), fpr)
    np.testing.assert_allclose(curve.tpr.numpy(), tpr)
    np.testing.assert_allclose(curve.thresholds.numpy()[1:], thresholds[1:])
    threshold, false_positive_rate = curve.operating_point(0.95)
    flagged = scores >= threshold
    assert flagged[is_outlier].double().mean() >= 0.95
    assert false_positive_rate == pytest.approx(flagged[~is_outlier].double().mean().item())
    assert false_positive_rate == labelled_ood_metrics(scores, is_outlier)["fpr95"]


def test_default_dtype_is_restored() -> None:
    labelled_ood_metrics(*_sample(100, 0.5, False, 7))
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize(
    ("is_outlier", "message"),
    [
        (torch.ones(6, dtype=torch.bool), r"got 0 inlier\(s\) and 6 outlier\(s\)"),
        (torch.zeros(6, dtype=torch.long), r"got 6 inlier\(s\) and 0 outlier\(s\)"),
        (torch.tensor([0, 1, 2, 0, 1, 0]), r"only 0/1 .* found 1 other value"),
        (torch.tensor([0.0, 1, 0, 1, 0, 1]), r"is_outlier must be bool or integer 0/1"),
        (torch.tensor([0, 1, 0]), r"1-D tensors of equal length, got shapes \(6,\) and \(3,\)"),
    ],
)
def test_bad_labels_are_rejected(is_outlier: Tensor, message: str) -> None:
    scores = torch.arange(6, dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        labelled_ood_metrics(scores, is_outlier)


def test_nan_scores_are_rejected_with_a_count() -> None:
    scores = torch.tensor([0.1, float("nan"), 0.3, float("nan"), 0.5, 0.6])
    is_outlier = torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"2 NaN value\(s\) out of 6.*diverged model"):
        labelled_ood_metrics(scores, is_outlier)


def test_wrong_shapes_and_dtypes_are_rejected() -> None:
    with pytest.raises(ValueError, match="1-D tensors of equal length"):
        labelled_ood_metrics(torch.zeros(4, 1), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="scores must be floating point"):
        labelled_ood_metrics(torch.arange(4), torch.zeros(4, dtype=torch.bool))


def test_tied_samples_share_values_across_classes() -> None:
    """Guard the test itself: rounded samples really contain ties shared by both classes."""
    scores, is_outlier = _sample(1000, 0.5, True, 8)
    values = scores.numpy()
    shared = np.intersect1d(values[is_outlier.numpy()], values[~is_outlier.numpy()])
    assert shared.size > 5
