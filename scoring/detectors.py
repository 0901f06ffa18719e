"""A hole detector usable on the latents of any encoder, in the spirit of pytorch-ood's detectors.

    detector = HoleDetector(metric="geodesic").fit(train_latents)
    scores = detector.score(test_latents)           # higher = in a more vacant hole
    ood_metrics(scores[:n_in], scores[n_in:])       # scoring.ood_metrics: AUROC, FPR95, ...

It is the ``hole_knn`` score of docs/method.md, section 4.1: the distance to the k-th nearest
reference latent, divided by the mean k-th-neighbour distance of those neighbours, or with
``statistic="mean_distance"`` the mean distance to the k nearest. Fitted with the inliers' log
reconstruction statistics as well (``fit(latents, log_statistics)``, ``[N]`` for one statistic such
as the log squared error, ``[N, E]`` for several), it is ``hole_knn_recon``: the vacancy in the joint
space of latent and log statistics (same section), and ``score`` then needs the queries' too;
``recon_guard=q`` adds its far-statistics guard, measured on the same statistics or, passed as
``guard_statistics`` to both ``fit`` and ``score``, on statistics of its own.
"""

from __future__ import annotations

from torch import Tensor

from scoring.config import ScoreConfig
from scoring.joint import FarGuard, joint_points, joint_score, joint_weights, latent_spacing
from scoring.knn import KnnMetric, KnnStatistic, hole_knn_score, reference_kth_distances


class HoleDetector:
    """Vacancy of latents among reference (training-inlier) latents, optionally joint with the
    reconstruction statistics; exact kNN."""

    def __init__(
        self,
        k: int = ScoreConfig.knn_k,
        metric: KnnMetric = "euclidean",
        chunk_size: int | None = None,
        statistic: KnnStatistic = ScoreConfig.knn_statistic,  # type: ignore[assignment]
        relative_recon_weight: float = ScoreConfig.knn_recon_weight,
        recon_guard: float | None = ScoreConfig.knn_recon_guard,
        recon_guard_weight: float | None = None,
    ) -> None:
        """k, statistic, the joint space's weight and its far-statistics guard (a quantile, or None)
        default to the framework's defaults (scoring.config.ScoreConfig); the guard's relative
        weight (None: the joint space's) and statistics (``guard_statistics`` of ``fit``) to the
        joint space's. The joint space always uses the mean Euclidean distance."""
        self.k = k
        self.metric = metric
        self.chunk_size = chunk_size
        self.statistic = statistic
        self.relative_recon_weight = relative_recon_weight
        self.recon_guard = recon_guard
        self.recon_guard_weight = recon_guard_weight
        self._reference: Tensor | None = None
        self._reference_kth: Tensor | None = None
        self._joint: Tensor | None = None
        self._weights: Tensor | None = None
        self._guard: FarGuard | None = None
        self._own_guard_statistics = False

    def fit(
        self,
        reference_latents: Tensor,
        log_statistics: Tensor | None = None,
        guard_statistics: Tensor | None = None,
    ) -> HoleDetector:
        """Remember the reference; with the inliers' log statistics, score in the joint space (and
        with ``guard_statistics``, guard on those instead of the joint space's)."""
        self._reference = reference_latents
        self._joint = self._weights = self._reference_kth = self._guard = None
        self._own_guard_statistics = guard_statistics is not None
        if log_statistics is not None:
            spacing = latent_spacing(reference_latents, self.k, self.chunk_size)
            self._weights = joint_weights(
                reference_latents, log_statistics, self.k, self.relative_recon_weight, spacing=spacing
            )
            self._joint = joint_points(reference_latents, log_statistics, self._weights)
            if self.recon_guard is not None:
                own_weight = self.recon_guard_weight
                weight = self.relative_recon_weight if own_weight is None else own_weight
                self._guard = FarGuard.fit(
                    reference_latents,
                    log_statistics if guard_statistics is None else guard_statistics,
                    self.k,
                    weight,
                    self.recon_guard,
                    spacing=spacing,
                )
        elif self.statistic == "relative":
            self._reference_kth = reference_kth_distances(
                reference_latents, self.k, self.metric, self.chunk_size
            )
        return self

    def score(
        self, latents: Tensor, log_statistics: Tensor | None = None, guard_statistics: Tensor | None = None
    ) -> Tensor:
        """``[N]`` hole scores of ``latents`` (``[N, D]``, the reference's space): higher = more vacant."""
        if self._reference is None:
            raise RuntimeError("HoleDetector.score() needs fit(reference_latents) first.")
        if (self._joint is None) != (log_statistics is None):
            raise ValueError(
                "HoleDetector scores in the joint space exactly when it was fitted with log_statistics: "
                "pass log_statistics to both fit() and score(), or to neither."
            )
        if self._own_guard_statistics != (guard_statistics is not None):
            raise ValueError(
                "HoleDetector guards on statistics of its own exactly when it was fitted with "
                "guard_statistics: pass them to both fit() and score(), or to neither."
            )
        if self._joint is not None and self._weights is not None and log_statistics is not None:
            return joint_score(
                latents,
                log_statistics,
                self._joint,
                self._weights,
                self.k,
                self.chunk_size,
                self._guard,
                guard_statistics,
            )
        return hole_knn_score(
            latents,
            self._reference,
            self.k,
            self.metric,
            self.chunk_size,
            self._reference_kth,
            self.statistic,
        )
