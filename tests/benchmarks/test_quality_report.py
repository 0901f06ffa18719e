"""The quality-table command and the README report: real trials, exact aggregation, README in sync."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from benchmarks import quality, report
from experiments.sweep import Trial
from tests.helpers import tiny_overrides


def synthetic_trial(variant: str, seed: int, auroc: float) -> quality.QualityTrial:
    trial = Trial(f"mnist_{variant}_seed{seed}", {}, Path("unused"), status="completed")
    trial.metrics = {
        "test/fashion_mnist/hole_knn/auroc": auroc,
        "test/fashion_mnist/hole_knn/fpr95": 1 - auroc,
        "test/fashion_mnist/hole_knn/aupr_out": 0.5,  # not a table metric
        "model/certified_lipschitz": 1.0,  # not a metric of a score
    }
    return quality.QualityTrial("mnist", variant, seed, trial)


def test_aggregate_takes_mean_and_std_over_seeds_per_variant() -> None:
    trials = [synthetic_trial("gaussian", seed, value) for seed, value in enumerate([0.7, 0.8, 0.9])]
    trials.append(synthetic_trial("alexandroff", 0, 0.95))
    table = quality.aggregate(trials)
    cell = table["mnist"]["fashion_mnist"]["hole_knn"]["gaussian"]["auroc"]
    assert cell == {
        "mean": pytest.approx(0.8),
        "std": pytest.approx(statistics.pstdev([0.7, 0.8, 0.9])),
        "seeds": 3,
    }
    assert set(table["mnist"]["fashion_mnist"]["hole_knn"]["gaussian"]) == {"auroc", "fpr95"}
    text = quality.markdown(table, ["gaussian", "alexandroff", "lipschitz"])
    assert "| mnist | fashion_mnist | `hole_knn` | 0.800 ± 0.082 | 0.950 ± 0.000 | n/a |" in text
    assert "**FPR95** (mean ± std over seeds; lower is better)" in text


def test_every_variant_seed_and_benchmark_is_a_trial_with_its_own_settings(tmp_path: Path) -> None:
    trials = quality.make_trials(3, tmp_path, list(quality.VARIANTS_BY_NAME), list(quality.BENCHMARKS))
    assert len(trials) == 3 * len(quality.VARIANTS_BY_NAME) * len(quality.BENCHMARKS)
    assert len({item.trial.out_dir for item in trials}) == len(trials)
    command = quality.trial_command(trials[0], ["trainer.max_epochs=1"])
    assert command[-3:] == ["trainer.max_epochs=1", "seed=0", f"out_dir={trials[0].trial.out_dir}"]
    lipschitz = next(item for item in trials if item.variant == "lipschitz")
    assert "model.lipschitz=1.0" in quality.trial_command(lipschitz, [])
    mnist_outliers = quality.BENCHMARKS["fashion_mnist"][-1]
    assert all(name in mnist_outliers for name in ["mnist", *quality.TRANSFORMS])


def test_the_command_runs_real_trials_and_writes_the_table(tmp_path: Path, data_dir: Path) -> None:
    overrides = [item for item in tiny_overrides(tmp_path) if not item.startswith("out_dir=")]
    arguments = ["--seeds", "1", "--jobs", "1", "--variants", "alexandroff", "--benchmarks", "mnist"]
    arguments += ["--out-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    arguments += [*overrides, "scores.regret_max_samples=3", "scores.regret_steps=2"]
    quality.main(arguments)

    result = json.loads((tmp_path / "results" / "quality.json").read_text())
    (trial,) = result["trials"]
    assert trial["status"] == "completed", (
        tmp_path / "runs" / "logs" / "mnist_alexandroff_seed0.log"
    ).read_text()[-2000:]
    row = result["table"]["mnist"]["fashion_mnist"]
    assert set(row) == set(quality.SCORES)
    auroc = row["hole_knn"]["alexandroff"]["auroc"]
    assert 0.0 <= auroc["mean"] <= 1.0 and auroc["std"] == 0.0 and auroc["seeds"] == 1
    assert (
        f"| mnist | fashion_mnist | `hole_knn` | {auroc['mean']:.3f} ± 0.000 |"
        in (tmp_path / "results" / "quality.md").read_text()
    )
    # The trained model's certificate, Lipschitz lower bound and collapse diagnostics, as the run has them.
    model = json.loads((tmp_path / "runs" / "mnist_alexandroff_seed0" / "results.json").read_text())["model"]
    assert trial["model"] == model
    cells = " | ".join(f"{model[name]:.4g}" for name in quality.MODEL_COLUMNS)
    assert f"| mnist | `alexandroff` | 0 | {cells} |" in (tmp_path / "results" / "quality.md").read_text()

    # A second run finds the finished trial and does not train it again.
    quality.main(arguments)
    again = json.loads((tmp_path / "results" / "quality.json").read_text())
    assert again["trials"][0]["status"] == "skipped" and again["trials_run"] == 0
    assert again["table"] == result["table"]

    # On a fresh machine (no run folders) the trial recorded in quality.json is not trained again.
    (tmp_path / "runs").rename(tmp_path / "runs_of_an_earlier_machine")
    quality.main(arguments)
    carried = json.loads((tmp_path / "results" / "quality.json").read_text())
    assert carried["trials"][0]["status"] == "recorded" and carried["trials_run"] == 0
    assert carried["table"] == result["table"]
    assert carried["trials"][0]["timing"] == result["trials"][0]["timing"]
    (tmp_path / "runs_of_an_earlier_machine").rename(tmp_path / "runs")

    # --whole-test scores the finished trial again on every test image, without training.
    whole = [
        *arguments[: arguments.index(overrides[0])],
        "--whole-test",
        "--whole-test-scores",
        "hole_knn",
        "recon",
    ]
    quality.main(whole)
    scored = json.loads((tmp_path / "results" / "quality_whole_test.json").read_text())
    (evaluation,) = scored["trials"]
    assert evaluation["status"] == "completed", (
        tmp_path / "runs" / "logs" / "mnist_alexandroff_seed0_whole_test_sets.log"
    ).read_text()[-2000:]
    results = json.loads(
        (
            tmp_path
            / "runs"
            / "mnist_alexandroff_seed0"
            / quality.WHOLE_TEST_DIR
            / "hole_knn+recon"
            / "results.json"
        ).read_text()
    )
    assert results["data"]["sizes"] == {"mnist": 10_000, "fashion_mnist": 10_000}  # not the trial's 150
    whole_row = scored["table"]["mnist"]["fashion_mnist"]
    assert set(whole_row) == {"hole_knn", "recon"}
    assert set(whole_row["recon"]["alexandroff"]) == set(quality.METRICS)
    assert (
        whole_row["recon"]["alexandroff"]["auroc"]["mean"]
        == results["metrics"]["fashion_mnist"]["recon"]["auroc"]
    )
    assert (
        "**FPR95-In** (mean ± std over seeds; lower is better)"
        in (tmp_path / "results" / "quality_whole_test.md").read_text()
    )
    with pytest.raises(SystemExit) as refused:  # overrides would be silently ignored: refused
        quality.main([*whole, "trainer.max_epochs=2"])
    assert refused.value.code == 2


def test_mean_over_outlier_sets_averages_every_set_and_marks_gaps() -> None:
    def cell(value: float) -> dict[str, Any]:
        return {"auroc": {"mean": value, "std": 0.0, "seeds": 3}}

    table = {
        "fashion_mnist": {"mnist": {"hole_knn": {"gaussian": cell(0.9), "lipschitz": cell(0.5)}}},
        "mnist": {"fashion_mnist": {"hole_knn": {"gaussian": cell(0.6)}}},
    }
    result = {"protocol": {"variants": {"gaussian": [], "lipschitz": []}}, "table": table}
    text = report.mean_auroc_over_outlier_sets(result)
    assert "over the 2 outlier sets" in text
    assert "| `hole_knn` | 0.750 | n/a |" in text  # lipschitz lacks a set: no mean of one set
    assert "`recon`" not in text  # measured for no variant: no row


def test_readme_tables_are_the_measured_results() -> None:
    text = report.README.read_text()
    assert report.render(text) == text, "run `python -m benchmarks.report` after measuring"


def test_report_names_a_missing_block() -> None:
    with pytest.raises(ValueError, match="report:quality"):
        report.render("# A README without markers\n")


def test_a_recorded_trial_counts_only_with_the_same_settings_and_config(tmp_path: Path) -> None:
    trials = quality.make_trials(1, tmp_path, ["gaussian"], ["mnist"])
    for item in trials:
        item.trial.command = quality.trial_command(item, ["trainer.max_epochs=1"])
    settings = quality.trial_settings(trials[0].trial.command)
    assert settings[-2:] == ["trainer.max_epochs=1", "seed=0"]  # the run folder is not a setting
    entry: dict[str, Any] = {"benchmark": "mnist", "variant": "gaussian", "seed": 0, "status": "completed"}
    entry |= {"settings": settings, "metrics": {"x": 1.0}}
    previous = tmp_path / "quality.json"
    cases: list[tuple[dict[str, Any], bool]] = [
        ({}, True),
        ({"protocol": {"config_sha256": "another config"}}, False),
        ({"settings": [*settings[:-2], "seed=0"]}, False),
        ({"status": "failed"}, False),
    ]
    for changed, taken in cases:
        for item in trials:
            item.record, item.trial.status = None, "pending"
        protocol = changed.get("protocol", {"config_sha256": quality.config_sha256()})
        trial_changes = {key: value for key, value in changed.items() if key != "protocol"}
        previous.write_text(json.dumps({"protocol": protocol, "trials": [entry | trial_changes]}))
        remaining = quality.take_recorded(trials, previous)
        assert (remaining == []) is taken, changed
        assert (trials[0].trial.status == "recorded") is taken
