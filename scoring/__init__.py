"""The scoring core: score registry, exact kNN, OOD metrics and the evaluation pipeline.

No Lightning and no matplotlib: everything here works on tensors and on any model that follows
``scoring.model.ScoringModel``. The public API is imported lazily, so that ``scoring.config``
(validated by every entry point before any work) does not import torch.

    from scoring import HoleDetector, ood_metrics
    detector = HoleDetector().fit(train_latents)  # the default hole_knn: k = 3, mean distance
    metrics = ood_metrics(detector.score(inlier_latents), detector.score(outlier_latents))
"""

from __future__ import annotations

from common.lazy import lazy_exports

_PUBLIC = {
    "HoleDetector": "scoring.detectors",
    "ood_metrics": "scoring.metrics",
    "roc_curve": "scoring.metrics",
    "OOD_METRIC_NAMES": "scoring.metrics",
    "Evaluation": "scoring.evaluation",
    "evaluate": "scoring.evaluation",
    "score_batch": "scoring.registry",
    "ScoreConfig": "scoring.config",
    "SCORE_NAMES": "scoring.config",
}
__all__ = sorted(_PUBLIC)

__getattr__ = lazy_exports(__name__, _PUBLIC)
