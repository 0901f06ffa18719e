"""The compact-latent study trains what each candidate says (every spec key reaches the config), and
its test tables never put two forms of one score in a row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import compact_study
from experiments.config import TrainConfig, load_config, split_cli_args
from scoring.config import ScoreConfig


@pytest.mark.parametrize("candidate", list(compact_study.CANDIDATES))
def test_candidate_command_builds_the_config_of_its_spec(candidate: str, tmp_path: Path) -> None:
    (run,) = [r for r in compact_study.make_runs([candidate], 1, tmp_path, []) if r.benchmark == "mnist"]
    config_path, overrides = split_cli_args(run.trial.command[3:])
    config = load_config(TrainConfig, config_path, overrides)
    spec = compact_study.CANDIDATES[candidate]
    assert config.model.variant == spec["variant"]
    assert config.model.lipschitz == spec["lipschitz"]
    assert config.trainer.max_epochs == spec["epochs"]
    assert config.model.latent_dim == spec["latent_dim"]
    assert config.optim.kl_warmup_epochs == spec["kl_warmup_epochs"]
    for key, value in spec.get("extra", {}).items():
        section, name = key.split(".")
        assert config[section][name] == value
    assert config.data.inlier == "mnist"
    assert config.out_dir == str(run.trial.out_dir)


def write_results(run: compact_study.StudyRun, scores: dict[str, Any], aurocs: dict[str, float]) -> None:
    """A results.json as a training run writes it: the scores config of its day and test metrics."""
    run.trial.out_dir.mkdir(parents=True)
    metrics = {"mnist": {score: {"auroc": value} for score, value in aurocs.items()}}
    results = {"config": {"scores": scores}, "metrics": metrics, "model": {}}
    (run.trial.out_dir / "results.json").write_text(json.dumps(results))


def test_test_table_keeps_each_score_form_in_its_own_row(tmp_path: Path) -> None:
    old_run, new_run = [
        run
        for run in compact_study.make_runs(["alexandroff_e10", "alexandroff_d32_e10"], 1, tmp_path, [])
        if run.benchmark == "fashion_mnist"
    ]
    # Round 1's record: no statistic key (the relative form), no hole_knn_recon.
    write_results(old_run, {"knn_k": 100}, {"hole_knn": 0.8, "recon": 0.6})
    winner_settings = compact_study.HOLE_SCORES["hole_knn_recon_ce_kl_w2"][1]
    new_scores = {"knn_statistic": "mean_distance", **winner_settings}
    write_results(new_run, new_scores, {"hole_knn": 0.9, "hole_knn_recon": 0.95, "recon": 0.7})

    by_score = compact_study.test_table([old_run, new_run])["fashion_mnist"]["mnist"]

    assert by_score["hole_knn k=100 relative"] == {"alexandroff_e10": {"mean": 0.8, "std": 0.0, "seeds": 1}}
    assert set(by_score["hole_knn k=3 mean_distance"]) == {"alexandroff_d32_e10"}
    assert set(by_score["recon"]) == {"alexandroff_e10", "alexandroff_d32_e10"}
    winner_form = "hole_knn_recon k=3 w=2 [squared_error,cross_entropy,kl]"
    assert by_score[winner_form]["alexandroff_d32_e10"]["mean"] == 0.95
    assert compact_study.PLOT_SCORE == "hole_knn k=100 relative"
    # The confirmation table finds the winner's cell under its form.
    winner = {"candidate": "alexandroff_d32_e10", "score": "hole_knn_recon_ce_kl_w2"}
    confirmation = compact_study.confirmation_markdown(winner, compact_study.test_table([new_run]), "test")
    assert "| fashion_mnist | mnist | 0.950 ± 0.000 (n=1) |" in confirmation


def test_a_confirmation_of_the_hole_score_alone_takes_the_baselines_from_earlier_rounds(
    tmp_path: Path,
) -> None:
    (run,) = [
        run
        for run in compact_study.make_runs(["alexandroff_d32_e10"], 1, tmp_path, [])
        if run.benchmark == "fashion_mnist"
    ]
    earlier, guarded = "hole_knn_recon_ce_kl_w2", "hole_knn_recon_ce_kl_w2_guard0.99"
    for score, aurocs in (
        (earlier, {"hole_knn_recon": 0.97, "neg_elbo": 0.4}),
        (guarded, {"hole_knn_recon": 0.99}),
    ):
        out_dir = compact_study.confirm_dir(run, score, None)
        out_dir.mkdir(parents=True)
        metrics = {"mnist": {name: {"auroc": value} for name, value in aurocs.items()}}
        scores = {"knn_statistic": "mean_distance", **compact_study.HOLE_SCORES[score][1]}
        (out_dir / "results.json").write_text(
            json.dumps({"config": {"scores": scores}, "metrics": metrics, "model": {}})
        )
    # A subset confirmation is another size: never mixed in.
    other_size = compact_study.confirm_dir(run, earlier, 2000)
    other_size.mkdir(parents=True)
    (other_size / "results.json").write_text(
        json.dumps({"config": {"scores": {}}, "metrics": {"mnist": {"recon": {"auroc": 0.5}}}, "model": {}})
    )

    files = compact_study.confirmation_results(run, guarded, None)
    assert files[0] == compact_study.confirm_dir(run, guarded, None) / "results.json" and len(files) == 2
    by_score = compact_study.test_table([run], lambda r: compact_study.confirmation_results(r, guarded, None))
    cells = by_score["fashion_mnist"]["mnist"]
    guard_form = "hole_knn_recon k=3 w=2 [squared_error,cross_entropy,kl] guard=0.99"
    assert cells[guard_form]["alexandroff_d32_e10"]["mean"] == 0.99
    assert (
        cells["hole_knn_recon k=3 w=2 [squared_error,cross_entropy,kl]"]["alexandroff_d32_e10"]["mean"]
        == 0.97
    )
    assert cells["neg_elbo"]["alexandroff_d32_e10"] == {"mean": 0.4, "std": 0.0, "seeds": 1}
    assert "recon" not in cells


def test_a_candidate_with_a_collapsed_seed_is_inadmissible() -> None:
    """The rule's amendment: the best admissible row wins; a collapsed candidate's rows stay in the
    table, marked, and cannot win even with the higher worst case."""

    def measured(worst: float) -> dict[str, Any]:
        aurocs = {score: {"blur": worst, "mixup": 0.99} for score in compact_study.HOLE_SCORES}
        return {benchmark: {"auroc": aurocs, "val_elbo": -100.0} for benchmark in compact_study.BENCHMARKS}

    selection = {"alexandroff_e10": measured(0.95), "alexandroff_d32_e10": measured(0.90)}
    winner, rows = compact_study.select_winner(selection, frozenset({"alexandroff_e10"}))
    assert winner["candidate"] == "alexandroff_d32_e10"
    assert {row["admissible"] for row in rows if row["candidate"] == "alexandroff_e10"} == {False}
    assert compact_study.admissibility(rows[0]) == "no (a seed collapsed)"
    assert compact_study.select_winner(selection)[0]["candidate"] == "alexandroff_e10"


def test_the_classical_best_counts_only_forms_measured_on_as_many_seeds_as_the_winner() -> None:
    winner = {"candidate": "alexandroff_d32_e10", "score": "hole_knn_recon_ce_kl_w2"}
    form = compact_study.score_form(*compact_study.HOLE_SCORES[winner["score"]])

    def cell(mean: float, seeds: int) -> dict[str, float]:
        return {"mean": mean, "std": 0.0, "seeds": seeds}

    table = {
        "fashion_mnist": {
            "constant": {
                form: {"alexandroff_d32_e10": cell(0.99, 3), "gaussian_e10": cell(0.95, 3)},
                "recon": {"gaussian_e10": cell(0.97, 3), "gaussian_e3": cell(0.999, 1)},
                "neg_elbo": {"gaussian_e10": cell(0.998, 1), "gaussian_e3": cell(0.96, 3)},
            }
        }
    }
    row = next(
        line
        for line in compact_study.confirmation_markdown(winner, table, "test").splitlines()
        if line.startswith("| fashion_mnist | constant |")
    )
    # Columns: winner, same score per classical row (e3, e10, d32, d64, d32 with warm-up), best per
    # classical row.
    assert row.split(" | ")[-6:-1] == ["0.960 (`neg_elbo`)", "0.970 (`recon`)", "n/a", "n/a", "n/a"]


def test_the_confirmation_plot_draws_every_target_set_even_with_cells_missing(tmp_path: Path) -> None:
    from matplotlib.image import imread

    winner = {"candidate": "alexandroff_d32_e10", "score": "hole_knn_recon_ce_kl_w2"}
    form = compact_study.score_form(*compact_study.HOLE_SCORES[winner["score"]])
    cell = {"mean": 0.9, "std": 0.01, "seeds": 3}
    table = {"fashion_mnist": {"mnist": {form: {"alexandroff_d32_e10": cell, "gaussian_e10": cell}}}}
    rows = compact_study.confirmation_rows(winner, table)
    assert [(row["benchmark"], row["outlier"]) for row in rows] == list(compact_study.TARGETS)
    assert rows[0]["own"] == cell and rows[0]["best"]["gaussian_e10"] == (0.9, form)
    assert rows[1]["own"] is None and rows[1]["best"]["gaussian_e10"] is None

    path = compact_study.plot_confirmation(winner, table, tmp_path)
    assert path.read_bytes() != compact_study.plot_confirmation(winner, {}, tmp_path / "empty").read_bytes()
    pixels = imread(path)
    assert path == tmp_path / "compact_study_confirmation.png"
    assert (
        pixels.shape[0] > 100 and len({tuple(p) for p in pixels[::4, ::4].reshape(-1, pixels.shape[-1])}) > 3
    )


def test_every_joint_space_form_is_also_a_candidate_with_the_far_statistics_guard() -> None:
    """Round 7: the suite cannot see what the guard adds, so no joint form competes without its
    guarded twin (the same settings, guard at q = 0.99)."""
    joint = {
        name: settings
        for name, (score, settings) in compact_study.HOLE_SCORES.items()
        if score == "hole_knn_recon"
    }
    unguarded = [name for name, settings in joint.items() if settings["knn_recon_guard"] is None]
    assert len(unguarded) == 8
    for name in unguarded:
        twin = joint[f"{name}_guard0.99"]
        assert twin == {**joint[name], "knn_recon_guard": 0.99}


def test_a_report_without_the_runs_refuses_to_overwrite_the_studys_record(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    record: dict[str, Any] = {"selection": {"alexandroff_e10": {"fashion_mnist": {}, "mnist": {}}}}
    (results / "compact_study.json").write_text(json.dumps(record))
    arguments = [
        "--stage",
        "report",
        "--out-dir",
        str(tmp_path / "fresh_machine"),
        "--results-dir",
        str(results),
    ]
    with pytest.raises(SystemExit) as refused:
        compact_study.main(arguments)
    assert refused.value.code == 2
    assert json.loads((results / "compact_study.json").read_text()) == record  # untouched
    found: dict[str, dict[str, Any]] = {"alexandroff_e10": {"fashion_mnist": {}}}
    assert compact_study.lost_selection_entries(record, found) == ["alexandroff_e10/mnist"]
    assert compact_study.lost_selection_entries({}, {}) == []


def complete_entry(value: float) -> dict[str, Any]:
    """A seed-0 suite entry as compact_study.json records it: every hole score x corruption."""
    corruptions = compact_study.SELECTION_CORRUPTIONS
    aurocs = {score: dict.fromkeys(corruptions, value) for score in compact_study.HOLE_SCORES}
    return {"auroc": aurocs, "val_elbo": -180.0, "checkpoint": "epoch=9.ckpt"}


def report(out_dir: Path, results: Path) -> list[str]:
    return ["--stage", "report", "--out-dir", str(out_dir), "--results-dir", str(results)]


def test_a_report_on_a_fresh_machine_carries_the_recorded_candidates(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    cell = {"mean": 0.9, "std": 0.01, "seeds": 3}
    record: dict[str, Any] = {
        "selection": {
            "alexandroff_d32_kl1_e10": {"fashion_mnist": complete_entry(0.95), "mnist": complete_entry(0.97)},
            "alexandroff_e10": {"fashion_mnist": complete_entry(0.99), "mnist": complete_entry(0.99)},
        },
        "selection_rows": [
            {"candidate": "alexandroff_d32_kl1_e10", "collapsed": False},
            {"candidate": "alexandroff_e10", "collapsed": True},
        ],
        "test_auroc": {"fashion_mnist": {"mnist": {"recon": {"alexandroff_d32_kl1_e10": cell}}}},
    }
    (results / "compact_study.json").write_text(json.dumps(record))

    compact_study.main(report(tmp_path / "fresh_machine", results))

    written = json.loads((results / "compact_study.json").read_text())
    # The higher suite AUROCs lose: the record says one of that candidate's seeds collapsed.
    assert written["winner"]["candidate"] == "alexandroff_d32_kl1_e10"
    assert written["winner"]["worst"] == 0.95
    assert all(row["carried"] for row in written["selection_rows"])
    assert written["selection"]["alexandroff_e10"]["mnist"]["carried"] is True
    assert written["test_auroc"]["fashion_mnist"]["mnist"]["recon"] == {"alexandroff_d32_kl1_e10": cell}
    assert "| record |" in (results / "compact_study.md").read_text()


def test_a_candidate_trained_again_keeps_its_recorded_tests_unless_its_runs_cover_them(
    tmp_path: Path,
) -> None:
    """Round 9 trained seed 0 of recorded candidates again for the suite: their test cells stay the
    record's, whole (never mixed with the new run's), unless the runs hold every recorded cell on
    at least as many seeds."""
    results = tmp_path / "results"
    results.mkdir()
    cell = {"mean": 0.9, "std": 0.01, "seeds": 3}
    (run,) = [
        r
        for r in compact_study.make_runs(["alexandroff_e10"], 1, tmp_path / "runs", [])
        if r.benchmark == "mnist"
    ]
    run.trial.out_dir.mkdir(parents=True)
    metrics = {"fashion_mnist": {"recon": {"auroc": 0.8}, "neg_elbo": {"auroc": 0.7}}}
    results_json = {"config": {"scores": {}}, "metrics": metrics, "model": {}}
    (run.trial.out_dir / "results.json").write_text(json.dumps(results_json))
    # The suite's and the collapse check's caches, as the select stage leaves them.
    (run.trial.out_dir / "selection.json").write_text(json.dumps(complete_entry(0.9)))
    (run.trial.out_dir / "collapse.json").write_text(json.dumps({"collapsed": False, "latent_variance": 0.9}))
    arguments = [*report(tmp_path / "runs", results), "--candidates", "alexandroff_e10"]

    def written_tests(recorded_cells: dict[str, Any]) -> dict[str, Any]:
        record = {"test_auroc": {"mnist": {"fashion_mnist": recorded_cells}}}
        (results / "compact_study.json").write_text(json.dumps(record))
        compact_study.main(arguments)
        tests: dict[str, Any] = json.loads((results / "compact_study.json").read_text())["test_auroc"]
        return tests["mnist"]["fashion_mnist"]

    # More seeds in the record, or a form the run lacks: the record's cells, whole.
    assert written_tests({"recon": {"alexandroff_e10": cell}}) == {"recon": {"alexandroff_e10": cell}}
    assert (
        "The test cells of `alexandroff_e10` are the record's" in (results / "compact_study.md").read_text()
    )
    iwae = {"iwae_nll": {"alexandroff_e10": {**cell, "seeds": 1}}}
    assert written_tests(iwae) == iwae
    # The run holds every recorded cell on as many seeds: the run's cells.
    measured = written_tests({"recon": {"alexandroff_e10": {**cell, "seeds": 1}}})
    assert measured["recon"]["alexandroff_e10"]["mean"] == 0.8 and "neg_elbo" in measured


def test_a_record_without_a_new_corruption_bounds_the_worst_case_or_leaves_the_rule_undecided(
    tmp_path: Path,
) -> None:
    """Round 9: a candidate carried from a record written before a corruption joined the suite
    has only an upper bound on its worst case. It is ruled out when the bound lies below the tie of
    the measured winner, and otherwise the rule refuses to choose until it is trained again."""
    old_suite = [name for name in compact_study.SELECTION_CORRUPTIONS if name != "contrast"]

    def entry(worst: float, corruptions: list[str]) -> dict[str, Any]:
        aurocs = {score: dict.fromkeys(corruptions, 0.99) for score in compact_study.HOLE_SCORES}
        for by_corruption in aurocs.values():
            by_corruption["blur"] = worst
        return {"auroc": aurocs, "val_elbo": -180.0}

    def recorded(worst: float) -> dict[str, Any]:
        return {
            "selection": {"alexandroff_e10": dict.fromkeys(compact_study.BENCHMARKS, entry(worst, old_suite))}
        }

    measured = {
        benchmark: entry(0.93, list(compact_study.SELECTION_CORRUPTIONS))
        for benchmark in compact_study.BENCHMARKS
    }
    scores, corruptions = compact_study.HOLE_SCORES, compact_study.SELECTION_CORRUPTIONS
    for bound, outcome in ((0.92, "ruled out"), (0.926, "undecided")):
        carried = {
            benchmark: compact_study.carried_selection(
                recorded(bound), "alexandroff_e10", benchmark, scores, corruptions
            )
            for benchmark in compact_study.BENCHMARKS
        }
        assert all(found and found["missing"] == ["contrast"] for found in carried.values())
        selection: dict[str, dict[str, Any]] = {
            "alexandroff_d32_kl1_e10": measured,
            "alexandroff_e10": carried,
        }
        if outcome == "ruled out":
            winner, rows = compact_study.select_winner(selection)
            assert winner["candidate"] == "alexandroff_d32_kl1_e10"
            partial = next(row for row in rows if row["candidate"] == "alexandroff_e10")
            assert partial["missing"] == ["fashion_mnist/contrast", "mnist/contrast"]
            assert len(partial["per_set"]) == 2 * len(old_suite)
            assert "| ≤ 0.920 |" in compact_study.markdown(winner, rows, {}, [])
        else:
            with pytest.raises(compact_study.UndecidedRule) as undecided:
                compact_study.select_winner(selection)
            assert undecided.value.candidates == ["alexandroff_e10"]

    # On the command line the undecided rule is one clear message (exit status 2), nothing written.
    results = tmp_path / "results"
    results.mkdir()
    (results / "compact_study.json").write_text(json.dumps(recorded(0.99)))
    with pytest.raises(SystemExit) as refused:
        compact_study.main(report(tmp_path / "fresh_machine", results))
    assert refused.value.code == 2
    assert not (results / "compact_study.md").exists()


def test_round_10s_scores_rank_only_the_trainings_measured_with_them() -> None:
    """A record from before round 10 lacks its scores: the carried training keeps its rows of the
    earlier scores (bounds on the worst case as before) and gets none of the new ones."""
    new_scores = [name for name in compact_study.HOLE_SCORES if "_on_sq_ce_kl_w" in name]
    assert len(new_scores) == 14
    old_scores = [name for name in compact_study.HOLE_SCORES if name not in new_scores]
    corruptions = list(compact_study.SELECTION_CORRUPTIONS)
    old = {"auroc": {score: dict.fromkeys(corruptions, 0.9) for score in old_scores}, "val_elbo": -180.0}
    record = {"selection": {"alexandroff_e10": dict.fromkeys(compact_study.BENCHMARKS, old)}}
    carried = {
        benchmark: compact_study.carried_selection(
            record, "alexandroff_e10", benchmark, compact_study.HOLE_SCORES, corruptions
        )
        for benchmark in compact_study.BENCHMARKS
    }
    measured = {
        benchmark: {
            "auroc": {score: dict.fromkeys(corruptions, 0.95) for score in compact_study.HOLE_SCORES},
            "val_elbo": -180.0,
        }
        for benchmark in compact_study.BENCHMARKS
    }
    winner, rows = compact_study.select_winner(
        {"alexandroff_e10": carried, "alexandroff_d32_kl1_e10": measured}
    )
    assert winner["candidate"] == "alexandroff_d32_kl1_e10"
    assert {row["score"] for row in rows if row["candidate"] == "alexandroff_e10"} == set(old_scores)
    assert {row["score"] for row in rows if row["candidate"] == "alexandroff_d32_kl1_e10"} == set(
        compact_study.HOLE_SCORES
    )


def uses_mass_centre(settings: dict[str, Any]) -> bool:
    """Whether a hole score's joint space or guard has a centre-of-mass statistic (round 12's)."""
    features = [*settings.get("knn_recon_features", []), *(settings.get("knn_recon_guard_features") or [])]
    return any(feature.startswith("mass_centre") for feature in features)


def test_round_11s_scores_guard_on_the_compressed_length_beside_two_joint_spaces() -> None:
    """Round 11 as fixed in docs/compact_study.md: six guarded forms, k = 3, joint weight 1, the
    guard (q = 0.99) on [sq, ce, kl, compressed_length] at weights 1, 2 and 4."""
    new = {
        name: settings
        for name, (score, settings) in compact_study.HOLE_SCORES.items()
        if "compressed_length" in settings.get("knn_recon_guard_features", [])
        and not uses_mass_centre(settings)  # round 12's
    }
    assert len(new) == 6
    joint_spaces = {tuple(settings["knn_recon_features"]) for settings in new.values()}
    assert joint_spaces == {
        ("squared_error", "cross_entropy"),
        ("squared_error", "cross_entropy", "compressed_length"),
    }
    assert sorted(settings["knn_recon_guard_weight"] for settings in new.values()) == [1, 1, 2, 2, 4, 4]
    for settings in new.values():
        assert settings["knn_recon_guard"] == 0.99 and settings["knn_k"] == 3
        assert settings["knn_recon_weight"] == 1.0
        assert settings["knn_recon_guard_features"] == [
            "squared_error", "cross_entropy", "kl", "compressed_length",
        ]  # fmt: skip
        ScoreConfig(names=["hole_knn_recon"], **settings)  # a valid scores block


def test_round_12s_scores_add_both_centres_of_mass_to_the_joint_space_the_guard_or_both() -> None:
    """Round 12 as fixed in docs/compact_study.md: round 11's default's form (k = 3, joint weight 1,
    guard q = 0.99 at weight 4) with both centre coordinates, never one alone, in three places."""
    centre = ["mass_centre_row", "mass_centre_column"]
    new = {
        name: settings
        for name, (score, settings) in compact_study.HOLE_SCORES.items()
        if uses_mass_centre(settings)
    }
    joint = ["squared_error", "cross_entropy", "compressed_length"]
    guard = ["squared_error", "cross_entropy", "kl", "compressed_length"]
    assert sorted(
        (settings["knn_recon_features"], settings["knn_recon_guard_features"]) for settings in new.values()
    ) == sorted([(joint + centre, guard), (joint, guard + centre), (joint + centre, guard + centre)])
    for settings in new.values():
        assert settings["knn_k"] == 3 and settings["knn_recon_weight"] == 1.0
        assert settings["knn_recon_guard"] == 0.99 and settings["knn_recon_guard_weight"] == 4.0
        ScoreConfig(names=["hole_knn_recon"], **settings)  # a valid scores block


def test_a_new_winner_starts_its_own_confirmation_and_keeps_the_earlier_one(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    cell = {"mean": 0.96, "std": 0.01, "seeds": 3}
    earlier_table = {"fashion_mnist": {"constant": {"hole_knn_recon": {"alexandroff_e10": cell}}}}
    record: dict[str, Any] = {
        "selection": {
            "alexandroff_d32_kl1_e10": {"fashion_mnist": complete_entry(0.95), "mnist": complete_entry(0.97)}
        },
        "winner": {"candidate": "alexandroff_e10", "score": "hole_knn"},
        "confirmation": {"max_eval_samples": None, "test_auroc": earlier_table},
        "test_auroc": {"fashion_mnist": {"mnist": {"recon": {"alexandroff_d32_kl1_e10": cell}}}},
    }
    (results / "compact_study.json").write_text(json.dumps(record))

    compact_study.main(report(tmp_path / "fresh_machine", results))

    written = json.loads((results / "compact_study.json").read_text())
    assert written["winner"]["candidate"] == "alexandroff_d32_kl1_e10"
    assert written["confirmation"]["test_auroc"] == {}
    assert written["earlier_confirmations"] == [
        {"winner": record["winner"], "max_eval_samples": None, "test_auroc": earlier_table}
    ]
    # Reported again with the same winner: nothing moves twice.
    compact_study.main(report(tmp_path / "fresh_machine", results))
    assert (
        json.loads((results / "compact_study.json").read_text())["earlier_confirmations"]
        == written["earlier_confirmations"]
    )
