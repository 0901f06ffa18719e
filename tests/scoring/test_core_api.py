"""The scoring core without Lightning: the detector API, the pipeline on synthetic latents, imports."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from scoring import HoleDetector, ood_metrics
from scoring.config import ScoreConfig, guard_columns, recorded_recon_features
from scoring.evaluation import build_reference, concatenate, deduplicate, evaluate, score_record
from scoring.joint import joint_weights
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
    """Brute force against the definition (docs/method.md 4.1) with two statistics, and what the
    joint space is for: a query at an occupied latent whose statistic is unlike its neighbours'
    lands in a hole."""
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn(200, 3, generator=generator)
    # Two log statistics that vary with place, on different scales.
    log_stats = torch.stack(
        [latents[:, 0] + 0.3 * torch.randn(200, generator=generator), 10 * latents[:, 1] + 5], dim=1
    )
    # The joint vacancy itself: without the far-statistics guard (tested on its own below).
    settings = ScoreConfig(names=["hole_knn_recon"], knn_k=4, knn_recon_weight=1.5, knn_recon_guard=None)
    reference = build_reference(latents, "euclidean", settings, log_stats)

    own = torch.cdist(latents.double(), latents.double()).fill_diagonal_(float("inf"))
    spacing = own.topk(4, largest=False).values.mean(dim=1).median()
    stats = log_stats.double()
    spread = torch.quantile(stats, 0.75, dim=0) - torch.quantile(stats, 0.25, dim=0)
    weights = reference.recon_weights
    assert weights is not None
    torch.testing.assert_close(weights, 1.5 * spacing / spread)

    central = latents.norm(dim=1).argsort()[:3]  # three inliers in the dense middle of the cloud
    shift = torch.tensor([[0.0, 0.0], [6.0, 0.0], [-6.0, 0.0]])
    queries = {"latent": latents[central] + 0.01, "log_recon_statistics": log_stats[central] + shift}
    scores = REFERENCE_SCORES["hole_knn_recon"](queries, reference, settings)
    joint = torch.cat([latents.double(), weights * stats], dim=1)
    asked = torch.cat([queries["latent"].double(), weights * queries["log_recon_statistics"].double()], dim=1)
    expected = torch.cdist(asked, joint).topk(4, largest=False).values.mean(dim=1)
    torch.testing.assert_close(scores, expected)
    # Same latent: the query explained as well as its neighbours scores lowest, one whose first
    # statistic is far larger or smaller than theirs scores higher than any inlier's own vacancy.
    inlier_vacancy = (
        torch.cdist(joint, joint).fill_diagonal_(float("inf")).topk(4, largest=False).values.mean(1)
    )
    assert scores[0] < inlier_vacancy.max() < min(scores[1], scores[2])
    # The detector API is the same score, for latents and statistics of any model.
    detector = HoleDetector(k=4, relative_recon_weight=1.5, recon_guard=None).fit(latents, log_stats)
    torch.testing.assert_close(detector.score(queries["latent"], queries["log_recon_statistics"]), scores)
    with pytest.raises(ValueError, match="joint space"):
        detector.score(queries["latent"])
    # One statistic may come as a vector: the same as its one-column matrix.
    single = HoleDetector(k=4).fit(latents, log_stats[:, 0])
    torch.testing.assert_close(
        single.score(queries["latent"], queries["log_recon_statistics"][:, 0]),
        HoleDetector(k=4)
        .fit(latents, log_stats[:, :1])
        .score(queries["latent"], queries["log_recon_statistics"][:, :1]),
    )


def test_the_far_statistics_guard_adds_only_the_excess_beyond_the_inliers_range() -> None:
    """Brute force against docs/method.md 4.1 (the far-statistics guard): an input whose statistics
    lie among the inliers' keeps the joint vacancy exactly; one far beyond them gets the excess of
    its statistics-only vacancy over the inliers' q-quantile added, in the joint space's units."""
    generator = torch.Generator().manual_seed(4)
    latents = torch.randn(300, 3, generator=generator, dtype=torch.float64)
    log_stats = torch.randn(300, 2, generator=generator, dtype=torch.float64)
    settings = ScoreConfig(
        names=["hole_knn_recon"],
        knn_k=3,
        knn_recon_features=["squared_error", "cross_entropy"],
        knn_recon_guard=0.99,
        knn_recon_guard_features=None,  # the guard on the joint space's own statistics
        knn_recon_guard_weight=None,
    )
    plain_settings = ScoreConfig(
        names=["hole_knn_recon"],
        knn_k=3,
        knn_recon_features=["squared_error", "cross_entropy"],
        knn_recon_guard=None,
    )
    reference = build_reference(latents, "euclidean", settings, log_stats)
    plain = build_reference(latents, "euclidean", plain_settings, log_stats)
    weights = reference.recon_weights
    assert weights is not None and plain.guard is None and reference.guard is not None

    block = log_stats * weights
    own = torch.cdist(block, block).fill_diagonal_(float("inf")).topk(3, largest=False).values.mean(1)
    threshold = torch.quantile(own, 0.99)
    torch.testing.assert_close(reference.guard.threshold, threshold)

    # Query 0: an inlier's statistics (within range); query 1: statistics far beyond every inlier's.
    queries = {
        "latent": latents[:2] + 0.01,
        "log_recon_statistics": torch.stack([log_stats[0], torch.tensor([12.0, -9.0], dtype=torch.float64)]),
    }
    guarded = REFERENCE_SCORES["hole_knn_recon"](queries, reference, settings)
    unguarded = REFERENCE_SCORES["hole_knn_recon"](queries, plain, plain_settings)
    asked = queries["log_recon_statistics"] * weights
    vacancy = torch.cdist(asked, block).topk(3, largest=False).values.mean(1)
    assert vacancy[0] <= threshold < vacancy[1]
    torch.testing.assert_close(guarded[0], unguarded[0])
    torch.testing.assert_close(guarded[1], unguarded[1] + vacancy[1] - threshold)
    # The detector API computes the same score.
    detector = HoleDetector(k=3, recon_guard=0.99).fit(latents, log_stats)
    torch.testing.assert_close(detector.score(queries["latent"], queries["log_recon_statistics"]), guarded)


def test_a_guard_on_statistics_of_its_own_measures_those_and_keeps_the_joint_space() -> None:
    """scores.knn_recon_guard_features: the joint space keeps its statistics (the first recorded
    columns), the guard measures its own, scaled at its own weight; brute force, and the detector
    API with guard_statistics computes the same score."""
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(300, 3, generator=generator, dtype=torch.float64)
    recorded = torch.randn(300, 3, generator=generator, dtype=torch.float64)  # [sq, ce, kl]
    settings = ScoreConfig(
        names=["hole_knn_recon"],
        knn_k=3,
        knn_recon_features=["squared_error", "cross_entropy"],
        knn_recon_guard_features=["kl", "squared_error"],
        knn_recon_guard_weight=2.0,
    )
    assert recorded_recon_features(settings) == ["squared_error", "cross_entropy", "kl"]
    assert guard_columns(settings) == [2, 0]
    reference = build_reference(latents, "euclidean", settings, recorded)
    plain = build_reference(latents, "euclidean", ScoreConfig(knn_k=3, knn_recon_guard=None), recorded[:, :2])
    assert reference.guard is not None and reference.joint is not None and plain.joint is not None
    torch.testing.assert_close(reference.joint, plain.joint)
    own = recorded[:, [2, 0]]
    torch.testing.assert_close(reference.guard.weights, joint_weights(latents, own, 3, 2.0))

    # A query whose KL lies far beyond the inliers' while its joint statistics are an inlier's.
    far = torch.tensor([[recorded[0, 0], recorded[0, 1], 40.0]], dtype=torch.float64)
    queries = {"latent": latents[:1] + 0.01, "log_recon_statistics": far}
    guarded = REFERENCE_SCORES["hole_knn_recon"](queries, reference, settings)
    unguarded = REFERENCE_SCORES["hole_knn_recon"](
        {**queries, "log_recon_statistics": far[:, :2]}, plain, ScoreConfig(knn_k=3, knn_recon_guard=None)
    )
    block = own * reference.guard.weights
    asked = far[:, [2, 0]] * reference.guard.weights
    vacancy = torch.cdist(asked, block).topk(3, largest=False).values.mean(1)
    torch.testing.assert_close(guarded, unguarded + vacancy - reference.guard.threshold)
    assert bool(guarded > unguarded)

    detector = HoleDetector(k=3, recon_guard=0.99, recon_guard_weight=2.0)
    detector.fit(latents, recorded[:, :2], guard_statistics=own)
    torch.testing.assert_close(
        detector.score(queries["latent"], far[:, :2], guard_statistics=far[:, [2, 0]]), guarded
    )
    with pytest.raises(ValueError, match="guard_statistics"):
        detector.score(queries["latent"], far[:, :2])


@pytest.mark.parametrize("quantile", [0.0, 1.0, 1.5, -0.1])
def test_the_guard_must_be_a_quantile(quantile: float) -> None:
    with pytest.raises(ValueError, match=r"'scores.knn_recon_guard'=.* must be a quantile in \(0, 1\)"):
        ScoreConfig(knn_recon_guard=quantile)


@torch.no_grad()
def test_recon_statistics_are_the_logs_of_their_definitions_in_the_configured_order() -> None:
    """Oracles: torch's binary cross-entropy, the recon score, torch's closed-form KL, the
    size of the PNG file Pillow writes of the 8-bit image, and numpy's weighted mean of the pixel
    positions (plus half a pixel) for the centres of mass."""
    from scoring.registry import BATCH_SCORES, ScoreContext

    model = tiny_model()
    images = torch.rand(9, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    images[0] = 0.5  # a constant grey image: its cross-entropy is about 64 log 2 however it decodes
    settings = ScoreConfig(
        names=["hole_knn_recon", "recon"],
        knn_recon_features=[
            "kl", "cross_entropy", "squared_error", "compressed_length",
            "mass_centre_column", "mass_centre_row",
        ],
    )  # fmt: skip
    ctx = ScoreContext(model, images, settings)
    statistics = ctx.recon_statistics()
    assert statistics.shape == (9, 6) and statistics.dtype == torch.float64
    decoded = model.reconstruct(ctx.encoding).double().clamp(1e-6, 1 - 1e-6)
    bce = (
        torch.nn.functional.binary_cross_entropy(decoded, images.double(), reduction="none").flatten(1).sum(1)
    )
    kl = torch.distributions.kl_divergence(ctx.encoding.posterior, model.prior(images))
    torch.testing.assert_close(statistics[:, 0], kl.double().log())
    torch.testing.assert_close(statistics[:, 1], bce.log())
    torch.testing.assert_close(statistics[:, 2], BATCH_SCORES["recon"](ctx).log())
    assert float(bce[0]) >= 64 * torch.log(torch.tensor(2.0)).item() - 1e-6
    png_bits = []
    for image in images:
        buffer = io.BytesIO()
        pixels = (image[0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
        png_bits.append(8.0 * len(buffer.getvalue()))
    torch.testing.assert_close(statistics[:, 3], torch.tensor(png_bits, dtype=torch.float64).log())
    # The model-free statistic: the constant image has the least to explain.
    assert int(statistics[:, 3].argmin()) == 0
    pixels = images[:, 0].double().numpy()
    positions = np.arange(8) + 0.5
    columns = [np.average(positions, weights=image.sum(axis=0)) for image in pixels]
    rows = [np.average(positions, weights=image.sum(axis=1)) for image in pixels]
    torch.testing.assert_close(statistics[:, 4], torch.tensor(np.log(columns)))
    torch.testing.assert_close(statistics[:, 5], torch.tensor(np.log(rows)))


def test_hole_knn_recon_needs_the_reference_statistics_and_a_spread() -> None:
    settings = ScoreConfig(names=["hole_knn_recon"], knn_k=2)
    latents = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    latent_only = build_reference(latents, "euclidean", settings)
    columns = {"latent": latents, "log_recon_statistics": torch.zeros(10, 1)}
    with pytest.raises(ValueError, match="reconstruction statistics"):
        REFERENCE_SCORES["hole_knn_recon"](columns, latent_only, settings)
    spread_in_one = torch.stack([torch.arange(10.0), torch.zeros(10)], dim=1)
    with pytest.raises(ValueError, match=r"interquartile ranges \[4.5, 0.0\]"):
        build_reference(latents, "euclidean", settings, spread_in_one)
