"""End to end: a real Trainer fit + test on slices of Fashion-MNIST vs MNIST, then evaluate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from tests.helpers import tiny_overrides

METRIC_KEYS = {"auroc", "aupr_in", "aupr_out", "fpr95", "fpr80", "fpr95_in"}
RUN_WALL_SECONDS: dict[Path, float] = {}
SCORES = ["neg_elbo", "iwae_nll", "recon", "latent_norm", "hole_posterior", "hole_knn"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out_dir = tmp_path_factory.mktemp("run") / "out"
    overrides = tiny_overrides(
        out_dir,
        **{
            "scores.names": "[" + ",".join(SCORES) + "]",
            "model.variant": "alexandroff_lipschitz",
            "model.lipschitz": "1.0",
        },
    )
    started = time.perf_counter()
    assert train_cli.run_cli(train_cli.main, overrides) == 0
    RUN_WALL_SECONDS[out_dir] = time.perf_counter() - started
    return out_dir


def load_results(out_dir: Path) -> dict:
    return json.loads((out_dir / "results.json").read_text())


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, level: float) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(fpr[np.searchsorted(tpr, level, side="left")])


def assert_metrics_match_sklearn(out_dir: Path) -> None:
    results = load_results(out_dir)
    arrays = np.load(out_dir / "scores.npz")
    names = list(arrays["dataset_names"])
    for outlier, by_score in results["metrics"].items():
        selected = (arrays["dataset"] == 0) | (arrays["dataset"] == names.index(outlier))
        labels = (arrays["dataset"][selected] != 0).astype(int)
        for score, metrics in by_score.items():
            values = arrays[f"score_{score}"][selected]
            assert set(metrics) == METRIC_KEYS
            assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, values), abs=1e-6)
            assert metrics["aupr_out"] == pytest.approx(average_precision_score(labels, values), abs=1e-6)
            assert metrics["aupr_in"] == pytest.approx(average_precision_score(1 - labels, -values), abs=1e-6)
            assert metrics["fpr95"] == pytest.approx(fpr_at_tpr(labels, values, 0.95), abs=1e-6)
            assert metrics["fpr80"] == pytest.approx(fpr_at_tpr(labels, values, 0.80), abs=1e-6)
            # The literature's FPR95: inliers positive, the outliers accepted at 95% inlier recall.
            assert metrics["fpr95_in"] == pytest.approx(fpr_at_tpr(1 - labels, -values, 0.95), abs=1e-6)


def test_results_json_has_every_key(trained_run: Path) -> None:
    results = load_results(trained_run)
    assert {"experiment", "seed", "model", "metrics", "timing", "versions"} <= set(results)
    assert results["experiment"] == "fmnist_vs_mnist"
    assert set(results["model"]) >= {
        "variant",
        "latent_dim",
        "lipschitz",
        "certified_lipschitz",
        "empirical_lipschitz",
        "latent_radius_bound",
    }
    assert results["model"]["variant"] == "alexandroff_lipschitz"
    # The two bounds bracket the true constant of the mean map.
    assert 0 < results["model"]["empirical_lipschitz"] <= results["model"]["certified_lipschitz"]
    assert results["model"]["certified_lipschitz"] <= results["model"]["lipschitz"] * (1 + 1e-3)
    assert results["bound_violations"] == {"fashion_mnist": 0, "mnist": 0}
    assert list(results["metrics"]) == ["mnist"]
    assert set(results["metrics"]["mnist"]) == set(SCORES)
    assert results["data"]["sizes"] == {"fashion_mnist": 150, "mnist": 150}
    # Training time is a part of the run, never more (Lightning's Timer double-counted it).
    assert 0 < results["timing"]["train_seconds"] < RUN_WALL_SECONDS[trained_run]
    for metrics in results["metrics"]["mnist"].values():
        assert all(0.0 <= value <= 1.0 for value in metrics.values())


def test_results_report_the_inlier_latents_activity(trained_run: Path) -> None:
    model = load_results(trained_run)["model"]
    arrays = np.load(trained_run / "scores.npz")
    inliers = arrays["latent"][arrays["dataset"] == 0].astype(np.float64)
    variance = inliers.var(axis=0, ddof=1)
    assert model["latent_variance"] == pytest.approx(variance.sum(), rel=1e-5)
    assert model["active_units"] == (variance > 1e-2).sum()
    assert inliers.shape[1] == model["latent_dim"] + 1  # the sphere's unit vectors in R^(d+1)


def test_metrics_equal_sklearn_recomputed_from_scores_npz(trained_run: Path) -> None:
    assert_metrics_match_sklearn(trained_run)


def test_checkpoints_and_wandb_offline_run_are_written(trained_run: Path) -> None:
    checkpoints = sorted((trained_run / "checkpoints").glob("*.ckpt"))
    assert [path.name for path in checkpoints] == ["epoch000.ckpt", "last.ckpt"]
    runs = list((trained_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "the offline run holds no .wandb data file"
    assert (trained_run / "config.yaml").is_file()


def test_evaluate_scores_new_outlier_sets_from_the_checkpoint(
    trained_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "eval"
    outliers = f"[mnist,hflip,gaussian_noise,uniform_noise,constant,digits={data_dir / 'mnist'}]"
    code = evaluate_cli.run_cli(
        evaluate_cli.main,
        [
            f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}",
            f"out_dir={out_dir}",
            f"data.outliers={outliers}",
            "logger.mode=disabled",
        ],
    )
    assert code == 0
    results = load_results(out_dir)
    assert list(results["metrics"]) == [
        "mnist",
        "hflip",
        "gaussian_noise",
        "uniform_noise",
        "constant",
        "digits",
    ]
    # The certified latent ball holds every encoding: inliers, outliers and noise images.
    assert set(results["bound_violations"]) == {"fashion_mnist", *results["metrics"]}
    assert set(results["bound_violations"].values()) == {0}
    # The IDX directory given by path is the same MNIST test set as the named one.
    assert results["metrics"]["digits"] == results["metrics"]["mnist"]
    assert_metrics_match_sklearn(out_dir)


def test_failed_run_keeps_earlier_outputs(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (trained_run / "results.json").read_bytes()
    checkpoints = sorted(path.name for path in (trained_run / "checkpoints").iterdir())
    code = train_cli.run_cli(train_cli.main, tiny_overrides(trained_run))
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (trained_run / "results.json").read_bytes() == before
    assert sorted(path.name for path in (trained_run / "checkpoints").iterdir()) == checkpoints


def test_nan_loss_stops_with_a_clear_error(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_cli.run_cli(
        train_cli.main, tiny_overrides(tmp_path / "nan", **{"optim.lr": "1e30", "logger.mode": "disabled"})
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "Training diverged" in error and "optim.lr" in error
    assert not (tmp_path / "nan" / "results.json").exists()


def test_missing_outlier_path_names_the_path(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_cli.run_cli(
        train_cli.main, tiny_overrides(tmp_path / "out", **{"data.outliers": "[/no/such/dir]"})
    )
    assert code == 2
    assert "/no/such/dir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
