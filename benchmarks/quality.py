"""The quality table: every variant x several seeds on every benchmark, every score, one command.

    python -m benchmarks.quality [--seeds N] [--jobs J] [--out-dir DIR] [key=value ...]
                                 [--variants V ...] [--benchmarks B ...] [--results-dir DIR]
                                 [--whole-test [--whole-test-scores S ...]]

Benchmarks (`BENCHMARKS`): Fashion-MNIST inliers against MNIST digits and the five transforms of
the inlier test set (hflip, vflip, gaussian_noise, uniform_noise, constant), evaluated in one run
per model; and MNIST inliers against Fashion-MNIST. Every variant of
`lightning_modules.config.VARIANTS_BY_NAME` (L = 1 for the Lipschitz ones; `--variants` /
`--benchmarks` pick a part) is trained with seeds 0..N-1 on each, through `experiments.train`
with the default experiment's config, `BUDGET` and the `key=value` overrides given here (e.g.
`trainer.max_epochs=3 data.max_eval_samples=null` for the full default budget).

Trials run as subprocesses, J at a time, each with cores/J OpenMP threads (small convolutions use
two single-threaded processes better than one two-threaded one). Each trial's results.json and log
land in DIR/<trial>/; a trial whose results.json exists is not run again, so a re-run finishes an
interrupted table. Nor is a trial that the results directory's quality.json records with the same
settings and the same default config file (status `recorded`): run folders are not committed, so
the table can be completed over several sessions, on machines that do not keep them. Move
quality.json away after a change to the code that trains or scores, and every trial runs again.
Then `benchmarks/results/quality.json` (every trial's metrics, settings and own timing, the
protocol, the hardware, the wall time) and `benchmarks/results/quality.md` (mean and standard
deviation over seeds of AUROC, both FPR95 conventions and AUPR-In per benchmark, score and
variant) are written; `python -m benchmarks.report` copies the table into the README.

`--whole-test` trains nothing: it scores every finished trial's selected checkpoint again, on every
image of every test set (the protocol of issue 10's targets), with the default experiment's scores
or `--whole-test-scores`, through `experiments.evaluate` into
DIR/<trial>/evaluations/whole_test_sets/<score+score...>/ (an evaluation whose results.json exists
is not run again), and writes `benchmarks/results/quality_whole_test.{json,md}` (the same metrics).

Outlier labels are used only here, for the metrics: model selection never sees them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    default_config,
    evaluate_command,
    read_json_if_any,
    study_environment,
    write_result,
)
from common.atomic_io import atomic_open
from experiments.sweep import Trial, run_trials
from lightning_modules.config import VARIANTS_BY_NAME
from scoring.config import SCORE_NAMES
from scoring.keys import parse_metric_key

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "experiments/configs/fmnist_vs_mnist.yaml"
TRANSFORMS = ["hflip", "vflip", "gaussian_noise", "uniform_noise", "constant"]
# name -> data overrides; the transforms share the Fashion-MNIST models (one training, 7 sets).
BENCHMARKS: dict[str, list[str]] = {
    "fashion_mnist": [
        "experiment=quality_fashion_mnist",
        "data.inlier=fashion_mnist",
        f"data.outliers=[{','.join(['mnist', *TRANSFORMS])}]",
    ],
    "mnist": ["experiment=quality_mnist", "data.inlier=mnist", "data.outliers=[fashion_mnist]"],
}
SCORES = list(SCORE_NAMES)
# The default experiment's training and scoring, with the evaluation cut to fit a 2-core CPU
# (about 2.5 hours for the 24 trials of 3 seeds, two at a time, with the 10-epoch default): a seeded
# 2,000-image subset of every evaluation set, likelihood regret on the first 100 images of each.
BUDGET = [
    "data.max_eval_samples=2000",
    "scores.regret_max_samples=100",
    f"scores.names=[{','.join(SCORES)}]",
    "plots.enabled=false",
    "logger.mode=disabled",
]
# FPR95-In is the literature's FPR95 (outliers accepted at 95% inlier recall), FPR95 the inliers
# flagged at 95% outlier recall (scoring.metrics).
METRICS = {"auroc": "AUROC", "fpr95_in": "FPR95-In", "fpr95": "FPR95", "aupr_in": "AUPR-In"}
WHOLE_TEST_DIR = Path("evaluations") / "whole_test_sets"


@dataclass
class QualityTrial:
    benchmark: str
    variant: str
    seed: int
    trial: Trial
    # The entry of an earlier quality.json this trial's metrics come from, when it was not run here.
    record: dict[str, Any] | None = None


def variant_overrides(variant: str) -> list[str]:
    lipschitz = VARIANTS_BY_NAME[variant][1]
    return [f"model.variant={variant}", f"model.lipschitz={1.0 if lipschitz else 'null'}"]


def make_trials(seeds: int, out_dir: Path, variants: list[str], benchmarks: list[str]) -> list[QualityTrial]:
    """Seed-major order: an interrupted table has whole seeds of every benchmark and variant."""
    trials = []
    for seed in range(seeds):
        for benchmark in benchmarks:
            for variant in variants:
                name = f"{benchmark}_{variant}_seed{seed}"
                parameters = {"benchmark": benchmark, "variant": variant, "seed": seed}
                trials.append(QualityTrial(benchmark, variant, seed, Trial(name, parameters, out_dir / name)))
    return trials


def trial_command(quality_trial: QualityTrial, overrides: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "experiments.train", str(REPO_ROOT / DEFAULT_CONFIG),
        *BENCHMARKS[quality_trial.benchmark], *variant_overrides(quality_trial.variant), *BUDGET, *overrides,
        f"seed={quality_trial.seed}", f"out_dir={quality_trial.trial.out_dir}",
    ]  # fmt: skip


def trial_settings(command: list[str]) -> list[str]:
    """What decides a trial's numbers besides the code and the config file's content: its
    arguments after the config file (or checkpoint), without the run folder (paths differ by machine)."""
    return [argument for argument in command[4:] if not argument.startswith("out_dir=")]


def config_sha256() -> str:
    return hashlib.sha256((REPO_ROOT / DEFAULT_CONFIG).read_bytes()).hexdigest()


def take_recorded(trials: list[QualityTrial], previous: Path) -> list[QualityTrial]:
    """Mark the trials an earlier quality.json already measured, with the same settings and the
    same default config, as ``recorded`` (their metrics taken from it); return the others.

    Run folders are not kept in the repository and a session's machine does not outlive it, so
    the table's 24 trainings may be spread over sessions: quality.json is the record that carries
    them. A trial with a results.json in its folder is read from there as usual. After a change to
    code that trains or scores, move quality.json away so that every trial runs again.
    """
    record = read_json_if_any(previous)
    if record.get("protocol", {}).get("config_sha256") != config_sha256():
        return trials
    found = {(entry["benchmark"], entry["variant"], entry["seed"]): entry for entry in record["trials"]}
    remaining = []
    for quality_trial in trials:
        entry = found.get((quality_trial.benchmark, quality_trial.variant, quality_trial.seed))
        if (
            entry is not None
            and not (quality_trial.trial.out_dir / "results.json").is_file()
            and entry.get("status") in ("completed", "skipped", "recorded")
            and entry.get("settings") == trial_settings(quality_trial.trial.command)
        ):
            quality_trial.record = entry
            quality_trial.trial.status = "recorded"
            quality_trial.trial.metrics = entry["metrics"]
        else:
            remaining.append(quality_trial)
    return remaining


def run_all(
    trials: list[QualityTrial], overrides: list[str], jobs: int, log_dir: Path, previous: Path
) -> None:
    """Every trial not in ``previous`` (quality.json) through the sweep runner, `jobs` at a time."""
    for quality_trial in trials:
        quality_trial.trial.command = trial_command(quality_trial, overrides)
    remaining = take_recorded(trials, previous)
    if len(remaining) < len(trials):
        print(f"{len(trials) - len(remaining)} trials taken from {previous} (same settings and config)")
    run_trials([quality_trial.trial for quality_trial in remaining], log_dir, jobs)


def trial_entry(quality_trial: QualityTrial) -> dict[str, Any]:
    """A trial's line of the results file: what it measured, how long it took, what it ran with."""
    if quality_trial.record is not None:
        return {**quality_trial.record, "status": "recorded"}
    results = read_json_if_any(quality_trial.trial.out_dir / "results.json")
    return {
        **quality_trial.trial.parameters,
        "status": quality_trial.trial.status,
        "seconds": quality_trial.trial.seconds,
        # The run's own training and test seconds, also when this command skipped it.
        "timing": results.get("timing"),
        # Its certificate, empirical Lipschitz bound and posterior-collapse diagnostics.
        "model": results.get("model"),
        "settings": trial_settings(quality_trial.trial.command),
        "metrics": quality_trial.trial.metrics,
    }


