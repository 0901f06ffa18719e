"""The local, offline sweep runner on a real 2 x 2 grid of tiny trainings (L in {1, inf} x 2 seeds)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from matplotlib.image import imread

from experiments import sweep as sweep_cli
from scoring.metrics import OOD_METRIC_NAMES
from tests.helpers import tiny_overrides

pytestmark = pytest.mark.slow

COMMAND = (
    '["${env}", "${interpreter}", -m, experiments.train, experiments/configs/fmnist_vs_mnist.yaml, '
    '"${args_no_hyphens}"]'
)
GRID = f"""
name: tiny
program: experiments/train.py
method: grid
metric: {{name: test/mnist/hole_knn/auroc, goal: maximize}}
parameters:
  model.lipschitz: {{values: [1.0, .inf]}}
  seed: {{values: [0, 1]}}
  model.variant: {{value: alexandroff_lipschitz}}
command: {COMMAND}
"""
TRIALS = ["lipschitz-1.0_seed-0", "lipschitz-1.0_seed-1", "lipschitz-inf_seed-0", "lipschitz-inf_seed-1"]


def trial_overrides() -> list[str]:
    """Tiny-run settings for every trial (the sweep itself sets out_dir per trial)."""
    extra = {
        "data.max_train_samples": "200",
        "data.max_eval_samples": "100",
        "scores.knn_reference_size": "150",
        "scores.names": "[neg_elbo,hole_knn]",
        "scores.val_every_n_epochs": "0",
        "model.certify_iterations": "5",
        "logger.mode": "disabled",
        "plots.enabled": "false",
    }
    swept_here = ("out_dir=", "model.lipschitz=", "model.variant=")  # the sweep file sets these per trial
    return [item for item in tiny_overrides(Path("unused"), **extra) if not item.startswith(swept_here)]


def run_sweep(sweep_file: Path, sweep_dir: Path) -> tuple[int, str]:
    output = io.StringIO()
    # Trials inherit the environment: one OpenMP thread each (see tests/test_ddp.py).
    with contextlib.redirect_stdout(output), mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        code = sweep_cli.run_cli(
            sweep_cli.main, [str(sweep_file), f"sweep_dir={sweep_dir}", *trial_overrides()]
        )
    return code, output.getvalue()


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / sweep_cli.SUMMARY, newline="") as stream:
        return list(csv.DictReader(stream))


@dataclass
class SweepRun:
    sweep_file: Path
    sweep_dir: Path
    output: str
    rows: list[dict[str, str]]  # the summary as the first run wrote it


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> SweepRun:
    root = tmp_path_factory.mktemp("sweep")
    sweep_file = root / "tiny.yaml"
    sweep_file.write_text(GRID)
    code, output = run_sweep(sweep_file, root / "out")
    assert code == 0, output
    return SweepRun(sweep_file, root / "out", output, read_summary(root / "out"))


def test_summary_has_one_row_per_trial_with_parameters_and_metrics(sweep_run: SweepRun) -> None:
    rows = sweep_run.rows
    assert [row["trial"] for row in rows] == TRIALS
    assert all(row["status"] == "completed" and row["returncode"] == "0" for row in rows)
    assert [(row["model.lipschitz"], row["seed"]) for row in rows] == [
        ("1.0", "0"),
        ("1.0", "1"),
        ("inf", "0"),
        ("inf", "1"),
    ]
    assert {row["model.variant"] for row in rows} == {"alexandroff_lipschitz"}
    metric_columns = [column for column in rows[0] if column.startswith("test/")]
    expected = {
        f"test/mnist/{score}/{metric}" for score in ("neg_elbo", "hole_knn") for metric in OOD_METRIC_NAMES
    }
    assert set(metric_columns) == expected
    assert all(0.0 <= float(row[column]) <= 1.0 for row in rows for column in metric_columns)
    # The certificate exists for L = 1 only; L = inf is the unconstrained encoder.
    assert [bool(row["model/certified_lipschitz"]) for row in rows] == [True, True, False, False]
    # Different seeds train different models.
    assert rows[0]["test/mnist/hole_knn/auroc"] != rows[1]["test/mnist/hole_knn/auroc"]
    for name in TRIALS:
        assert (sweep_run.sweep_dir / name / "results.json").is_file()
        assert (sweep_run.sweep_dir / "logs" / f"{name}.log").is_file()


def test_one_nonblank_plot_per_metric(sweep_run: SweepRun) -> None:
    metric_columns = [column for column in sweep_run.rows[0] if column.startswith(("test/", "model/"))]
    plots = sorted((sweep_run.sweep_dir / "plots").glob("*.png"))
    assert len(plots) == len(metric_columns) == 2 * len(OOD_METRIC_NAMES) + 2
    for plot in plots:
        pixels = imread(plot)[..., :3]
        assert pixels.std() > 0.05, f"{plot.name} looks blank"
        assert (pixels < 0.5).mean() > 0.005, f"{plot.name} has almost nothing drawn"


def test_rerun_starts_no_finished_trial(sweep_run: SweepRun) -> None:
    logs = {path: path.stat().st_mtime_ns for path in (sweep_run.sweep_dir / "logs").glob("*.log")}
    results = {path: path.stat().st_mtime_ns for path in sweep_run.sweep_dir.glob("*/results.json")}
    code, output = run_sweep(sweep_run.sweep_file, sweep_run.sweep_dir)
    assert code == 0
    assert output.count("skipped (results.json exists)") == 4 and "completed" not in output
    assert {path: path.stat().st_mtime_ns for path in logs} == logs
    assert {path: path.stat().st_mtime_ns for path in results} == results
    rows = read_summary(sweep_run.sweep_dir)
    assert [row["status"] for row in rows] == ["skipped"] * 4
    # The metrics of skipped trials are read back from their results.json.
    assert [row["test/mnist/hole_knn/auroc"] for row in rows] == [
        row["test/mnist/hole_knn/auroc"] for row in sweep_run.rows
    ]


def test_failed_trial_is_recorded_and_the_sweep_goes_on(sweep_run: SweepRun, tmp_path: Path) -> None:
    # -1 is not a valid Lipschitz constant; the second trial (L = 1, seed 0) comes after it.
    sweep_file = tmp_path / "failing.yaml"
    sweep_file.write_text(GRID.replace("[1.0, .inf]", "[-1, 1.0]").replace("[0, 1]", "[0]"))
    code, output = run_sweep(sweep_file, sweep_run.sweep_dir)
    assert code == 2
    failed, after = read_summary(sweep_run.sweep_dir)
    assert (failed["trial"], failed["status"], failed["returncode"]) == ("lipschitz--1_seed-0", "failed", "2")
    assert "model.lipschitz=-1.0 must be a positive number" in failed["error"]
    assert (
        "model.lipschitz=-1.0 must be a positive number"
        in (sweep_run.sweep_dir / "logs" / "lipschitz--1_seed-0.log").read_text()
    )
    assert not (sweep_run.sweep_dir / "lipschitz--1_seed-0" / "results.json").exists()
    assert (after["trial"], after["status"]) == ("lipschitz-1.0_seed-0", "skipped")
    assert after["test/mnist/hole_knn/auroc"] == sweep_run.rows[0]["test/mnist/hole_knn/auroc"]
    assert "failed (exit 2)" in output


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_only_grid_sweeps_run_locally(
    method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_file = tmp_path / "search.yaml"
    sweep_file.write_text(GRID.replace("method: grid", f"method: {method}"))
    assert sweep_cli.run_cli(sweep_cli.main, [str(sweep_file)]) == 2
    error = capsys.readouterr().err
    assert (
        f"method: {method}" in error and "only method: grid runs locally" in error and "wandb agent" in error
    )


def test_overrides_of_swept_parameters_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(GRID)
    assert sweep_cli.run_cli(sweep_cli.main, [str(sweep_file), "seed=3"]) == 2
    assert "seed=3" in capsys.readouterr().err


def test_infinity_is_the_labelled_last_point_of_the_axis() -> None:
    assert sweep_cli.axis_values([float("inf"), 1.0, 0.5]) == [0.5, 1.0, float("inf")]
    assert sweep_cli.axis_values(["inf", 2.0]) == [2.0, "inf"]
    assert [sweep_cli.axis_label(value) for value in (2.0, "inf", float("inf"))] == [
        "2.0",
        "∞ (unconstrained)",
        "∞ (unconstrained)",
    ]


def test_a_trial_killed_before_its_first_checkpoint_is_set_aside_and_rerun(tmp_path: Path) -> None:
    """A re-run must not stop at a half-started trial folder, and must not delete it either."""
    out_dir = tmp_path / "trial"
    out_dir.mkdir()
    (out_dir / "config.yaml").write_text("seed: 0\n")
    trial = sweep_cli.Trial("trial", {}, out_dir)
    sweep_cli.run_trial(trial, [sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "log.txt")
    assert trial.status == "failed" and trial.returncode == 3
    (aside,) = tmp_path.glob("trial.interrupted-*")
    assert (aside / "config.yaml").read_text() == "seed: 0\n"
