"""A hole detector usable on the latents of any encoder, in the spirit of pytorch-ood's detectors.

    detector = HoleDetector(metric="geodesic").fit(train_latents)
    scores = detector.score(test_latents)           # higher = in a more vacant hole
    ood_metrics(scores[:n_in], scores[n_in:])       # scoring.ood_metrics: AUROC, FPR95, ...

It is the ``hole_knn`` score of docs/method.md, section 4.1: the distance to the k-th nearest
reference latent, divided by the mean k-th-neighbour distance of those neighbours, or with
``statistic="mean_distance"`` the mean distance to the k nearest.
"""

from __future__ import annotations

from torch import Tensor

from scoring.config import ScoreConfig
from scoring.knn import KnnMetric, KnnStatistic, hole_knn_score, reference_kth_distances


class HoleDetector:
    """Relative vacancy of latents among reference (training-inlier) latents; exact kNN."""

    def __init__(
        self,
        k: int = ScoreConfig.knn_k,
        metric: KnnMetric = "euclidean",
        chunk_size: int | None = None,
        statistic: KnnStatistic = ScoreConfig.knn_statistic,  # type: ignore[assignment]
    ) -> None:
        """k and statistic default to the framework's default hole_knn (scoring.config.ScoreConfig)."""
        self.k = k
        self.metric = metric
        self.chunk_size = chunk_size
        self.statistic = statistic
        self._reference: Tensor | None = None
        self._reference_kth: Tensor | None = None

    def fit(self, reference_latents: Tensor) -> HoleDetector:
        """Remember the reference and precompute each reference point's own k-th-neighbour distance."""
        self._reference = reference_latents
        if self.statistic == "relative":
            self._reference_kth = reference_kth_distances(
                reference_latents, self.k, self.metric, self.chunk_size
            )
        return self

    def score(self, latents: Tensor) -> Tensor:
        """``[N]`` hole scores of ``latents`` (``[N, D]``, the reference's space): higher = more vacant."""
        if self._reference is None:
            raise RuntimeError("HoleDetector.score() needs fit(reference_latents) first.")
        return hole_knn_score(
            latents,
            self._reference,
            self.k,
            self.metric,
            self.chunk_size,
            self._reference_kth,
            self.statistic,
        )