MODEL_COLUMNS = ("certified_lipschitz", "empirical_lipschitz", "latent_variance", "active_units")


def model_markdown(entries: list[dict[str, Any]]) -> str:
    """Per trial: the certified Lipschitz constant (an upper bound), the largest Jacobian norm found
    (a lower bound), and the inliers' latent variance and active units (docs/method.md 5.1; near 0
    when the posterior collapsed). Trials recorded before a column existed show n/a."""

    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4g}"

    lines = [
        "**The trained models** (each run's `results.json` `model`; n/a: the run has no such value,"
        " no certificate without a Lipschitz encoder, or it was recorded before the column existed)",
        "",
        "| inliers | variant | seed | " + " | ".join(f"`{name}`" for name in MODEL_COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(MODEL_COLUMNS),
    ]
    for entry in entries:
        model = entry.get("model") or {}
        cells = " | ".join(cell(model.get(name)) for name in MODEL_COLUMNS)
        lines.append(f"| {entry['benchmark']} | `{entry['variant']}` | {entry['seed']} | {cells} |")
    return "\n".join(lines) + "\n"


def whole_test_trials(trials: list[QualityTrial], scores: list[str]) -> list[QualityTrial]:
    """An evaluation on the whole test sets of every trial whose training finished (the others are
    left out, so a partial table scores what exists)."""
    evaluations = []
    for quality_trial in trials:
        run_dir = quality_trial.trial.out_dir
        if not (run_dir / "results.json").is_file():
            continue
        out_dir = run_dir / WHOLE_TEST_DIR / "+".join(scores)  # other scores, another folder
        trial = Trial(f"{quality_trial.trial.name}_whole_test_sets", quality_trial.trial.parameters, out_dir)
        trial.command = evaluate_command(run_dir, out_dir, None, scores)
        evaluations.append(replace(quality_trial, trial=trial))
    return evaluations


def aggregate(trials: list[QualityTrial]) -> dict[str, Any]:
    """{benchmark: {outlier: {score: {variant: {metric: {mean, std, seeds}}}}}} over finished trials."""
    values: dict[tuple[str, str, str, str, str], list[float]] = {}
    for quality_trial in trials:
        for key, value in quality_trial.trial.metrics.items():
            parts = parse_metric_key(key)
            if parts is not None and parts.metric in METRICS:
                values.setdefault(
                    (
                        quality_trial.benchmark,
                        parts.outlier,
                        parts.score,
                        quality_trial.variant,
                        parts.metric,
                    ),
                    [],
                ).append(value)
    table: dict[str, Any] = {}
    for (benchmark, outlier, score, variant, metric), found in values.items():
        spread = statistics.pstdev(found) if len(found) > 1 else 0.0
        cell = {"mean": statistics.fmean(found), "std": spread, "seeds": len(found)}
        table.setdefault(benchmark, {}).setdefault(outlier, {}).setdefault(score, {}).setdefault(variant, {})[
            metric
        ] = cell
    return table


def markdown(table: dict[str, Any], variants: list[str]) -> str:
    """One table per metric: a row per (inliers, outliers, score), a column per variant."""
    sections = []
    for metric, title in METRICS.items():
        lines = [
            f"**{title}** (mean ± std over seeds{'; lower is better' if metric.startswith('fpr') else ''})",
            "",
            "| inliers | outliers | score | " + " | ".join(f"`{variant}`" for variant in variants) + " |",
            "|---|---|---|" + "---|" * len(variants),
        ]
        for benchmark, by_outlier in table.items():
            for outlier, by_score in by_outlier.items():
                for score in [name for name in SCORES if name in by_score]:
                    cells = []
                    for variant in variants:
                        cell = by_score[score].get(variant, {}).get(metric)
                        cells.append("n/a" if cell is None else f"{cell['mean']:.3f} ± {cell['std']:.3f}")
                    lines.append(f"| {benchmark} | {outlier} | `{score}` | " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/quality"))
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS_BY_NAME), default=list(VARIANTS_BY_NAME)
    )
    parser.add_argument("--benchmarks", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where quality.json and quality.md go"
    )
    parser.add_argument(
        "--whole-test",
        action="store_true",
        help="train nothing: score the finished trials again on the whole test sets",
    )
    parser.add_argument(
        "--whole-test-scores",
        nargs="+",
        choices=SCORES,
        help="the scores of --whole-test (default: the default experiment's scores.names)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every trial")
    arguments = sys.argv[1:] if arguments is None else arguments
    args = parser.parse_args(arguments)
    if args.seeds < 1 or args.jobs < 1:
        parser.error(f"--seeds ({args.seeds}) and --jobs ({args.jobs}) must be at least 1")
    if args.whole_test_scores and not args.whole_test:
        parser.error("--whole-test-scores needs --whole-test (the quality table scores every score)")
    if args.whole_test and args.overrides:
        parser.error(
            f"--whole-test takes no key=value overrides (got {args.overrides}): each evaluation "
            "inherits its trial's config; drop them, or use --whole-test-scores to pick the scores"
        )
    study_environment(args.jobs)

    trials = make_trials(args.seeds, args.out_dir, args.variants, args.benchmarks)
    protocol: dict[str, Any] = {
        "config": DEFAULT_CONFIG,
        "benchmarks": {benchmark: BENCHMARKS[benchmark] for benchmark in args.benchmarks},
        "variants": {variant: variant_overrides(variant) for variant in args.variants},
        "budget": BUDGET,
        "overrides": args.overrides,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "omp_num_threads": os.environ["OMP_NUM_THREADS"],
    }
    started = time.perf_counter()
    if args.whole_test:
        scores = args.whole_test_scores or list(default_config().scores.names)
        trials = whole_test_trials(trials, scores)
        protocol |= {"whole_test_sets": True, "scores": scores}
        name = "quality_whole_test"
        run_trials([quality_trial.trial for quality_trial in trials], args.out_dir / "logs", args.jobs)
    else:
        # Every trial of a quality.json shares this config: a recorded trial is carried only under it.
        protocol["config_sha256"] = config_sha256()
        name = "quality"
        run_all(trials, args.overrides, args.jobs, args.out_dir / "logs", args.results_dir / "quality.json")
    wall_s = time.perf_counter() - started
    write_table(name, trials, protocol, arguments, wall_s, args)


