"""The scoring core without Lightning: the detector API, the pipeline on synthetic latents, imports."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import Tensor

from scoring import HoleDetector, ood_metrics
from scoring.config import ScoreConfig
from scoring.evaluation import build_reference, concatenate, deduplicate, evaluate, score_record
from scoring.knn import hole_knn_score
from scoring.registry import REFERENCE_SCORES, hole_knn
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
    for statistic in ("relative", "mean_distance"):
        detector = HoleDetector(k=10, statistic=statistic).fit(reference)
        inlier_scores, outlier_scores = detector.score(inliers), detector.score(outliers)
        torch.testing.assert_close(inlier_scores, hole_knn_score(inliers, reference, 10, statistic=statistic))
        metrics = ood_metrics(inlier_scores, outlier_scores)
        assert metrics["auroc"] > 0.95 and metrics["fpr95"] < 0.2, statistic
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


def tiny_model() -> Any:
    from dataclasses import asdict

    from lightning_modules.config import ModelConfig, OptimConfig
    from lightning_modules.factory import build_model

    torch.manual_seed(0)
    model = ModelConfig(variant="alexandroff", lipschitz=None, latent_dim=3, width=4, hidden_dim=16)
    return build_model(asdict(model), asdict(OptimConfig()), (1, 8, 8), max_epochs=1).eval()


def test_hole_knn_posterior_averages_hole_knn_over_draws_and_ignores_the_batching() -> None:
    model = tiny_model()
    images = torch.rand(23, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    settings = ScoreConfig(names=["hole_knn", "hole_knn_posterior"], knn_k=5, posterior_samples=4)
    with torch.no_grad():
        reference = build_reference(model.encode(torch.rand(60, 1, 8, 8)).location, "geodesic", settings)

    def scores(batch_size: int) -> dict[str, Tensor]:
        records = []
        for start in range(0, 23, batch_size):
            index = torch.arange(start, min(start + batch_size, 23))
            records.append(score_record(model, images[index], torch.zeros_like(index), index, 0, settings, 3))
        columns = concatenate(records)
        return {
            name: REFERENCE_SCORES[name](columns, reference, settings) for name in settings.names
        } | columns

    whole, split = scores(23), scores(7)
    torch.testing.assert_close(whole["hole_knn_posterior"], split["hole_knn_posterior"])
    draws = whole["posterior_draws"]
    assert draws.shape == (23, 4, 4)
    per_draw = torch.stack([hole_knn(draws[:, k], reference, settings) for k in range(4)], dim=1)
    torch.testing.assert_close(whole["hole_knn_posterior"], per_draw.mean(dim=1))


def test_hole_knn_recon_is_the_mean_distance_in_the_joint_space_scaled_by_the_inliers() -> None:
    """Brute force against the definition (docs/method.md 4.1), and what the joint space is for: a
    query at an occupied latent whose error is unlike its neighbours' lands in a hole."""
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn(200, 3, generator=generator)
    log_error = latents[:, 0] + 0.3 * torch.randn(200, generator=generator)  # error varies with place
    settings = ScoreConfig(names=["hole_knn_recon"], knn_k=4, knn_recon_weight=1.5)
    reference = build_reference(latents, "euclidean", settings, log_error)

    own = torch.cdist(latents.double(), latents.double()).fill_diagonal_(float("inf"))
    spacing = own.topk(4, largest=False).values.mean(dim=1).median()
    spread = torch.quantile(log_error.double(), 0.75) - torch.quantile(log_error.double(), 0.25)
    weight = reference.recon_weight
    assert weight is not None
    assert weight == pytest.approx(float(1.5 * spacing / spread), rel=1e-6)

    central = latents.norm(dim=1).argsort()[:3]  # three inliers in the dense middle of the cloud
    shift = torch.tensor([0.0, 6.0, -6.0])
    queries = {"latent": latents[central] + 0.01, "log_recon_error": log_error[central] + shift}
    scores = REFERENCE_SCORES["hole_knn_recon"](queries, reference, settings)
    joint = torch.cat([latents, weight * log_error[:, None]], dim=1).double()
    asked = torch.cat([queries["latent"], weight * queries["log_recon_error"][:, None]], dim=1)
    expected = torch.cdist(asked.double(), joint).topk(4, largest=False).values.mean(dim=1)
    torch.testing.assert_close(scores, expected)
    # Same latent: the query explained as well as its neighbours scores lowest, one whose error is
    # far larger or smaller than theirs scores higher than any inlier's own vacancy.
    inlier_vacancy = (
        torch.cdist(joint, joint).fill_diagonal_(float("inf")).topk(4, largest=False).values.mean(1)
    )
    assert scores[0] < inlier_vacancy.max() < min(scores[1], scores[2])
    # The detector API is the same score, for latents and errors of any model.
    detector = HoleDetector(k=4, relative_recon_weight=1.5).fit(latents, log_error)
    torch.testing.assert_close(detector.score(queries["latent"], queries["log_recon_error"]), scores)
    with pytest.raises(ValueError, match="joint space"):
        detector.score(queries["latent"])


def test_hole_knn_recon_needs_the_reference_errors_and_a_spread() -> None:
    settings = ScoreConfig(names=["hole_knn_recon"], knn_k=2)
    latents = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    latent_only = build_reference(latents, "euclidean", settings)
    columns = {"latent": latents, "log_recon_error": torch.zeros(10)}
    with pytest.raises(ValueError, match="reconstruction errors"):
        REFERENCE_SCORES["hole_knn_recon"](columns, latent_only, settings)
    with pytest.raises(ValueError, match="interquartile range 0"):
        build_reference(latents, "euclidean", settings, torch.zeros(10))
