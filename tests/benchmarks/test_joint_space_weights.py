"""The weight analysis scores a run exactly as its own test and the selection rule did: at the
default weight its AUROCs are the run's results.json values and the study's selection-suite values,
and its two limits are the latent and the statistics alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from benchmarks import compact_study, joint_space_weights
from benchmarks.common import default_config
from experiments import train as train_cli
from scoring import joint, latent_activity
from tests.helpers import QUICK, one_thread, tiny_overrides


def refuse(*arguments: Any, **keywords: Any) -> Tensor:
    raise joint.DegenerateReferenceError("collapsed")


def study_form_of_the_default(monkeypatch: pytest.MonkeyPatch) -> str:
    """The default's joint space without the guard, as a hole-score candidate of the study (the
    study's own when it has one; since round 11 it has none, and the test adds it)."""
    scores = default_config().scores
    unguarded = {
        "knn_k": scores.knn_k,
        "knn_recon_weight": scores.knn_recon_weight,
        "knn_recon_features": list(scores.knn_recon_features),
        "knn_recon_guard": None,
    }
    for name, (_, settings) in compact_study.HOLE_SCORES.items():
        if settings == unguarded:
            return name
    monkeypatch.setitem(compact_study.HOLE_SCORES, "default_unguarded", ("hole_knn_recon", unguarded))
    return "default_unguarded"


def test_the_default_weight_reproduces_the_runs_own_test_aurocs(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    weight = float(default_config().scores.knn_recon_weight)
    label = f"{weight:g}"  # the analysis keys each weight by its %g form
    overrides = tiny_overrides(
        run_dir,
        **{
            **QUICK,
            "model.variant": "alexandroff",
            "model.lipschitz": "null",
            "data.outliers": "[mnist,constant]",
            "scores.names": "[hole_knn_recon]",
            "scores.knn_k": "3",
            "scores.knn_reference_size": "null",
            "scores.knn_recon_guard": "null",  # the analysis is of the unguarded joint space
        },
    )
    with one_thread():
        assert train_cli.run_cli(train_cli.main, overrides) == 0
        weights = [0.0, weight, 1e9, math.inf]
        result = joint_space_weights.run_aurocs(run_dir, weights, max_eval_samples=150)

    own = json.loads((run_dir / "results.json").read_text())["metrics"]
    for outlier in ("mnist", "constant"):
        assert result["test"][label][outlier] == pytest.approx(
            own[outlier]["hole_knn_recon"]["auroc"], abs=1e-12
        )
        # A huge weight ranks like the statistics alone.
        assert result["test"]["1e+09"][outlier] == pytest.approx(result["test"]["inf"][outlier], abs=1e-9)
    # The selection suite is the rule's: the study's select stage gives the same AUROCs.
    with one_thread():
        form = study_form_of_the_default(monkeypatch)
        selected = compact_study.selection_metrics(run_dir, [form])
    assert selected["auroc"][form] == pytest.approx(result["selection"][label], abs=1e-12)
    assert result["selection"]["0"] != result["selection"]["inf"]

    # The study's collapse check (training inliers only) passes a healthy model, and flags one
    # whose joint scales cannot be set, or whose latents vary less than the threshold (round 9).
    healthy = compact_study.collapse_check(run_dir)
    assert not healthy["collapsed"] and healthy["latent_variance"] > latent_activity.COLLAPSED_VARIANCE
    monkeypatch.setattr(latent_activity, "COLLAPSED_VARIANCE", healthy["latent_variance"] * 1.01)
    assert compact_study.collapse_check(run_dir)["collapsed"]
    monkeypatch.undo()
    monkeypatch.setattr(joint, "joint_weights", refuse)
    refused = compact_study.collapse_check(run_dir)
    assert refused["collapsed"] and refused["unscalable"]

    # The report: one row per (model, inlier set, outlier set), the suite's worst case, a figure.
    summary = {group: joint_space_weights.summarise([result], group) for group in ("selection", "test")}
    model = result["model"]
    worst = summary["selection"][f"{model}: fashion_mnist worst case"][label]
    assert worst["mean"] == min(result["selection"][label].values()) and worst["n"] == 1
    table = joint_space_weights.markdown(summary, ["0", label, "inf"], 1)
    cells = " | ".join(f"{result['test'][key]['constant']:.4f} ± 0.0000" for key in ("0", label, "inf"))
    assert f"| {model}: fashion_mnist -> constant | {cells} |" in table
    figure = joint_space_weights.plot(summary, ["0", label, "inf"], tmp_path / "weights.png")
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_weight_zero_is_the_latent_alone() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = {
        "latent": torch.randn(200, 5, generator=generator, dtype=torch.float64),
        "log_recon_statistics": torch.randn(200, 3, generator=generator, dtype=torch.float64),
    }
    queries = {
        "latent": torch.randn(50, 5, generator=generator, dtype=torch.float64),
        "log_recon_statistics": 100 * torch.randn(50, 3, generator=generator, dtype=torch.float64),
    }
    latent_only = torch.cdist(queries["latent"], reference["latent"]).topk(3, largest=False).values.mean(1)
    scores = joint_space_weights.weighted_scores(reference, queries, 3, 0.0)
    torch.testing.assert_close(scores.double(), latent_only)
