"""How the weight of hole_knn_recon's statistics trades near outliers against far ones (issue 10).

    python -m benchmarks.joint_space_weights RUN_DIR [RUN_DIR ...] [--weights W ...] [--name NAME]

For each trained run (a folder of ``experiments.train``), its selected checkpoint scores two
groups of sets with ``hole_knn_recon`` at every weight (``scores.knn_recon_weight``) of
``--weights``, with the default experiment's k and statistics (whatever the run was trained
with, so that runs of different days compare) and without the far-statistics guard (the analysis
is of the joint space's weight alone; the guard was round 5's answer to it):

- the selection suite of the README's rule ("Choosing the default"): validation inliers against
  the corruptions of ``datamodules.corruptions``, on the whole validation split (the study's
  select stage used the seeded subset its runs' ``data.max_eval_samples`` left, 2,000 images);
- the run's test sets, whole: test inliers against each of the run's ``data.outliers``.

Two limits frame the weights: 0 is the latent alone (the mean Euclidean distance to the k nearest
reference latents) and ``inf`` the statistics alone (the same vacancy among the reference's log
statistics, each divided by its interquartile range). In between, the joint space of
docs/method.md 4.1.

This is an analysis of the trade-off behind the rule's choice of weight, run after the choice:
it selects nothing (the default's weight stays the rule's). It writes
``benchmarks/results/<name>.json``, ``.md`` and ``.png``: AUROC per set and weight, mean and
standard deviation over the runs of each model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from benchmarks.common import DEFAULT_DATA_DIR, default_config, hardware_info, write_result
from benchmarks.compact_study import CORRUPTION_SEED, best_checkpoint, record_reference, record_sets
from common.atomic_io import atomic_open, write_json
from datamodules.corruptions import SELECTION_CORRUPTIONS, corrupt
from scoring.config import ScoreConfig
from scoring.detectors import HoleDetector
from scoring.joint import joint_weights, statistics_block
from scoring.metrics import ood_metrics

DEFAULT_WEIGHTS = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, math.inf]


def weighted_scores(
    reference: dict[str, torch.Tensor], queries: dict[str, torch.Tensor], k: int, weight: float
) -> torch.Tensor:
    """``[N]`` hole_knn_recon of the queries at ``weight``, with the two limits of the module docstring."""
    latents, statistics_ = reference["latent"], reference["log_recon_statistics"]
    if weight == 0:
        return HoleDetector(k=k, statistic="mean_distance").fit(latents).score(queries["latent"])
    if math.isinf(weight):
        # The joint space's own statistics block (each statistic over its inlier IQR, times one
        # common factor that no ranking sees).
        scales = joint_weights(latents, statistics_, k, 1.0)
        detector = HoleDetector(k=k, statistic="mean_distance").fit(statistics_block(statistics_, scales))
        return detector.score(statistics_block(queries["log_recon_statistics"], scales))
    detector = HoleDetector(k=k, relative_recon_weight=weight, recon_guard=None).fit(latents, statistics_)
    return detector.score(queries["latent"], queries["log_recon_statistics"])


def group_aurocs(
    reference: dict[str, torch.Tensor],
    columns: dict[str, torch.Tensor],
    set_names: list[str],
    k: int,
    weights: list[float],
) -> dict[str, dict[str, float]]:
    """``{weight: {outlier set: AUROC}}``; set 0 of ``columns`` is the inliers."""
    results: dict[str, dict[str, float]] = {}
    for weight in weights:
        scores = weighted_scores(reference, columns, k, weight)
        inliers = scores[columns["dataset"] == 0]
        results[f"{weight:g}"] = {
            name: ood_metrics(inliers, scores[columns["dataset"] == set_id])["auroc"]
            for set_id, name in enumerate(set_names)
            if set_id > 0
        }
    return results


@torch.no_grad()
def run_aurocs(run_dir: Path, weights: list[float], max_eval_samples: int | None = None) -> dict[str, Any]:
    """The selection-suite and test-set AUROCs of one run at every weight (``max_eval_samples``:
    the seeded subset of each test set, as ``data.max_eval_samples``; None = whole sets)."""
    from datamodules.ood_datamodule import ImageTensorDataset, OODDataModule
    from datamodules.sources import ImageSet
    from lightning_modules.factory import load_model

    config = OmegaConf.load(run_dir / "config.yaml")
    model = load_model(best_checkpoint(run_dir)).eval()
    default = default_config().scores  # every run is scored with the default's k and statistics
    # The unguarded joint space's statistics only (a guard would record its own as well).
    recording = ScoreConfig(
        names=["hole_knn_recon"], knn_recon_features=list(default.knn_recon_features), knn_recon_guard=None
    )
    data = {**OmegaConf.to_container(config.data), "max_eval_samples": max_eval_samples}  # type: ignore[dict-item]
    datamodule = OODDataModule(data)
    datamodule.setup("fit")
    val: ImageTensorDataset = datamodule.val_dataloader()[0].dataset  # type: ignore[assignment]
    suite = [ImageSet("validation", val.images, val.labels)]
    suite += [
        ImageSet(name, corrupt(name, val.images, CORRUPTION_SEED), val.labels)
        for name in SELECTION_CORRUPTIONS
    ]
    datamodule.setup("test")
    tests = [loader.dataset for loader in datamodule.test_dataloader()]
    test_sets = [ImageSet(dataset.name, dataset.images, dataset.labels) for dataset in tests]  # type: ignore[attr-defined]
    seed, batch = int(config.seed), int(config.data.batch_size)
    reference = record_reference(model, datamodule, recording)
    k = int(default.knn_k)
    return {
        "checkpoint": str(best_checkpoint(run_dir)),
        "model": f"{config.model.variant} d={config.model.latent_dim}, {config.trainer.max_epochs} epochs",
        "inlier": str(config.data.inlier),
        "seed": seed,
        "knn_k": k,
        "features": list(recording.knn_recon_features),
        "default_weight": float(default.knn_recon_weight),
        "selection": group_aurocs(
            reference, record_sets(model, suite, recording, seed, batch), [s.name for s in suite], k, weights
        ),
        "test": group_aurocs(
            reference,
            record_sets(model, test_sets, recording, seed, batch),
            [s.name for s in test_sets],
            k,
            weights,
        ),
    }


def cached_run_aurocs(run_dir: Path, weights: list[float]) -> dict[str, Any]:
    """``run_aurocs`` on whole test sets, kept in the run folder (``joint_space_weights.json``, beside
    the study's ``selection.json``) so that an interrupted analysis resumes where it stopped."""
    cache = run_dir / "joint_space_weights.json"
    wanted = [f"{weight:g}" for weight in weights]
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["checkpoint"] == str(best_checkpoint(run_dir)) and all(w in cached["test"] for w in wanted):
            return {
                **cached,
                **{group: {w: cached[group][w] for w in wanted} for group in ("selection", "test")},
            }
    result = run_aurocs(run_dir, weights)
    write_json(cache, result)
    print(f"{run_dir}: done", flush=True)
    return result


def summarise(runs: list[dict[str, Any]], group: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{inlier/outlier set: {weight: {mean, std, n}}}`` over the runs, plus the suite's worst case."""
    cells: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for weight, aurocs in run[group].items():
            for name, value in aurocs.items():
                cells.setdefault(f"{run['model']}: {run['inlier']} -> {name}", {}).setdefault(
                    weight, []
                ).append(value)
            if group == "selection":
                cells.setdefault(f"{run['model']}: {run['inlier']} worst case", {}).setdefault(
                    weight, []
                ).append(min(aurocs.values()))
    return {
        key: {
            weight: {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values),
            }
            for weight, values in by_weight.items()
        }
        for key, by_weight in cells.items()
    }


def markdown(
    summary: dict[str, dict[str, dict[str, dict[str, float]]]], weights: list[str], runs: int
) -> str:
    lines = [
        "# hole_knn_recon against the weight of its statistics",
        "",
        f"`python -m benchmarks.joint_space_weights` on {runs} runs; AUROC mean ± std over the runs of each "
        "inlier set. Weight 0 is the latent alone, inf the statistics alone. An analysis after the "
        "rule's choice: it selects nothing.",
    ]
    for group, title in (
        ("selection", "Selection suite (validation inliers vs corruptions)"),
        ("test", "Test sets, whole"),
    ):
        lines += [
            "",
            f"## {title}",
            "",
            "| set | " + " | ".join(weights) + " |",
            "|---|" + "---|" * len(weights),
        ]
        for key, by_weight in summary[group].items():
            cells = [
                f"{by_weight[w]['mean']:.4f} ± {by_weight[w]['std']:.4f}" if w in by_weight else "-"
                for w in weights
            ]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict[str, dict[str, dict[str, float]]]], weights: list[str], path: Path) -> Path:
    """One panel per model: test AUROC of each outlier set and the selection suite's worst case
    against the weight, mean ± std over that model's runs. The two limits sit at the axis ends."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = {**summary["test"], **{k: v for k, v in summary["selection"].items() if k.endswith("worst case")}}
    models = sorted({key.split(": ", 1)[0] for key in lines})
    figure = Figure(figsize=(5.5 * len(models), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    positions = list(range(len(weights)))
    panels = figure.subplots(1, len(models), sharey=True, squeeze=False)[0]  # one AUROC scale
    for axes, model in zip(panels, models, strict=True):
        for key, by_weight in lines.items():
            if not key.startswith(f"{model}: "):
                continue
            shown = [(x, by_weight[w]) for x, w in zip(positions, weights, strict=True) if w in by_weight]
            style = "--" if key.endswith("worst case") else "-"
            axes.errorbar(
                [x for x, _ in shown],
                [cell["mean"] for _, cell in shown],
                yerr=[cell["std"] for _, cell in shown],
                linestyle=style,
                marker="o",
                capsize=3,
                label=key.split(": ", 1)[1].replace("worst case", "selection suite, worst case"),
            )
        axes.set_xticks(
            positions, ["0 (latent)" if w == "0" else "inf (stats)" if w == "inf" else w for w in weights]
        )
        axes.set_xlabel("scores.knn_recon_weight")
        axes.set_ylabel("hole_knn_recon AUROC")
        axes.set_title(model, fontsize=9)
        axes.legend(fontsize=7)
    figure.savefig(path, dpi=100)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of experiments.train")
    parser.add_argument("--weights", nargs="+", type=float, default=DEFAULT_WEIGHTS)
    parser.add_argument("--name", default="joint_space_weights", help="results file name (no extension)")
    args = parser.parse_args(argv)
    missing = [str(run) for run in args.runs if not (run / "config.yaml").is_file()]
    if missing:
        parser.error(f"not run folders of experiments.train (no config.yaml): {', '.join(missing)}")
    os.environ.setdefault("DATA_DIR", str(DEFAULT_DATA_DIR))
    runs = [cached_run_aurocs(run_dir, args.weights) for run_dir in args.runs]
    weights = [f"{weight:g}" for weight in args.weights]
    summary = {group: summarise(runs, group) for group in ("selection", "test")}
    path = write_result(args.name, {"runs": runs, "summary": summary, "hardware": hardware_info()})
    with atomic_open(path.with_suffix(".md"), "w") as handle:
        handle.write(markdown(summary, weights, len(runs)))
    figure = plot(summary, weights, path.with_suffix(".png"))
    print(f"wrote {path}, {path.with_suffix('.md')} and {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
