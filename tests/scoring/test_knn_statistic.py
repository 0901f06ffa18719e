"""hole_knn's mean_distance statistic: the plain kNN vacancy, wired from the config to the detector."""

from __future__ import annotations

import pytest
import torch

from scoring import HoleDetector
from scoring.config import ScoreConfig
from scoring.evaluation import build_reference
from scoring.knn import hole_knn_score
from scoring.registry import hole_knn


def _points(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


@pytest.mark.parametrize("metric", ["euclidean", "geodesic"])
@pytest.mark.parametrize("k", [1, 4])
def test_mean_distance_is_the_mean_of_the_k_smallest_distances(metric: str, k: int) -> None:
    reference, queries = _points(300, 5, 0), _points(40, 5, 1)
    if metric == "geodesic":
        reference, queries = (torch.nn.functional.normalize(p, dim=1) for p in (reference, queries))
        brute = torch.arccos((queries.double() @ reference.double().T).clamp(-1, 1))
    else:
        brute = torch.cdist(queries.double(), reference.double())
    expected = brute.topk(k, dim=1, largest=False).values.mean(dim=1)
    found = hole_knn_score(queries, reference, k, metric, statistic="mean_distance")  # type: ignore[arg-type]
    torch.testing.assert_close(found.double(), expected, rtol=1e-5, atol=1e-5)


def test_the_statistics_differ_where_density_differs() -> None:
    """A query at the same relative distance from a sparse cluster as from a dense one: the relative
    statistic scores both alike, the mean distance calls the sparse one more vacant."""
    dense, sparse = 0.01 * _points(200, 2, 2), 10.0 + 1.0 * _points(200, 2, 3)
    reference = torch.cat([dense, sparse])
    queries = torch.tensor([[0.05, 0.0], [15.0, 10.0]])
    relative = hole_knn_score(queries, reference, 5)
    plain = hole_knn_score(queries, reference, 5, statistic="mean_distance")
    assert relative[0] == pytest.approx(relative[1].item(), rel=0.7)
    assert plain[1] > 50 * plain[0]


def test_config_statistic_reaches_the_score_and_skips_the_reference_spacing() -> None:
    reference, queries = _points(200, 3, 4), _points(10, 3, 5)
    settings = ScoreConfig(names=["hole_knn"], knn_k=3, knn_statistic="mean_distance")
    built = build_reference(reference, "euclidean", settings)
    assert built.kth_distances is None  # the R x R search is not paid for a statistic that never reads it
    found = hole_knn(queries, built, settings)
    torch.testing.assert_close(found, hole_knn_score(queries, reference, 3, statistic="mean_distance"))
    detector = HoleDetector(k=3, statistic="mean_distance").fit(reference)
    torch.testing.assert_close(detector.score(queries), found)


def test_unknown_statistic_is_refused_by_config_and_score() -> None:
    with pytest.raises(ValueError, match="scores.knn_statistic.*relative, mean_distance"):
        ScoreConfig(knn_statistic="median")
    with pytest.raises(ValueError, match="statistic must be one of"):
        hole_knn_score(_points(5, 2, 6), _points(20, 2, 7), 3, statistic="median")  # type: ignore[arg-type]