def write_table(
    name: str,
    trials: list[QualityTrial],
    protocol: dict[str, Any],
    arguments: list[str],
    wall_s: float,
    args: argparse.Namespace,
) -> None:
    """RESULTS_DIR/<name>.json (every trial's metrics, the protocol, the hardware, the wall time)
    and <name>.md; exits non-zero naming the failed trials, after writing what finished."""
    table = aggregate(trials)
    entries = [trial_entry(quality_trial) for quality_trial in trials]
    ran = [quality_trial.trial for quality_trial in trials if quality_trial.trial.status == "completed"]
    result = {
        "command": " ".join(["python -m benchmarks.quality", *arguments]),
        "protocol": protocol,
        "wall_s": wall_s,
        "trials_run": len(ran),
        "trial_seconds": sum(trial.seconds or 0.0 for trial in ran),
        "trials": entries,
        "table": table,
    }
    path = write_result(name, result, args.results_dir)
    with atomic_open(args.results_dir / f"{name}.md", "w") as stream:
        stream.write(markdown(table, args.variants))
        stream.write("\n" + model_markdown(entries))
    failed = [quality_trial.trial.name for quality_trial in trials if quality_trial.trial.status == "failed"]
    print(f"{len(ran)} trials run in {wall_s:.0f} s; wrote {path} and {args.results_dir / f'{name}.md'}")
    if failed:
        sys.exit(
            f"{len(failed)} trials failed: {', '.join(failed)}; their logs are in {args.out_dir / 'logs'}. "
            "Fix the cause and run the same command again (finished trials are skipped)."
        )


if __name__ == "__main__":
    main()
