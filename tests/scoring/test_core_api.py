"""The scoring core without Lightning: the detector API, the pipeline on synthetic latents, imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from scoring import HoleDetector, ood_metrics
from scoring.config import ScoreConfig
from scoring.evaluation import build_reference, deduplicate, evaluate
from scoring.knn import hole_knn_score
from tests.helpers import REPO_ROOT


def imported_after(statement: str) -> set[str]:
    """Top-level packages a fresh interpreter holds after running ``statement``."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_import_scoring_needs_neither_lightning_nor_matplotlib() -> None:
    loaded = imported_after("import scoring; scoring.HoleDetector")
    assert not loaded & {"pytorch_lightning", "lightning", "matplotlib"}


def test_scoring_pipeline_imports_no_lightning() -> None:
    assert "pytorch_lightning" not in imported_after("import scoring.evaluation, scoring.detectors")


def test_validating_a_config_imports_no_torch_or_matplotlib() -> None:
    statement = "from experiments.config import TrainConfig, load_config; load_config(TrainConfig, None, [])"
    assert not imported_after(statement) & {"torch", "matplotlib", "pytorch_lightning"}


def clusters(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference and inlier latents in two tight blobs; outliers in the empty space between them."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])

    def blob(count: int) -> torch.Tensor:
        return centres[torch.arange(count) % 2] + 0.5 * torch.randn(count, 2, generator=generator)

    outliers = torch.randn(200, 2, generator=generator) * torch.tensor([1.0, 3.0])
    return blob(1000), blob(300), outliers


def test_hole_detector_finds_the_hole_between_clusters() -> None:
    reference, inliers, outliers = clusters(0)
    detector = HoleDetector(k=10).fit(reference)
    inlier_scores, outlier_scores = detector.score(inliers), detector.score(outliers)
    torch.testing.assert_close(inlier_scores, hole_knn_score(inliers, reference, 10))
    metrics = ood_metrics(inlier_scores, outlier_scores)
    assert metrics["auroc"] > 0.95 and metrics["fpr95"] < 0.2
    with pytest.raises(RuntimeError, match="fit"):
        HoleDetector().score(inliers)


def test_pipeline_deduplicates_scores_and_counts_bound_violations() -> None:
    reference, inliers, outliers = clusters(1)
    latents = torch.cat([inliers, outliers, inliers[:5]])  # the last 5 repeat: DDP sampler padding
    dataset = torch.cat([torch.zeros(300), torch.ones(200), torch.zeros(5)]).long()
    index = torch.cat([torch.arange(300), torch.arange(200), torch.arange(5)])
    columns = {
        "dataset": dataset,
        "index": index,
        "label": torch.zeros(505).long(),
        "latent": latents,
        "mean": latents,
    }
    columns = deduplicate(columns)
    assert len(columns["index"]) == 500
    settings = ScoreConfig(names=["hole_knn"], knn_k=10)
    evaluation = evaluate(
        columns,
        ["in", "out"],
        settings,
        build_reference(reference, "euclidean", settings),
        (torch.zeros(2), 6.0),
    )
    expected = ood_metrics(
        HoleDetector(k=10).fit(reference).score(inliers), HoleDetector(k=10).fit(reference).score(outliers)
    )
    assert evaluation.metrics["out"]["hole_knn"] == expected
    far = latents[:500].norm(dim=1) > 6.0
    assert evaluation.bound_violations == {"in": int(far[:300].sum()), "out": int(far[300:].sum())}
    assert evaluation.set_sizes() == {"in": 300, "out": 200}
