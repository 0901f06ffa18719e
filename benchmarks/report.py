"""Render the README's Results (quality) and Performance tables from `benchmarks/results/*.json`.

    python -m benchmarks.report [--check]

The README holds each table between `<!-- report:NAME -->` and `<!-- /report:NAME -->` markers;
this script rewrites what lies between them from the JSON files the benchmark scripts wrote, so
the quoted numbers are exactly the measured ones. `--check` changes nothing and exits with status
1 if the README differs from what the results say (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import result_path
from benchmarks.quality import SCORES
from common.atomic_io import atomic_open

README = Path(__file__).resolve().parent.parent / "README.md"
KNN_CASES = {
    "60k_x_20k_d17": "60k ref x 20k queries, d=17",
    "60k_x_20k_d65": "60k ref x 20k queries, d=65",
    "1M_x_10k_d17": "1M ref x 10k queries, d=17",
}


def load(name: str) -> dict[str, Any]:
    path = result_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; run `python -m benchmarks.{name}` (see benchmarks/README.md) to measure it."
        )
    return json.loads(path.read_text())


def machine(result: dict[str, Any]) -> str:
    load_average = result["hardware"].get("load_average") or []
    load_text = f", load average {load_average[0]:.1f} when it ended" if load_average else ""
    return describe_hardware(result["hardware"]) + load_text


def machines(results: list[tuple[str, dict[str, Any]]]) -> str:
    """One line for the machines of several results; the CPU and torch named once when shared."""
    described = {describe_hardware(result["hardware"]) for _, result in results}
    loads = ", ".join(
        f"{name} {(result['hardware'].get('load_average') or [float('nan')])[0]:.1f}"
        for name, result in results
    )
    if len(described) == 1:
        return f"Machine: {described.pop()}; load average when each ended: {loads}."
    return "Machines: " + "; ".join(f"{name} {machine(result)}" for name, result in results) + "."


def describe_hardware(hardware: dict[str, Any]) -> str:
    return f"{hardware['cpu_model']}, {hardware['cpu_count']} cores, torch {hardware['torch_version']}"


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def megabytes(value: int) -> str:
    return f"{value / 1e6:.0f} MB"


def threads_label(key: str) -> str:
    count, _, policy = key.partition(" ")
    return f"{count} thread{'s' if count != '1' else ''}" + (" (`OMP_WAIT_POLICY=PASSIVE`)" if policy else "")


def knn_rows(result: dict[str, Any]) -> list[str]:
    rows = []
    for case, label in KNN_CASES.items():
        for key, measured in result["cases"].get(case, {}).get("by_threads", {}).items():
            times = {name: value["median_s"] for name, value in measured["times"].items()}
            memory = measured.get("peak_extra_bytes", {})
            agree = min(value["same_up_to_ties"] for value in measured["agreement_with_hole_knn"].values())
            ours = f"{seconds(times['hole_knn'])}" + (
                f", {megabytes(memory['hole_knn'])} peak extra" if memory else ""
            )
            theirs = (
                f"faiss `IndexFlatL2` {seconds(times['faiss'])}"
                + (f" ({megabytes(memory['faiss'])})" if memory else "")
                + f", sklearn brute {seconds(times['sklearn'])}"
            )
            rows.append(
                f"| `hole_knn` search, {label}, k={result['k']}, {threads_label(key)} | {ours} | {theirs} | "
                f"{measured['ratio_to_faiss']['hole_knn']:.2f}x faiss; same neighbours up to ties: "
                f"{agree:.0%} of queries |"
            )
    return rows


def performance() -> str:
    knn, training, scoring = load("knn_search"), load("training_loop"), load("scoring")
    posterior = scoring["hole_posterior"]
    regret = scoring["likelihood_regret"]
    reference_scores = scoring["reference_scores"]
    throughput = {**scoring["scores_images_per_second"], **reference_scores["images_per_second"]}
    rates = ", ".join(
        f"`{name}` {value:.0f}" for name, value in sorted(throughput.items(), key=lambda item: -item[1])
    )
    lines = [
        "| what | ours | reference | ratio |",
        "|---|---|---|---|",
        *knn_rows(knn),
        f"| one training epoch ({training['batches_per_epoch']} batches of {training['batch_size']}, "
        f"`{training['model']['variant']}`) | "
        f"Lightning {seconds(training['times']['lightning']['median_s'])} | bare PyTorch loop "
        f"{seconds(training['times']['bare']['median_s'])} | "
        f"{training['ratio_lightning_to_bare']:.2f}x |",
        f"| `hole_posterior`, K = {posterior['samples']}, batch {scoring['images']} | "
        f"{seconds(posterior['score_s'])} | "
        f"its limit (encoder + K draws + decoder) {seconds(posterior['limit_s'])} | "
        f"{posterior['fraction_of_limit']:.2f} of the limit |",
    ]
    end_to_end = load("end_to_end") if result_path("end_to_end").is_file() else None
    if end_to_end is not None:
        timing = end_to_end.get("run_timing") or {}
        parts = ", ".join(
            f"{key.removesuffix('_seconds')} {seconds(value)}"
            for key, value in timing.items()
            if key.endswith("_seconds")
        )
        # The headline: the first listed score (results.json keeps the order of scores.names).
        found = ", ".join(
            f"`{headline}` AUROC {by_score[headline]['auroc']:.4f} on {outlier}"
            for outlier, by_score in (end_to_end.get("metrics") or {}).items()
            for headline in list(by_score)[:1]
        )
        lines.append(
            f"| the default experiment end to end (`make run`: `{end_to_end['model']['variant']}`, all test "
            "images) | "
            f"{seconds(end_to_end['wall_seconds'])} wall ({parts}) | {found} | exit status "
            f"{end_to_end['returncode']} |"
        )
    lines += [
        "",
        f"Scoring throughput, images/s (batch {scoring['images']}, untrained default model, each score "
        f"alone): {rates}; "
        f"`likelihood_regret` {regret['seconds_per_image']:.2f} s per image ({regret['regret_steps']} "
        "encoder steps). "
        "The reference scores exclude their one-off reference set-up "
        f"({seconds(sum(reference_scores['reference_setup'].values()))} "
        f"for {reference_scores['reference_size']} reference latents, k = {reference_scores['k']}, "
        f"{reference_scores['statistic']}).",
        "",
        machines(
            [
                ("k-NN", knn),
                ("training", training),
                ("scoring", scoring),
                *([("end to end", end_to_end)] if end_to_end else []),
            ]
        ),
    ]
    return "\n".join(lines)


def mean_auroc_over_outlier_sets(result: dict[str, Any]) -> str:
    """Score x variant table of the AUROC averaged over every (inliers, outliers) pair."""
    variants = list(result["protocol"]["variants"])
    cells = [by_score for by_outlier in result["table"].values() for by_score in by_outlier.values()]
    lines = [
        f"**Mean AUROC over the {len(cells)} outlier sets** (the mean of each column's seed means below)",
        "",
        "| score | " + " | ".join(f"`{variant}`" for variant in variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    measured = {score for by_score in cells for score in by_score}
    for score in (score for score in SCORES if score in measured):
        means = []
        for variant in variants:
            found = [
                by_score[score][variant]["auroc"]["mean"]
                for by_score in cells
                if variant in by_score.get(score, {})
            ]
            means.append(f"{sum(found) / len(found):.3f}" if len(found) == len(cells) else "n/a")
        lines.append(f"| `{score}` | " + " | ".join(means) + " |")
    return "\n".join(lines)


# The full per-set table stays beside its results file; the README keeps the summary and links it.
QUALITY_TABLE = "benchmarks/results/quality.md"


def quality() -> str:
    result = load("quality")
    protocol = result["protocol"]
    finished = [
        trial for trial in result["trials"] if trial["status"] in ("completed", "skipped", "recorded")
    ]
    # The trials of one table may have run under several invocations (quality.take_recorded), so
    # the time quoted is each run's own, from its results.json, not the last command's wall time.
    minutes = [
        sum(trial["timing"][key] for key in ("train_seconds", "test_seconds")) / 60 for trial in finished
    ]
    return "\n".join(
        [
            "```bash",
            result["command"],
            "```",
            "",
            f"{len(finished)} of {len(result['trials'])} trials ({len(protocol['variants'])} variants x "
            f"{protocol['seeds']} seeds x "
            f"{len(protocol['benchmarks'])} inlier datasets); config `{protocol['config']}` with "
            + ", ".join(f"`{item}`" for item in [*protocol["budget"], *protocol["overrides"]])
            + f"; {protocol['jobs']} trials at a time, {protocol['omp_num_threads']} thread(s) each. "
            f"Training and test took {statistics.median(minutes):.1f} min per trial (median; "
            f"{min(minutes):.1f}-{max(minutes):.1f}), on {machine(result)}.",
            "",
            mean_auroc_over_outlier_sets(result),
            "",
            f"Every (inlier set, outlier set, score, variant) cell, mean ± std over seeds: "
            f"[{QUALITY_TABLE}]({QUALITY_TABLE}).",
        ]
    )


BLOCKS: dict[str, Callable[[], str]] = {"quality": quality, "performance": performance}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- report:{name} -->\n)(?:.*?\n)?(<!-- /report:{name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise ValueError(
                f"README.md has no <!-- report:{name} --> ... <!-- /report:{name} --> block; add the two "
                "markers where the table belongs."
            )
        body = make()

        def replace(match: re.Match[str], body: str = body) -> str:
            return match.group(1) + body + "\n" + match.group(2)

        text = pattern.sub(replace, text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if README.md is not what the results say"
    )
    args = parser.parse_args()
    current = README.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            sys.exit(
                "README.md's tables differ from benchmarks/results/; run `python -m benchmarks.report` to "
                "rewrite them."
            )
        print("README.md's tables match benchmarks/results/.")
        return
    with atomic_open(README, "w") as stream:
        stream.write(wanted)
    print(f"Rewrote the {', '.join(BLOCKS)} tables of {README}.")


if __name__ == "__main__":
    main()
