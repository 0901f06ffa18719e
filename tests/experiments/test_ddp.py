"""CPU DDP (gloo, 2 processes) through the real command lines: exact metrics, one set of outputs.

Lightning's subprocess launcher re-runs the same command for rank 1, so these tests start the CLI
as a subprocess, the way a user does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from scoring.metrics import OOD_METRIC_NAMES
from tests.helpers import flat_metrics, load_results, one_thread, run_command, tiny_overrides

pytestmark = pytest.mark.slow

SCORES = "[neg_elbo,iwae_nll,recon,latent_norm,hole_posterior,hole_knn]"
DDP = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
# 151 inlier and 151 outlier test images: odd, so the distributed sampler pads one duplicate per
# set; batches of 40 divide neither the 151 nor the 76 that each process gets.
UNEVEN = {"data.max_eval_samples": "151", "data.eval_batch_size": "40"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """One tiny model, trained in a single process."""
    out_dir = tmp_path_factory.mktemp("ddp_train") / "run"
    settings = {
        "scores.names": SCORES,
        "scores.val_every_n_epochs": "0",
        "data.max_train_samples": "300",
        **UNEVEN,
    }
    overrides = tiny_overrides(
        out_dir,
        **settings,
        **{"logger.mode": "disabled", "plots.enabled": "false", "trainer.accelerator": "cpu"},
    )
    with one_thread():
        assert train_cli.run_cli(train_cli.main, overrides) == 0
    return out_dir / "checkpoints" / "last.ckpt"


def test_two_process_evaluate_equals_one_process(checkpoint: Path, tmp_path: Path) -> None:
    single, distributed = tmp_path / "single", tmp_path / "ddp"
    common = [f"ckpt={checkpoint}", *(f"{key}={value}" for key, value in UNEVEN.items())]
    with one_thread():
        assert (
            evaluate_cli.run_cli(
                evaluate_cli.main,
                [*common, f"out_dir={single}", "trainer.accelerator=cpu", "logger.mode=disabled"],
            )
            == 0
        )
    # The DDP run also logs to W&B and draws the dashboard, to show that rank 1 writes nothing.
    finished = run_command(
        "experiments.evaluate",
        [*common, f"out_dir={distributed}", "logger.mode=offline", "plots.enabled=true", *DDP],
    )
    assert finished.returncode == 0, finished.stderr[-3000:]

    one, two = load_results(single), load_results(distributed)
    assert two["data"]["sizes"] == one["data"]["sizes"] == {"fashion_mnist": 151, "mnist": 151}
    expected, measured = flat_metrics(one), flat_metrics(two)
    assert len(expected) == 6 * len(OOD_METRIC_NAMES) and set(measured) == set(expected)
    for key, value in expected.items():
        assert measured[key] == pytest.approx(value, abs=1e-6), key

    # Per-sample scores too: same samples, same order, no padding duplicate left in.
    one_scores, two_scores = np.load(single / "scores.npz"), np.load(distributed / "scores.npz")
    np.testing.assert_array_equal(two_scores["index"], one_scores["index"])
    np.testing.assert_array_equal(two_scores["dataset"], one_scores["dataset"])
    for name in ("neg_elbo", "iwae_nll", "recon", "latent_norm", "hole_posterior", "hole_knn"):
        np.testing.assert_allclose(
            two_scores[f"score_{name}"], one_scores[f"score_{name}"], rtol=1e-6, atol=1e-6
        )

    # Rank 1 wrote nothing of its own: one results.json, one W&B run, no second out_dir.
    written = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("results.json"))
    assert written == [Path("ddp/results.json"), Path("single/results.json")]
    assert len(list((distributed / "wandb").glob("offline-run-*"))) == 1
    assert list((distributed / "plots").rglob("*.png")) and not (single / "plots").exists()
    assert finished.stdout.count("Results written to") == 1


def test_two_process_training_writes_one_run(tmp_path: Path, data_dir: Path) -> None:
    out_dir = tmp_path / "run"
    # Validation keeps its OOD evaluation, so the gather also runs inside `fit`.
    settings = {
        "scores.names": "[neg_elbo,hole_knn]",
        "data.max_train_samples": "300",
        "data.max_eval_samples": "100",
    }
    overrides = tiny_overrides(
        out_dir,
        **settings,
        **{"logger.mode": "disabled", "plots.enabled": "false", "scores.knn_reference_size": "200"},
    )
    finished = run_command("experiments.train", [*overrides, *DDP])
    assert finished.returncode == 0, finished.stderr[-3000:]

    results = load_results(out_dir)
    assert results["data"]["sizes"] == {"fashion_mnist": 100, "mnist": 100}
    assert set(results["metrics"]["mnist"]) == {"neg_elbo", "hole_knn"}
    assert sorted(path.name for path in (out_dir / "checkpoints").iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    assert (out_dir / "config.yaml").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]
    assert finished.stdout.count("Results written to") == 1
